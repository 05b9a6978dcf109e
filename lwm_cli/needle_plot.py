"""`lwm needle plot RESULTS_DIR`: redraw a needle run's heatmap from its results.jsonl, or compare two runs.

Registered in the `lwm needle` group by lwm_cli/needle.py. stdout carries the path written, nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lwm_cli._options import OUTPUT_PANEL, Force, Output, shown_default


def check_threshold(value: float) -> float:
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise typer.BadParameter(f"threshold must be in 0..1, got {value}")
    return value


# `lwm needle eval --threshold` means the same; when it comes, this declaration moves to _options.py.
Threshold = Annotated[float, typer.Option(
    "--threshold", metavar="ACCURACY", callback=check_threshold, rich_help_panel=OUTPUT_PANEL,
    help="Effective context: the longest length whose accuracy, and that of every shorter one, "
         "reaches this.")]
HeatmapOutput = shown_default(Output, "RESULTS_DIR/heatmap.png, redrawn without --force")


def plot(
    results_dir: Annotated[Path, typer.Argument(
        metavar="RESULTS_DIR", show_default=False,
        help="A directory that lwm needle eval -o wrote (results.jsonl, summary.json).")],
    other: Annotated[Optional[Path], typer.Option(
        "--compare", metavar="DIR", rich_help_panel=OUTPUT_PANEL, show_default=False,
        help="A second run's directory, drawn to the right of RESULTS_DIR.")] = None,
    output: HeatmapOutput = None,
    force: Force = False,
    threshold: Threshold = 0.85,
) -> None:
    """Draw the heatmap of a needle run (depth x context length, coloured by accuracy) from its
    results.jsonl; with --compare, two runs side by side.

    [bold]lwm needle plot runs/lwm-1m[/]    [bold]lwm needle plot runs/a --compare runs/b -o a-vs-b.png[/]
    """
    from lwm_core.checkpoint.atomic import check_target
    from lwm_core.needle import plot as needle_plot

    runs = [_load(results_dir)] + ([_load(other)] if other is not None else [])
    # The default output is the run's own heatmap.png, a drawing of results.jsonl that eval wrote and
    # this command exists to redraw; an output the user names follows the usual --force rule.
    target = check_target(str(output or results_dir / "heatmap.png"), kind="file",
                          overwrite=force or output is None)
    if other is None:
        (rows, name), = runs
        needle_plot.heatmap(rows, target, title=f"Needle in a haystack: {name}", threshold=threshold)
    else:
        names = [name for _, name in runs]
        if names[0] == names[1]:  # the same model twice: tell the runs apart by their directories
            names = [f"{name} ({path.name})" for name, path in zip(names, (results_dir, other))]
        needle_plot.compare(runs[0][0], runs[1][0], target, titles=(names[0], names[1]), threshold=threshold)
    typer.echo(target)


def _load(directory: Path) -> tuple[list[dict], str]:
    """A run's result rows and the name of its model (summary.json's `model`, else the directory's
    name)."""
    from lwm_core.errors import LWMError
    from lwm_core.needle.summary import RESULTS, SUMMARY, read_results
    from lwm_core.text import decode_utf8

    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise LWMError(f"{directory} {what}; give the directory that lwm needle eval -o wrote")
    results = directory / RESULTS
    if not results.is_file():
        raise LWMError(f"{directory} has no {RESULTS}; give the directory that lwm needle eval -o wrote")
    rows = read_results(str(results))
    if not rows:
        raise LWMError(f"{results} has no result rows yet; plot it once lwm needle eval has scored some")
    name = directory.resolve().name
    summary = directory / SUMMARY
    if summary.is_file():
        try:
            meta = json.loads(decode_utf8(summary.read_bytes(), str(summary)))
        except ValueError as e:  # LWMError included
            raise LWMError(f"{summary} is damaged ({e}); remove it or run lwm needle eval again") from None
        if isinstance(meta, dict) and isinstance(meta.get("model"), str) and meta["model"]:
            name = meta["model"]
    return rows, name
