"""Needle eval throughput on CPU: what the harness of `lwm needle eval` costs against the model's own prefill.

A small LLaMA (long_context_cpu.py's tiny model with one layer: hidden 256, MLP 688, 1 layer, 4 heads,
float32, random weights from seed 0; vocabulary 4096, the project's shipped tokenizer), one CPU device. For each length
(4K, 16K, 32K by default) it makes needle rows with `lwm_core.needle.make` (single task, prose
haystack, 64 new tokens) and runs them as `lwm needle eval` does: `needle_eval.run` over
`generate_batch`, batches of `--batch-tokens` (32768, the CLI's default), each batch's result rows
appended to a results file. Side by side, interleaved (eval, plain, eval, plain, ...) after a warm-up
eval pass that compiles the length's shapes, medians of `--reps`:

- plain prefill: the same batches' prompts (tokenized beforehand) through `LWM.generate(prompts, 1)`,
  timed by the wall clock around the call: the model's prefill through the public API, same tokens,
  dtype, mesh and padding (one new token: the one prefill samples; 1 and 64 new tokens round to the
  same decode shapes, so the compiled prefill is the eval's own).
- eval prefill: the `prefill_tokens_per_s` the eval's result rows record (prompt tokens over prefill
  seconds, as `LWM.generate(stats=)` measures them). Bar: >= 0.9 of the plain prefill (the harness
  costs at most ~10%).
- eval end to end: prompt tokens over the wall time of the whole eval pass (tokenizing, prefill, up to
  64 greedy new tokens, scoring, writing results): what a run's throughput is; and the share of that
  pass spent outside `LWM.generate` (the harness proper).
- cold: the eval prefill of the warm-up pass, which compiled the shapes (what a run's first batch of
  each length records).

Then the wall time to make a 128K dataset (`lwm needle make --ctx 128K --depths 10 --task single` with the
project's tokenizer and the prose haystack), in process.

Usage: python benchmarks/needle_throughput.py [--ctx 4K,16K,32K] [--depths 1] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# long_context_cpu.py's tiny model with one layer of its two: bench-50m (benchmarks/README.md) prefills 32K
# tokens in minutes on 2 cores, this one in ~15 s. The harness's cost is the same whatever the model, so
# the faster the model, the larger its share: a small model is the strict test.
MODEL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=1, num_attention_heads=4)


def cpu_name() -> str:
    """`lscpu`'s Model name (the CPU kind decides XLA's speed), or the platform's guess."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown CPU")


def build_model(max_length: int, tokenizer):
    import lwm_core

    config = lwm_core.get_config("debug", **MODEL, vocab_size=tokenizer.vocab_size, max_sequence_length=max_length)
    return lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="float32", tokenizer=tokenizer,
                               seed=0)


def eval_pass(model, rows, directory: str, batch_tokens: int) -> dict:
    """One `lwm needle eval` over `rows` into `directory` -> its wall seconds, those inside `LWM.generate`,
    those of prefill, and the prompt tokens."""
    from lwm_core.needle import eval as needle_eval

    needle_eval.open_run(directory, needle_eval.dataset_digest(rows), force=True)
    path = os.path.join(directory, needle_eval.RESULTS)
    results, generating = [], 0.0
    start = time.perf_counter()
    for scored in needle_eval.run(lambda b: needle_eval.generate_batch(model, b), rows, batch_tokens):
        needle_eval.append_results(path, scored)
        results += scored
        generating += scored[0]["seconds"]  # the batch's LWM.generate, the same in each of its rows
    wall = time.perf_counter() - start
    assert len(results) == len(rows)
    # Each batch's rows share its speed: a row's own tokens over it sum to the batch's prefill seconds.
    return {"wall": wall, "generate": generating, "tokens": sum(r["length"] for r in results),
            "prefill": sum(r["length"] / r["prefill_tokens_per_s"] for r in results)}


def plain_pass(model, batches: list[list[list[int]]]) -> float:
    """Seconds of `generate(prompts, 1)` over the batches' prompts: the prefill through the public API."""
    start = time.perf_counter()
    for prompts in batches:
        model.generate(prompts, 1)
    return time.perf_counter() - start


def make_seconds(tokenizer, haystack, ctx: int, depths: str) -> tuple[float, int, int]:
    """Wall seconds to make (and serialize) the rows of `--ctx ctx --depths depths --task single`."""
    from lwm_core.needle import make as making
    from lwm_core.needle.config import MakeConfig, parse_depths

    config = MakeConfig(tasks=("single",), ctx=(ctx,), depths=parse_depths(depths))
    start = time.perf_counter()
    making.check(config, tokenizer)
    lines = [making.row_line(row) for row in making.make_rows(config, tokenizer, haystack)]
    return time.perf_counter() - start, len(lines), sum(map(len, lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ctx", default="4K,16K,32K", help="lengths (lwm needle make's --ctx)")
    parser.add_argument("--depths", default="1", help="needle depths per length (--depths; 1: 50%%)")
    parser.add_argument("--new", type=int, default=64, help="max new tokens per row (the needle default)")
    parser.add_argument("--batch-tokens", type=int, default=32768, help="lwm needle eval's --batch-tokens")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each side (medians)")
    parser.add_argument("--make-ctx", default="128K", help="the dataset length whose making is timed")
    parser.add_argument("--make-depths", default="10", help="its --depths")
    args = parser.parse_args()

    import jax

    from lwm_core.generate.decode import bucket
    from lwm_core.needle import eval as needle_eval
    from lwm_core.needle import make as making
    from lwm_core.needle.config import MakeConfig, parse_ctx, parse_depths
    from lwm_core.needle.haystack import read_haystack
    from lwm_core.plural import plural
    from lwm_core.tokenizer import load_tokenizer

    print(f"{cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__} ({jax.default_backend()}, "
          f"{len(jax.devices())} device), python {platform.python_version()}; load average "
          f"{os.getloadavg()[0]:.2f}", file=sys.stderr)
    tokenizer, haystack = load_tokenizer(), read_haystack("prose")
    lengths = parse_ctx(args.ctx)
    model = build_model(max(lengths), tokenizer)

    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for ctx in lengths:
            config = MakeConfig(tasks=("single",), ctx=(ctx,), depths=parse_depths(args.depths),
                                max_new_tokens=args.new)
            rows = list(making.make_rows(config, tokenizer, haystack))
            batches = [[tokenizer.encode(r["prompt"]) for r in batch]
                       for batch in needle_eval.batches(rows, args.batch_tokens)]
            directory = os.path.join(tmp, str(ctx))
            cold = eval_pass(model, rows, directory, args.batch_tokens)  # compiles this length's shapes
            if bucket(args.new) != bucket(1):  # then plain's decode has shapes of its own: compile them untimed
                plain_pass(model, batches)
            evals, plains = [], []
            for rep in range(args.reps):
                cpu, wall = time.process_time(), time.perf_counter()
                if rep % 2:  # alternate which side goes first, so a trend in the load favours neither
                    plains.append(plain_pass(model, batches))
                evals.append(eval_pass(model, rows, directory, args.batch_tokens))
                if not rep % 2:
                    plains.append(plain_pass(model, batches))
                cores = (time.process_time() - cpu) / (time.perf_counter() - wall)  # ~2 on 2 idle cores
                print(f"{ctx} rep {rep}: eval {evals[-1]['wall']:.3f} s (prefill {evals[-1]['prefill']:.3f} s), "
                      f"plain {plains[-1]:.3f} s; {cores:.2f} cores used, load average {os.getloadavg()[0]:.2f}",
                      file=sys.stderr)
            tokens = cold["tokens"]
            figures.append({"ctx": ctx, "rows": len(rows), "batches": len(batches), "tokens": tokens,
                            "plain": tokens / statistics.median(plains),
                            "eval": tokens / statistics.median(e["prefill"] for e in evals),
                            # each repetition's pair, measured back to back: steadier than a ratio of medians
                            "ratio": statistics.median(p / e["prefill"] for p, e in zip(plains, evals)),
                            "e2e": tokens / statistics.median(e["wall"] for e in evals),
                            "harness": statistics.median(1 - e["generate"] / e["wall"] for e in evals),
                            "cold": tokens / cold["prefill"]})
    seconds, count, size = make_seconds(tokenizer, haystack, parse_ctx(args.make_ctx)[0], args.make_depths)

    print(f"\n{cpu_name()}, {os.cpu_count()} cores, jax {jax.__version__}; model: hidden {MODEL['hidden_size']}, "
          f"{plural(MODEL['num_hidden_layers'], 'layer')}, {MODEL['num_attention_heads']} heads, vocab "
          f"{tokenizer.vocab_size}, float32; {args.new} new tokens, --batch-tokens {args.batch_tokens}, medians of "
          f"{args.reps}; load average now {os.getloadavg()[0]:.2f}")
    print(f"{'ctx':>6} {'rows':>4} {'batches':>7} {'prompt tok':>10} {'plain prefill':>13} {'eval prefill':>12} "
          f"{'ratio':>6} {'bar':>7} {'met':>3} {'eval e2e':>9} {'harness':>7} {'cold eval':>9}")
    for f in figures:
        print(f"{f['ctx']:>6} {f['rows']:>4} {f['batches']:>7} {f['tokens']:>10} {f['plain']:>13.0f} "
              f"{f['eval']:>12.0f} {f['ratio']:>6.3f} {'>= 0.9':>7} {'yes' if f['ratio'] >= 0.9 else 'NO':>3} "
              f"{f['e2e']:>9.0f} {f['harness']:>7.1%} {f['cold']:>9.0f}")
    print("(tokens/s. plain: generate(prompts, 1), wall clock; eval prefill: the result rows' prefill_tokens_per_s; "
          "ratio: eval prefill / plain, median of the back-to-back pairs; e2e: prompt tokens over the whole eval "
          "pass; harness: its share outside LWM.generate; cold eval: the warm-up pass's prefill, compiling)")
    print(f"make --ctx {args.make_ctx} --depths {args.make_depths} --task single (prose, shipped tokenizer): "
          f"{seconds:.1f} s for {plural(count, 'row')} ({seconds / count:.2f} s a row, {size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    from lwm_cli import _malloc

    _malloc.reexec()  # glibc's allocator as the `lwm` command runs with it
    main()
