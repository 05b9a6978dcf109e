"""The needle heatmap, drawn like LWM's and gkamradt's: context length on x (1K, 32K, 1M), needle depth on
y with 0% at the top, one cell per (length, depth) coloured by its accuracy on the palette
#F0496E (0) -> #EBB839 (0.5) -> #0CD79F (1), thin white cell borders, a colour bar and the model's name in
the title.

Several tasks get one panel each, stacked top to bottom, rather than a mean over tasks: a mean would hide
a task that fails where the others pass. `compare` puts two runs side by side, a column each, on the
same grid of lengths and depths per task; a cell a run did not measure is left grey.

Matplotlib draws through its Agg canvas on a `Figure` of its own (no pyplot): no display, no global
backend switch in the caller's process. The PNG is published atomically and carries its layout (the
pixel box of every panel, its lengths, depths and scores) as the text chunk `lwm:heatmap`, so that a test
or a script can find every cell in the image.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Mapping, Sequence

from lwm_core.needle.config import LIST_TASKS
from lwm_core.needle.summary import cells as summarize_cells
from lwm_core.needle.summary import effective_context

PALETTE = ("#F0496E", "#EBB839", "#0CD79F")  # score 0, 0.5, 1 (gkamradt's and LWM's)
MISSING = "#D9D9D9"  # a cell that was not measured
DPI = 100
METADATA_KEY = "lwm:heatmap"
K, M = 1024, 1024**2


def colormap():
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("needle", list(zip((0.0, 0.5, 1.0), PALETTE)))


def length_label(ctx: int) -> str:
    """1024 -> 1K, 131072 -> 128K, 1048576 -> 1M, 1536 -> 1.5K (K = 1024, as the dataset's lengths);
    lengths under 1K as they are."""
    for unit, suffix in ((M, "M"), (K, "K")):
        if ctx >= unit:
            return f"{round(ctx / unit, 1):g}{suffix}"
    return str(ctx)


def depth_label(depth: float) -> str:
    return f"{depth:g}%"


def _cells(source: Sequence[Mapping] | Mapping[str, Any]) -> list[dict]:
    """Result rows or a summary (its `cells`) -> the (task, ctx, depth) cells."""
    if isinstance(source, Mapping):
        return list(source["cells"])
    return summarize_cells(list(source))


def heatmap(source: Sequence[Mapping] | Mapping[str, Any], path: str, *, title: str,
            threshold: float | None = None) -> dict:
    """Draw the heatmap of one run (its result rows or its summary) to the PNG `path`; returns the
    layout stored in the PNG (see `read_layout`). With `threshold`, each panel names its effective
    context."""
    return _draw([(None, _cells(source))], path, title=title, threshold=threshold)


def compare(a: Sequence[Mapping] | Mapping[str, Any], b: Sequence[Mapping] | Mapping[str, Any], path: str, *,
            titles: tuple[str, str], threshold: float | None = None) -> dict:
    """Two runs side by side (a on the left), `titles` naming each; otherwise as `heatmap`."""
    return _draw([(titles[0], _cells(a)), (titles[1], _cells(b))], path, title=f"{titles[0]} vs {titles[1]}",
                 threshold=threshold)


def _draw(columns: list[tuple[str | None, list[dict]]], path: str, *, title: str, threshold: float | None) -> dict:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lwm_core.checkpoint.atomic import atomic_file

    if not any(cells for _, cells in columns):
        raise ValueError("no cells to draw")
    tasks = sorted({c["task"] for _, cells in columns for c in cells})
    # Per task, the union of the runs' lengths and depths: compared panels share their grid.
    grids = {task: (sorted({c["ctx"] for _, cs in columns for c in cs if c["task"] == task}),
                    sorted({c["depth"] for _, cs in columns for c in cs if c["task"] == task}))
             for task in tasks}
    n_ctx = max(len(lengths) for lengths, _ in grids.values())
    n_depth = max(len(depths) for _, depths in grids.values())
    # Inches per panel: gkamradt's 17.5 x 8 figure holds ~35 x 15 cells; smaller grids get a floor.
    width = len(columns) * max(6.0, 0.45 * n_ctx + 2.0) + 1.2  # + the colour bar
    height = len(tasks) * max(3.6, 0.3 * n_depth + 1.6) + 0.6  # + the title
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(tasks), len(columns), squeeze=False)
    cmap = colormap().with_extremes(bad=MISSING)
    mesh = None
    panels = []
    for row, task in enumerate(tasks):
        lengths, depths = grids[task]
        for col, (name, cells) in enumerate(columns):
            ax = axes[row][col]
            # scores[i, j]: depth i (0% first, drawn at the top), length j; NaN where not measured.
            scores = np.full((len(depths), len(lengths)), np.nan)
            mine = [c for c in cells if c["task"] == task]
            for c in mine:
                scores[depths.index(c["depth"]), lengths.index(c["ctx"])] = c["accuracy"]
            mesh = ax.pcolormesh(np.ma.masked_invalid(scores), cmap=cmap, vmin=0.0, vmax=1.0,
                                 edgecolors="white", linewidth=0.5)
            ax.set_facecolor(MISSING)
            ax.set_xlim(0, len(lengths))
            ax.set_ylim(len(depths), 0)  # 0% at the top
            ax.set_xticks(np.arange(len(lengths)) + 0.5, [length_label(x) for x in lengths],
                          rotation=45 if len(lengths) > 8 else 0)
            listed = task in LIST_TASKS  # cwe, fwe: a word list, no needle and no depth (one row of cells)
            ax.set_yticks(np.arange(len(depths)) + 0.5, ["all" if listed else depth_label(d) for d in depths])
            ax.tick_params(length=0)
            for side in ax.spines.values():
                side.set_visible(False)
            ax.set_xlabel("Context length (tokens)")
            ax.set_ylabel("Word list" if listed else "Needle depth")
            words = [w for w in (name, task if len(tasks) > 1 or name is None else None) if w]
            if not mine:
                words.append("not in this run")
            elif threshold is not None:
                words.append(f"effective context {length_label(_effective(mine, threshold))} "
                             f"(accuracy >= {threshold:g})")
            ax.set_title(" | ".join(words), fontsize=11)
            panels.append({"task": task, "column": col, "lengths": lengths, "depths": depths, "ax": ax,
                           "scores": [[None if math.isnan(v) else float(v) for v in line] for line in scores]})
    fig.colorbar(mesh, ax=axes.ravel().tolist(), label="Score", shrink=0.9)
    fig.suptitle(title, fontsize=14)
    fig.canvas.draw()  # the final layout: the boxes below are where the PNG will put the cells
    pixels_w, pixels_h = (round(v) for v in fig.canvas.get_width_height())
    for panel in panels:
        # Display pixels (origin bottom-left) -> PNG pixels (origin top-left).
        box = panel.pop("ax").get_window_extent()
        panel["box"] = [float(v) for v in (box.x0, pixels_h - box.y1, box.x1, pixels_h - box.y0)]
    layout = {"width": pixels_w, "height": pixels_h, "title": title, "palette": list(PALETTE), "panels": panels}
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={METADATA_KEY: json.dumps(layout)})
    with atomic_file(path) as f:
        f.write(buffer.getvalue())
    return layout


def _effective(cells: list[dict], threshold: float) -> int:
    by_ctx: dict[int, list[dict]] = {}
    for c in cells:
        by_ctx.setdefault(c["ctx"], []).append(c)
    # The rows' mean per length, from the cells' means weighted by their counts.
    return effective_context({ctx: math.fsum(c["accuracy"] * c["count"] for c in group) /
                              sum(c["count"] for c in group) for ctx, group in by_ctx.items()}, threshold)


def read_layout(path: str) -> dict:
    """The layout `heatmap`/`compare` stored in the PNG `path`."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])


def cell_centres(layout: Mapping[str, Any]) -> list[tuple[dict, int, int, float, float]]:
    """(panel, depth index, length index, x, y) of every cell's centre, in PNG pixels."""
    out = []
    for panel in layout["panels"]:
        x0, y0, x1, y1 = panel["box"]
        n_y, n_x = len(panel["depths"]), len(panel["lengths"])
        for i in range(n_y):
            for j in range(n_x):
                out.append((panel, i, j, x0 + (j + 0.5) * (x1 - x0) / n_x, y0 + (i + 0.5) * (y1 - y0) / n_y))
    return out
