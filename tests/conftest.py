"""Test setup: 8 fake CPU devices (set before jax is first imported) and shared fixtures."""

import os

# Eight fake devices share two cores in CI: one device's thread can wait at a collective's rendezvous
# far longer than on real hardware, and XLA:CPU aborts the whole process (no Python error, exit 134)
# once a wait passes its terminate timeout (tens of seconds by default). A slow machine is not a
# hang: the waits here are ten minutes, so a real deadlock still aborts well inside CI's time limit.
_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_cpu_collective_timeout_seconds=600",
          "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
          "--xla_cpu_collective_call_terminate_timeout_seconds=600")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_FLAGS]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import re  # noqa: E402
import signal  # noqa: E402

import pytest  # noqa: E402

from helpers import REFERENCE, ROOT  # noqa: E402

# SIGINT and SIGTERM as the test runner started with them.
_RUNNER_SIGNALS = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Every test ends with SIGINT and SIGTERM as the test runner started with them. An in-process command
    that was stopped leaves them ignored on purpose (lwm_cli._signals: the process is on its way out); in the
    test runner that would outlive the test, and every subprocess started later would inherit SIGINT ignored
    (Python then installs no KeyboardInterrupt handler in it: a REPL whose Ctrl-C at the prompt does
    nothing). The runner's own state, not the one a test found: a module-scoped fixture that stops a
    command runs before any test's setup, so the state a test finds may already be the ignored one."""
    yield
    for signum, handler in _RUNNER_SIGNALS.items():
        if handler is not None:
            signal.signal(signum, handler)


@pytest.fixture(scope="session")
def reference():
    """The original LWM code's checkpoint (`params`), its config and its logits for `ids`."""
    import numpy as np

    from lwm_core.config import load_config_file

    data = np.load(REFERENCE / "logits.npz")
    return {"params": str(REFERENCE / "params"), "config": load_config_file(str(REFERENCE / "config.json")),
            "ids": data["ids"], "logits": data["logits"]}


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
