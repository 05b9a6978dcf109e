"""`lwm train` under Ctrl-C, SIGTERM and SIGKILL, as a user (or a scheduler) sends them: acknowledged at
once even during the XLA compile, a second Ctrl-C exits at once without a crash, and whatever the
moment, the run directory is left resumable and free of temporaries."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import LOADED, ROOT, lwm

CONFIG = str(ROOT / "configs/cpu-tiny.toml")
CORPUS = ROOT / "configs/data/counting.jsonl"
STOPPING = "stopping: a checkpoint is saved after the current step (or after the compile); Ctrl-C again to abort now"


def _args(run_dir, *sets):
    return ["train", CONFIG, "--run-dir", str(run_dir), "--set", f"data.path={CORPUS}", "--set", "train.log_every=1",
            "--set", "checkpoint.export=false", *[x for item in sets for x in ("--set", item)]]


def _popen(env, args):
    return subprocess.Popen([sys.executable, "-m", "lwm_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def _steps_logged(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line being written
    return out


def _saved(run_dir) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def _wait(predicate, proc, timeout: float = LOADED) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"lwm train ended early: {proc.communicate()}")
        time.sleep(0.005)
    raise AssertionError("timed out")


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_ctrl_c_twice_during_the_compile_exits_at_once_and_the_checkpoint_resumes(tmp_path, cli_env):
    pexpect = pytest.importorskip("pexpect")
    run_dir = tmp_path / "run"
    first = lwm(cli_env, *_args(run_dir, "train.steps=2"))
    assert first.returncode == 0, first.stderr
    assert _saved(run_dir) == [2]

    # A terminal, as users hit it (Ctrl-C goes to the whole foreground process group), and no compilation
    # cache: the first run's would make the compile too short to land in.
    env = dict(cli_env, TERM="xterm")
    env.pop("JAX_COMPILATION_CACHE_DIR")
    log = io.StringIO()
    child = pexpect.spawn(sys.executable, ["-m", "lwm_cli", *_args(run_dir, "train.steps=400")], env=env,
                          cwd=str(ROOT), encoding="utf-8", timeout=LOADED, dimensions=(40, 200))
    child.logfile_read = log
    child.expect("resuming from step 2")
    child.expect("compiling the training step")
    sent = time.monotonic()
    child.sendintr()
    child.expect_exact(STOPPING)
    first_ack = time.monotonic() - sent
    sent = time.monotonic()
    child.sendintr()
    child.expect_exact("aborted by a second Ctrl-C; the last complete checkpoint (if any) is intact")
    second_ack = time.monotonic() - sent
    child.expect(pexpect.EOF)
    exited = time.monotonic() - sent
    child.close()
    transcript = log.getvalue()
    assert (child.exitstatus, child.signalstatus) == (130, None), transcript  # not 139 / SIGSEGV
    assert "Traceback" not in transcript and "error:" not in transcript and "Segmentation" not in transcript
    assert first_ack < 2.0 and second_ack < 2.0 and exited < 5.0, (first_ack, second_ack, exited)
    # The compile never finished: no step ran, nothing was logged or saved past the checkpoint.
    assert _steps_logged(run_dir) == [1, 2] and _saved(run_dir) == [2]

    third = lwm(cli_env, *_args(run_dir, "train.steps=4"))
    assert third.returncode == 0, third.stderr
    assert "resuming from step 2" in third.stderr
    assert _steps_logged(run_dir) == [1, 2, 3, 4] and _saved(run_dir) == [2, 4]


def test_one_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    proc = _popen(cli_env, _args(run_dir, "train.steps=400", "checkpoint.every_steps=0",
                                 "checkpoint.every_minutes=0"))
    _wait(lambda: any(s >= 2 for s in _steps_logged(run_dir)), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=LOADED)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert STOPPING in lines and "Traceback" not in err and "error:" not in err, err
    step = max(_steps_logged(run_dir))
    assert lines[-1] == (f"stopped by Ctrl-C at step {step}; checkpoint saved in {run_dir}/checkpoints; "
                         f"run the same command to resume")
    assert 2 <= step < 400 and _saved(run_dir) == [step]
    assert out == ""


def test_a_signal_before_there_is_anything_to_save_ends_the_process_at_once(cli_env):
    # lwm train's start-up (imports, config, data checks): nothing to finish, so no stop to wait for. The
    # main thread is blocked meanwhile, as it is inside an import of jaxlib.
    code = ("import os, signal, time\n"
            "from lwm_cli._signals import StopRequest\n"
            "with StopRequest('nothing was written'):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(60)\n"
            "print('not reached')\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=cli_env, cwd=ROOT, capture_output=True, text=True,
                         timeout=LOADED)
    assert (out.returncode, out.stdout, out.stderr) == (130, "", "stopped by SIGTERM; nothing was written\n")
    assert time.monotonic() - started < 30


def _leftovers(run_dir) -> list[str]:
    """Temporaries of any writer: orbax's step directories, lwm's atomic files, `*.tmp*`."""
    found = []
    for base, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            if "orbax-checkpoint-tmp" in name or ".lwm-tmp-" in name or ".tmp" in name:
                found.append(os.path.relpath(os.path.join(base, name), run_dir))
    return found


@pytest.mark.sigkill
def test_sigkill_while_saving_checkpoints_then_the_same_command_finishes_clean(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    args = _args(run_dir, "train.steps=12", "checkpoint.every_steps=1")
    left: list[str] = []
    for _ in range(3):  # kill the moment orbax has a step half-written
        proc = _popen(cli_env, args)
        _wait(lambda: any("orbax-checkpoint-tmp" in p.name for p in (run_dir / "checkpoints").glob("*"))
              if (run_dir / "checkpoints").exists() else False, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=LOADED)
        assert proc.returncode == -signal.SIGKILL
        left = _leftovers(run_dir)
        if left:
            break
    assert left, "never caught a checkpoint mid-write"
    done = lwm(cli_env, *args)
    assert done.returncode == 0, done.stderr
    assert _leftovers(run_dir) == [], _leftovers(run_dir)
    assert sorted(os.listdir(run_dir)) == [".lock", "checkpoints", "metrics.jsonl", "run.json"]
    assert _saved(run_dir) == [11, 12] and _steps_logged(run_dir) == list(range(1, 13))
