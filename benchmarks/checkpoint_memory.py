"""Peak host memory of loading an LWM streaming checkpoint, against the file size and the largest array.

Writes a checkpoint of random bf16 arrays in LWM's key layout (`--gb` of it, w1/w2/w3 above
`--chunk-bytes` so the chunked path runs), then loads it in fresh subprocesses, so each peak RSS is its
own, and prints a table:

- `iter_checkpoint`, host: read only, each array dropped; the rise is what the reader itself holds
  (about one largest array).
- `iter_checkpoint`, drop: each array goes to the device with `jax.device_put`, then both copies are
  dropped. On the CPU backend device_put copies into host memory, so host + device copy of the largest
  array exist at once (about 2x); on an accelerator only the host copy counts.
- `iter_checkpoint`, keep: the arrays stay on the device, as a model loader keeps them. On the CPU
  backend "device" memory is host memory, so the peak is the device bytes plus about one array.
- `lwm_core.load_model`: the public path (streaming read, shape checks, placement on a mesh), the
  model kept on the device; and with `quantize="int8"` and `"int4"`, quantized array by array as it streams
  in (the model kept is then int8 or int4: its overhead is what the quantizing holds beside it, about one
  layer in float32 plus the array being read).
- `msgpack.Unpacker` + `msgpack_restore` (LWM's own loader, `--compare`), for contrast.

Usage: python benchmarks/checkpoint_memory.py --gb 1.5 [--chunk-bytes 268435456] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 2**20


def layout(gb: float) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """LLaMA-7B widths (D 4096, F 11008, V 32000), scanned layers, with L chosen to reach `gb` GiB."""
    from lwm_core.model.llama import SCAN
    D, F, V = 4096, 11008, 32000
    per_layer = 2 * (4 * D * D + 3 * D * F + 2 * D)  # bf16 bytes of one block
    L = max(1, round((gb * 2**30 - 2 * 2 * V * D) / per_layer))
    h = SCAN
    return [
        (("transformer", "wte", "embedding"), (V, D)),
        *[(h + ("attention", w, "kernel"), (L, D, D)) for w in ("wq", "wk", "wv", "wo")],
        (h + ("feed_forward", "w1", "kernel"), (L, D, F)),
        (h + ("feed_forward", "w2", "kernel"), (L, F, D)),
        (h + ("feed_forward", "w3", "kernel"), (L, D, F)),
        (h + ("attention_norm", "kernel"), (L, D)),
        (h + ("ffn_norm", "kernel"), (L, D)),
        (("transformer", "ln_f", "kernel"), (D,)),
        (("lm_head", "kernel"), (D, V)),
    ]


def write(path: str, gb: float, chunk_bytes: int) -> dict:
    import ml_dtypes
    import numpy as np

    from lwm_core.checkpoint.streaming import write_records

    rng = np.random.default_rng(0)
    digests: dict[str, str] = {}

    def records():
        for key, shape in layout(gb):
            # Random bits below 0x7f80 with a random sign: finite bf16 values, made without an fp32 copy.
            bits = rng.integers(0, 0x7F80, size=shape, dtype=np.uint16)
            bits |= rng.integers(0, 2, size=shape, dtype=np.uint16) << 15
            array = bits.view(ml_dtypes.bfloat16)
            digests["/".join(key)] = hashlib.sha1(bits.data).hexdigest()
            yield key, array

    write_records(path, records(), chunk_bytes=chunk_bytes)
    sizes = [2 * int(np.prod(shape)) for _, shape in layout(gb)]
    return {"digests": digests, "largest": max(sizes), "chunked": sum(s > chunk_bytes for s in sizes)}


def rss_mib() -> float:
    """Peak RSS of this process so far. Linux carries ru_maxrss across fork+exec from the parent, so the
    parent here stays small (the writer runs in its own subprocess too) to keep the figure honest."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def hwm_mib() -> float:
    """The same peak from /proc (VmHWM), which starts afresh at exec: a cross-check of ru_maxrss."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def read(path: str, mode: str, gb: float) -> dict:
    """One load in this (fresh) process; returns RSS figures and the per-array digests."""
    import jax
    import numpy as np

    from lwm_core.checkpoint.streaming import iter_checkpoint

    jax.device_put(np.zeros(4, np.float32)).block_until_ready()  # start the backend before the baseline
    baseline, baseline_hwm = rss_mib(), hwm_mib()
    start = time.perf_counter()
    kept, digests, device_bytes = [], {}, 0

    if mode in ("load_model", "load_model_int8", "load_model_int4"):  # the public path: streaming read, checks
        from flax.traverse_util import flatten_dict

        import lwm_core

        n_layers = next(shape[0] for key, shape in layout(gb) if key[-2] == "wq")
        config = lwm_core.get_config("7b", num_hidden_layers=n_layers)
        quantize = {"load_model_int8": "int8", "load_model_int4": "int4"}.get(mode)
        model = lwm_core.load_model(f"params::{path}", config=config, mesh="1,1,1,1", dtype="bfloat16",
                                    quantize=quantize)
        peak, hwm, seconds = rss_mib(), hwm_mib(), time.perf_counter() - start
        flat = flatten_dict(model.params)
        for key, value in flat.items():  # digests after the peak was taken
            if quantize is None:
                digests["/".join(key)] = hashlib.sha1(np.asarray(value).view(np.uint16).data).hexdigest()
            device_bytes += value.nbytes
        return {"baseline_mib": baseline, "peak_mib": peak, "hwm_rise_mib": hwm - baseline_hwm,
                "device_mib": device_bytes / MiB, "seconds": seconds, "backend": jax.default_backend(),
                "digests": digests}
    if mode == "unpacker":
        import flax.serialization as fs
        import msgpack

        def arrays():
            with open(path, "rb") as f:
                for key, value in msgpack.Unpacker(f, max_buffer_size=0):
                    yield tuple(key), fs.msgpack_restore(value)
    else:
        def arrays():
            return iter_checkpoint("params", path)

    for key, array in arrays():
        digests["/".join(key)] = hashlib.sha1(np.ascontiguousarray(array).view(np.uint16).data).hexdigest()
        if mode == "host":
            del array
            continue
        on_device = jax.device_put(array)
        on_device.block_until_ready()
        del array  # the host copy goes; only the device array may stay
        device_bytes += on_device.nbytes
        if mode == "keep":
            kept.append(on_device)
        del on_device
    return {
        "baseline_mib": baseline,
        "peak_mib": rss_mib(),
        "hwm_rise_mib": hwm_mib() - baseline_hwm,
        "device_mib": device_bytes / MiB,
        "seconds": time.perf_counter() - start,
        "backend": jax.default_backend(),
        "digests": digests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.5,
                        help="checkpoint size to write, GiB (rounded to whole layers)")
    parser.add_argument("--chunk-bytes", type=int, default=2**28,
                        help="chunking threshold for the writer (Flax: 2**30)")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where to write the checkpoint (deleted afterwards)")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also load with msgpack.Unpacker + flax msgpack_restore, as LWM does")
    # Child processes: one writes, one per load mode reads.
    parser.add_argument("--write", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--read", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.write:
        json.dump(write(args.write, args.gb, args.chunk_bytes), sys.stdout)
        return
    if args.read:
        json.dump(read(*args.read, args.gb), sys.stdout)
        return

    def child(*argv: str) -> dict:
        run = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True)
        return json.loads(run.stdout)

    path = os.path.join(args.dir, f"lwm_bench_{os.getpid()}.params")
    try:
        start = time.perf_counter()
        written = child("--write", path, "--gb", str(args.gb), "--chunk-bytes", str(args.chunk_bytes))
        write_s = time.perf_counter() - start
        file_mib = os.path.getsize(path) / MiB
        print(f"wrote {path}: {file_mib:.0f} MiB in {write_s:.1f} s, {written['chunked']} arrays chunked",
              file=sys.stderr)
        rows = []
        modes = ["host", "drop", "keep", "load_model", "load_model_int8", "load_model_int4"]
        for mode in modes + (["unpacker"] if args.compare else []):
            result = child("--read", path, mode, "--gb", str(args.gb))
            if not mode.startswith("load_model_int") and result["digests"] != written["digests"]:
                raise SystemExit(f"{mode}: the arrays read back differ from the ones written")
            rows.append((mode, result))
    finally:
        if os.path.exists(path):
            os.remove(path)

    largest = written["largest"] / MiB
    labels = {mode: f"iter_checkpoint, {mode}" for mode in ("host", "drop", "keep")}
    labels["unpacker"] = "Unpacker+msgpack_restore"
    labels["load_model"] = "lwm_core.load_model"
    labels["load_model_int8"] = "load_model(quantize=int8)"
    labels["load_model_int4"] = "load_model(quantize=int4)"
    print(f"file {file_mib:.0f} MiB, largest array {largest:.0f} MiB, "
          f"chunk threshold {args.chunk_bytes / MiB:.0f} MiB, backend {rows[0][1]['backend']}; "
          f"all arrays read back bit-exact")
    print(f"{'load':<26}{'baseline':>10}{'peak':>10}{'peak-base':>11}{'VmHWM rise':>12}{'on device':>11}"
          f"{'overhead':>10}{'/largest':>10}{'time':>8}")
    for mode, r in rows:
        rise = r["peak_mib"] - r["baseline_mib"]
        # On the CPU backend the kept device arrays are host memory; overhead is what is left above them.
        kept = mode in ("keep", "load_model", "load_model_int8", "load_model_int4") and r["backend"] == "cpu"
        overhead = rise - (r["device_mib"] if kept else 0)
        print(f"{labels[mode]:<26}{r['baseline_mib']:>9.0f}M{r['peak_mib']:>9.0f}M{rise:>10.0f}M"
              f"{r['hwm_rise_mib']:>11.0f}M{r['device_mib']:>10.0f}M{overhead:>9.0f}M"
              f"{overhead / largest:>9.2f}x{r['seconds']:>7.1f}s")


if __name__ == "__main__":
    from lwm_cli import _malloc

    _malloc.reexec()  # glibc's allocator as the `lwm` command runs with it
    main()
