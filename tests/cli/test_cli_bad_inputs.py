"""Bad input to any command, as a new user types it: a non-zero exit, exactly one `error:` line on stderr
that names the offending value, no traceback, nothing on stdout, and the file tree exactly as before
(no output, no temporary, no created parent directory).

Each case runs `lwm` in a fresh working directory that holds a few prepared inputs; the whole tree
under it (and the output paths named outside it) is compared before and after.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT

LATIN1 = "caf\xe9".encode("latin-1")


def _tree(root) -> dict[str, tuple[str, int]]:
    """Every path under root (hidden ones included) with its kind and size."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            out[os.path.relpath(path, root)] = ("dir" if os.path.isdir(path) else "file",
                                                0 if os.path.isdir(path) else os.path.getsize(path))
    return out


@pytest.fixture(scope="module")
def native_model(tmp_path_factory):
    """A small native model directory, whole."""
    import lwm_core

    path = tmp_path_factory.mktemp("models") / "tiny"
    lwm_core.load_model("random:tiny", mesh="1,1,1,1").save(str(path))
    return path


def _workspace(tmp_path, native_model):
    """The inputs the cases refer to, inside the directory the command runs in."""
    import shutil

    (tmp_path / "FILE").write_text("not a directory\n")
    (tmp_path / "existing").mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(native_model, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])  # a download cut short
    (tmp_path / "latin1.txt").write_bytes(LATIN1)


TINY = ("chat", "-m", "random:tiny")

# (id, argv, stdin bytes, exit code, text the one line must contain)
CASES = [
    ("temperature-nan", (*TINY, "-t", "nan", "hi"), b"", 2, "got nan"),
    ("temperature-inf", (*TINY, "-t", "inf", "hi"), b"", 2, "got inf"),
    ("seed-overflow", (*TINY, "--seed", "99999999999999999999", "hi"), b"", 2, "got 99999999999999999999"),
    ("seed-negative", (*TINY, "--seed", "-1", "hi"), b"", 2, "got -1"),
    ("random-empty-preset", ("chat", "-m", "random:", "hi"), b"", 1, "'random:' names no preset"),
    ("stdin-latin1", (*TINY, "summarise"), LATIN1, 1, "stdin is not UTF-8 text: byte 0xE9 at offset 3"),
    ("stdin-binary", (*TINY, "summarise"), bytes(range(256)), 1, "byte 0x80 at offset 128"),
    ("argument-latin1", (*TINY, LATIN1), b"", 1, "the PROMPT argument is not UTF-8 text: byte 0xE9 at offset 3"),
    ("system-latin1", (*TINY, "--system", LATIN1, "hi"), b"", 1, "--system is not UTF-8 text: byte 0xE9"),
    ("truncated-safetensors", ("chat", "-m", "broken", "hi"), b"", 1, "broken/model.safetensors"),
    ("model-empty-dir", ("chat", "-m", "existing", "hi"), b"", 1, "existing"),
    ("model-file-not-checkpoint", ("chat", "-m", "latin1.txt", "hi"), b"", 1, "latin1.txt"),
    ("jax2hf-output-is-file", ("convert", "jax2hf", "-m", "random:tiny", "-o", "FILE", "--force"), b"", 1,
     "output FILE is a file"),
    ("jax2hf-output-exists", ("convert", "jax2hf", "-m", "random:tiny", "-o", "existing"), b"", 1,
     "output existing already exists; pass --force"),
    ("jax2hf-missing-parents", ("convert", "jax2hf", "-m", "random:tiny", "-o", "no/such/dir/out"), b"", 1,
     "directory {cwd}/no/such/dir does not exist"),
    ("jax2hf-unwritable", ("convert", "jax2hf", "-m", "random:tiny", "-o", "/sys/fs/lwm-out"), b"", 1,
     "cannot write /sys/fs/lwm-out: Operation not permitted"),
    ("jax2hf-shard-size-0", ("convert", "jax2hf", "-m", "random:tiny", "-o", "out", "--max-shard-size", "0"),
     b"", 1, "size '0' is not positive"),
    ("jax2hf-tolerance-negative", ("convert", "jax2hf", "-m", "random:tiny", "-o", "out", "--verify",
                                   "--tolerance", "-1"), b"", 2, "got -1.0"),
    ("jax2hf-tolerance-nan", ("convert", "jax2hf", "-m", "random:tiny", "-o", "out", "--verify",
                              "--tolerance", "nan"), b"", 2, "got nan"),
    ("jax2hf-empty-preset", ("convert", "jax2hf", "-m", "random:", "-o", "out"), b"", 1, "'random:'"),
    ("hf2jax-missing", ("convert", "hf2jax", "-m", "/nonexistent", "-o", "out/params"), b"", 1,
     "/nonexistent does not exist"),
    ("hf2jax-file", ("convert", "hf2jax", "-m", "FILE", "-o", "out/params"), b"", 1, "FILE is a file"),
    ("hf2jax-missing-parents", ("convert", "hf2jax", "-m", "existing", "-o", "a/b/params"), b"", 1,
     "directory {cwd}/a/b does not exist"),
    ("hf2jax-not-hf", ("convert", "hf2jax", "-m", "existing", "-o", "out/params"), b"", 1,
     "existing has no config.json"),
]


@pytest.mark.parametrize("argv, stdin, code, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(cli_env, tmp_path, native_model, argv, stdin, code, expected):
    _workspace(tmp_path, native_model)
    before = _tree(tmp_path)
    out = subprocess.run([sys.executable, "-m", "lwm_cli", *argv], input=stdin, capture_output=True,
                         env=dict(cli_env, PYTHONPATH=str(ROOT)), cwd=tmp_path, timeout=300)
    stderr = out.stderr.decode("utf-8", "replace")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert out.returncode == code, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected.format(cwd=tmp_path) in lines[0]
    assert "Traceback" not in stderr and out.stdout == b""
    assert _tree(tmp_path) == before
    assert not os.path.exists("/sys/fs/lwm-out")


def test_a_mesh_that_leaves_devices_idle(cli_env, tmp_path):
    env = dict(cli_env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-m", "lwm_cli", *TINY, "--mesh", "1,1,1,3", "hi"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 1
    assert out.stderr.splitlines() == ["error: mesh 1,1,1,3 uses 3 of the 8 devices; make the sizes multiply to 8 "
                                       "(or use -1 for one axis), or make fewer devices visible (e.g. "
                                       "CUDA_VISIBLE_DEVICES)"]


def test_debug_after_the_command_shows_the_traceback(cli_env, tmp_path):
    """Errors say 'rerun with --debug'; users add it at the end of the line they ran."""
    out = subprocess.run([sys.executable, "-m", "lwm_cli", *TINY, "--preset", "7bb", "hi", "--debug"],
                         capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=300)
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr and "LWMError: unknown preset" in out.stderr
    # After `--` it is the question, not the option.
    from lwm_cli._errors import take_debug

    assert take_debug(["chat", "--debug", "--", "--debug"]) == (["chat", "--", "--debug"], True)
    assert take_debug(["chat", "hi"]) == (["chat", "hi"], False)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only filesystem (a tmpfs mounted ro), where this machine lets us mount one."""
    path = tmp_path / "ro"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_an_output_on_a_read_only_filesystem(cli_env, read_only_dir):
    out = subprocess.run([sys.executable, "-m", "lwm_cli", "convert", "jax2hf", "-m", "random:tiny", "-o",
                          str(read_only_dir / "hf")], capture_output=True, text=True, env=cli_env, timeout=300)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"error: cannot write {read_only_dir / 'hf'}: Read-only file system; "
                                       f"write somewhere writable"]
    assert not re.search(r"\.lwm-tmp-|\.tmp", out.stderr)


def test_a_failed_verify_publishes_nothing_and_keeps_the_old_output(cli_env, tmp_path):
    """--verify checks the files before they are moved into place: a mismatch (here: tolerance 0, which
    float32 round-off between two implementations never meets) leaves the previous output as it was."""
    pytest.importorskip("torch")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("the previous export\n")
    before = _tree(tmp_path)
    out = subprocess.run([sys.executable, "-m", "lwm_cli", "convert", "jax2hf", "-m", "random:tiny", "-o", "hf",
                          "--verify", "--tolerance", "0", "--force"], capture_output=True, text=True, env=cli_env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 1
    assert out.stderr.startswith("error: verification failed: logits differ by ") and out.stderr.count("\n") == 1
    assert "MISMATCH" in out.stdout
    assert _tree(tmp_path) == before
