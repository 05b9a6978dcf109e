"""`lwm needle eval` with the sequence sharded over `sp` (ring attention for prefill, a sequence-sharded
cache for decoding): the same greedy replies, and so the same scores, as on one device, for batches of
rows of different lengths (left-padded)."""

from __future__ import annotations

import json

import pytest

from helpers import lwm
from lwm_core.needle import eval as needle_eval
from lwm_core.needle import make as making
from lwm_core.needle.config import MakeConfig
from lwm_core.needle.haystack import read_haystack


@pytest.fixture(scope="module")
def rows():
    import lwm_core

    tokenizer = lwm_core.load_model("random:tiny", mesh="1,1,1,1").tokenizer
    config = MakeConfig(tasks=("single",), ctx=(192, 320), depths=(0.0, 100.0), max_new_tokens=12)
    return list(making.make_rows(config, tokenizer, read_haystack("prose")))


def _replies(mesh: str, rows: list[dict]) -> dict[str, str]:
    import lwm_core

    model = lwm_core.load_model("random:tiny", mesh=mesh)
    assert model.mesh.shape["sp"] == int(mesh.split(",")[3])  # sp > 1: ring attention, a sharded cache
    # One batch of four rows of two lengths (a compilation per mesh is most of the time).
    out = [r for scored in needle_eval.run(lambda b: needle_eval.generate_batch(model, b), rows, 1400)
           for r in scored]
    assert len(out) == len(rows)
    return {r["id"]: r["response"] for r in out}


def test_replies_with_ring_attention_equal_one_device(rows):
    assert _replies("1,2,1,4", rows) == _replies("1,1,1,1", rows)
    assert len({len(r["prompt"]) for r in rows}) > 1  # batches really mix lengths (left padding)


def test_cli_eval_runs_on_an_sp_mesh(cli_env, tmp_path):
    env = dict(cli_env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = tmp_path / "run"
    result = lwm(env, "needle", "eval", "-m", "random:tiny", "--mesh", "1,1,1,4", "--ctx", "256", "--depths",
                 "0,100", "--max-new-tokens", "8", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["count"] == 2 and summary["mesh"] == "dp=1 fsdp=1 tp=1 sp=4"
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
