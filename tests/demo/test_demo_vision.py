"""lwm-demo-vision, the shipped model, end to end: the README's first command on a fresh checkout without a
network; generated videos that the world detector (tests/world/detector.py, which knows only the palette
and the grammar) classifies as their captions; vision chat that names the colour and shape of held-out
clips; its VQGAN; and a caption outside its world, which still gives a clip and a note on stderr.

The prompts and held-out clips are scripts/ship_demo.py's, which measured the figures on the model's card."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, run_cli

sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "world"))

import detector  # noqa: E402
import ship_demo  # noqa: E402

from lwm_core import builtin  # noqa: E402

pytestmark = pytest.mark.skipif(not builtin.MODELS[builtin.VISION].installed,
                                reason="lwm-demo-vision is not in this checkout (docs/demo.md trains it)")


@pytest.fixture(scope="module")
def demo():
    import lwm_core

    lm = lwm_core.load_model(builtin.VISION, mesh="1,1,1,1")
    vqgan = lwm_core.load_vqgan(builtin.resolve(builtin.VISION) + "/vqgan", mesh="1,1,1,1")
    return lm, vqgan


# git and the CLI run as subprocesses once jax has started in this process (the fork is followed by an exec)
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_the_readme_first_command_runs_on_a_fresh_checkout_offline(cli_env, tmp_path):
    """`git clone` then the README's first command (the package installed from the clone is the checkout on
    PYTHONPATH here): a real H.264 mp4 of red fireworks, with no network and no download."""
    import imageio.v3 as iio

    readme = (ROOT / "README.md").read_text().splitlines()
    first = readme[readme.index("```bash") + 1]
    assert first.startswith("pip install -e . && lwm gen video ")
    command = first.split(" && ", 1)[1]
    assert command == 'lwm gen video "red fireworks" -o fireworks.mp4'
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the clone has what git tracks: the model must be committed, not just present in this working tree
    env = dict(cli_env, PYTHONPATH=str(clone))
    result = subprocess.run([sys.executable, "-m", "lwm_cli", "gen", "video", "red fireworks", "-o", "fireworks.mp4"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "fireworks.mp4\n" and "note:" not in result.stderr
    meta = iio.immeta(tmp_path / "fireworks.mp4", plugin="FFMPEG")
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["size"] == (40, 40)
    frames = np.stack(list(iio.imiter(tmp_path / "fireworks.mp4", plugin="FFMPEG")))
    assert frames.shape == (8, 40, 40, 3)
    assert detector.matches("red fireworks", frames)


@pytest.mark.slow  # 8 beams for 20 prompts: ~4 minutes on 2 cores (the card holds what ship_demo.py measured)
def test_generated_videos_show_their_captions(demo):
    """At least 80% of the videos of 20 prompts x 2 seeds match colour, shape and motion; a random model's
    match nothing (the detector measures something)."""
    import lwm_core

    lm, vqgan = demo
    result = ship_demo.measure_generation(lm, vqgan)
    assert result["clips"] == len(ship_demo.PROMPTS) * 2 >= 40
    assert result["rate"] >= 0.8, result["misses"]
    noise = lwm_core.load_model("random:tiny", config=lm.config, mesh="1,1,1,1", seed=3)
    assert ship_demo.measure_generation(noise, vqgan, seeds=(0,))["matched"] <= 2


def test_vision_chat_names_colour_and_shape_of_held_out_clips(demo):
    lm, vqgan = demo
    result = ship_demo.measure_chat(lm, vqgan, ship_demo.held_out_clips(20, vqgan.config.resolution))
    assert result["rate"] >= 0.8, result["misses"]


def test_lwm_chat_about_a_video_uses_the_demo_model(capsys, monkeypatch, tmp_path):
    """`lwm chat --video clip.mp4 "What happens in this video?"` with no -m: the built-in model answers."""
    import io

    from lwm_core.vision.media import write_video
    from lwm_core.world import parse_caption, render

    clip = tmp_path / "clip.mp4"
    scene = parse_caption("a yellow square moving left")
    write_video(str(clip), render(scene, seed=777, frames=8, size=40, layout="canonical"), fps=8)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))  # nothing piped: the question alone
    code, out, err = run_cli(capsys, "chat", "--video", clip, "What happens in this video?", "-t", "0")
    assert code == 0, err
    assert ship_demo.named(scene, out), out


def test_the_card_holds_what_was_measured():
    model = builtin.MODELS[builtin.VISION]
    quality = json.loads((ROOT / "lwm_core" / "assets" / "models" / builtin.VISION / "quality.json").read_text())
    card = model.card()
    gen = quality["generation"]
    assert f"{gen['matched']}/{gen['clips']} videos" in card and gen["rate"] >= 0.8
    assert "lwm train configs/demo/vision.toml" in card and "bfloat16" in card
    weights = ROOT / "lwm_core" / "assets" / "models" / builtin.VISION / "model.safetensors"
    assert weights.stat().st_size < 40 * 2**20
    with open(weights, "rb") as f:  # safetensors header: every tensor bf16
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}


def test_a_caption_outside_the_world_still_gives_a_clip_and_says_so(capsys, tmp_path):
    out = tmp_path / "cat.png"
    code, _, err = run_cli(capsys, "gen", "image", "a cat on a mat", "-o", out)
    assert code == 0, err
    assert out.is_file()
    assert "note: lwm-demo-vision knows only its synthetic world, and 'a cat on a mat' is outside it" in err
