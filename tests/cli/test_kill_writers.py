"""A writer killed outright (SIGKILL: no handler, no cleanup) leaves a recognisable temporary at most, and
the next run of the same command removes it and publishes a whole output.

Each test starts a command, kills it the moment its temporary appears, checks that the kill really
caught it mid-write (a temporary is left, the output is absent), then runs the same command again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT

pytestmark = pytest.mark.sigkill

MARK = ".lwm-tmp-"


def _start(env, args, cwd):
    return subprocess.Popen([sys.executable, "-m", "lwm_cli", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _temporaries(directory) -> list[str]:
    found = []
    for base, dirs, files in os.walk(directory):
        found += [os.path.join(base, n) for n in dirs + files if MARK in n]
    return found


def _kill_mid_write(env, args, cwd, watch, tries: int = 3) -> list[str]:
    """Run `args`, SIGKILL it as soon as a temporary shows up under `watch`; the temporaries left."""
    for _ in range(tries):
        proc = _start(env, args, cwd)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if any(os.path.isfile(p) or os.listdir(p) for p in _temporaries(watch)):  # bytes being written
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.communicate(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            left = _temporaries(watch)
            if left:
                return left
        assert proc.returncode in (0, -signal.SIGKILL), proc.returncode
    pytest.fail(f"never caught {' '.join(args)} mid-write in {tries} tries")


def _finish(env, args, cwd) -> None:
    out = subprocess.run([sys.executable, "-m", "lwm_cli", *args], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def env(cli_env):
    return dict(cli_env, PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def hf_dir(env, tmp_path_factory):
    """A Hugging Face directory of the debug preset in float32 (~12 MB)."""
    out = tmp_path_factory.mktemp("src") / "hf"
    _finish(env, ["convert", "jax2hf", "-m", "random:debug", "-o", str(out), "--dtype", "fp32"], out.parent)
    return out


def test_jax2hf(env, tmp_path):
    pytest.importorskip("torch")
    args = ["convert", "jax2hf", "-m", "random:debug", "-o", "hf", "--dtype", "fp32", "--max-shard-size", "3MB"]
    left = _kill_mid_write(env, args, tmp_path, tmp_path)
    assert all(os.path.basename(p).startswith(".hf" + MARK) for p in left), left
    assert not (tmp_path / "hf").exists()
    _finish(env, args, tmp_path)
    assert _temporaries(tmp_path) == []
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize("layout", ["params", "native"])
def test_hf2jax(env, hf_dir, tmp_path, layout):
    out = tmp_path / "model"
    (out).mkdir()  # an existing folder: params is written on its own beside config.json
    target = out / "params" if layout == "params" else tmp_path / "native"
    args = ["convert", "hf2jax", "-m", str(hf_dir), "-o", str(target), "--format", layout]
    _kill_mid_write(env, args, tmp_path, tmp_path)
    assert not target.exists()
    _finish(env, args, tmp_path)
    assert _temporaries(tmp_path) == []
    import lwm_core

    spec = str(out) if layout == "params" else str(target)
    model = lwm_core.load_model(spec, mesh="1,1,1,1")
    import json

    hf_config = json.loads((hf_dir / "config.json").read_text())
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == \
        (hf_config["num_hidden_layers"], hf_config["hidden_size"], hf_config["vocab_size"])


def test_killed_replacement_keeps_the_old_output_whole(env, hf_dir, tmp_path):
    """--force over an existing output: killed mid-write, the old output is still there, complete."""
    args = ["convert", "hf2jax", "-m", str(hf_dir), "-o", "native", "--format", "native"]
    _finish(env, args, tmp_path)
    before = sorted(os.listdir(tmp_path / "native"))
    _kill_mid_write(env, [*args, "--force"], tmp_path, tmp_path)
    assert sorted(os.listdir(tmp_path / "native")) == before
    _finish(env, [*args, "--force"], tmp_path)
    assert _temporaries(tmp_path) == [] and sorted(os.listdir(tmp_path / "native")) == before
