"""The shipped demo weights are what their recipes make: rerunning each recipe's first steps (docs/demo.md)
reproduces the first losses of the training curve shipped beside the weights. Slow: it remakes the
worlds and the encoded data (minutes on 2 cores)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from lwm_core import builtin

pytestmark = pytest.mark.slow


def _shipped(name: str):
    return pytest.mark.skipif(not builtin.MODELS[name].installed, reason=f"{name} not shipped")


def _lwm(env, cwd, *args):
    result = subprocess.run([sys.executable, "-m", "lwm_cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=3600)
    assert result.returncode == 0, result.stderr
    return result


def _first_steps(env, cwd, metrics, steps: int, *args) -> list[dict]:
    """Run the recipe's command as it is, SIGTERM it once `metrics` has logged `steps` (it saves and exits
    130), and return the losses logged: the first steps of the very run the recipe makes."""
    process = subprocess.Popen([sys.executable, "-m", "lwm_cli", *args], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.exists() and any(m["step"] >= steps for m in _curve(metrics)):
                process.send_signal(signal.SIGTERM)
                break
            time.sleep(2)
        _, err = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode in (0, 130), err
    return _curve(metrics)


def _curve(path) -> list[dict]:
    return [m for m in map(json.loads, open(path)) if "loss" in m]


def _close(got: list[dict], shipped: list[dict], steps: int) -> None:
    shipped = {m["step"]: m["loss"] for m in shipped if m["step"] <= steps}
    got = {m["step"]: m["loss"] for m in got if m["step"] in shipped}
    assert got and got.keys() == shipped.keys()
    for step in shipped:  # the same data, seeds and program: equal up to float32 reassociation
        assert got[step] == pytest.approx(shipped[step], rel=2e-3), (step, got[step], shipped[step])


@_shipped(builtin.VISION)
def test_the_vision_recipe_reproduces_the_shipped_curves(cli_env, tmp_path):
    model = builtin.resolve(builtin.VISION)
    # VQGAN: the world of 300 clips and the recipe's command, its first 50 steps
    _lwm(cli_env, tmp_path, "world", "make", "-o", "demo/world", "--clips", "300", "--size", "40")
    got = _first_steps(cli_env, tmp_path, tmp_path / "demo" / "vqgan" / "metrics.jsonl", 50,
                       "vqgan", "train", "demo/world", "-o", "demo/vqgan", "--steps", "2400")
    _close(got, _curve(f"{model}/vqgan/training.jsonl"), 50)
    # the language model: its (canonical) world, encoded by the shipped VQGAN, the first 50 steps of its config
    _lwm(cli_env, tmp_path, "world", "make", "-o", "demo/world-lm", "--clips", "4000", "--frames", "8", "--size", "40",
         "--layout", "canonical", "--seed", "1")
    _lwm(cli_env, tmp_path, "vqgan", "encode", "--manifest", "demo/world-lm/captions.jsonl", "-m", f"{model}/vqgan",
         "--chat", "-o", "demo/vision.jsonl")
    # the third stage's lines (lwm train checks every stage's data before it starts)
    _lwm(cli_env, tmp_path, "world", "make", "-o", "demo/world-things", "--clips", "8400", "--frames", "8", "--size",
         "40", "--layout", "canonical", "--kinds", "thing", "--seed", "2")
    _lwm(cli_env, tmp_path, "vqgan", "encode", "--manifest", "demo/world-things/captions.jsonl", "-m",
         f"{model}/vqgan", "--chat", "--tasks", "video", "-o", "demo/vision-things.jsonl")
    config = tmp_path / "configs" / "demo" / "vision.toml"
    config.parent.mkdir(parents=True)
    config.write_text((ROOT / "configs" / "demo" / "vision.toml").read_text())
    got = _first_steps(cli_env, tmp_path, tmp_path / "runs" / "demo-vision" / "1" / "metrics.jsonl", 50,
                       "train", str(config))
    _close(got, [m for m in _curve(f"{model}/training.jsonl") if m["stage"] == "1"], 50)


@_shipped(builtin.TEXT)
def test_the_text_recipe_reproduces_the_shipped_curve(cli_env, tmp_path):
    model = builtin.resolve(builtin.TEXT)
    # the recipe's data, by the commands docs/demo.md gives (lwm train checks every stage's data before it
    # starts), then the first stage's first 50 steps: the later stages start from its final weights
    doc = (ROOT / "docs" / "demo.md").read_text()
    section = doc[doc.index("## lwm-demo-text"):]
    makes = [line.split()[1:] for line in section.splitlines() if line.startswith("lwm needle make ")]
    assert len(makes) == 4, makes
    tokenizer = str(ROOT / "lwm_core" / "assets" / "tokenizer.model")
    for args in makes:
        _lwm(cli_env, tmp_path, *[tokenizer if a == "$T" else a for a in args])
    config = tmp_path / "configs" / "demo" / "text.toml"
    config.parent.mkdir(parents=True)
    config.write_text((ROOT / "configs" / "demo" / "text.toml").read_text())
    got = _first_steps(cli_env, tmp_path, tmp_path / "runs" / "demo-text" / "256" / "metrics.jsonl", 50,
                       "train", str(config))
    shipped = [m for m in _curve(f"{model}/training.jsonl") if m["stage"] == "256"]
    _close(got, shipped, 50)
