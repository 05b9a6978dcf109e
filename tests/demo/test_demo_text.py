"""lwm-demo-text, the shipped model, end to end: the README's needle command (`lwm needle eval` with no -m)
on a fresh checkout retrieves single needles at 4K and 8K tokens at every depth, `lwm chat --raw` with no
-m answers a needle prompt piped to it, and its card holds what scripts/ship_demo.py measured. The rows here
use seeds that neither the training rows (1, 3, 8 and 9) nor the card's measurement (2) used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ROOT, run_cli
from lwm_core import builtin

pytestmark = pytest.mark.skipif(not builtin.MODELS[builtin.TEXT].installed,
                                reason="lwm-demo-text is not in this checkout (docs/demo.md trains it)")

MODEL_DIR = ROOT / "lwm_core" / "assets" / "models" / builtin.TEXT


def test_the_readme_needle_command_retrieves_needles_at_4k_and_8k_on_a_fresh_checkout_offline(cli_env, tmp_path):
    """`git clone` then the README's needle command, no -m and no network: the built-in model retrieves single
    needles at every depth, at least 90% of them at 4K and at 8K tokens, and draws the heatmap."""
    readme = (ROOT / "README.md").read_text().splitlines()
    first = next(line for line in readme if line.startswith("lwm needle eval "))
    assert first == "lwm needle eval --ctx 2K,4K,8K --depths 11 -o needle-demo/"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = dict(cli_env, PYTHONPATH=str(clone))  # the clone holds what git tracks: the weights must be committed
    args = first.split()[1:]
    result = subprocess.run([sys.executable, "-m", "lwm_cli", *args, "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    cells = summary["cells"]
    assert {c["ctx"] for c in cells} == {2048, 4096, 8192} and len(cells) == 33  # 11 depths each
    for ctx in (4096, 8192):
        rows = [c for c in cells if c["ctx"] == ctx]
        assert sum(c["accuracy"] * c["count"] for c in rows) / sum(c["count"] for c in rows) >= 0.9, rows
    assert (tmp_path / "needle-demo" / "heatmap.png").is_file()


def test_lwm_chat_without_a_model_answers_a_needle_question(capsys, monkeypatch, tmp_path):
    """The README's chat example: a needle row's prompt (LWM's needle prompt, as the model was trained on it)
    piped to `lwm chat --raw` with no -m: the reply is the 7-digit number."""
    import io

    data = tmp_path / "rows.jsonl"
    code, _, err = run_cli(capsys, "needle", "make", "-m", builtin.TEXT, "--task", "single", "--ctx", "4K",
                           "--depths", "50%", "--seed", "5", "-o", data)
    assert code == 0, err
    row = json.loads(data.read_text().splitlines()[0])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((row["prompt"] + "\n").encode())))
    code, out, err = run_cli(capsys, "chat", "--raw", "-t", "0")
    assert code == 0, err
    assert out.strip() == row["answers"][0], (out, row["answers"])


def test_the_card_holds_what_was_measured():
    quality = json.loads((MODEL_DIR / "quality.json").read_text())
    card = builtin.MODELS[builtin.TEXT].card()
    single = quality["single"]
    for ctx in ("4096", "8192"):
        assert single["by_ctx"][ctx] >= 0.9
    assert "lwm train configs/demo/text.toml" in card and "bfloat16" in card and "Multikey" in card
    weights = MODEL_DIR / "model.safetensors"
    with open(weights, "rb") as f:  # safetensors header: every tensor bf16
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    stages = [json.loads(line)["stage"] for line in (MODEL_DIR / "training.jsonl").read_text().splitlines()]
    assert list(dict.fromkeys(stages)) == ["256", "2k", "8k"]
