"""bench-50m on CPU: lwm (float32, int8, int4) against llama.cpp (float32, q8_0, q4_0) on the same weights.

bench-50m (benchmarks/README.md) is made by lwm, exported to a Hugging Face directory by lwm's own export
(`lwm_core.checkpoint.hf`, as `lwm convert jax2hf` writes it), and converted to GGUF by llama.cpp's own
converter (`convert_hf_to_gguf.py`, float32 and q8_0; q4_0 by llama.cpp's quantizer,
`llama_model_quantize`, from the float32 file). Before anything is timed, llama.cpp's float32
logits over 256 tokens are compared with lwm's: the timings then compare the same model. Then, in one
run, repetitions interleaved so drift hits every side alike, medians of:

- prefill: `--prefill` tokens (2048), batch 1, the last position's logits (llama.cpp computes only
  those without `logits_all`; lwm's generation prefill likewise);
- decode: greedy, `--prompt` tokens (128) then `--new` tokens (128), batch 1, the prefill excluded: lwm
  times `decode_n` alone; llama.cpp evaluates one token at a time after the prompt (argmax of its logits).

lwm int8 is `load_model(quantize="int8")` (weights int8 per output channel, activations float32, lwm's
int8 CPU kernel); llama.cpp q8_0 stores blocks of 32 weights with a float16 scale and also quantizes the
activations to 8 bits. lwm int4 (`quantize="int4"`: 4 bits per weight with a float32 scale per 32 inputs,
activations rounded to int8 per 32 inside its kernel) is the peer of q4_0 (4 bits with a float16 scale per
32; activations to 8 bits likewise). llama.cpp's q4_0 file, as its quantizer writes it by default, keeps
the output head in q6_K (6.6 bits a weight); lwm's int4 head is int4. llama.cpp keeps the token embedding
table quantized too; lwm keeps it float32 and reads one row of it per token.

llama-cpp-python is not a dependency (it builds llama.cpp from source: ~18 minutes with gcc on 2 cores).
Build it with clang where you can (`CC=clang-19 CXX=clang++-19 CMAKE_ARGS=-DGGML_NATIVE=ON pip install
llama-cpp-python`, ~7 minutes): gcc 12's build of ggml's AMX kernels crashed on the Intel machines and
had to go without them, and clang's ran q8_0 1.7x faster. Where no clang is installed, the `ziglang`
wheel carries one: wrapper scripts `clang` (`exec python3 -m ziglang cc "$@"`) and `clang++` (`... c++
...`), then `CC=.../clang CXX=.../clang++ CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=OFF" pip install
--target DIR llama-cpp-python` (~10 minutes on 2 cores; zig has no OpenMP, so ggml runs its own thread
pool), and run this script with `PYTHONPATH=DIR` for that build; it prints which library it loaded. The
converter is not in the wheel: pass the `convert_hf_to_gguf.py` of a llama.cpp checkout (or of the
llama-cpp-python sdist's vendor/llama.cpp) as `--converter`; it needs `gguf` (pip) and the packages in
llama.cpp's requirements-convert_hf_to_gguf.txt. Without llama-cpp-python this script says so in one line
and exits 0.

Usage: python benchmarks/cpu_vs_llamacpp.py --converter PATH/convert_hf_to_gguf.py [--reps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_vs_hf import build_lwm, interleaved, timed_decode  # noqa: E402  (bench-50m, the timers)


def export_gguf(model, converter: Path, directory: Path) -> dict[str, Path]:
    """bench-50m -> an HF directory (lwm's export) -> GGUF files by llama.cpp's converter and quantizer:
    {"f32": path, "q8_0": path, "q4_0": path}."""
    from lwm_core.checkpoint import hf
    from lwm_core.checkpoint.loader import host_arrays

    hf_dir = directory / "hf"
    hf_dir.mkdir()
    hf.write_hf_files(str(hf_dir), model.config, host_arrays(model.params), dtype="float32",
                      max_shard_bytes=5 * 2**30, tokenizer_path=getattr(model.tokenizer, "path", None), text_only=False)
    out = {}
    for kind in ("f32", "q8_0"):
        out[kind] = directory / f"bench-50m-{kind}.gguf"
        done = subprocess.run([sys.executable, str(converter), str(hf_dir), "--outfile", str(out[kind]),
                               "--outtype", kind], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{converter} failed for {kind}: {done.stderr.strip().splitlines()[-1:]}")
    import llama_cpp

    out["q4_0"] = directory / "bench-50m-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    if llama_cpp.llama_model_quantize(str(out["f32"]).encode(), str(out["q4_0"]).encode(), params):
        raise SystemExit("llama.cpp's llama_model_quantize failed for q4_0")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--converter", type=Path, help="llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per figure (medians reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (default: all cores)")
    parser.add_argument("--prefill", type=int, default=2048, help="prefill tokens")
    parser.add_argument("--prompt", type=int, default=128, help="decode: prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="decode: new tokens")
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError as error:
        if error.name not in (None, "llama_cpp"):  # llama_cpp is there, one of its dependencies is not
            raise SystemExit(f"llama-cpp-python cannot be imported: {error} (a build installed with --no-deps "
                             "needs its dependencies: pip install diskcache jinja2)") from None
        print("llama-cpp-python is not installed (pip install llama-cpp-python; see this script's docstring for the "
              "faster clang build): nothing to compare against")
        return
    if args.converter is None or not args.converter.is_file():
        raise SystemExit(f"--converter: give llama.cpp's convert_hf_to_gguf.py (got {args.converter})")

    import jax
    import numpy as np

    print(f"llama.cpp: {Path(llama_cpp.__file__).parent} ({llama_cpp.llama_print_system_info().decode().strip()})")
    model = build_lwm(args)
    model8 = build_lwm(args, quantize="int8")
    model4 = build_lwm(args, quantize="int4")
    config = model.config
    rng = np.random.default_rng(0)
    ids = rng.integers(3, config.vocab_size, size=args.prefill).astype(np.int32)
    prompt = ids[:args.prompt].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        files = export_gguf(model, args.converter, Path(tmp))
        llms = {kind: llama_cpp.Llama(str(path), n_ctx=max(4096, args.prefill + 8), n_batch=args.prefill,
                                      n_ubatch=args.prefill, n_threads=args.threads, n_threads_batch=args.threads,
                                      logits_all=kind == "check", verbose=False)
                for kind, path in {**files, "check": files["f32"]}.items()}

        # ---- the same model on both sides: float32 logits over 256 tokens
        check = llms.pop("check")
        check.reset()
        check.eval(ids[:256].tolist())
        theirs = np.asarray(check.scores[:256])
        ours = model.logits(ids[:256])
        diff = float(np.abs(theirs - ours).max())
        print(f"logits over 256 tokens: max |lwm - llama.cpp f32| = {diff:.2e} (logit scale {np.abs(ours).max():.2f})")
        if not diff < 1e-2:
            raise SystemExit("lwm and llama.cpp disagree; the timings would compare different models")
        del check

        def llama_prefill(llm):
            llm.reset()
            llm.eval(ids.tolist())

        clocks: dict[str, list[float]] = {}

        def llama_decode(kind):
            llm = llms[kind]
            llm.reset()
            llm.eval(prompt)
            t0 = time.perf_counter()
            for _ in range(args.new - 1):  # greedy on the last position's logits, read as its sampler reads them
                last = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(config.vocab_size,))
                llm.eval([int(np.argmax(last))])
            clocks.setdefault(f"llama.cpp {kind} decode", []).append(time.perf_counter() - t0)

        def lwm_prefill(m):
            state, _, _ = m._start([ids.tolist()[:-1]], 1, 0.0, 0, 1.0, 0)
            jax.block_until_ready(state)

        def lwm_decode(m, name):
            clocks.setdefault(name, []).append(timed_decode(m, prompt, args.new)[0])

        pre = interleaved({"lwm f32": lambda: lwm_prefill(model), "lwm int8": lambda: lwm_prefill(model8),
                           "lwm int4": lambda: lwm_prefill(model4),
                           **{f"llama.cpp {k}": (lambda k=k: llama_prefill(llms[k])) for k in llms}}, args.reps)
        interleaved({"lwm f32": lambda: lwm_decode(model, "lwm f32 decode"),
                     "lwm int8": lambda: lwm_decode(model8, "lwm int8 decode"),
                     "lwm int4": lambda: lwm_decode(model4, "lwm int4 decode"),
                     **{f"llama.cpp {k}": (lambda k=k: llama_decode(k)) for k in llms}}, args.reps)
    dec = {name: statistics.median(times[1:]) for name, times in clocks.items()}  # [0]: the warm-up

    print(f"\n{'system':<20} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for name in ("lwm f32", "lwm int8", "lwm int4", "llama.cpp f32", "llama.cpp q8_0", "llama.cpp q4_0"):
        print(f"{name:<20} {args.prefill / pre[name]:>14.0f} {(args.new - 1) / dec[name + ' decode']:>13.1f}")
    ratio = dec["llama.cpp q8_0 decode"] / dec["lwm int8 decode"]
    print(f"\nlwm int8 decode {ratio:.2f}x llama.cpp q8_0's (bar: >= 1.0x against its faster build)")
    ratio = dec["llama.cpp q4_0 decode"] / dec["lwm int4 decode"]
    print(f"lwm int4 decode {ratio:.2f}x llama.cpp q4_0's")


if __name__ == "__main__":
    from lwm_cli import _malloc

    _malloc.reexec()  # glibc's allocator as the `lwm` command runs with it
    main()
