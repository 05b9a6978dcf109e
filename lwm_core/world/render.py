"""Rendering a `Scene` into frames: spec + seed -> uint8 (F, H, W, 3), the same pixels for the same seed.

Everything is drawn in frame units (0..1, x right, y down) and scaled to pixels at the end, so a seed gives
the same motion at 64, 128 or 256 pixels. The seed draws (numpy Generator, nothing global) where a thing
starts, how big it is and how fast it goes, within ranges that keep it wholly in frame for the whole clip:

- moving left/right/up/down: 0.30-0.45 of the frame in all, at a constant speed;
- bouncing: 0.50-0.65 of the frame along one axis, reflected by the edge it meets 30-60% of the way
  through (one reversal, never a second);
- growing/shrinking: the circumradius goes x1.8-2.0 up (or down) about a fixed centre;
- rotating: 100-160 degrees in all, either way (at most 23 degrees a frame at the 8 frames minimum, less
  than half the 72 degree symmetry of a star, so the turn is never ambiguous between two frames);
- still: the start angle of every shape is drawn too, so no shape is always seen upright.

Fireworks: one or two bursts of 12-20 particles each, which spread out (fast, then slower: an ease-out),
rise 0.06-0.12 of the frame and fade from ~93% to 35% brightness; over a thing, the thing stands in the
bottom quarter and the bursts stay in the upper two thirds.

Layouts (`layout`): "anywhere" (the default) places things and bursts as above, anywhere they fit; "centred"
puts each thing's path, and a single burst, about the middle of the frame (a thing the fireworks go over: the
middle of the bottom quarter), within CENTRED_JITTER; a thing's size, speed, angle and bounce are those
"anywhere" draws from the same seed. "canonical" draws nothing: one clip per scene, each thing upright at
one size with its path's middle at the frame's, one speed, turn and bounce, and one burst of evenly spread
sparks (`canonical_track`, `canonical_burst`). What a caption does not say (where a thing stands, its angle,
its size, its speed) is what an autoregressive model has to guess code by code: a small language model's loss
falls lower on the centred world than on the full one, and lower still on the canonical one (docs/demo.md).

Edges are antialiased analytically: a pixel's coverage is its centre's signed distance to the outline,
`clip(0.5 - d, 0, 1)` in pixels, a one-pixel ramp that survives H.264's yuv420p (half-resolution colour)
with the shape still recognisable at 64 x 64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.world.grammar import COLOURS, Fireworks, Scene, Thing

DEFAULT_FRAMES = 16  # a bounce needs a few frames each side of its reversal; 16 x 256 codes = 4K tokens/clip
DEFAULT_SIZE = 64  # small enough for a VQGAN to learn on a CPU, big enough for a 6-pixel star to be a star
MIN_FRAMES, MAX_FRAMES = 8, 256
MIN_SIZE, MAX_SIZE = 32, 1024
LAYOUTS = ("anywhere", "centred", "canonical")
CENTRED_JITTER = 0.03  # of the frame: ~1 pixel at 40, under one VQGAN code (4 pixels) either way
BACKGROUND = (14, 14, 20)  # near black, a little blue: every named colour is far brighter

STAR_INNER = 0.5  # a star's inner radius / outer radius: arms wide enough to survive 64 x 64
PARTICLE_RADIUS = 0.025  # of the frame (1.6 pixels at 64: a spark a VQGAN keeps the colour of), at least 0.9 pixels
# The canonical layout: one clip per scene (below), drawn so that a 10 x 10-code VQGAN keeps it apart.
CANONICAL_RADIUS = 0.15  # a thing's circumradius (6 pixels at 40)
CANONICAL_TRAVEL = 0.35  # moving: 14 pixels at 40 over the clip
CANONICAL_SPARKS = 8
CANONICAL_SPARK_RADIUS = 0.05  # of the frame: 2 pixels at 40, sparks that 4-pixel codes keep apart
UPRIGHT = {"circle": 0.0, "square": math.pi / 4, "triangle": -math.pi / 2, "star": -math.pi / 2}


def check_shape(frames: int, size: int, layout: str = "anywhere") -> None:
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise LWMError(f"frames must be from {MIN_FRAMES} to {MAX_FRAMES}, got {frames}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise LWMError(f"size must be from {MIN_SIZE} to {MAX_SIZE} pixels, got {size}")
    if layout not in LAYOUTS:
        raise LWMError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")


def render(scene: Scene, seed: int, *, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE,
           layout: str = "anywhere") -> np.ndarray:
    """The clip of `scene` drawn from `seed`: uint8 RGB (frames, size, size, 3)."""
    check_shape(frames, size, layout)
    centred = layout == "centred"
    canonical = layout == "canonical"
    rng = np.random.default_rng(seed)
    # out: (F, H, W, 3) float in 0..255, drawn on the background
    out = np.empty((frames, size, size, 3), np.float32)
    out[:] = BACKGROUND
    over = scene.thing is not None and scene.fireworks is not None
    if scene.thing is not None:
        track = (canonical_track(scene.thing, frames, over=over) if canonical
                 else thing_track(scene.thing, rng, frames, over=over, centred=centred))
        colour = np.array(COLOURS[scene.thing.colour], np.float32)
        for f in range(frames):
            _paint_thing(out[f], scene.thing.shape, *(v[f] for v in track), colour)
    if scene.fireworks is not None:
        if canonical:
            _paint_bursts(out, [canonical_burst(scene.fireworks, over=scene.thing)])
        else:
            _paint_fireworks(out, scene.fireworks, rng, over=scene.thing, centred=centred)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ----- things ----------------------------------------------------------------------------------------------------


def thing_track(thing: Thing, rng: np.random.Generator, frames: int, *, over: bool = False, centred: bool = False):
    """Per frame, in frame units: centre x, centre y, circumradius, angle (radians); arrays of (F,).
    `centred`: the same draws, the thing's path then moved about the middle of the frame (the layout)."""
    t = np.linspace(0.0, 1.0, frames)
    angle0 = rng.uniform(0, 2 * math.pi)
    angle = np.full(frames, angle0)
    if over:  # the thing the fireworks go over: bottom of the frame, standing still
        radius = rng.uniform(0.10, 0.14)
        x, y = rng.uniform(0.25, 0.75), rng.uniform(0.74, 0.80)
        if centred:  # the middle of the bottom quarter
            x = _centre(rng)
        return np.full(frames, x), np.full(frames, y), np.full(frames, radius), angle
    motion = thing.motion
    if motion in ("growing", "shrinking"):
        small, factor = rng.uniform(0.09, 0.105), rng.uniform(1.8, 2.0)
        big = small * factor
        radius = small * factor ** t if motion == "growing" else big / factor ** t  # geometric: even per frame
        x, y = rng.uniform(big, 1 - big, size=2)
        x, y = np.full(frames, x), np.full(frames, y)
        return (*_centred(x, y, rng), radius, angle) if centred else (x, y, radius, angle)
    r = rng.uniform(0.11, 0.17)
    radius = np.full(frames, r)
    x, y = rng.uniform(r, 1 - r, size=2)
    x, y = np.full(frames, x), np.full(frames, y)
    bounce_axis = None
    if motion in ("left", "right", "up", "down"):
        travel = rng.uniform(0.30, 0.45)
        sign = 1 if motion in ("right", "down") else -1
        start = rng.uniform(r, 1 - r - travel)  # the span [start, start + travel] stays in [r, 1 - r]
        path = start + travel * (t if sign > 0 else 1 - t)
        if motion in ("left", "right"):
            x = path
        else:
            y = path
    elif motion == "bouncing":
        travel, hit = rng.uniform(0.50, 0.65), rng.uniform(0.3, 0.6)
        sign = rng.choice((-1, 1))
        wall = 1 - r if sign > 0 else r
        # towards the wall, reached at `hit` of the way, then back: the far wall is >= 1 - 2r - 0.46 away
        path = wall - sign * travel * np.abs(hit - t)
        bounce_axis = "x" if rng.integers(2) else "y"
        if bounce_axis == "x":
            x = path
        else:
            y = path
    elif motion == "rotating":
        turn = math.radians(rng.uniform(100, 160)) * rng.choice((-1, 1))
        angle = angle0 + turn * t
    if centred:
        x, y = _centred(x, y, rng, keep=bounce_axis)
    return x, y, radius, angle


def canonical_track(thing: Thing, frames: int, *, over: bool = False):
    """`thing_track` of the canonical layout, with no draws: the thing upright (a square's sides and a triangle's
    and a star's top point level with the frame), CANONICAL_RADIUS, its path's middle at the frame's; moving
    CANONICAL_TRAVEL, bouncing off the right edge half way, growing or shrinking x1.9, rotating 130 degrees
    clockwise; under fireworks, the middle of the bottom quarter at radius 0.12."""
    t = np.linspace(0.0, 1.0, frames)
    angle = np.full(frames, UPRIGHT[thing.shape])
    x, y, radius = np.full(frames, 0.5), np.full(frames, 0.5), np.full(frames, CANONICAL_RADIUS)
    if over:
        return x, np.full(frames, 0.77), np.full(frames, 0.12), angle
    motion = thing.motion
    if motion in ("left", "right", "up", "down"):
        sign = 1 if motion in ("right", "down") else -1
        path = 0.5 + sign * CANONICAL_TRAVEL * (t - 0.5)
        if motion in ("left", "right"):
            x = path
        else:
            y = path
    elif motion == "bouncing":  # to the right wall half way through, then back
        wall = 1 - CANONICAL_RADIUS
        x = wall - 0.55 * np.abs(0.5 - t)
    elif motion in ("growing", "shrinking"):
        small, factor = 0.1, 1.9
        radius = small * factor ** (t if motion == "growing" else 1 - t)
    elif motion == "rotating":
        angle = angle + math.radians(130) * t
    return x, y, radius, angle


def _centred(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, keep: str | None = None):
    """A path (x, y) moved so that its span's middle is the frame's, give or take CENTRED_JITTER: two draws
    of their own after all the others, so the rest of a seed's clip is as "anywhere" draws it. `keep`: an
    axis left as it is (a bounce's, which fills the frame that way: r <= 0.17 and travel <= 0.45 keep any
    other path in frame)."""
    cx, cy = _centre(rng), _centre(rng)
    if keep != "x":
        x = x - (x.max() + x.min()) / 2 + cx
    if keep != "y":
        y = y - (y.max() + y.min()) / 2 + cy
    return x, y


def _centre(rng: np.random.Generator) -> float:
    """The middle of the frame, give or take CENTRED_JITTER (a draw of its own after the layout-free ones)."""
    return 0.5 + rng.uniform(-CENTRED_JITTER, CENTRED_JITTER)


def outline(shape: str, radius: float, angle: float) -> np.ndarray | None:
    """The polygon of a shape about the origin, (M, 2) in the units of `radius`; None for a circle."""
    if shape == "circle":
        return None
    if shape == "star":
        k = np.arange(10)
        r = np.where(k % 2 == 0, radius, radius * STAR_INNER)
        theta = angle + k * math.pi / 5
    else:
        n = {"triangle": 3, "square": 4}[shape]
        r = np.full(n, radius)
        theta = angle + np.arange(n) * 2 * math.pi / n
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1)


def _paint_thing(frame: np.ndarray, shape: str, x: float, y: float, radius: float, angle: float,
                 colour: np.ndarray) -> None:
    size = frame.shape[0]
    cx, cy, rad = x * size, y * size, radius * size
    box = _box(cx, cy, rad + 2, size)
    if box is None:
        return
    (y0, y1, x0, x1), (px, py) = box
    if shape == "circle":
        distance = np.hypot(px - cx, py - cy) - rad
    else:
        distance = _polygon_distance(px - cx, py - cy, outline(shape, rad, angle))
    alpha = np.clip(0.5 - distance, 0.0, 1.0)[..., None]
    frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - alpha) + colour * alpha


def _box(cx: float, cy: float, reach: float, size: int):
    """The pixel window within `reach` of (cx, cy), and its pixel centres (px, py) as (h, w) grids."""
    x0, x1 = max(0, int(cx - reach)), min(size, int(math.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(cy - reach)), min(size, int(math.ceil(cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    py, px = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    return (y0, y1, x0, x1), (px, py)


def _polygon_distance(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance from the points (px, py) to a closed polygon (negative inside): the nearest edge's
    distance, signed by the even-odd crossing rule (which a star, not convex, needs)."""
    distance = np.full(px.shape, np.inf, np.float32)
    inside = np.zeros(px.shape, bool)
    for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, 1, axis=0)):
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        s = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        distance = np.minimum(distance, np.hypot(wx - ex * s, wy - ey * s))
        crosses = (ay > py) != (by > py)  # this edge spans the point's row (never when ay == by)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = ax + (py - ay) * ex / (by - ay)
        inside ^= crosses & (px < x_cross)
    return np.where(inside, -distance, distance)


# ----- fireworks -------------------------------------------------------------------------------------------------


def _paint_fireworks(out: np.ndarray, fireworks: Fireworks, rng: np.random.Generator, *, over: Thing | None,
                     centred: bool = False) -> None:
    palette = [name for name in COLOURS if over is None or name != over.colour]
    n_bursts = int(rng.integers(1, 3))
    spots = [(0.25, 0.75)] if n_bursts == 1 else [(0.2, 0.42), (0.58, 0.8)]
    if centred:  # one burst about the middle
        spots = [(0.5 - CENTRED_JITTER, 0.5 + CENTRED_JITTER)]
    bursts = []
    for lo, hi in spots:
        cx = rng.uniform(lo, hi)
        cy = rng.uniform(0.33, 0.38) if over is not None else rng.uniform(0.3, 0.45)
        if centred and over is None:
            cy = 0.4 + (cy - 0.375) * 0.4  # 0.37-0.43: the same draw, a band a code high at 40 pixels
        spread = rng.uniform(0.16, 0.20) if over is not None else rng.uniform(0.18, 0.24)
        rise = rng.uniform(0.06, 0.10) if over is not None else rng.uniform(0.06, 0.12)
        n = int(rng.integers(12, 21))
        theta = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 2 * math.pi / n, size=n)
        speed = rng.uniform(0.4, 1.0, size=n)  # a shell of mixed speeds, not a ring of touching dots
        # velocities (n,) each, less their mean: momentum is conserved, so the cloud's centre is the burst's
        vx, vy = speed * np.cos(theta), speed * np.sin(theta)
        vx, vy = vx - vx.mean(), vy - vy.mean()
        top = np.hypot(vx, vy).max()
        vx, vy = vx / top, vy / top  # spread is the fastest particle's reach
        # the burst stays in frame: its fastest particle (speed <= 1 + the mean taken away) too
        spread = min(spread, min(cx - 0.03, 0.97 - cx, cy - rise - 0.03) / np.hypot(vx, vy).max())
        names = [fireworks.colour] * n if fireworks.colour else [palette[i] for i in rng.integers(len(palette), size=n)]
        bursts.append(Burst(cx, cy, spread, rise, vx, vy, names, PARTICLE_RADIUS))
    _paint_bursts(out, bursts)


class Burst(NamedTuple):
    """One burst in frame units: its centre, the fastest particle's reach, how far it rises, the particles'
    unit velocities (n,) each, their colour names and their radius (at least 0.9 pixels when drawn)."""

    cx: float
    cy: float
    spread: float
    rise: float
    vx: np.ndarray
    vy: np.ndarray
    colours: list[str]
    radius: float


def canonical_burst(fireworks: Fireworks, *, over: Thing | None) -> Burst:
    """The canonical layout's burst: at the middle (over a thing: above it), CANONICAL_SPARKS sparks evenly
    round, every other one slower (two rings, so neighbours never touch)."""
    n = CANONICAL_SPARKS
    theta = -math.pi / 2 + np.arange(n) * 2 * math.pi / n
    speed = np.where(np.arange(n) % 2 == 0, 1.0, 0.6)
    # many colours: three hues far apart (the thing's left out), each on neighbouring sparks, which a VQGAN's
    # codes keep apart where single sparks of many colours wash out to white
    hues = [name for name in COLOURS if name not in ("white", over.colour if over else None)][::2][:3]
    names = [fireworks.colour] * n if fireworks.colour else [hues[i * len(hues) // n] for i in range(n)]
    cy, spread, rise = (0.36, 0.19, 0.08) if over is not None else (0.42, 0.23, 0.09)
    return Burst(0.5, cy, spread, rise, speed * np.cos(theta), speed * np.sin(theta), names, CANONICAL_SPARK_RADIUS)


def _paint_bursts(out: np.ndarray, bursts: list[Burst]) -> None:
    frames, size = out.shape[0], out.shape[1]
    # Burst time s runs 0.2 -> 1 over the clip: at 0 all particles would sit on one pixel.
    s = np.linspace(0.2, 1.0, frames)
    reach = 1 - (1 - s) ** 2  # ease-out: particles fly out fast, then slow down
    brightness = 1 - 0.65 * s ** 1.3  # ~0.93 -> 0.35
    for burst in bursts:
        colours = np.array([COLOURS[name] for name in burst.colours], np.float32)
        rp = max(0.9, burst.radius * size)
        for f in range(frames):
            # particle centres in pixels: (n,) each
            px = (burst.cx + burst.spread * reach[f] * burst.vx) * size
            py = (burst.cy - burst.rise * s[f] + burst.spread * reach[f] * burst.vy) * size
            for i in range(len(colours)):
                box = _box(px[i], py[i], rp + 1.5, size)
                if box is None:
                    continue
                (y0, y1, x0, x1), (gx, gy) = box
                alpha = np.clip(0.5 - (np.hypot(gx - px[i], gy - py[i]) - rp), 0.0, 1.0)[..., None]
                # light adds up to the brightest: a particle over another never darkens it
                out[f, y0:y1, x0:x1] = np.maximum(out[f, y0:y1, x0:x1], colours[i] * brightness[f] * alpha)
