"""`lwm world`: the synthetic video world (lwm_core.world): a directory of captioned clips to train the demo
models on, offline, and one clip of a caption."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from lwm_cli._options import INPUT_PANEL, OUTPUT_PANEL, Force, Fps, Output, Seed

# A group: `lwm world make|show`, added to the root app by lwm_cli.main as every module's app is.
app = typer.Typer(name="world", no_args_is_help=True,
                  help="Make a synthetic video world: seeded clips of shapes, motions and fireworks, each with the "
                       "caption it shows (training data that needs no download).")

# The limits are lwm_core.world.render's (MIN_FRAMES..., not imported: `lwm --help` must not import lwm_core).
Frames = Annotated[int, typer.Option(
    "--frames", metavar="F", min=8, max=256, rich_help_panel=OUTPUT_PANEL,
    help="Frames per clip (8 to 256).")]
Layout = Annotated[str, typer.Option(
    "--layout", metavar="anywhere|centred|canonical", rich_help_panel=OUTPUT_PANEL,
    help="Where things stand: anywhere they fit; centred (each thing's path and a single burst about the middle "
         "of the frame, the rest drawn as anywhere); or canonical (one clip per caption: upright, one size and "
         "speed, in the middle; the world lwm-demo-vision's recipe trains on).")]
Size = Annotated[int, typer.Option(
    "--size", metavar="PIXELS", min=32, max=1024, rich_help_panel=OUTPUT_PANEL,
    help="Width and height of the frames (32 to 1024).")]


@app.command("make")
def make(
    output: Output,
    clips: Annotated[int, typer.Option(
        "--clips", metavar="N", min=1, rich_help_panel=INPUT_PANEL,
        help="How many clips; the grammar's scenes in turn (6 of 10 a moving thing, 1 fireworks, 3 fireworks over "
             "a thing), each once before any comes again.")] = 1000,
    kinds: Annotated[str, typer.Option(
        "--kinds", metavar="thing,fireworks,over", rich_help_panel=INPUT_PANEL,
        help="Which kinds of scene, comma-separated: a thing alone (still or moving), fireworks alone, fireworks "
             "over a thing; the clips keep the others' proportions.")] = "thing,fireworks,over",
    frames: Frames = 16,
    size: Size = 64,
    layout: Layout = "anywhere",
    fps: Fps = 8,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Write a world: OUT/clips/00000.mp4 ... (H.264) and OUT/captions.jsonl (file, caption, seed and the
    scene's fields per clip). The same arguments give the same pixels; the first N clips of a bigger world
    are those of a world of N.

    [bold]lwm world make -o world/ --clips 2000[/]
    """
    from lwm_cli import _errors, _signals

    with _signals.StopRequest("nothing was written") as stop:
        from lwm_cli._progress import ProgressLine
        from lwm_core.checkpoint.atomic import check_target
        from lwm_core.world.dataset import check_kinds, write_world

        kind_list = check_kinds(kinds)
        path = str(output)
        check_target(path, kind="dir", overwrite=force)
        stop.stopping = "stops after the current clip; nothing is written"
        with ProgressLine("world", total=clips) as progress:
            stop.at_abort(progress.close)
            done = write_world(path, clips, seed=seed, frames=frames, size=size, layout=layout, kinds=kind_list,
                               fps=fps, overwrite=force,
                               on_clip=lambda i: progress.update(i + 1), stop=stop)
        if not done:
            print(f"stopped by {stop.by}; nothing was written", file=sys.stderr)
            raise typer.Exit(_errors.INTERRUPTED)
        print(f"wrote {path} ({clips} clips of {frames} frames, {size}x{size})", file=sys.stderr)
        typer.echo(path)


@app.command("show")
def show(
    caption: Annotated[str, typer.Argument(
        metavar="CAPTION", show_default=False,
        help="What to show, in the world's grammar: 'a red circle moving left', 'green fireworks', 'fireworks "
             "over a blue square'.")],
    output: Output,
    frames: Frames = 16,
    size: Size = 64,
    layout: Layout = "anywhere",
    fps: Fps = 8,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Render one caption into a video (.mp4 .mov .webm .gif); its scene and seed are those a world's clip of the
    same caption and seed shows.

    [bold]lwm world show "a red circle moving left" -o clip.mp4[/]
    """
    from lwm_core.checkpoint.atomic import check_target
    from lwm_core.vision.media import write_video
    from lwm_core.world import parse_caption, render

    scene = parse_caption(caption)  # a caption outside the grammar: one line naming its words
    path = str(output)
    check_target(path, kind="file", overwrite=force)
    write_video(path, render(scene, seed, frames=frames, size=size, layout=layout), fps=fps)
    typer.echo(path)
