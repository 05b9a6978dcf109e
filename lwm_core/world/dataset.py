"""A world on disk: `sample_specs` picks scenes that cover the grammar evenly, `write_world` renders them
into a directory of H.264 clips and their captions.

    DIR/clips/00000.mp4 ...     H.264 yuv420p (lwm_core.vision.media.write_video)
    DIR/captions.jsonl          {"path", "caption", "seed", "shape", "colour", "motion", "fireworks",
                                 "fireworks_colour"} per clip, in clip order

The directory is published at once (`checkpoint.atomic.atomic_dir`): a failure or Ctrl-C part way leaves
no directory (or the old one, with --force), never half a world.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from lwm_core.world.grammar import COLOURS, MOTIONS, ROTATION_FREE, SHAPES, Fireworks, Scene, Thing
from lwm_core.world.render import DEFAULT_FRAMES, DEFAULT_SIZE, LAYOUTS, check_shape, render

# Of every 10 clips: 6 of a thing, 1 of fireworks, 3 of fireworks over a thing (the motions are the
# things' and need most examples; fireworks alone have only 9 captions).
KIND_BLOCK = ("thing",) * 6 + ("fireworks",) + ("over",) * 3
KINDS = ("thing", "fireworks", "over")
CAPTIONS = "captions.jsonl"
CLIPS = "clips"


def all_scenes() -> dict[str, list[Scene]]:
    """Every scene of the grammar, by kind: "thing" (280), "fireworks" (9) and "over" (256)."""
    things = [Thing(shape, colour, motion) for colour, shape, motion in itertools.product(COLOURS, SHAPES, MOTIONS)
              if not (motion == "rotating" and shape in ROTATION_FREE)]
    fireworks = [Fireworks(colour) for colour in (None, *COLOURS)]
    over = [Scene(Thing(shape, colour), bursts) for colour, shape in itertools.product(COLOURS, SHAPES)
            for bursts in fireworks if bursts.colour != colour]
    return {"thing": [Scene(thing=t) for t in things], "fireworks": [Scene(fireworks=f) for f in fireworks],
            "over": over}


def sample_specs(n: int, seed: int, kinds: Sequence[str] = KINDS) -> list[tuple[Scene, int]]:
    """`n` (scene, clip seed) pairs: kinds in blocks of KIND_BLOCK (shuffled per block) with the kinds not in
    `kinds` left out, and within a kind every scene once, in a seeded order, before any comes again. Clip i
    depends only on `seed`, `kinds` and i, so a bigger world starts with the clips of a smaller one."""
    kinds = check_kinds(kinds)
    scenes = all_scenes()
    order = {kind: np.random.default_rng([seed, k]).permutation(len(items))
             for k, (kind, items) in enumerate(scenes.items())}
    block_kinds = tuple(kind for kind in KIND_BLOCK if kind in kinds)
    used = dict.fromkeys(scenes, 0)
    out = []
    for block in range((n + len(block_kinds) - 1) // len(block_kinds)):
        for kind in np.random.default_rng([seed, 1000 + block]).permutation(block_kinds):
            if len(out) == n:
                break
            i = used[kind]
            used[kind] += 1
            scene = scenes[kind][order[kind][i % len(order[kind])]]
            clip_seed = int(np.random.SeedSequence([seed, len(out)]).generate_state(1)[0])
            out.append((scene, clip_seed))
    return out


def check_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """`kinds` (a sequence, or comma-separated) in KINDS' order; an unknown or missing kind is refused in one
    line."""
    from lwm_core.text import choices

    return choices(kinds, KINDS, "kind of scene", " (a thing alone, fireworks alone, fireworks over a thing)")


def caption_line(file: str, scene: Scene, seed: int) -> str:
    return json.dumps({"path": file, "caption": scene.caption, "seed": seed, **scene.to_dict()}) + "\n"


def write_world(directory: str, n: int, *, seed: int = 0, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE,
                layout: str = LAYOUTS[0], kinds: Sequence[str] = KINDS, fps: float = 8, overwrite: bool = False,
                on_clip: Optional[Callable[[int], None]] = None, stop: Optional[Callable[[], bool]] = None) -> bool:
    """Render `n` clips of `sample_specs(n, seed, kinds)` into `directory` (layout above), atomically, each placed
    as `layout` says (`render`'s: "anywhere", "centred" or "canonical"). `on_clip(i)` after clip i; `stop()` is asked
    after each clip: True abandons the world (nothing is written) and returns False. Returns True when the
    world was published."""
    from lwm_core.checkpoint.atomic import atomic_dir, check_target, write_text
    from lwm_core.errors import LWMError
    from lwm_core.vision.media import write_video

    if n < 1:
        raise LWMError(f"a world needs at least one clip, got {n}")
    check_shape(frames, size, layout)
    specs = sample_specs(n, seed, kinds)
    check_target(directory, kind="dir", overwrite=overwrite)
    lines = []
    try:
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            os.mkdir(os.path.join(tmp, CLIPS))
            for i, (scene, clip_seed) in enumerate(specs):
                name = f"{CLIPS}/{i:05d}.mp4"
                write_video(os.path.join(tmp, name), render(scene, clip_seed, frames=frames, size=size, layout=layout),
                            fps=fps)
                lines.append(caption_line(name, scene, clip_seed))
                if on_clip is not None:
                    on_clip(i)
                if stop is not None and stop():
                    raise _Stopped
            write_text(os.path.join(tmp, CAPTIONS), "".join(lines))
    except _Stopped:
        return False
    return True


class _Stopped(Exception):
    """Raised inside `atomic_dir` so that it removes the half-made world."""
