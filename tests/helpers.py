"""Helpers shared by the tests (imported as `from helpers import ...`; fixtures live in conftest.py)."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "lwm_reference"

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Seconds a test waits for a step of a subprocess (a load, a compile, a reply to stop) before calling it
# hung: generous, because the suite must pass on a 2-core machine with another CPU-bound job beside it
# (load average ~4), where a compile that takes 10 s alone can take a minute.
LOADED = 300


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


def lwm(env, *args, input: str = "", timeout: float = LOADED) -> subprocess.CompletedProcess:
    """Run `python -m lwm_cli ARGS` with `input` on stdin (never the test runner's terminal)."""
    return subprocess.run([sys.executable, "-m", "lwm_cli", *args], input=input, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run `lwm ARGS` in this process (its 8 fake devices) -> (exit status, stdout, stderr)."""
    import pytest

    from lwm_cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
