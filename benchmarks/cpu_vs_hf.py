"""bench-50m on CPU: lwm against Hugging Face `LlamaForCausalLM` (torch) and this machine's roofline.

bench-50m (benchmarks/README.md: vocab 32000, hidden 512, intermediate 1376, 8 layers, 8 heads, float32,
random weights from seed 0) is built by lwm and exported to HF with `lwm_core.checkpoint.hf.to_hf`, so
both sides hold the same weights; their logits are compared before anything is timed. Then, in one
run, repetitions interleaved (lwm, HF, lwm, HF, ...) so drift hits both sides alike, medians of:

- prefill: one forward over `--prefill` tokens (2048), batch 1, full (T, V) logits on both sides (HF
  computes them all too). Also shown: `LWM.logits` (the same forward plus the 262 MB copy to numpy)
  and lwm's generation prefill (last position's logits only), and lwm's prefill with attention in plain
  JAX (`attention_impl=jax`) rather than its fused CPU kernel.
- int8 and int4: the same weights quantized per output channel (`load_model(quantize="int8")`) or in groups
  of 32 inputs (`quantize="int4"`), decoded by lwm's int8 and int4 kernels; and on a trained model
  (lwm-demo-text) each one's logit error and perplexity change.
- decode: greedy, `--prompt` tokens (128) then `--new` new tokens (128), batch 1. Decode time excludes
  the prefill on both sides: lwm times `decode_n` alone (the prefill, which samples the first token,
  runs before the clock starts); HF times `generate(max_new_tokens=new)` minus
  `generate(max_new_tokens=1)` (prefill + first token), each a median. Both then cover the same
  `new - 1` decode steps. End-to-end `generate` figures are shown as well.
- roofline: read bandwidth from jitted matrix-vector products over a `--bw-mb` weight (all cores;
  XLA's matvec and vecmat, and lwm's kernel on the same matrix packed on 2 MB pages: the fastest),
  giving decode tok/s = bandwidth / bytes of weights read per token (every layer + final norm + LM
  head; of the embedding table only one row); sgemm FLOP/s from a jitted 2048^3 float32 matmul, giving
  prefill tok/s = FLOP/s / (2 x those params + causal attention) per token. The probes run inside the
  same round-robin as the figures they judge (bandwidth with decode, sgemm with prefill): on a shared
  machine the bandwidth drifts by a third within minutes, and a roofline measured apart drifts with it.

Usage: python benchmarks/cpu_vs_hf.py [--reps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCH_50M = dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                 num_attention_heads=8)


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each callable, run round-robin `reps` times (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def build_lwm(args, quantize: str | None = None):
    import lwm_core

    config = lwm_core.get_config("debug", **BENCH_50M, max_sequence_length=max(4096, args.prefill))
    return lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="float32", seed=0,
                               quantize=quantize)


def timed_decode(model, prompt: list[int], new: int) -> tuple[float, list[int]]:
    """lwm's greedy decode of `new` tokens after `prompt` with the prefill excluded: (seconds of `decode_n`
    alone, the tokens). The prefill, which samples the first token, runs before the clock starts."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lwm_core.generate.decode import decode_n

    state, sampling, layers = model._start([prompt], new, 0.0, 0, 1.0, 0)
    jax.block_until_ready(state)
    start = time.perf_counter()
    state = decode_n(model.config, model.params, layers, state, jnp.int32(new), sampling, top_k=0, mesh=model.mesh)
    jax.block_until_ready(state)
    return time.perf_counter() - start, np.asarray(state.tokens[0, :int(state.step)]).tolist()


def quantized_quality() -> str:
    """int8 and int4 against float32 on a trained model (lwm-demo-text, the built-in one), over held-out needle
    rows (`lwm needle make`, 2K tokens, a seed its training data did not use): the largest logit error, how
    often the next-token argmax agrees, and the perplexity of the replies (the tokens it was trained on)."""
    import json
    import subprocess
    import tempfile

    import numpy as np

    import lwm_core
    from lwm_core.tokenizer import default_tokenizer_path

    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.jsonl"
        subprocess.run([sys.executable, "-c", "from lwm_cli.main import main; main()", "needle", "make", "--tokenizer",
                        default_tokenizer_path(), "--task", "single", "--ctx", "2K", "--depths", "5", "--rounds", "1",
                        "--seed", "77", "-o", str(rows)], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parents[1])
        rows = [json.loads(line) for line in rows.read_text().splitlines()]
    modes = ("int8", "int4")
    models = {q: lwm_core.load_model("lwm-demo-text", mesh="1,1,1,1", dtype="float32", quantize=q)
              for q in ("none", *modes)}
    tokenizer = models["none"].tokenizer
    errors, agree = {q: [] for q in modes}, {q: [] for q in modes}
    nll = {q: [] for q in models}
    for row in rows:
        prompt, reply = tokenizer.encode(row["prompt"]), tokenizer.encode(row["reply"])
        ids = np.asarray(prompt + reply, np.int32)
        logits = {q: m.logits(ids[None])[0] for q, m in models.items()}
        for q in modes:
            errors[q].append(np.abs(logits[q] - logits["none"]).max() / np.abs(logits["none"]).max())
            agree[q].append(np.mean(logits[q].argmax(-1) == logits["none"].argmax(-1)))
        for q, z in logits.items():  # -log p(reply token | everything before it)
            z = z[len(prompt) - 1:-1].astype(np.float64)
            logp = z - z.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            nll[q] += (-logp[np.arange(len(reply)), reply]).tolist()
    ppl = {q: float(np.exp(np.mean(v))) for q, v in nll.items()}
    return "\n".join(f"{q} quality (lwm-demo-text, {len(rows)} held-out 2K needle rows): max logit error "
                     f"{max(errors[q]):.2%} of the logit scale, next-token argmax agrees at {np.mean(agree[q]):.1%} of "
                     f"positions, reply perplexity {ppl['none']:.4f} -> {ppl[q]:.4f}" for q in modes)


def build_hf(model):
    import numpy as np
    import torch
    import transformers

    from lwm_core.checkpoint.hf import hf_config, to_hf
    from lwm_core.checkpoint.loader import host_arrays

    config = model.config
    hf = transformers.LlamaConfig(**{k: v for k, v in hf_config(config).items() if k != "architectures"})
    peer = transformers.LlamaForCausalLM(hf).eval()
    state = {name: torch.from_numpy(tensor) for path, array in host_arrays(model.params)
             for name, tensor in to_hf(config, path, np.asarray(array, np.float32))}
    peer.load_state_dict(state, strict=True)
    return peer


def roofline_probes(args) -> tuple[dict, dict]:
    """Callables that measure this machine's read bandwidth and sgemm rate, and the bytes / FLOPs each
    moves; `main` times them interleaved with the decode and prefill repetitions, so the roofline and
    the figures it judges are measured under the same load."""
    import jax
    import jax.numpy as jnp

    n = int((args.bw_mb * 2**20 / 4) ** 0.5)
    w = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    x = jax.random.normal(jax.random.key(2), (n,), jnp.float32)
    matvec = jax.jit(lambda w, x: w @ x)
    vecmat = jax.jit(lambda w, x: x @ w)
    a = jax.random.normal(jax.random.key(3), (2048, 2048), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    bandwidth = {"roof matvec": lambda: matvec(w, x).block_until_ready(),
                 "roof vecmat": lambda: vecmat(w, x).block_until_ready()}
    from lwm_core import cpu_decode

    if cpu_decode.available():  # lwm's own matvec over the same matrix (packed, on 2 MB pages): the fastest reader
        packed = cpu_decode.pack_all([w])[0]
        kernel = jax.jit(cpu_decode.matvec)
        bandwidth["roof kernel"] = lambda: kernel(x, packed).block_until_ready()
    return bandwidth, {"roof sgemm": lambda: matmul(a, a).block_until_ready()}, 4 * n * n


def roofline(config, args, times: dict, matrix_bytes: int) -> dict[str, float]:
    """Read bandwidth and sgemm rate from the probes' median times, and the tok/s they allow for bench-50m."""
    probes = {name: matrix_bytes / t for name, t in times.items()
              if name in ("roof matvec", "roof vecmat", "roof kernel")}
    bandwidth = max(probes.values())
    flops = 2 * 2048**3 / times["roof sgemm"]
    D, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    weights_per_token = config.num_params() - V * D  # all but the embedding table (one row of it)
    T = args.prefill
    # 2 FLOPs per weight per token, plus causal attention: QK^T and PV, each 2*T*T*D per layer, halved.
    prefill_flops = 2 * weights_per_token * T + L * 2 * 2 * T * T * D / 2
    return {"bandwidth": bandwidth, "probes": probes, "flops": flops, "weight_bytes": 4 * weights_per_token,
            "decode": bandwidth / (4 * weights_per_token), "prefill": flops * T / prefill_flops,
            "prefill_flops": prefill_flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per figure (medians reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--prefill", type=int, default=2048, help="prefill tokens")
    parser.add_argument("--prompt", type=int, default=128, help="decode: prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="decode: new tokens")
    parser.add_argument("--bw-mb", type=float, default=384, help="roofline: MB of the matrix-vector weight")
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch

    from lwm_cli import _malloc
    from lwm_core.api import _forward
    from lwm_core.parallel.mesh import put

    torch.set_num_threads(args.threads)
    print(f"jax {jax.__version__} ({jax.default_backend()}, {len(jax.devices())} device), torch {torch.__version__}"
          f" ({torch.get_num_threads()} threads), {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}",
          file=sys.stderr)
    print(_malloc.describe(os.environ), file=sys.stderr)
    model = build_lwm(args)
    config = model.config
    peer = build_hf(model)

    rng = np.random.default_rng(0)
    # Avoid EOS/BOS/pad so the prompt is ordinary text-like ids.
    long_ids = rng.integers(3, config.vocab_size, size=args.prefill).astype(np.int32)
    prompt = long_ids[:args.prompt]

    # ---- the same model on both sides
    with torch.no_grad():
        ref = peer(torch.from_numpy(long_ids[None]).long()).logits[0].numpy()
    ours = model.logits(long_ids)
    diff = float(np.abs(ours - ref).max())
    print(f"logits over {args.prefill} tokens: max |lwm - HF| = {diff:.2e} (logit scale {np.abs(ref).max():.2f})")
    if not diff < 1e-3:
        raise SystemExit("lwm and HF disagree; the timings would compare different models")

    # ---- prefill: full (T, V) logits on both sides
    ids_dev = put(long_ids[None], model.mesh, ("batch", "seq"))
    ids_torch = torch.from_numpy(long_ids[None]).long()

    def lwm_prefill():
        _forward(config, model.params, ids_dev, mesh=model.mesh, dtype=model.dtype).block_until_ready()

    plain = dataclasses.replace(config, attention_impl="jax")  # attention in plain JAX, not lwm's CPU kernel

    def lwm_plain_prefill():
        _forward(plain, model.params, ids_dev, mesh=model.mesh, dtype=model.dtype).block_until_ready()

    def hf_prefill():
        with torch.no_grad():
            peer(ids_torch)

    def lwm_gen_prefill():  # generation's prefill: cache filled, last position's logits, first token
        state, _, _ = model._start([long_ids.tolist()[:-args.new]], args.new, 0.0, 0, 1.0, 0)
        jax.block_until_ready(state)

    bandwidth_probes, sgemm_probe, matrix_bytes = roofline_probes(args)
    pre = interleaved({"lwm": lwm_prefill, "hf": hf_prefill, "lwm plain": lwm_plain_prefill,
                       "lwm.logits": lambda: model.logits(long_ids),
                       "lwm gen prefill": lwm_gen_prefill, **sgemm_probe}, args.reps)

    # ---- decode: greedy, prompt then `new` tokens, prefill excluded on both sides
    prompt_torch = torch.from_numpy(prompt[None]).long()
    new = args.new

    def hf_generate(n):
        with torch.no_grad():
            return peer.generate(prompt_torch, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                 attention_mask=torch.ones_like(prompt_torch), pad_token_id=config.pad_token_id)

    model8 = build_lwm(args, quantize="int8")  # the same weights, int8 per output channel (lwm_core.quantize)
    model4 = build_lwm(args, quantize="int4")  # and int4 in groups of 32 inputs
    # decode alone, prefill excluded
    clocks: dict[str, list[float]] = {"lwm decode": [], "lwm int8 decode": [], "lwm int4 decode": []}
    lwm_tokens: dict[str, list[int]] = {}

    def lwm_decode(m, name):
        seconds, lwm_tokens[name] = timed_decode(m, prompt.tolist(), new)
        clocks[name].append(seconds)

    dec = interleaved({"lwm decode": lambda: lwm_decode(model, "lwm decode"),
                       "lwm int8 decode": lambda: lwm_decode(model8, "lwm int8 decode"),
                       "lwm int4 decode": lambda: lwm_decode(model4, "lwm int4 decode"),
                       "lwm e2e": lambda: model.generate(prompt, new),
                       "hf 1": lambda: hf_generate(1),
                       "hf e2e": lambda: hf_generate(new), **bandwidth_probes}, args.reps)
    for name, times in clocks.items():
        dec[name] = statistics.median(times[1:])  # its own clock; [0] was the warm-up
    ours_tokens = np.asarray(lwm_tokens["lwm decode"])
    hf_tokens = hf_generate(new)[0, args.prompt:].numpy()
    same = int(np.argmin(np.append(ours_tokens[:len(hf_tokens)] == hf_tokens[:len(ours_tokens)], False)))
    print(f"greedy tokens: lwm {len(ours_tokens)}, HF {len(hf_tokens)}, first {same} identical")
    if len(ours_tokens) != new:
        raise SystemExit(f"lwm stopped after {len(ours_tokens)} tokens (EOS); pick another prompt")

    roof = roofline(config, args, {**pre, **dec}, matrix_bytes)

    # ---- figures
    T = args.prefill
    lwm_pre, hf_pre = T / pre["lwm"], T / pre["hf"]
    lwm_dec = (new - 1) / dec["lwm decode"]
    lwm_dec8 = (new - 1) / dec["lwm int8 decode"]
    lwm_dec4 = (new - 1) / dec["lwm int4 decode"]
    hf_dec = (new - 1) / max(dec["hf e2e"] - dec["hf 1"], 1e-9)
    print("\nread bandwidth probes: " + ", ".join(f"{k[5:]} {v / 1e9:.1f} GB/s" for k, v in roof["probes"].items()))
    print(f"roofline: read bandwidth {roof['bandwidth'] / 1e9:.1f} GB/s over {roof['weight_bytes'] / 1e6:.1f} MB "
          f"of weights per token -> decode {roof['decode']:.0f} tok/s; sgemm {roof['flops'] / 1e9:.0f} GFLOP/s "
          f"over {roof['prefill_flops']:.3g} FLOPs -> prefill {roof['prefill']:.0f} tok/s")
    print(f"load average now {os.getloadavg()[0]:.2f} (on a shared machine, other jobs slow both sides)")
    print(f"seconds (medians of {args.reps}): " + ", ".join(f"{k} {v:.3f}" for k, v in {**pre, **dec}.items()))

    rows = [  # the bars of benchmarks/README.md
        ("prefill tok/s (full logits)", lwm_pre, hf_pre, "HF", 1.0),
        ("prefill tok/s vs roofline", lwm_pre, roof["prefill"], "roof", 0.85),
        ("prefill tok/s, plain-JAX attention", T / pre["lwm plain"], hf_pre, "HF", None),
        ("LWM.logits tok/s (+ numpy copy)", T / pre["lwm.logits"], hf_pre, "HF", None),
        ("generation prefill tok/s (last logits)", T / pre["lwm gen prefill"], hf_pre, "HF", None),
        ("decode tok/s (prefill excluded)", lwm_dec, hf_dec, "HF", None),
        ("decode tok/s vs roofline", lwm_dec, roof["decode"], "roof", 0.75),
        ("int8 decode tok/s", lwm_dec8, hf_dec, "HF", None),
        ("int8 decode tok/s vs float32's", lwm_dec8, lwm_dec, "f32", None),
        ("int8 decode vs int8 roofline", lwm_dec8, roof["decode"] * 4, "roof", None),
        ("int4 decode tok/s vs int8's", lwm_dec4, lwm_dec8, "int8", None),
        ("int4 decode vs int4 roofline", lwm_dec4, roof["decode"] * 32 / 5, "roof", None),
        ("generate e2e tok/s (incl. prefill)", new / dec["lwm e2e"], new / dec["hf e2e"], "HF", None),
    ]
    print(quantized_quality())
    print(f"\n{'figure':<40} {'lwm':>9} {'peer':>9} {'':4} {'ratio':>6}  {'bar':>7}  met")
    for name, ours, peer_value, peer_name, bar in rows:
        ratio = ours / peer_value
        bar_text, met = (f">= {bar:g}x", "yes" if ratio >= bar else "NO") if bar else ("-", "-")
        print(f"{name:<40} {ours:>9.1f} {peer_value:>9.1f} {peer_name:4} {ratio:>6.2f}  {bar_text:>7}  {met}")


if __name__ == "__main__":
    from lwm_cli import _malloc

    _malloc.reexec()  # glibc's allocator as the `lwm` command runs with it
    main()
