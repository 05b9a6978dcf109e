"""Long-context prefill on one CPU device: seconds and peak memory per length.

A tiny LLaMA (hidden 256, 2 layers, 4 heads, random weights) runs one forward pass over 32K, 64K and
128K tokens with blockwise attention and blockwise FFN, returning only the last position's logits (what
generation needs). Each length runs in a fresh subprocess so its peak RSS is its own. Dense attention
would need T^2 scores (64 GB in float32 at 128K for one head); blockwise memory grows linearly: the
table reports the growth per doubling (bar: <= 2.2x from 32K to 128K, benchmarks/README.md).

Usage: python benchmarks/long_context_cpu.py [--lengths 32768 65536 131072] [--chunk 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_one(length: int, chunk: int) -> dict:
    os.environ["XLA_FLAGS"] = ""
    import resource

    import jax
    import numpy as np

    import lwm_core
    from lwm_core.model.llama import forward

    config = lwm_core.get_config("tiny", hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                                 num_attention_heads=4, max_sequence_length=length, attention="blockwise",
                                 query_chunk_size=chunk, key_chunk_size=chunk, mlp_chunk_size=chunk)
    model = lwm_core.load_model("random:tiny", config=config, mesh="1,1,1,1")
    ids = jax.numpy.asarray(np.random.default_rng(0).integers(3, config.vocab_size, (1, length)), "int32")
    fn = jax.jit(lambda p, i: forward(config, p, i, last_only=True))
    compiled = fn.lower(model.params, ids).compile()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    logits = compiled(model.params, ids)
    logits.block_until_ready()
    seconds = time.perf_counter() - start
    assert np.isfinite(np.asarray(logits)).all()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"length": length, "seconds": seconds, "peak_rss_mib": peak,
            "rss_before_mib": base, "xla_temp_mib": temp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    parser.add_argument("--chunk", type=int, default=2048, help="query/key/FFN chunk size")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        json.dump(run_one(args.one, args.chunk), sys.stdout)
        return
    rows = []
    for length in args.lengths:
        out = subprocess.run([sys.executable, __file__, "--one", str(length), "--chunk", str(args.chunk)],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout))
        print(f"{length} tokens: {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    print(f"{'tokens':>8} {'seconds':>9} {'tokens/s':>9} {'peak RSS':>10} {'XLA temp':>10} {'RSS growth':>11}")
    for i, r in enumerate(rows):
        growth = f"{r['peak_rss_mib'] / rows[i - 1]['peak_rss_mib']:.2f}x" if i else "-"
        print(f"{r['length']:>8} {r['seconds']:>9.1f} {r['length'] / r['seconds']:>9.0f} {r['peak_rss_mib']:>9.0f}M "
              f"{r['xla_temp_mib']:>9.0f}M {growth:>11}")


if __name__ == "__main__":
    main()
