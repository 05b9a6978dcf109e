"""The heatmap checked as an image: its size, the palette's colours in its cells, one cell per length x
depth where the stored layout says, white borders between them, 0% depth at the top."""

import numpy as np
import pytest
from PIL import Image

from lwm_core.needle.plot import (
    MISSING,
    PALETTE,
    cell_centres,
    colormap,
    compare,
    heatmap,
    length_label,
    read_layout,
)

CTXS = (1024, 32768, 1048576)
DEPTHS = (0, 50, 100)


def _rgb(hex_colour):
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def _rows(task="niah", scores=None):
    """One row per (ctx, depth); by default nine distinct scores 0, 1/8, ..., 1, in depth-major order."""
    scores = scores or {(c, d): (3 * i + j) / 8 for i, d in enumerate(DEPTHS) for j, c in enumerate(CTXS)}
    return [{"task": task, "ctx": c, "depth": d, "score": scores[(c, d)], "empty": False} for c in CTXS for d in DEPTHS]


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _expected(score):
    return np.round(np.array(colormap()(score)[:3]) * 255).astype(int)


def test_labels_and_palette():
    assert [length_label(x) for x in (500, 1024, 1536, 32768, 131072, 1048576, 2 * 1048576)] == [
        "500", "1K", "1.5K", "32K", "128K", "1M", "2M"]
    for value, colour in zip((0.0, 0.5, 1.0), PALETTE):
        assert np.abs(_expected(value) - _rgb(colour)).max() <= 1


def test_heatmap_cells_colours_and_size(tmp_path):
    path = tmp_path / "heatmap.png"
    layout = heatmap(_rows(), str(path), title="LWM-Text-Chat-1M", threshold=0.85)
    pixels = _pixels(path)
    assert layout == read_layout(str(path)) and layout["title"] == "LWM-Text-Chat-1M"
    assert pixels.shape == (layout["height"], layout["width"], 3) == (420, 720, 3)  # 7.2 x 4.2 in at 100 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["heatmap.png"]  # published by rename, nothing else left
    (panel,) = layout["panels"]
    assert (panel["lengths"], panel["depths"]) == (list(CTXS), list(DEPTHS))
    centres = cell_centres(layout)
    assert len(centres) == len(CTXS) * len(DEPTHS)
    seen = set()
    for _, i, j, x, y in centres:
        colour = pixels[int(y), int(x)]
        # Row i is depth DEPTHS[i] (0% at the top: y grows with i), column j length CTXS[j].
        assert np.abs(colour - _expected((3 * i + j) / 8)).max() <= 2, (i, j, colour)
        seen.add(tuple(colour))
    assert len(seen) == 9  # one distinct cell per length x depth
    assert any(np.abs(np.array(c) - _rgb(PALETTE[0])).max() <= 2 for c in seen)  # score 0 (top left)
    assert any(np.abs(np.array(c) - _rgb(PALETTE[2])).max() <= 2 for c in seen)  # score 1 (bottom right)
    ys = [y for _, i, j, x, y in centres if j == 0]
    assert ys == sorted(ys)
    # Thin white borders: between two cells' centres the colour passes through white.
    x0, y0, x1, y1 = panel["box"]
    row_y = int(y0 + (y1 - y0) / 6)
    border = x0 + (x1 - x0) / 3
    strip = pixels[row_y, int(border) - 2:int(border) + 3]
    assert (strip >= 245).all(axis=1).any(), strip
    # Inside a cell, no white.
    assert not (pixels[row_y, int(x0) + 3:int(border) - 3] >= 245).all(axis=1).any()


def test_compare_side_by_side_and_one_panel_per_task(tmp_path):
    path = tmp_path / "compare.png"
    ones = {(c, d): 1.0 for c in CTXS for d in DEPTHS}
    zeros = {(c, d): 0.0 for c in CTXS for d in DEPTHS}
    a = _rows("a", ones) + _rows("b", zeros)
    b = _rows("a", zeros)  # run b has no task b
    layout = compare(a, b, str(path), titles=("run 1", "run 2"))
    pixels = _pixels(path)
    assert pixels.shape[:2] == (layout["height"], layout["width"])
    boxes = {(p["task"], p["column"]): p["box"] for p in layout["panels"]}
    assert set(boxes) == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    assert boxes[("a", 1)][0] > boxes[("a", 0)][2]  # run 2 right of run 1
    assert boxes[("b", 0)][1] > boxes[("a", 0)][3]  # task b below task a
    want = {("a", 0): PALETTE[2], ("a", 1): PALETTE[0], ("b", 0): PALETTE[0], ("b", 1): MISSING}
    counts = {}
    for panel, _, _, x, y in cell_centres(layout):
        key = (panel["task"], panel["column"])
        assert np.abs(pixels[int(y), int(x)] - _rgb(want[key])).max() <= 2, key
        counts[key] = counts.get(key, 0) + 1
    assert counts == dict.fromkeys(want, 9)


def test_a_summary_draws_the_same_as_its_rows(tmp_path):
    from lwm_core.needle.summary import summarize

    heatmap(_rows(), str(tmp_path / "rows.png"), title="m")
    heatmap(summarize(_rows(), meta={}), str(tmp_path / "summary.png"), title="m")
    assert (_pixels(tmp_path / "rows.png") == _pixels(tmp_path / "summary.png")).all()
    with pytest.raises(ValueError, match="no cells"):
        heatmap([], str(tmp_path / "empty.png"), title="m")
