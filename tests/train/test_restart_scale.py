"""Restarts at scale: a run of 2 processes x 4 devices stopped by SIGTERM to one of them resumes in 1
process x 8 devices on another mesh, and that one's checkpoint in 2 processes on another mesh again, on
the loss curve of a run never stopped."""

import json
import shutil
import signal

import numpy as np
import pytest
from test_train import _args, _popen, _wait_for_step, losses, run_tiny, saved_steps

from helpers import LOADED, free_port

STEPS = 6
OPTS = (f"train.steps={STEPS}", "checkpoint.every_steps=2", "checkpoint.keep=10", "checkpoint.export=false")


def _processes(env, run_dir, mesh: str, n: int):
    """`lwm train` as n processes of one run (n = 1: a plain single-process run)."""
    args = _args(run_dir, *OPTS, f"mesh={mesh}")
    if n == 1:
        return [_popen(env, args)]
    coordinator = f"127.0.0.1:{free_port()}"
    return [_popen(env, [*args, "--coordinator", coordinator, "--num-processes", str(n), "--process-id", str(i)])
            for i in range(n)]


def _finish(procs) -> list[tuple[str, str]]:
    """(stdout, stderr) of each process once all have ended (killed if the test gives up first)."""
    try:
        return [p.communicate(timeout=LOADED) for p in procs]
    finally:
        for p in procs:
            p.kill()


def _check_resumed(run_dir, reference, *, step: int, processes: int, mesh: str) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    assert info["resumed_from"] == step and info["processes"] == processes
    assert list(info["mesh"].values()) == [int(n) for n in mesh.split(",")]
    got, want = losses(run_dir), losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))  # a resumed step's line replaces the old one
    np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-5)


@pytest.mark.multiprocess
def test_resume_on_another_process_count_and_mesh(tmp_path, cli_env):
    ref, run, grown = tmp_path / "ref", tmp_path / "run", tmp_path / "grown"
    run_tiny(ref, "1,2,2,2", STEPS, *OPTS)  # never stopped; in this process (8 devices)
    env4 = dict(cli_env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env8 = dict(cli_env, XLA_FLAGS="--xla_force_host_platform_device_count=8")

    # 2 processes x 4 devices; SIGTERM to process 1 only: both save the step they agree on and exit 130.
    procs = _processes(env4, run, "1,2,2,2", 2)
    try:
        _wait_for_step(run, 1, procs[0])
        procs[1].send_signal(signal.SIGTERM)
    finally:
        outs = _finish(procs)
    assert [p.returncode for p in procs] == [130, 130], outs
    assert "stopping on SIGTERM" in outs[1][1] and "error:" not in outs[0][1] + outs[1][1]
    last = outs[0][1].strip().splitlines()[-1]
    assert last.startswith("stopped by a signal to another process at step "), outs[0][1]
    step = int(last.split("at step ")[1].split(";")[0])
    assert 1 <= step < 4 and saved_steps(run)[-1] == step  # < 4: step 4 is saved by the next run
    # the step holds both processes' shards (orbax: one OCDBT database per process, merged on commit)
    state = run / "checkpoints" / str(step) / "state"
    assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()

    # Resumed by 1 process x 8 devices on another mesh, to the last step.
    procs = _processes(env8, run, "1,4,1,2", 1)
    outs = _finish(procs)
    assert procs[0].returncode == 0 and f"resuming from step {step}" in outs[0][1], outs
    _check_resumed(run, ref, step=step, processes=1, mesh="1,4,1,2")

    # Its step-4 checkpoint (1 process) resumed by 2 processes on the first mesh (compiled by the first run).
    shutil.copytree(run, grown)
    shutil.rmtree(grown / "checkpoints" / "6")
    procs = _processes(env4, grown, "1,2,2,2", 2)
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0] and "resuming from step 4" in outs[0][1], outs
    _check_resumed(grown, ref, step=4, processes=2, mesh="1,2,2,2")
