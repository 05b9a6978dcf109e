"""Long-context prefill on one CPU device: seconds, peak memory and share of the FLOP roofline per length,
with attention by lwm's fused CPU kernel and by plain JAX's blockwise attention, side by side.

A tiny LLaMA (hidden 256, 2 layers, 4 heads, random weights) runs one forward pass over 32K, 64K and
128K tokens with blockwise FFN, returning only the last position's logits (what generation needs):

- `kernel`: `attention = auto`, which on one CPU device is the fused kernel (`attention.cpu_flash`);
- `jax`: `attention = blockwise` with `attention_impl = jax`, the path before the kernel existed.

Each (length, attention) runs in a fresh subprocess so its peak RSS is its own, and measures this
machine's sgemm rate (a jitted 2048^3 float32 matmul) right before, so the share of the roofline is
judged under the same load. FLOPs count the weights (2 per weight per token) and causal attention
(QK^T and PV: 4 T^2 H N / 2 per layer). For the kernel, attention alone (one layer's q, k, v) is timed
too: its share of the roofline is the bar's (>= 50%, benchmarks/README.md). Dense attention would need
T^2 scores (64 GB in float32 at 128K for one head); blockwise memory grows linearly: the table reports
the growth per doubling (bar: <= 2.2x from 32K to 128K).

Usage: python benchmarks/long_context_cpu.py [--lengths 32768 65536 131072] [--attention kernel jax]
       [--chunk 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4)


def sgemm_flops() -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(3), (2048, 2048), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, a).block_until_ready()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times)


def run_one(length: int, attention: str, chunk: int) -> dict:
    import resource

    import jax
    import numpy as np

    import lwm_core
    from lwm_core.model.llama import _plan, forward

    kind = dict(attention="auto") if attention == "kernel" else dict(attention="blockwise", attention_impl="jax")
    config = lwm_core.get_config("tiny", **TINY, max_sequence_length=length, query_chunk_size=chunk,
                                 key_chunk_size=chunk, mlp_chunk_size=chunk, **kind)
    plan = _plan(config, None, "forward", length, length).kind
    if attention == "kernel" and plan != "cpu_flash":
        raise SystemExit(f"the fused CPU kernel is not available here (plan {plan}); run with --attention jax")
    model = lwm_core.load_model("random:tiny", config=config, mesh="1,1,1,1")
    ids = jax.numpy.asarray(np.random.default_rng(0).integers(3, config.vocab_size, (1, length)), "int32")
    fn = jax.jit(lambda p, i: forward(config, p, i, last_only=True))
    compiled = fn.lower(model.params, ids).compile()
    flops_rate = sgemm_flops()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    logits = compiled(model.params, ids)
    logits.block_until_ready()
    seconds = time.perf_counter() - start
    assert np.isfinite(np.asarray(logits)).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    D, L, N, H = config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.head_dim
    attention_flops = 4 * length * length * H * N / 2  # per layer, causal
    weights = config.num_params() - config.vocab_size * D  # the embedding table is a lookup
    flops = 2 * weights * length + L * attention_flops
    row = {"length": length, "attention": attention, "plan": plan, "seconds": seconds, "peak_rss_mib": peak,
           "rss_before_mib": base, "xla_temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20,
           "sgemm_gflops": flops_rate / 1e9, "share": flops / seconds / flops_rate}
    if attention == "kernel":  # one layer's attention alone
        from lwm_core.attention.cpu_flash import flash_attention

        q, k, v = (jax.random.normal(jax.random.key(i), (1, length, N, H)) for i in range(3))
        attend = jax.jit(flash_attention)
        attend(q, k, v).block_until_ready()
        start = time.perf_counter()
        attend(q, k, v).block_until_ready()
        row["attention_seconds"] = time.perf_counter() - start
        row["attention_share"] = attention_flops / row["attention_seconds"] / flops_rate
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    parser.add_argument("--attention", nargs="+", choices=("kernel", "jax"), default=["kernel", "jax"],
                        help="kernel: lwm's fused CPU attention; jax: blockwise attention in plain JAX")
    parser.add_argument("--chunk", type=int, default=2048, help="query/key/FFN chunk size")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        json.dump(run_one(int(args.one[0]), args.one[1], args.chunk), sys.stdout)
        return
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device
    rows = []
    for length in args.lengths:
        for attention in args.attention:
            command = [sys.executable, __file__, "--one", str(length), attention, "--chunk", str(args.chunk)]
            out = subprocess.run(command, capture_output=True, text=True, env=env)
            if out.returncode:
                raise SystemExit(out.stderr.strip().splitlines()[-1])
            rows.append(json.loads(out.stdout))
            print(f"{length} tokens, {attention}: {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    print(f"{'tokens':>8} {'attention':>10} {'seconds':>9} {'tokens/s':>9} {'peak RSS':>10} {'XLA temp':>10} "
          f"{'RSS growth':>11} {'roofline':>9} {'attn alone':>11}")
    previous: dict[str, dict] = {}
    for r in rows:
        before = previous.get(r["attention"])
        growth = f"{r['peak_rss_mib'] / before['peak_rss_mib']:.2f}x" if before else "-"
        alone = f"{r['attention_share']:.0%}" if "attention_share" in r else "-"
        print(f"{r['length']:>8} {r['attention']:>10} {r['seconds']:>9.1f} {r['length'] / r['seconds']:>9.0f} "
              f"{r['peak_rss_mib']:>9.0f}M {r['xla_temp_mib']:>9.0f}M {growth:>11} {r['share']:>9.0%} {alone:>11}")
        previous[r["attention"]] = r
    for length in args.lengths:
        pair = {r["attention"]: r for r in rows if r["length"] == length}
        if len(pair) == 2:
            print(f"{length} tokens: the kernel {pair['jax']['seconds'] / pair['kernel']['seconds']:.1f}x plain JAX's "
                  f"tokens/s (bar: >= 3x)")
    print(f"sgemm {statistics.median(r['sgemm_gflops'] for r in rows):.0f} GFLOP/s (median of the runs); "
          "roofline: all FLOPs (weights and causal attention) over seconds, as a share of sgemm's rate")


if __name__ == "__main__":
    from lwm_cli import _malloc

    _malloc.reexec()  # glibc's allocator as the `lwm` command runs with it
    main()
