"""`lwm gen image|video`: images and videos from text prompts with a vision model (LWM-Chat-*), its VQGAN
codes sampled with classifier-free guidance (lwm_core.generate.vision) and decoded to pixels.

stdout carries the paths written, one per line, as each output is complete; the loading status and the
per-frame progress go to stderr. Several prompts (or `-`: one per line on stdin) give numbered outputs:
`-o out.mp4` becomes out-1.mp4, out-2.mp4, ... (zero-padded to the count's width: out-01 .. out-12), in
the order of the prompts; one prompt writes OUT itself.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Annotated

import typer

from lwm_cli._options import (
    SAMPLING_PANEL,
    DTypeOption,
    Force,
    Fps,
    MeshSpec,
    ModelSpec,
    ModelVqgan,
    Output,
    Preset,
    QuantizeOption,
    Seed,
    SetOptions,
    Temperature,
    TokenizerPath,
    TopK,
    shown_default,
)
from lwm_cli._progress import LineView

app = typer.Typer(name="gen", no_args_is_help=True,
                  help="Generate images and videos from text with a vision model (LWM-Chat-*).")

# None: lwm_core picks by backend.
GenDType = shown_default(DTypeOption, "float32 on CPU, bfloat16 on GPU/TPU")
GenModel = shown_default(ModelSpec, "lwm-demo-vision, the built-in demo (lwm models)")


def _check_cfg_scale(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"cfg_scale must be a finite number >= 0 (1: no guidance), got {value}")
    return value


Prompts = Annotated[list[str], typer.Argument(
    metavar="PROMPT", show_default=False,
    help="What to draw, e.g. \"fireworks over the city\"; several give numbered outputs. - reads one prompt "
         "per line from stdin.")]
CfgScale = Annotated[float, typer.Option(
    "--cfg-scale", metavar="S", callback=_check_cfg_scale, rich_help_panel=SAMPLING_PANEL,
    help="Classifier-free guidance: logits uncond + S (cond - uncond); 1 turns it off, larger follows the prompt "
         "more closely.")]
# None: the model's own defaults (a vision_sampling.json beside its weights, as lwm-demo-vision has), else the
# original's, per kind.
_OWN = "the model's own (vision_sampling.json), else the original's"
ImageCfg, ImageTopK, ImageTemperature = (shown_default(CfgScale, f"{_OWN}: 5"), shown_default(TopK, f"{_OWN}: 8192"),
                                         shown_default(Temperature, f"{_OWN}: 1"))
VideoCfg, VideoTopK, VideoTemperature = (shown_default(CfgScale, f"{_OWN}: 1"), shown_default(TopK, f"{_OWN}: 100"),
                                         shown_default(Temperature, f"{_OWN}: 1"))
Beams = Annotated[int, typer.Option(
    "--beams", metavar="W", min=1, rich_help_panel=SAMPLING_PANEL, show_default=f"{_OWN}: 1",
    help="Beam search: keep the W most likely code sequences of each prompt and draw the likeliest (deterministic: "
         "--top-k, -t and --seed play no part); 1 samples.")]
BatchSize = Annotated[int, typer.Option(
    "--batch-size", metavar="N", min=1, rich_help_panel=SAMPLING_PANEL,
    help="Prompts generated together. Each output depends on its prompt and the seed only, not on the batch.")]


@app.command("image")
def image(
    ctx: typer.Context,
    prompts: Prompts,
    output: Output,
    model: GenModel = None,
    vqgan: ModelVqgan = None,
    tokenizer: TokenizerPath = None,
    preset: Preset = None,
    set_options: SetOptions = None,
    mesh: MeshSpec = "1,-1,1,1",
    dtype: GenDType = None,
    quantize: QuantizeOption = None,
    cfg_scale: ImageCfg = None,
    top_k: ImageTopK = None,
    temperature: ImageTemperature = None,
    beams: Beams = None,
    seed: Seed = 0,
    batch_size: BatchSize = 4,
    force: Force = False,
) -> None:
    """Draw an image of each prompt: OUT.png (or .jpg, .webp).

    [bold]lwm gen image "fireworks over the city" -m LargeWorldModel/LWM-Chat-1M-Jax -o fireworks.png[/]

    The model draws 16x16 VQGAN codes after LWM's "Generate an image of PROMPT"; the VQGAN makes the pixels.

    Defaults are the model's own where its directory has a vision_sampling.json (lwm-demo-vision does), else the
    original's: guidance 5, top-k 8192 (every code), temperature 1.
    """
    _generate(ctx, "image", prompts, output, model=model, vqgan=vqgan, tokenizer=tokenizer, preset=preset,
              set_options=set_options, mesh=mesh, dtype=dtype, quantize=quantize, cfg_scale=cfg_scale, top_k=top_k,
              temperature=temperature, beams=beams, seed=seed, batch_size=batch_size, force=force, n_frames=1, fps=4.0)


@app.command("video")
def video(
    ctx: typer.Context,
    prompts: Prompts,
    output: Output,
    model: GenModel = None,
    vqgan: ModelVqgan = None,
    tokenizer: TokenizerPath = None,
    preset: Preset = None,
    set_options: SetOptions = None,
    mesh: MeshSpec = "1,-1,1,1",
    dtype: GenDType = None,
    quantize: QuantizeOption = None,
    n_frames: Annotated[int, typer.Option(
        "--n-frames", metavar="N", min=1, rich_help_panel=SAMPLING_PANEL,
        help="Frames of each video (257 tokens each).")] = 8,
    cfg_scale: VideoCfg = None,
    top_k: VideoTopK = None,
    temperature: VideoTemperature = None,
    beams: Beams = None,
    seed: Seed = 0,
    batch_size: BatchSize = 4,
    fps: Fps = 4.0,
    force: Force = False,
) -> None:
    """Make a video of each prompt: OUT.mp4 (H.264, yuv420p; or .mov, .webm, .gif).

    [bold]lwm gen video "fireworks over the city" -m LargeWorldModel/LWM-Chat-1M-Jax --n-frames 8 -o fw.mp4[/]

    As the original, the first frame is drawn as an image (the image defaults: the model's own, else guidance 5,
    top-k 8192, temperature 1).

    The other frames follow "Generate a video of PROMPT" and that first frame, with --cfg-scale, --top-k, -t
    (or --beams).
    """
    _generate(ctx, "video", prompts, output, model=model, vqgan=vqgan, tokenizer=tokenizer, preset=preset,
              set_options=set_options, mesh=mesh, dtype=dtype, quantize=quantize, cfg_scale=cfg_scale, top_k=top_k,
              temperature=temperature, beams=beams, seed=seed, batch_size=batch_size, force=force, n_frames=n_frames,
              fps=fps)


class _Stopped(Exception):
    """Raised from the per-frame callback when Ctrl-C asked to stop."""


def _generate(ctx: typer.Context, kind: str, prompts: list[str], output, *, model, vqgan, tokenizer, preset,
              set_options, mesh, dtype, quantize, cfg_scale, top_k, temperature, beams, seed, batch_size, force,
              n_frames, fps) -> None:
    from lwm_cli import _errors, _signals
    from lwm_core import builtin

    model = model or builtin.default(f"gen {kind}")
    prompts = _read_prompts(ctx, prompts)
    command = f"gen {kind}"
    with _signals.StopRequest("nothing was written") as stop:
        from lwm_cli._model import ModelOptions, load
        from lwm_cli._options import model_overrides
        from lwm_core.checkpoint.atomic import check_target
        from lwm_core.errors import LWMError
        from lwm_core.generate import vision as gv
        from lwm_core.loading import resolve_spec
        from lwm_core.parallel.mesh import check_uses_all_devices
        from lwm_core.plural import plural
        from lwm_core.vision import media
        from lwm_core.vision.loading import resolve_config, resolve_vqgan

        # Everything that can be refused comes before the weights: outputs, model kind, VQGAN grid.
        paths = output_paths(str(output), len(prompts))
        allowed = media.WRITE_IMAGE_FORMATS if kind == "image" else media.WRITE_VIDEO_CODECS
        ext = os.path.splitext(paths[0])[1].lower()
        if ext not in allowed:
            raise LWMError(f"cannot write {output}: unsupported extension {ext or '(none)'!r}; lwm gen {kind} writes "
                           f"{' '.join(allowed)}")
        for path in paths:
            check_target(path, kind="file", overwrite=force)
        check_uses_all_devices(mesh)
        options = ModelOptions(spec=model, tokenizer=None if tokenizer is None else str(tokenizer), preset=preset,
                               overrides=tuple(set_options or ()), mesh=mesh, dtype=dtype, command=command,
                               quantize=quantize and quantize.value)
        resolved = resolve_spec(model, config=preset, tokenizer=options.tokenizer,
                                overrides=model_overrides(options.overrides, command))
        if not resolved[1].vision:
            raise LWMError(f"model {model} is text-only (config vision=false); lwm gen needs a vision model such as "
                           f"LargeWorldModel/LWM-Chat-1M-Jax (random:tiny --set vision=true to try the command out)")
        gv.check_frames(n_frames)
        vqgan_spec, vqgan_config = (vqgan, None) if vqgan is not None else gv.vqgan_beside(model, resolved[0])
        vqgan_source = resolve_vqgan(vqgan_spec)
        vqgan_settings = resolve_config(vqgan_source, vqgan_config)
        gv.check_vqgan(vqgan_settings, vqgan_spec)
        side = vqgan_settings.codes_per_side
        # the prompts and frames (of the VQGAN's grid) fit the context
        gv.prompt_rows(resolved[1], resolved[2], prompts, n_frames, frame_side=side)

        if builtin.is_builtin_name(model):
            _outside_the_world(model, prompts, kind)
        lm = load(options, seed=seed, resolved=resolved)
        codec = _load_vqgan(vqgan_source, vqgan_config, lm.mesh, seed)
        stop.stopping = "stops after the current frame; the outputs written so far are kept"
        stop.aborted = "the outputs written so far are complete; the others were not written"
        batch = min(batch_size, len(prompts))
        written = 0
        progress = _Progress(kind, len(prompts), n_frames)

        def on_frame(index, tokens):
            progress.frame(index)
            if stop():
                raise _Stopped

        with progress:
            stop.at_abort(progress.close)
            try:
                for start in range(0, len(prompts), batch):
                    rows = prompts[start:start + batch]
                    # The last batch of several is padded with its last prompt to the batch size: one shape to
                    # compile. Outputs do not depend on the batch, so the padding changes nothing but time.
                    padded = rows + rows[-1:] * (batch - len(rows)) if start else rows
                    progress.batch(start, len(rows))
                    codes = lm.generate_vision(padded, kind=kind, n_frames=n_frames, cfg_scale=cfg_scale, top_k=top_k,
                                               temperature=temperature, beams=beams, seed=seed,
                                               codebook_size=codec.config.num_embeddings, frame_side=side,
                                               on_frame=on_frame)[:len(rows)]
                    frames = media.to_uint8(codec.decode(codes))  # (B, F, R, R, 3)
                    for i, video_frames in enumerate(frames):
                        path = paths[start + i]
                        if kind == "image":
                            media.write_image(path, video_frames[0])
                        else:
                            media.write_video(path, video_frames, fps=fps)
                        written += 1
                        typer.echo(path)
                    if stop():
                        raise _Stopped
            except _Stopped:
                progress.close()
                done = f"{written} of {plural(len(prompts), 'output')} written, each complete" if written else \
                    "nothing was written"
                _say(f"stopped by {stop.by}; {done}")
                raise typer.Exit(_errors.INTERRUPTED) from None
        size = codec.config.resolution
        what = "image" if kind == "image" else f"{plural(n_frames, 'frame')} at {fps:g} fps"
        _say(f"wrote {plural(written, kind)} ({what}, {size}x{size}) in {progress.elapsed():.1f}s")


def _read_prompts(ctx: typer.Context, prompts: list[str]) -> list[str]:
    """The PROMPT arguments, `-` replaced by stdin's non-blank lines; each checked to be non-empty text."""
    from lwm_core.text import check_text, decode_utf8

    out: list[str] = []
    for prompt in prompts:
        if prompt == "-":
            if sys.stdin.isatty():
                raise typer.BadParameter("- reads prompts from stdin, but stdin is a terminal; pipe them in, one per "
                                         "line", ctx=ctx, param_hint="PROMPT")
            out += [line.strip() for line in decode_utf8(sys.stdin.buffer.read(), "stdin").splitlines()
                    if line.strip()]
            continue
        check_text(prompt, "the PROMPT argument")
        if not prompt.strip():
            raise typer.BadParameter("a prompt is empty; say what to draw", ctx=ctx, param_hint="PROMPT")
        out.append(prompt.strip())
    if not out:
        raise typer.BadParameter("no prompts on stdin; pipe one per line", ctx=ctx, param_hint="PROMPT")
    return out


def output_paths(output: str, n: int) -> list[str]:
    """OUT for one prompt; for several OUT's stem with -1, -2, ... before the extension, zero-padded to the
    width of n (out-01 .. out-12), so that the files sort in the order of the prompts."""
    if n == 1:
        return [output]
    stem, ext = os.path.splitext(output)
    width = len(str(n))
    return [f"{stem}-{i:0{width}d}{ext}" for i in range(1, n + 1)]


def _load_vqgan(source, config, mesh, seed: int):
    from lwm_core import load_vqgan

    return load_vqgan(source, config=config, mesh=mesh, seed=seed)


def _outside_the_world(model: str, prompts: list[str], kind: str) -> None:
    """A note on stderr for each prompt that the demo model's world has no caption for: it still draws one
    (what it makes of the words it knows), but it knows only shapes, motions and fireworks."""
    from lwm_core.errors import LWMError
    from lwm_core.world import parse_caption

    for prompt in prompts:
        try:
            parse_caption(prompt)
        except LWMError as e:
            _say(f"note: {model} knows only its synthetic world, and {prompt!r} is outside it ({e}); the {kind} shows "
                 f"what it makes of that. Pass a real model with -m for anything else")


def _say(text: str) -> None:
    print(text, file=sys.stderr)


class _Progress(LineView):
    """Frames done of all outputs, on a progress line on stderr (a live bar on a terminal, a line per frame in
    a log), with the seconds per frame."""

    def __init__(self, kind: str, n_prompts: int, n_frames: int):
        from lwm_cli._progress import ProgressLine

        self.n_prompts, self.n_frames = n_prompts, n_frames
        self.line = ProgressLine(kind, total=n_prompts * n_frames, plain=True)
        self.done = 0
        self.rows = (0, 1)  # the batch being generated: its first prompt's index, its prompts
        self.start = self.last = time.monotonic()


    def batch(self, start: int, rows: int) -> None:
        self.rows = (start, rows)

    def frame(self, index: int) -> None:
        """Frame `index` of the current batch is done."""
        now = time.monotonic()
        start, rows = self.rows
        self.done += rows
        which = f"prompt {start + 1}" if rows == 1 else f"prompts {start + 1}-{start + rows}"
        self.line.update(self.done, f"{which} of {self.n_prompts}, frame {index + 1}/{self.n_frames}, "
                                    f"{now - self.last:.1f}s")
        self.last = now

    def elapsed(self) -> float:
        return time.monotonic() - self.start
