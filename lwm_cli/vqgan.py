"""`lwm vqgan`: images and videos to VQGAN codes (training data for `lwm train`, or codes per input), and
codes back to videos and images."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from lwm_cli._options import (
    INPUT_PANEL,
    MODEL_PANEL,
    OUTPUT_PANEL,
    Force,
    Fps,
    MaxFrames,
    MeshSpec,
    Output,
    Seed,
    SetOptions,
    VqganSpec,
)
from lwm_cli._progress import LineView

# A group: `lwm vqgan encode|decode`, added to the root app by lwm_cli.main as every module's app is.
app = typer.Typer(name="vqgan", no_args_is_help=True,
                  help="Encode images and videos into VQGAN codes (training data for lwm train) and decode codes "
                       "back into videos and images.")

BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", metavar="FRAMES", min=1, rich_help_panel=MODEL_PANEL, show_default="8 per device",
    help="Frames per compiled VQGAN call, a multiple of the device count; frames of several inputs share a call.")]


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _need_vqgan(ctx: typer.Context, model: str | None, example: str) -> str:
    if model is None:
        raise typer.BadParameter(f"name the VQGAN, e.g. {example} (random:tiny to try the command out)", ctx=ctx,
                                 param_hint="'--model' / '-m'")
    return model


def _load_vqgan(model: str, set_options, mesh, batch_size, command: str):
    from lwm_cli._model import enable_compile_cache
    from lwm_cli._options import model_overrides
    from lwm_core import load_vqgan
    from lwm_core.parallel.mesh import check_uses_all_devices

    overrides = model_overrides(set_options, command)
    check_uses_all_devices(mesh)
    enable_compile_cache()
    return load_vqgan(model, config=overrides or None, mesh=mesh, batch_size=batch_size)


@app.command("encode")
def encode(
    ctx: typer.Context,
    output: Output,
    inputs: Annotated[Optional[list[str]], typer.Argument(
        metavar="IN...", show_default=False,
        help="Images (.png .jpg .jpeg .webp .gif), videos (.mp4 .webm .mov), folders (searched recursively) "
             "or globs (quoted ones are expanded too).")] = None,
    model: VqganSpec = None,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", metavar="FILE", rich_help_panel=INPUT_PANEL, show_default=False,
        help="Captions: a .csv (header path,caption) or .jsonl ({\"path\", \"caption\"} per line), paths relative "
             "to its folder. With IN, every input needs a row; alone, its rows are the inputs.")] = None,
    max_frames: MaxFrames = 8,
    fields: Annotated[Optional[list[str]], typer.Option(
        "--fields", metavar="FIELDS", rich_help_panel=OUTPUT_PANEL,
        show_default="[caption],vision; vision without captions",
        help="The fields of each .jsonl line, in LWM's syntax over caption and vision (\\[caption],vision: "
             "captions to video; vision,caption: video to captions); repeat for a list, from which training "
             "picks one per line.")] = None,
    chat: Annotated[bool, typer.Option(
        "--chat", rich_help_panel=OUTPUT_PANEL,
        help="LWM-Chat lines in both directions, in the prompts lwm gen and lwm chat use: \"Generate an image "
             "of CAPTION\" -> first frame, \"Generate a video of CAPTION\" -> frames, and image or video + a "
             "question -> CAPTION (needs captions and a .jsonl).")] = False,
    tasks: Annotated[Optional[str], typer.Option(
        "--tasks", metavar="image,video,describe,unconditional", rich_help_panel=OUTPUT_PANEL,
        show_default="all four",
        help="With --chat, which of its lines to write, comma-separated (unconditional: the frames alone, one "
             "input in ten, for classifier-free guidance).")] = None,
    set_options: SetOptions = None,
    mesh: MeshSpec = None,
    batch_size: BatchSize = None,
    force: Force = False,
) -> None:
    """Encode images and videos into VQGAN codes: OUT.jsonl is training data for lwm train (LWM's vision-text
    lines: caption, fields and the codes as vision), OUT.npz the codes of each input.

    A .jsonl is appended input by input: rerunning the command resumes it, skipping the inputs already in
    it (--force starts afresh); Ctrl-C stops after the current batch. An .npz is written at the end.

    [bold]lwm vqgan encode videos/ --manifest captions.csv -m LargeWorldModel/LWM-Chat-1M-Jax -o train.jsonl[/]

    [bold]lwm train configs/vision-text.toml --set data.path=train.jsonl[/]
    """
    from lwm_cli import _errors, _signals

    model = _need_vqgan(ctx, model, "-m LargeWorldModel/LWM-Chat-1M-Jax")
    with _signals.StopRequest("nothing was written") as stop:
        from lwm_core.checkpoint.atomic import check_target
        from lwm_core.errors import LWMError
        from lwm_core.vision import encode as enc

        # Everything that can be refused without the VQGAN comes first.
        path = str(output)
        kind = enc.output_kind(path)
        if kind == ".npz" and (fields or chat):
            raise LWMError(f"{'--chat' if chat else '--fields'} says what the lines of a .jsonl output hold; an .npz "
                           f"has no lines: drop it or write .jsonl")
        if tasks is not None and not chat:
            raise LWMError(f"--tasks {tasks} picks among the lines of --chat; add --chat or drop --tasks")
        task_list = enc.check_tasks(enc.CHAT_TASKS if tasks is None else tasks)
        if chat and fields:
            raise LWMError("--chat writes its own fields (prompt -> vision, vision + question -> caption); drop "
                           "--fields or --chat")
        check_target(path, kind="file", overwrite=force or kind == ".jsonl")  # an existing .jsonl is resumed
        items = enc.find_media(inputs or [], None if manifest is None else str(manifest))
        captioned = items[0].caption is not None
        if chat and not captioned:
            raise LWMError("--chat lines pair each input with its caption; give a manifest (--manifest "
                           "captions.jsonl, path and caption per row)")
        line_fields = enc.check_fields(fields or [], captioned=captioned) if kind == ".jsonl" and not chat else None
        vqgan = _load_vqgan(model, set_options, mesh, batch_size, "vqgan encode")
        fingerprint = enc.vqgan_fingerprint(vqgan)
        if kind == ".jsonl":
            enc.check_vocabulary(vqgan)
            out = enc.CodesJsonl(path, fingerprint=fingerprint, force=force)
            todo = [item for item in items if item.identity not in out.done]
            if not todo:
                _say(f"nothing to do: all {len(items)} inputs are in {path} (--force starts afresh)")
                typer.echo(path)
                return
            stop.stopping = "the inputs encoded so far are kept after the current batch"
            stop.aborted = f"the inputs encoded so far are in {path}; rerun the command to resume"
        else:
            out, todo = None, items
            stop.stopping = "stops after the current batch; nothing is written"
        results = []
        with _EncodeProgress(len(todo), len(items) - len(todo)) as progress:
            stop.at_abort(progress.close)
            try:
                for batch in enc.encode_items(vqgan, todo, max_frames=max_frames):
                    if out is not None and chat:
                        out.append([line for item, codes in batch
                                    for line in enc.chat_lines(item, codes, base=out.base, fingerprint=fingerprint,
                                                               tasks=task_list)])
                    elif out is not None:
                        out.append([enc.jsonl_line(item, codes, base=out.base, fields=line_fields,
                                                   fingerprint=fingerprint) for item, codes in batch])
                    else:
                        results += batch
                    progress.update(batch)
                    if stop():
                        break
            except LWMError:
                # Ctrl-C reaches the ffmpeg of a read in flight too, which then fails: that is the stop.
                if not stop():
                    raise
        if stop():
            where = f"{progress.done} inputs are in {path}; rerun the command to resume" if out is not None else \
                "nothing was written"
            _say(f"stopped by {stop.by} after {progress.done}/{len(items)} inputs; {where}")
            raise typer.Exit(_errors.INTERRUPTED)
        if out is None:
            enc.write_npz(path, results, meta={"vqgan": model, "fingerprint": fingerprint,
                                               "config": vqgan.config.to_dict(), "max_frames": max_frames})
        side = vqgan.config.codes_per_side
        _say(f"wrote {path} ({progress.summary()}, {side}x{side} = {side * side} codes per frame)")
        if kind == ".jsonl" and side * side != 256:
            _say(f"note: lwm train reads 256 codes per frame (LWM's VQGAN); for these, --set "
                 f"data.tokens_per_frame={side * side}")
        typer.echo(path)


class _EncodeProgress(LineView):
    """inputs done/total, frames encoded and frames/s (reading and encoding together) and an ETA by inputs;
    on a terminal a live bar, in a log one line per batch."""

    def __init__(self, todo: int, done: int):
        from lwm_cli._progress import Eta, ProgressLine

        self.line = ProgressLine("encode", total=todo + done, plain=True)
        self.todo, self.before, self.done, self.frames = todo, done, done, 0
        self.eta = Eta(todo)
        self.start = time.monotonic()

    def started(self) -> None:
        if self.done:  # a resumed output: the bar starts where the last run stopped
            self.line.update(self.done)

    def update(self, batch) -> None:
        self.done += len(batch)
        self.frames += sum(len(codes) for _, codes in batch)
        self.line.update(self.done, f"{self.frames} frames  {self.speed():.1f} frames/s  "
                                    f"{self.eta(self.done - self.before)}")

    def speed(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.frames / elapsed if elapsed > 0 else 0.0

    def summary(self) -> str:
        from lwm_core.plural import plural

        new = self.done - self.before
        text = f"{plural(new, 'input')}, {plural(self.frames, 'frame')} at {self.speed():.1f} frames/s"
        return text + (f"; {plural(self.before, 'input')} already in it" if self.before else "")


@app.command("decode")
def decode(
    ctx: typer.Context,
    output: Output,
    codes: Annotated[Path, typer.Argument(
        metavar="CODES", show_default=False,
        help="An .npz from lwm vqgan encode, a .jsonl of training lines, or a .npy of codes.")],
    model: VqganSpec = None,
    key: Annotated[Optional[str], typer.Option(
        "--key", metavar="NAME", rich_help_panel=INPUT_PANEL, show_default="the first",
        help="The .npz entry (an input's path, e.g. clips/a.mp4), or the vision key of a .jsonl line.")] = None,
    line: Annotated[Optional[int], typer.Option(
        "--line", metavar="N", min=1, rich_help_panel=INPUT_PANEL, show_default="the first",
        help="The .jsonl line (numbered from 1, as an editor shows it).")] = None,
    fps: Fps = 4.0,
    sheet: Annotated[bool, typer.Option(
        "--sheet", rich_help_panel=OUTPUT_PANEL,
        help="Write all frames as one contact sheet (an image output), row by row.")] = False,
    set_options: SetOptions = None,
    mesh: MeshSpec = None,
    batch_size: BatchSize = None,
    force: Force = False,
) -> None:
    """Decode VQGAN codes into a video (.mp4 H.264, .webm, .gif) or an image (.png, .jpg, .webp: one frame, or
    --sheet for all of them). End-of-frame and end-of-vision ids (8192, 8193) are dropped and frames split at
    them.

    [bold]lwm vqgan decode train.jsonl --line 3 -m LargeWorldModel/LWM-Chat-1M-Jax -o clip.mp4[/]
    """
    model = _need_vqgan(ctx, model, "-m LargeWorldModel/LWM-Chat-1M-Jax")
    from lwm_core.checkpoint.atomic import check_target
    from lwm_core.errors import LWMError
    from lwm_core.plural import plural
    from lwm_core.vision import encode as enc
    from lwm_core.vision.media import to_uint8

    path = str(output)
    enc.check_frames_output(path, sheet=sheet)
    check_target(path, kind="file", overwrite=force)
    stored = enc.read_codes(str(codes), key=key, line=line)
    vqgan = _load_vqgan(model, set_options, mesh, batch_size, "vqgan decode")
    fingerprint = enc.vqgan_fingerprint(vqgan)
    if stored.fingerprint is not None and stored.fingerprint != fingerprint:
        raise LWMError(f"{stored.name} was encoded by VQGAN {stored.fingerprint}, and {model} is {fingerprint}; "
                       f"decode with the VQGAN that encoded it")
    frames = enc.split_frames(stored.codes, vqgan.config.codes_per_side, where=stored.name)
    enc.write_frames(path, to_uint8(vqgan.decode(frames)), fps=fps, sheet=sheet)
    size = vqgan.config.resolution
    what = "a contact sheet of " if sheet else ""
    rate = f", {fps:g} fps" if os.path.splitext(path)[1].lower() in enc.VIDEO_OUTPUTS and not sheet else ""
    _say(f"wrote {path} ({what}{plural(len(frames), 'frame')} of {size}x{size} from {stored.name}{rate})")
    typer.echo(path)


# ------------------------------------------------------------------------------------------- train

# The shared --preset's names (tests/cli/test_cli_grammar.py holds every command to one spelling) with the
# VQGAN presets; the names are spelled out here, as importing lwm_core would slow `lwm --help`.
VqganPreset = Annotated[Optional[str], typer.Option(
    "--preset", "--card", metavar="NAME", rich_help_panel=MODEL_PANEL, show_default="world",
    autocompletion=lambda incomplete: [n for n in ("tiny", "world", "default") if n.startswith(incomplete)],
    help="VQGAN config preset: world (40x40 frames -> 10x10 codes, 512 entries: the lwm world demo), tiny "
         "(tests), default (the released LWM VQGAN's architecture); --set changes its fields.")]
TrainBatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", metavar="FRAMES", min=1, rich_help_panel=MODEL_PANEL, show_default="16",
    help="Frames per training step (--set train.batch_size=...).")]
Steps = Annotated[Optional[int], typer.Option(
    "--steps", metavar="N", min=1, rich_help_panel=MODEL_PANEL, show_default="2000",
    help="Optimizer steps (--set train.steps=...).")]

_RUN_ENTRIES = ("checkpoint", "metrics.jsonl", "vqgan")  # lwm_core.vision.train's files; a run dir holds only these


@app.command("train")
def train(
    output: Output,
    inputs: Annotated[Optional[list[str]], typer.Argument(
        metavar="DATA...", show_default=False,
        help="Images, videos, folders (searched recursively) or globs: every frame of each is a training frame, "
             "resized to the config's resolution.")] = None,
    preset: VqganPreset = None,
    set_options: SetOptions = None,
    steps: Steps = None,
    batch_size: TrainBatchSize = None,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Train a VQGAN (LWM's architecture, L1 + L2 reconstruction, codebook and commitment losses, dead-code
    restarts) on every frame of images and videos. OUT gets checkpoint/, metrics.jsonl (loss parts, held-out
    PSNR, codebook usage) and, at the end, vqgan/: the VQGAN that lwm vqgan encode -m OUT reads.

    --set sets VQGAN config fields (hidden_channels=64) and training ones (train.lr=5e-4, train.warmup=50,
    train.eval_every=100, ...). Rerunning the same command resumes from the checkpoint; --force starts afresh.
    SIGTERM or Ctrl-C saves a checkpoint and exits (130); a second Ctrl-C exits at once.

    [bold]lwm world make -o world/ --clips 300[/]

    [bold]lwm vqgan train world/ -o vqgan-world/ --steps 1000[/]
    """
    from lwm_cli import _errors, _signals

    with _signals.StopRequest("nothing was written") as stop:
        from lwm_core.config import parse_set_options
        from lwm_core.errors import LWMError
        from lwm_core.vision import train as vt
        from lwm_core.vision.config import get_vqgan_config

        model_sets, train_sets = {}, {}
        for key, value in parse_set_options(set_options or ()).items():
            section, dot, name = key.partition(".")
            if dot and section not in ("model", "train"):
                raise LWMError(f"--set {key}=...: lwm vqgan train sets VQGAN config fields (--set hidden_channels=64) "
                               f"and training fields (--set train.lr=5e-4); {key} is neither")
            (train_sets if section == "train" and dot else model_sets)[name if dot else key] = value
        for name, value in (("steps", steps), ("batch_size", batch_size)):  # the options win over --set train.*
            if value is not None:
                train_sets[name] = value
        if seed or "seed" not in train_sets:
            train_sets["seed"] = seed
        config = get_vqgan_config(preset or "world", **model_sets)
        train_config = vt.apply_train_overrides(vt.VQGANTrainConfig(), train_sets)
        if not inputs:
            raise LWMError("no inputs: name image or video files, folders or globs to train on, e.g. world/")
        out = str(output)
        _check_run_dir(out, force=force)
        saved = None if force else vt.read_checkpoint_meta(out)
        if saved is not None:  # another config is refused before the data is read
            vt.check_resume(saved, config, train_config, None, out)
        from lwm_cli._progress import ProgressLine

        with ProgressLine("read", total=0) as reading:
            stop.at_abort(reading.close)
            data = vt.read_frames(inputs, config.resolution, eval_fraction=train_config.eval_fraction,
                                  seed=train_config.seed, on_file=lambda i, n: reading.update(i, f"of {n} files"))
        summary = data.summary()
        _say(f"{summary['train_frames']} training frames, {summary['eval_frames']} held out "
             f"({summary['eval_files']} of {summary['files']} files) at {config.resolution}x{config.resolution}; "
             f"{config.codes_per_side}x{config.codes_per_side} codes of {config.num_embeddings} per frame")
        if force:
            _clear_run_dir(out)
        stop.stopping = "a checkpoint is saved after the current step"
        stop.aborted = "the last checkpoint (if any) is intact; run the same command to resume"
        with _TrainProgress(train_config.steps) as progress:
            stop.at_abort(progress.close)
            result = vt.train_vqgan(config, train_config, data, out, should_stop=stop, on_metrics=progress.metrics,
                                    on_event=progress.event)
        if result.stopped:
            _say(f"stopped by {stop.by} at step {result.step}; checkpoint saved in {os.path.join(out, vt.CHECKPOINT)}; "
                 f"run the same command to resume")
            raise typer.Exit(_errors.INTERRUPTED)
        ev = result.eval or {}
        _say(f"wrote {result.final} (step {result.step}; held-out PSNR {ev.get('eval_psnr', float('nan')):.2f} dB, "
             f"{ev.get('eval_codes_used', 0)}/{config.num_embeddings} codes used, perplexity "
             f"{ev.get('eval_perplexity', float('nan')):.1f})")
        typer.echo(result.final)


def _check_run_dir(out: str, *, force: bool) -> None:
    """OUT is new, or a run of this command (resumed, or with --force replaced); anything else is refused, so
    that --force can never delete a folder that this command did not write."""
    from lwm_core.errors import LWMError

    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise LWMError(f"output {out} exists and is not a folder; give a new folder (or a training run's) to -o")
    foreign = [name for name in sorted(os.listdir(out)) if name not in _RUN_ENTRIES and ".lwm-tmp-" not in name]
    if foreign:
        raise LWMError(f"output {out} holds {foreign[0]}, which lwm vqgan train does not write; give a new folder or "
                       f"a training run's to -o")


def _clear_run_dir(out: str) -> None:
    import shutil

    if not os.path.isdir(out):
        return
    for name in os.listdir(out):
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


class _TrainProgress(LineView):
    """step/steps with loss, PSNR and codebook usage: a live bar on a terminal, a line per log in a log."""

    def __init__(self, steps: int):
        from lwm_cli._progress import Eta, ProgressLine

        self.line = ProgressLine("vqgan", total=steps, plain=True)
        self.steps, self.eta, self.first = steps, Eta(steps), None
        self.psnr = ""


    def event(self, text: str) -> None:
        self.line.console.print(text, markup=False)

    def metrics(self, record: dict) -> None:
        step = record["step"]
        if "eval_psnr" in record:
            self.psnr = f"  held-out PSNR {record['eval_psnr']:.2f} dB, {record['eval_codes_used']} codes"
            self.line.update(step, self.psnr)
            return
        if self.first is None:  # the ETA counts from the first step of this run (a resumed one starts late)
            from lwm_cli._progress import Eta

            self.first, self.eta = step, Eta(self.steps - step)
        self.line.update(step, f"loss {record['loss']:.4f}  l2 {record['l2']:.4f}  codes {record['codes_used']}  "
                               f"{self.eta(step - self.first)}{self.psnr}")
