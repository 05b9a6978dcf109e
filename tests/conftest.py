"""Test setup: 8 fake CPU devices (set before jax is first imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "lwm_reference"


@pytest.fixture(scope="session")
def reference():
    """The original LWM code's checkpoint (`params`), its config and its logits for `ids`."""
    import numpy as np

    from lwm_core.config import load_config_file

    data = np.load(REFERENCE / "logits.npz")
    return {"params": str(REFERENCE / "params"), "config": load_config_file(str(REFERENCE / "config.json")),
            "ids": data["ids"], "logits": data["logits"]}


COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Seconds a test waits for a step of a subprocess (a load, a compile, a reply to stop) before calling it
# hung: generous, because the suite must pass on a 2-core machine with another CPU-bound job beside it
# (load average ~4), where a compile that takes 10 s alone can take a minute.
LOADED = 300


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache with huggingface_hub in offline mode.

    huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE into `constants` when it is imported, and
    hf_hub_download looks them up there at call time: patch both the environment and the constants.
    """
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache, repo, files: dict[str, bytes], revision="main"):
    """Lay out a repo the way hf_hub_download leaves it: refs/<rev>, blobs, snapshot symlinks."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / revision).write_text(COMMIT)
    (root / "blobs").mkdir()
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for i, (name, data) in enumerate(files.items()):
        blob = root / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)
    return snapshot




@pytest.fixture(scope="session")
def cli_env(tmp_path_factory):
    """Environment of the `lwm` subprocesses: this checkout on PYTHONPATH, one CPU device (conftest's
    8 fake devices are for in-process tests), a shared compilation cache, no colours."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu", NO_COLOR="1", TERM="dumb", COLUMNS="200",
               HF_HUB_OFFLINE="1", JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("LWM_DEBUG", None)
    return env


def lwm(env, *args, input: str = "", timeout: float = LOADED) -> subprocess.CompletedProcess:
    """Run `python -m lwm_cli ARGS` with `input` on stdin (never the test runner's terminal)."""
    return subprocess.run([sys.executable, "-m", "lwm_cli", *args], input=input, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


