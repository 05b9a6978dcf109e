"""`lwm needle` end to end on a model that learned the task: a tiny LLaMA trained by `lwm train` on rows of
`lwm needle make` retrieves needles it never saw at its training length, while a random model and an echo
of the prompt score ~0 on the same rows.

Everything goes through the CLI, as a user would run it: `needle make` (training rows, then eval rows
with another seed), `train`, `needle eval` of `run_dir/final` and of `random:tiny`. The setting is
chosen so that the copy is learnable in about a minute on 2 CPU cores:

- template `base`: the prompt ends with the needle's own words ("The special magic Paris number is:"),
  so answering is copying what followed an earlier occurrence of the same words, the job of an induction
  head (a previous-token head in layer 1 feeding a matching head in layer 2);
- haystack `noise`: no digits but the needle's, so the copy has one source;
- 80 tokens: at init a head's attention to the needle is ~1/length, and with it the gradient that forms
  the head. Trained on 80..128 tokens, a 128-wide model was still at 0.34 after 600 steps; one trained
  on 80 alone scored 0 at 128, so the eval keeps to the training length, as the issue asks;
- 12 heads of 8 dims rather than the tiny preset's 4 of 16: an exact 7-digit copy needs the previous
  token *and* the one before it (most numbers repeat a digit, and one token of context leaves the copy
  ambiguous there), and more heads make it likelier that layer 1 has both. 64 wide with 4 heads stayed
  at 0 for 600 steps; with 8 heads it stalled at 0.3..0.5 on 3 of 4 seeds.

Training is chaotic: the accuracy depends on the seeds (init and data order), and on another CPU float
rounding may move the run as another seed would. With this config, seeds 0..4 (train.seed = data.seed)
gave 0.89, 0.93, 0.86, 1.00, 0.86 (with 400 steps: 0.61..0.91; lr 3e-3: 0.66..0.95; batch 24:
0.48..0.91), hence a bound of 0.6: far above chance (1e-7 a row) and the random model's 0. The same
seeds on the same machine give the same replies. A wrong reply is mostly a near miss, one digit slipped
next to a repeated one.

Slow (deselected by default, `-m slow`): training takes 95 s of the default suite's 15 minutes, and the
shipped lwm-demo-text (tests/demo/test_demo_text.py) is the default suite's model that learned the task.
"""

from __future__ import annotations

import json
import re

import pytest

from helpers import ROOT, lwm
from lwm_core.needle import eval as needle_eval
from lwm_core.needle.score import score
from lwm_core.needle.summary import read_results, summarize

pytestmark = pytest.mark.slow

TOKENIZER = str(ROOT / "lwm_core" / "assets" / "tokenizer.model")
CTX = 80  # the training length, and the eval's
# 10 new tokens: the reply is the dummy-prefix space, 7 digits and EOS (9 tokens); the rest is slack.
MAKE = ("needle", "make", "--tokenizer", TOKENIZER, "--task", "single", "--ctx", str(CTX), "--haystack", "noise",
        "--template", "base", "--max-new-tokens", "10", "--depths", "11")
ACCURACY = 0.6  # the trained model's least accuracy (see above)
TRAIN_SEED, EVAL_SEED = 1, 2  # distinct: every eval row hides another number than the training rows

# The answer alone carries loss ([prompt]). No BOS: `needle eval` feeds the prompt as encoded, without one.
# The EOS after the answer (add_eos) teaches the model to stop, so a reply is the number and nothing more.
CONFIG = """\
run_dir = "{run_dir}"
mesh = "1,1,1,1"

[model]
init = "random:tiny"
hidden_size = 96
intermediate_size = 192
num_hidden_layers = 2
num_attention_heads = 12
max_sequence_length = {ctx}

[data]
path = "{data}"
fields = "[prompt],answer"
add_bos = false
pack = false

[train]
seq_len = {ctx}
batch_size = 32
steps = 500
log_every = 50
seed = 0

[optimizer]
lr = 2e-3
end_lr = 2e-4
warmup_steps = 20
weight_decay = 0.0

[checkpoint]
every_steps = 0
every_minutes = 0
"""


def _ok(out):
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _evaluate(env, spec: str, data, out_dir) -> dict:
    """`lwm needle eval` of `spec` on `data` -> its summary and result rows."""
    out = _ok(lwm(env, "needle", "eval", "-m", spec, "--data", str(data), "-o", str(out_dir), "--json"))
    return {"summary": json.loads(out.stdout), "results": read_results(str(out_dir / needle_eval.RESULTS))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cli_env):
    """The eval rows, the training rows, and the `needle eval` runs of the trained and a random model."""
    d = tmp_path_factory.mktemp("needle_trained")
    _ok(lwm(cli_env, *MAKE, "--rounds", "200", "--seed", str(TRAIN_SEED), "-o", str(d / "train_rows.jsonl")))
    _ok(lwm(cli_env, *MAKE, "--rounds", "4", "--seed", str(EVAL_SEED), "-o", str(d / "eval.jsonl")))
    train_rows = _jsonl(d / "train_rows.jsonl")
    with open(d / "train.jsonl", "w", encoding="utf-8") as f:
        # No leading space: the tokenizer's dummy prefix encodes "1234567" as [space, 1, 2, ...], which
        # is exactly what follows "is:" in the needle.
        for row in train_rows:
            f.write(json.dumps({"prompt": row["prompt"], "answer": row["answers"][0]}) + "\n")
    config = d / "needle.toml"
    config.write_text(CONFIG.format(run_dir=d / "run", data=d / "train.jsonl", ctx=CTX))
    _ok(lwm(cli_env, "train", str(config)))
    data = d / "eval.jsonl"
    return {"rows": needle_eval.read_dataset(str(data)), "train_rows": train_rows,
            "trained": _evaluate(cli_env, str(d / "run" / "final"), data, d / "eval_trained"),
            "random": _evaluate(cli_env, "random:tiny", data, d / "eval_random")}


def test_the_trained_model_retrieves_needles_it_never_saw(runs):
    rows, trained = runs["rows"], runs["trained"]
    seen = {row["prompt"] for row in runs["train_rows"]}
    assert not seen & {row["prompt"] for row in rows}
    assert len(rows) == 44 and {row["ctx"] for row in rows} == {CTX}
    summary, results = trained["summary"], trained["results"]
    assert summary["count"] == len(results) == len(rows)
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in rows)
    # Chance is 1e-7 a row; 0.89 measured (see the module docstring for the spread over init seeds).
    assert summary["accuracy"] >= ACCURACY, [(r["answers"][0], r["response"]) for r in results]
    # Every reply is a 7-digit number and nothing more (it learned to stop), never a recitation.
    assert all(re.fullmatch(r"\d{7}", r["response"]) and not r["recited"] for r in results), results
    assert all(r["score"] == score(r["response"], r["answers"]) for r in results)
    # Retrieval wherever the needle sits, not at a depth the model happens to favour: both halves of the
    # haystack score. (Per depth, 4 rows are too few: one seed missed all 4 at 80 %.)
    for half in (lambda depth: depth < 50, lambda depth: depth >= 50):
        scores = [r["score"] for r in results if half(r["depth"])]
        assert sum(scores) / len(scores) >= ACCURACY, summary["depths"]


def test_a_random_model_scores_about_zero_on_the_same_rows(runs):
    trained, random = runs["trained"]["summary"], runs["random"]["summary"]
    assert random["dataset"] == trained["dataset"]  # the same rows, by digest
    assert random["count"] == len(runs["rows"])
    assert random["accuracy"] <= 0.05


def test_an_echo_of_the_prompt_scores_zero_though_it_holds_every_answer(runs):
    """An "echo model", through the same path as `needle eval` (batches, `result_row`, the summary):
    it replies with the prompt, or with the stretch from the needle to the end. String matching alone
    would give it full marks; the scorer gives it 0, and gives the trained model's replies their marks."""
    rows = runs["rows"]

    def echo(stretch):
        def generate(batch):
            return [needle_eval.result_row(row, stretch(row), seconds=1.0, prefill_tokens_per_s=None)
                    for row in batch]
        return [r for batch in needle_eval.run(generate, rows, 10**6) for r in batch]

    whole = echo(lambda row: row["prompt"])
    needle_on = echo(lambda row: row["prompt"][row["prompt"].index(row["needles"][0]):])
    for results in (whole, needle_on):
        assert all(score(r["response"], r["answers"]) == 1.0 for r in results)  # string_match_all is fooled
        assert all(r["recited"] and r["score"] == 0.0 for r in results)
        assert summarize(results, meta={})["accuracy"] == 0.0
    # The trained model's replies, rescored the same way, keep their marks.
    by_id = {row["id"]: row for row in rows}
    replies = [needle_eval.result_row(by_id[r["id"]], r["response"], seconds=1.0, prefill_tokens_per_s=None)
               for r in runs["trained"]["results"]]
    assert [r["score"] for r in replies] == [r["score"] for r in runs["trained"]["results"]]
    assert summarize(replies, meta={})["accuracy"] == runs["trained"]["summary"]["accuracy"] >= ACCURACY
