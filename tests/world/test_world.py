"""The synthetic world: grammar round trips, seeded rendering, the detector's verdicts on real clips (raw and
after H.264), on mismatched captions and on noise, the world directory on disk, and `lwm world`."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # the detector helper beside this file (tests have no packages)

from detector import detect, matches  # noqa: E402

from helpers import lwm  # noqa: E402
from lwm_core.errors import LWMError  # noqa: E402
from lwm_core.vision.media import read_video_frames, write_video  # noqa: E402
from lwm_core.world import (  # noqa: E402
    COLOURS,
    MOTIONS,
    SHAPES,
    Fireworks,
    Scene,
    Thing,
    all_scenes,
    parse_caption,
    render,
    sample_specs,
    write_world,
)

N_CLIPS = 48


@pytest.fixture(scope="module")
def clips():
    """N_CLIPS (scene, frames) of a world at the defaults (16 frames, 64 x 64)."""
    return [(scene, render(scene, seed)) for scene, seed in sample_specs(N_CLIPS, seed=11)]


@pytest.fixture(scope="module")
def decoded(clips, tmp_path_factory):
    """The same clips after H.264 (media.write_video) and back: one video of all of them, one encode and one
    decode, the clips cut apart again (x264 starts a new picture group at each cut, as it would in a file)."""
    path = str(tmp_path_factory.mktemp("mp4") / "all.mp4")
    write_video(path, np.concatenate([frames for _, frames in clips]), fps=8)
    back = read_video_frames(path, max_frames=10_000)
    assert back.shape == (N_CLIPS * 16, 64, 64, 3)
    return [(scene, back[i * 16:(i + 1) * 16]) for i, (scene, _) in enumerate(clips)]


# ----- grammar ---------------------------------------------------------------------------------------------------


def test_every_scene_of_the_grammar_round_trips_through_its_caption():
    scenes = all_scenes()
    assert {kind: len(items) for kind, items in scenes.items()} == {"thing": 280, "fireworks": 9, "over": 256}
    captions = set()
    for scene in (s for items in scenes.values() for s in items):
        assert parse_caption(scene.caption) == scene
        assert parse_caption(scene.caption).caption == scene.caption
        assert Scene.from_dict(scene.to_dict()) == scene
        captions.add(scene.caption)
    assert len(captions) == 545  # one caption per scene
    assert parse_caption("a red circle moving left") == Scene(Thing("circle", "red", "left"))
    assert parse_caption("green fireworks") == Scene(fireworks=Fireworks("green"))
    assert parse_caption("fireworks over a blue square") == Scene(Thing("square", "blue"), Fireworks())
    assert Scene(Thing("square", "orange", "rotating")).caption == "an orange square rotating"
    # forgiving of case, spaces, a full stop and the article
    assert parse_caption("  A Red  Star bouncing. ") == parse_caption("a red star bouncing")
    assert parse_caption("a orange circle").caption == "an orange circle"


@pytest.mark.parametrize("caption, message", [
    ("a pink circle", "unknown colour 'pink'"),
    ("a red hexagon moving left", "unknown shape 'hexagon'"),
    ("a red circle dancing", "unknown motion 'dancing'"),
    ("sparkly fireworks", "unknown colour 'sparkly'"),
    ("", "'nothing' is not 'a COLOUR SHAPE"),
    ("a red circle rotating", "a circle looks the same at every angle"),
    ("fireworks over a red square moving left", "over a thing that stands still"),
    ("red fireworks over a red square", "cannot be told apart"),
])
def test_captions_outside_the_grammar_are_one_line_errors_naming_it(caption, message):
    with pytest.raises(LWMError, match=message) as info:
        parse_caption(caption)
    assert "\n" not in str(info.value)
    if "unknown" in message:  # not a word of the grammar: the message lists the words
        assert all(word in str(info.value) for word in (*COLOURS, *SHAPES, "moving left", "fireworks"))


def test_specs_are_frozen_and_checked():
    thing = Thing("square", "red", "left")
    with pytest.raises(dataclasses.FrozenInstanceError):
        thing.colour = "blue"
    with pytest.raises(LWMError, match="unknown motion 'spinning'"):
        Thing("square", "red", "spinning")
    with pytest.raises(LWMError, match="a scene needs"):
        Scene()


# ----- rendering and sampling ------------------------------------------------------------------------------------


def test_rendering_is_deterministic_by_seed_and_scales():
    scene = parse_caption("fireworks over a blue square")
    a, b, c = render(scene, 5), render(scene, 5), render(scene, 6)
    assert a.dtype == np.uint8 and a.shape == (16, 64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for size, frames in ((128, 8), (256, 12)):
        big = render(parse_caption("a green star rotating"), 3, frames=frames, size=size)
        assert big.shape == (frames, size, size, 3)
        assert detect(big) == parse_caption("a green star rotating")
    with pytest.raises(LWMError, match="frames must be from 8"):
        render(scene, 0, frames=4)


def test_the_centred_layout_moves_things_to_the_middle_and_keeps_the_rest_of_the_draw():
    """The centred world: each thing's path and the single burst about the middle, its size, speed and turn
    those of the same seed anywhere; every clip still shows its caption."""
    from lwm_core.world.render import CENTRED_JITTER, thing_track

    for scene, seed in sample_specs(60, seed=5):
        anywhere = render(scene, seed, frames=8, size=40)
        centred = render(scene, seed, frames=8, size=40, layout="centred")
        assert matches(scene.caption, centred), scene.caption
        if scene.thing is None:
            continue
        over = scene.fireworks is not None
        x, y, radius, angle = thing_track(scene.thing, np.random.default_rng(seed), 8, over=over, centred=True)
        x0, y0, radius0, angle0 = thing_track(scene.thing, np.random.default_rng(seed), 8, over=over)
        assert np.array_equal(radius, radius0) and np.array_equal(angle, angle0)
        assert np.allclose(np.ptp(x), np.ptp(x0)) and np.allclose(np.ptp(y), np.ptp(y0))  # the same travel
        mid = 0.5 + CENTRED_JITTER + 1e-9
        if scene.thing.motion != "bouncing":  # a bounce fills its axis: only the other one is centred
            assert abs((x.max() + x.min()) / 2 - 0.5) <= mid - 0.5
            assert over or abs((y.max() + y.min()) / 2 - 0.5) <= mid - 0.5
        assert not np.array_equal(anywhere, centred) or x0[0] == x[0]
    with pytest.raises(LWMError, match="unknown layout 'middle'; one of anywhere, centred, canonical"):
        render(parse_caption("a red star"), 0, layout="middle")


def test_the_canonical_layout_draws_one_clip_per_scene_that_shows_its_caption():
    """The canonical world: no draws (every seed gives the same clip), every scene of the grammar detected, each
    thing upright at one size, its path's middle at the frame's, a many-coloured burst of three hues."""
    from lwm_core.world.render import CANONICAL_RADIUS, canonical_burst, canonical_track

    scenes = [scene for items in all_scenes().values() for scene in items]
    for scene in scenes:
        clip = render(scene, 0, frames=8, size=40, layout="canonical")
        assert matches(scene.caption, clip), scene.caption
    for scene in scenes[::37]:
        assert np.array_equal(render(scene, 0, frames=8, size=40, layout="canonical"),
                              render(scene, 99, frames=8, size=40, layout="canonical"))
    x, y, radius, angle = canonical_track(Thing("square", "red", "left"), 8)
    assert np.allclose(radius, CANONICAL_RADIUS) and np.allclose(angle, np.pi / 4)  # sides level with the frame
    assert x[0] > 0.5 > x[-1] and np.isclose((x[0] + x[-1]) / 2, 0.5) and np.allclose(y, 0.5)
    burst = canonical_burst(Fireworks(None), over=Thing("triangle", "red"))
    assert len(set(burst.colours)) == 3 and not {"red", "white"} & set(burst.colours)


def test_sample_specs_cover_the_grammar_evenly_and_extend_a_smaller_world():
    specs = sample_specs(200, seed=0)
    assert specs == sample_specs(200, seed=0) and specs[:37] == sample_specs(37, seed=0)
    assert specs != sample_specs(200, seed=1)
    scenes = [scene for scene, _ in specs]
    kinds = [("over" if s.thing else "fireworks") if s.fireworks else "thing" for s in scenes]
    assert [kinds.count(k) for k in ("thing", "fireworks", "over")] == [120, 20, 60]
    things = [s.thing for s in scenes if s.thing and not s.fireworks]
    assert len(set(things)) == len(things)  # 120 of 280: none twice yet
    assert {t.motion for t in things} == set(MOTIONS)
    assert {t.colour for t in things} == set(COLOURS) and {t.shape for t in things} == set(SHAPES)
    assert len({s.fireworks for s in scenes if s.fireworks and not s.thing}) == 9  # every colour, and many
    assert len({seed for _, seed in specs}) == 200


def test_sample_specs_of_some_kinds_keep_their_order_and_proportions():
    """kinds=: the clips of the kinds asked for, each kind's scenes in the same seeded turn as in a whole world
    (so a world of things alone holds every thing scene before any twice), the others' proportions kept."""
    things = sample_specs(600, seed=4, kinds=("thing",))
    assert all(s.thing and not s.fireworks for s, _ in things)
    assert len({s for s, _ in things[:280]}) == 280 and [s for s, _ in things[280:560]] == [s for s, _ in things[:280]]
    whole = [s for s, _ in sample_specs(600, seed=4) if s.thing and not s.fireworks]
    assert [s for s, _ in things[:len(whole)]] == whole
    mixed = [s for s, _ in sample_specs(400, seed=4, kinds=("over", "fireworks"))]
    assert sum(bool(s.thing) for s in mixed) == 300 and len(mixed) == 400  # 3 over to 1 fireworks alone
    for bad, match in ((("things",), "unknown kind of scene 'things': choose from thing, fireworks, over"),
                       ((), "no kind of scene given")):
        with pytest.raises(LWMError, match=match):
            sample_specs(10, seed=0, kinds=bad)


# ----- the detector ----------------------------------------------------------------------------------------------


def _accuracy(pairs) -> float:
    return sum(matches(scene.caption, frames) for scene, frames in pairs) / len(pairs)


def test_detector_recognises_real_clips_raw_and_after_h264(clips, decoded):
    assert _accuracy(clips) >= 0.95
    assert _accuracy(decoded) >= 0.95


def _others(scene: Scene, field: str) -> list[Scene]:
    """The scenes of the grammar that differ from `scene` in one word: its colour, shape or motion."""
    if scene.thing is None:
        colours = [c for c in (None, *COLOURS) if c != scene.fireworks.colour]
        return [Scene(fireworks=Fireworks(c)) for c in colours] if field == "colour" else []
    allowed = {"colour": COLOURS, "shape": SHAPES, "motion": MOTIONS}[field]
    out = []
    for choice in allowed:
        if choice != getattr(scene.thing, field):
            try:
                out.append(Scene(dataclasses.replace(scene.thing, **{field: choice}), scene.fireworks))
            except LWMError:  # not in the grammar (a rotating circle, fireworks over a moving thing)
                pass
    return out


def test_detector_rejects_mismatched_captions_noise_and_blank(decoded):
    rng = np.random.default_rng(0)
    tried = wrong = 0
    for scene, frames in decoded:
        seen = detect(frames)
        for field in ("colour", "shape", "motion"):
            others = _others(scene, field)
            if others:
                tried += 1
                wrong += seen == others[rng.integers(len(others))]
        assert not matches("a pink circle", frames)  # no caption of the grammar: matches nothing
    assert tried >= 100 and wrong / tried <= 0.02
    for i in range(4):
        noise = np.random.default_rng(i).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
        assert detect(noise) is None
    assert detect(np.zeros((16, 64, 64, 3), np.uint8)) is None
    # a still frame of a moving thing: the right thing, standing still
    scene, frames = next((s, f) for s, f in decoded if s.thing and s.thing.motion in ("left", "right", "up", "down"))
    still = np.repeat(frames[:1], 16, axis=0)
    assert detect(still) == Scene(dataclasses.replace(scene.thing, motion="still"))
    assert not matches(scene.caption, still)


# ----- the world on disk -----------------------------------------------------------------------------------------


def test_write_world_publishes_clips_and_captions_at_once(tmp_path):
    out = tmp_path / "world"
    assert write_world(str(out), 4, seed=3, frames=8, size=64, fps=8)
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [line["path"] for line in lines] == [f"clips/{i:05d}.mp4" for i in range(4)]
    assert sorted(os.listdir(out / "clips")) == [f"{i:05d}.mp4" for i in range(4)]
    for line, (scene, seed) in zip(lines, sample_specs(4, seed=3)):
        assert line == {"path": line["path"], "caption": scene.caption, "seed": seed, **scene.to_dict()}
        frames = read_video_frames(str(out / line["path"]), max_frames=100)
        assert frames.shape == (8, 64, 64, 3)
        assert np.abs(frames.astype(int) - render(scene, seed, frames=8)).mean() < 3  # H.264 at CRF 18
    with pytest.raises(LWMError, match="already exists; pass --force"):
        write_world(str(out), 2)
    # stopped part way: the old world stays whole, no temporary is left
    before = (out / "captions.jsonl").read_bytes()
    assert not write_world(str(out), 3, frames=8, overwrite=True, stop=lambda: True)
    assert (out / "captions.jsonl").read_bytes() == before and os.listdir(tmp_path) == ["world"]


def test_cli_world_make_and_show(cli_env, tmp_path):
    out = tmp_path / "w"
    run = lwm(cli_env, "world", "make", "-o", str(out), "--clips", "3", "--frames", "8", "--seed", "2")
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{out}\n" and "wrote" in run.stderr
    assert len((out / "captions.jsonl").read_text().splitlines()) == 3
    again = lwm(cli_env, "world", "make", "-o", str(out), "--clips", "3")
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "pass --force" in again.stderr
    fireworks = tmp_path / "f"
    run = lwm(cli_env, "world", "make", "-o", str(fireworks), "--clips", "2", "--frames", "8", "--size", "32",
              "--kinds", "fireworks")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in (fireworks / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["caption"].endswith("fireworks") for line in lines)

    clip = tmp_path / "clip.mp4"
    run = lwm(cli_env, "world", "show", "a red square moving right", "-o", str(clip), "--seed", "4")
    assert run.returncode == 0 and run.stdout == f"{clip}\n", run.stderr
    frames = read_video_frames(str(clip), max_frames=100)
    assert frames.shape == (16, 64, 64, 3) and matches("a red square moving right", frames)

    centred = lwm(cli_env, "world", "show", "a red square moving right", "-o", str(tmp_path / "c.mp4"), "--seed", "4",
                  "--layout", "centred", "--frames", "8", "--size", "40")
    assert centred.returncode == 0, centred.stderr
    assert matches("a red square moving right", read_video_frames(str(tmp_path / "c.mp4"), max_frames=100))
    canonical = lwm(cli_env, "world", "show", "green fireworks", "-o", str(tmp_path / "k.mp4"), "--layout", "canonical",
                    "--frames", "8", "--size", "40")
    assert canonical.returncode == 0, canonical.stderr
    assert matches("green fireworks", read_video_frames(str(tmp_path / "k.mp4"), max_frames=100))
    layout = lwm(cli_env, "world", "show", "a red star", "-o", str(tmp_path / "l.mp4"), "--layout", "middle")
    assert layout.returncode == 1 and layout.stderr.count("\n") == 1 and "unknown layout 'middle'" in layout.stderr
    assert not (tmp_path / "l.mp4").exists()

    bad = lwm(cli_env, "world", "show", "a pink circle", "-o", str(tmp_path / "bad.mp4"))
    assert bad.returncode == 1 and bad.stdout == "" and bad.stderr.count("\n") == 1
    assert "unknown colour 'pink'" in bad.stderr and "colours: red, orange" in bad.stderr
    assert not (tmp_path / "bad.mp4").exists()
    usage = lwm(cli_env, "world", "make", "-o", str(tmp_path / "x"), "--frames", "2")
    assert usage.returncode == 2 and not (tmp_path / "x").exists()
    kinds = lwm(cli_env, "world", "make", "-o", str(tmp_path / "x"), "--kinds", "thing,sparks")
    assert kinds.returncode == 1 and kinds.stderr.count("\n") == 1 and "unknown kind of scene 'sparks'" in kinds.stderr
    assert not (tmp_path / "x").exists()
