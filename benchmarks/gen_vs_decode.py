"""Image and video generation against text decoding, on the same vision model and batch.

bench-50m with the vision heads (benchmarks/README.md: vocab 32000, hidden 512, intermediate 1376,
8 layers, 8 heads, float32, random weights from seed 0, `vision=true`), one CPU device. For a batch of B
prompts, after a warm-up call of each:

- text: `LWM.generate(B prompts, --tokens)`, greedy; decode tokens/s = B x (tokens - 1) / decode
  seconds (`GenerationStats`: prefill excluded).
- image: `LWM.generate_vision(B captions, kind="image")` (classifier-free guidance at s = 5: 2B rows in
  one KV cache, 257 sampled tokens a frame); tokens/s = B x 257 / the call's seconds (its prefill of
  the short caption included: a few percent).
- video at s = 1 (the video default; lwm then skips the unconditional rows): `--frames` frames, the first
  drawn as an image (s = 5), the rest at s = 1; tokens/s = B x 257 x frames / seconds.

Reported per prompt row (what a user gets) and per model row (2B under guidance: what the hardware
does), and the ratio to text decode at the same B. A guided token costs about two text tokens (two rows)
plus top-k over 8448 vision logits instead of a greedy argmax, so ~0.5x per prompt row is the expectation;
much lower points at the sampler.

    python benchmarks/gen_vs_decode.py --batch 1,4 --reps 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_vs_hf import BENCH_50M  # noqa: E402

TOKENS_PER_FRAME = 257


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def timed(fn, reps: int) -> float:
    """Median seconds of `reps` calls (after the caller's warm-up)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, caption: str, text_prompt: list[int], b: int, args) -> tuple[int, float, float, float]:
    """(B, text decode tok/s, image tok/s, video tok/s) per prompt row, after a warm-up call of each."""
    from lwm_core.generate.decode import GenerationStats

    stats = GenerationStats()
    text = lambda: model.generate([text_prompt] * b, args.tokens, temperature=0.0, stats=stats)
    text()  # compiles
    decode_s = []
    for _ in range(args.reps):
        text()
        decode_s.append(stats.decode_seconds)
    text_tps = b * (args.tokens - 1) / statistics.median(decode_s)
    image = lambda: model.generate_vision([caption] * b, kind="image", seed=list(range(b)))
    video = lambda: model.generate_vision([caption] * b, kind="video", n_frames=args.frames, seed=list(range(b)))
    image()
    video()
    image_tps = b * TOKENS_PER_FRAME / timed(image, args.reps)
    video_tps = b * TOKENS_PER_FRAME * args.frames / timed(video, args.reps)
    return b, text_tps, image_tps, video_tps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,4", help="comma list of batch sizes B")
    parser.add_argument("--tokens", type=int, default=257, help="text tokens decoded per row (default: a frame's)")
    parser.add_argument("--frames", type=int, default=3, help="frames of the video")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    import jax

    import lwm_core

    config = lwm_core.get_config("debug", **BENCH_50M, vision=True, max_sequence_length=4096)
    model = lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="float32", seed=0)
    caption = "fireworks over a city at night"
    text_prompt = model.tokenizer.encode(lwm_core.chat_prompt(f"Describe {caption}."))
    rows = [measure(model, caption, text_prompt, int(b), args) for b in args.batch.split(",")]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, jax {jax.__version__}, python {platform.python_version()}, "
          f"load average {load:.1f}; bench-50m + vision heads, float32, median of {args.reps}")
    print(f"video: {args.frames} frames (the first at s = 5, the rest at s = 1); text: {args.tokens} greedy tokens\n")
    print("| B | text decode tok/s | image tok/s per prompt (per model row, 2B) | image / text | "
          "video tok/s per prompt | video / text |")
    print("|---|---|---|---|---|---|")
    for b, text_tps, image_tps, video_tps in rows:
        print(f"| {b} | {text_tps:,.0f} | {image_tps:,.0f} ({2 * image_tps:,.0f}) | {image_tps / text_tps:.2f} | "
              f"{video_tps:,.0f} | {video_tps / text_tps:.2f} |")


if __name__ == "__main__":
    from lwm_cli import _malloc

    _malloc.reexec()  # glibc's allocator as the `lwm` command runs with it
    main()
