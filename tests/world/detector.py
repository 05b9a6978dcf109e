"""A detector for the synthetic world: frames (F, H, W, 3) uint8 -> the `Scene` they show, from pixels alone.

It will judge generated clips, so it knows nothing of the renderer but the palette and the grammar: no
seeds, no sizes, no positions. What it measures, per frame:

- foreground: pixels well above the background (the median level of the frame), each labelled with the
  nearest named colour by chromaticity (its RGB less the background's, scaled to a maximum of 1, so a
  faded or antialiased pixel keeps its colour);
- the thing: the colour whose largest 8-connected blob is big in (nearly) every frame; its soft coverage
  gives the centroid and area, and 64 rays from the centroid give the outline's radius r(theta), whose
  Fourier harmonics name the shape (3-fold triangle, 4-fold square, 5-fold star, none: circle) and whose
  dominant harmonic's phase is the orientation;
- the motion: a reversal along one axis with both legs long (bouncing), else a steady displacement
  (moving left/right/up/down), else an area trend (growing/shrinking), else a turn of the orientation
  (rotating), else nothing (still); two of these at once is no caption of the grammar, so no match;
- fireworks: what is left once the thing is removed must be many small blobs, a small part of the frame,
  whose spread grows, whose brightness fades and whose centre rises; one colour (>= 60% of their bright pixels)
  or many (>= 3 colours, each >= 8%).

`matches(caption, frames)` is `detect(frames) == parse_caption(caption)`: every word must be seen.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from lwm_core.errors import LWMError
from lwm_core.world import COLOURS, Fireworks, Scene, Thing, parse_caption

NAMES = list(COLOURS)
EIGHT = np.ones((3, 3), bool)  # 8-connectivity
RAYS = 64


def matches(caption: str, frames: np.ndarray) -> bool:
    """Whether `frames` show what `caption` says (a caption outside the grammar matches nothing)."""
    try:
        want = parse_caption(caption)
    except LWMError:
        return False
    return detect(frames) == want


def detect(frames: np.ndarray) -> Scene | None:
    """The scene `frames` show, or None when they show none of the grammar's."""
    return analyse(frames)["scene"]


def analyse(frames: np.ndarray) -> dict:
    """`detect` with its measurements, for tests that want to see why."""
    frames = np.asarray(frames)
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, (frames.dtype, frames.shape)
    n, size = frames.shape[0], frames.shape[1]
    rgb = frames.astype(np.float32)
    value = rgb.max(axis=-1)  # (F, H, W)
    # the background: each frame's median pixel (nearly all of a frame is background)
    background = np.median(rgb.reshape(n, -1, 3), axis=1)  # (F, 3)
    lift = value - background.max(axis=-1)[:, None, None]
    foreground = lift > 40
    colour = _colour_labels(rgb - background[:, None, None, :])  # (F, H, W) index into NAMES
    report: dict = {"scene": None}

    thing, thing_masks, report["thing"] = _find_thing(rgb, lift, foreground, colour, size)
    rest = foreground.copy()
    if thing_masks is not None:
        rest &= ~ndimage.binary_dilation(thing_masks, structure=np.ones((1, 5, 5), bool))
    fireworks, report["fireworks"] = _find_fireworks(rest, lift, colour, size)
    if fireworks is None and rest.sum(axis=(1, 2)).mean() > 0.002 * size * size:
        report["leftover"] = True  # more than the thing, and not fireworks: no caption of the grammar
        return report
    if thing is None and fireworks is None:
        return report
    try:
        report["scene"] = Scene(thing, fireworks)
    except LWMError:
        pass  # e.g. fireworks over a moving thing: not in the grammar
    return report


def _colour_labels(lifted: np.ndarray) -> np.ndarray:
    """Nearest named colour of each pixel by chromaticity (RGB above the background, max scaled to 1)."""
    palette = np.array(list(COLOURS.values()), np.float32)
    palette /= palette.max(axis=-1, keepdims=True)
    chroma = np.clip(lifted, 0, None)
    chroma = chroma / np.maximum(chroma.max(axis=-1, keepdims=True), 1.0)
    # distances: (F, H, W, C)
    d = ((chroma[..., None, :] - palette) ** 2).sum(-1)
    return d.argmin(-1)


# ----- the thing -------------------------------------------------------------------------------------------------


def _find_thing(rgb, lift, foreground, colour, size):
    n = len(rgb)
    min_area = 0.007 * size * size  # the smallest thing (circumradius 0.09) is ~0.011 of the frame
    candidates = []
    for c in range(len(NAMES)):
        masks, areas = [], []
        for f in range(n):
            labels, count = ndimage.label(foreground[f] & (colour[f] == c), structure=EIGHT)
            sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1)) if count else [0]
            k = int(np.argmax(sizes))
            masks.append(labels == k + 1)
            areas.append(sizes[k])
        if np.mean(np.array(areas) >= min_area) >= 0.9:
            candidates.append((float(np.median(areas)), c, np.stack(masks)))
    # the biggest first; a colour whose blob is hollow (a ring of particles early in a burst) is not a thing
    info = {}
    for _, c, masks in sorted(candidates, key=lambda item: -item[0]):
        masks = ndimage.binary_fill_holes(masks, structure=np.ones((1, 3, 3), bool))
        track = [_measure(lift[f], masks[f]) for f in range(n)]
        if any(t is None for t in track):
            info = {"colour": NAMES[c], "why": "a frame without a solid outline"}
            continue
        harmonics = np.median([t["harmonics"] for t in track], axis=0)
        shape = _shape(harmonics)
        info = {"colour": NAMES[c], "harmonics": harmonics.round(3).tolist(), "shape": shape}
        if shape is None:
            return None, masks, info
        motion = _motion(track, shape, size, info)
        if motion is None:
            return None, masks, info
        return Thing(shape, NAMES[c], motion), masks, info
    return None, None, info


def _measure(lift: np.ndarray, mask: np.ndarray) -> dict | None:
    """Centroid, area and outline r(theta) of the blob `mask`, from its soft coverage."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 6:
        return None
    peak = np.percentile(lift[mask], 90)
    # coverage: 0 on the background, 1 inside; only near the blob (2 pixels around it)
    near = ndimage.binary_dilation(mask, iterations=2)
    alpha = np.where(near, np.clip(lift / max(peak, 1.0), 0, 1), 0.0)
    area = alpha.sum()
    py, px = np.mgrid[:lift.shape[0], :lift.shape[1]]
    cy, cx = (alpha * py).sum() / area, (alpha * px).sum() / area
    theta = np.linspace(0, 2 * math.pi, RAYS, endpoint=False)
    steps = np.arange(0, np.hypot(*lift.shape), 0.25)
    # rays: (RAYS, steps) sample points, bilinear
    ry = cy + np.sin(theta)[:, None] * steps
    rx = cx + np.cos(theta)[:, None] * steps
    inside = ndimage.map_coordinates(alpha, [ry, rx], order=1, mode="constant") >= 0.5
    if not inside[:, 0].all():
        return None  # the centre is not inside: a ring of particles, not a solid thing
    radius = np.argmin(inside, axis=1) * 0.25  # the first step outside, on each ray
    spectrum = np.fft.rfft(radius) / RAYS
    harmonics = np.abs(spectrum[1:9]) / max(abs(spectrum[0]), 1e-6)  # k = 1..8
    return {"x": cx, "y": cy, "area": area, "harmonics": harmonics, "phases": np.angle(spectrum[1:9]),
            "radius": float(np.abs(spectrum[0]))}


FOLDS = {3: "triangle", 4: "square", 5: "star"}


def _shape(harmonics: np.ndarray) -> str | None:
    """harmonics[k - 1] = |F_k| / F_0 of the outline radius: a polygon's k-fold symmetry shows as F_k."""
    folds = {k: harmonics[k - 1] for k in FOLDS}
    k = max(folds, key=folds.get)
    if folds[k] < 0.02:
        return "circle" if harmonics[:8].max() < 0.04 else None
    return FOLDS[k]


def _motion(track: list[dict], shape: str, size: int, info: dict) -> str | None:
    x = np.array([t["x"] for t in track]) / size
    y = np.array([t["y"] for t in track]) / size
    area = np.array([t["area"] for t in track])
    growth = float(np.median(area[-3:]) / np.median(area[:3]))
    turn = _turn(track, shape)
    seen = {}
    for axis, p in (("x", x), ("y", y)):
        for turn_at in (int(np.argmax(p)), int(np.argmin(p))):  # the far point of the way there and back
            if min(abs(p[turn_at] - p[0]), abs(p[turn_at] - p[-1])) >= 0.08:
                seen["bouncing"] = axis
    dx, dy = x[-1] - x[0], y[-1] - y[0]
    if "bouncing" not in seen and max(abs(dx), abs(dy)) >= 0.15:
        if abs(dx) >= 2 * abs(dy):
            seen["moving"] = "right" if dx > 0 else "left"
        elif abs(dy) >= 2 * abs(dx):
            seen["moving"] = "down" if dy > 0 else "up"
        else:
            seen["moving"] = None  # diagonal: no caption says so
    if growth >= 1.8:
        seen["size"] = "growing"
    elif growth <= 1 / 1.8:
        seen["size"] = "shrinking"
    if turn is not None and abs(turn) >= 45:
        seen["rotating"] = "rotating"
    info.update(growth=round(growth, 2), turn=None if turn is None else round(turn, 1), dx=round(float(dx), 3),
                dy=round(float(dy), 3), seen=seen)
    if len(seen) > 1:
        return None
    if not seen:
        still = np.ptp(x) < 0.05 and np.ptp(y) < 0.05 and 0.8 < growth < 1.25 and (turn is None or abs(turn) < 20)
        return "still" if still else None
    kind, value = next(iter(seen.items()))
    return {"bouncing": "bouncing", "moving": value, "size": value, "rotating": "rotating"}[kind]


def _turn(track: list[dict], shape: str) -> float | None:
    """Degrees the outline turned over the clip, frame to frame within half its symmetry; None: a circle."""
    k = {v: k for k, v in FOLDS.items()}.get(shape)
    if k is None:
        return None
    # the outline's orientation: the phase of its k-fold harmonic / k, defined modulo 2 pi / k
    angles = np.array([-t["phases"][k - 1] / k for t in track])
    period = 2 * math.pi / k
    steps = (np.diff(angles) + period / 2) % period - period / 2
    return math.degrees(steps.sum())


# ----- fireworks -------------------------------------------------------------------------------------------------


def _find_fireworks(rest: np.ndarray, lift: np.ndarray, colour: np.ndarray, size: int):
    n = len(rest)
    counts, spread, glow, height = [], [], [], []
    split = _split(np.nonzero(rest)[2])
    for f in range(n):
        labels, count = ndimage.label(rest[f], structure=EIGHT)
        # particles: local maxima of brightness (touching particles are one blob but keep their peaks)
        here = np.where(rest[f], lift[f], 0)
        peaks_at = (here == ndimage.maximum_filter(here, size=3)) & (here > 0.5 * max(here.max(), 1))
        counts.append(int(ndimage.label(peaks_at, structure=EIGHT)[1]))
        ys, xs = np.nonzero(rest[f])
        if len(ys) == 0:
            spread.append(0.0)
            glow.append(0.0)
            height.append(math.nan)
            continue
        spread.append(_spread(xs, ys, split) / size)
        peaks = ndimage.maximum(lift[f], labels, index=np.arange(1, count + 1))
        glow.append(float(np.mean(peaks)))
        height.append(float(ys.mean()) / size)
    counts, spread, glow, height = map(np.array, (counts, spread, glow, height))
    third = max(1, n // 3)
    fraction = rest.sum(axis=(1, 2)).max() / (size * size)
    info = {"blobs": int(np.median(counts[n // 2:])), "fraction": round(float(fraction), 4)}
    if info["blobs"] < 6 or fraction > 0.1 or np.isnan(height).any():
        return None, info
    info.update(spread=round(float(spread[-third:].mean() / max(spread[:third].mean(), 1e-6)), 2),
                fade=round(float(glow[-third:].mean() / max(glow[:third].mean(), 1e-6)), 2),
                rise=round(float(height[-third:].mean() - height[:third].mean()), 3))
    if info["spread"] < 1.15 or info["fade"] > 0.75 or info["rise"] > -0.01:
        return None, info
    # colour: of the bright particle pixels (a faint edge's colour is the least sure)
    bright = rest & (lift > 0.5 * lift.max(axis=(1, 2), keepdims=True))
    share = np.bincount(colour[bright], minlength=len(NAMES)) / max(bright.sum(), 1)
    info["colours"] = {NAMES[i]: round(float(s), 2) for i, s in enumerate(share) if s >= 0.03}
    top = int(np.argmax(share))
    if share[top] >= 0.6:
        return Fireworks(NAMES[top]), info
    if (share >= 0.08).sum() >= 3:
        return Fireworks(None), info
    return None, info


def _split(xs: np.ndarray) -> float:
    """The x that best splits these pixels in two groups (least within-group variance): one burst on each
    side when there are two; a burst cut in halves when there is one (each half still spreads as it does)."""
    if len(xs) < 2:
        return 0.0
    xs = np.sort(xs.astype(np.float64))
    k = np.arange(1, len(xs))
    left = np.cumsum(xs)[:-1]
    total = xs.sum()
    # within-group sum of squares = sum x^2 - (left^2 / k + right^2 / (n - k)); maximise the subtracted part
    between = left ** 2 / k + (total - left) ** 2 / (len(xs) - k)
    i = int(np.argmax(between))
    return float((xs[i] + xs[i + 1]) / 2)


def _spread(xs: np.ndarray, ys: np.ndarray, split: float) -> float:
    """Root-mean-square distance of the pixels from the centre of their side of `split`."""
    total = 0.0
    for side in (xs < split, xs >= split):
        if side.any():
            total += (xs[side].var() + ys[side].var()) * side.sum()
    return math.sqrt(total / len(xs))
