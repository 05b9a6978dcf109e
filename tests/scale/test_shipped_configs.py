"""Every shipped config plans on this machine: `lwm train CONFIG --dry-run --compile` simulates the config's
own mesh, compiles its train step for every stage with no data file present, and XLA's log has no
replication added by the partitioner; generation for each config's model, context and mesh too."""

import math
import re

import pytest
import tomllib

from helpers import ROOT, lwm

CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def _stages(path) -> int:
    return max(1, len(tomllib.loads(path.read_text()).get("stages", [])))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_compiles_every_stage_without_replication(path, cli_env):
    out = lwm(cli_env, "train", str(path), "--dry-run", "--compile")
    assert out.returncode == 0, out.stderr
    assert "Involuntary" not in out.stderr and "[SPMD]" not in out.stderr
    stages = _stages(path)
    assert out.stdout.count("replication by the partitioner: none") == stages, out.stdout
    assert out.stdout.count("train step (compiled)") == stages
    mesh = tomllib.loads(path.read_text())["mesh"]
    if "-1" not in mesh:  # a fixed mesh is simulated whatever this machine has
        devices = math.prod(int(d) for d in mesh.split(","))
        assert f"({devices} devices, simulated)" in out.stdout
        assert "does not exist here; a real run needs it" in out.stdout  # /data/... is not on this machine


@pytest.mark.slow  # ~3 minutes: LWM-7B's prefill and decode step compiled for 64 to 256 simulated devices
@pytest.mark.parametrize("path", [p for p in CONFIGS if "-1" not in tomllib.loads(p.read_text())["mesh"]],
                         ids=lambda p: p.stem)
def test_generation_plan_of_each_config_without_replication(path, cli_env):
    from lwm_core.train.config import load_run_config

    last = load_run_config(str(path), []).stage_configs()[-1]  # the longest context of a staged recipe
    model = "random:7b"
    sets = ["--set", f"max_sequence_length={last.train.seq_len}"]
    if last.model.override_dict().get("vision"):
        sets += ["--set", "vision=true"]
    out = lwm(cli_env, "chat", "-m", model, "--mesh", last.mesh, *sets, "--dry-run", "--compile",
              "--max-new-tokens", "256")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("replication by the partitioner: none") == 2, out.stdout
    assert re.search(r"prefill \(compiled\)\s+peak", out.stdout) and "decode step (compiled)" in out.stdout
