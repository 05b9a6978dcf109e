"""lwm_core.needle.eval: batches within a token budget, refusals before any work, result rows, scores of
an echoed prompt, and a results file that a kill leaves resumable."""

from __future__ import annotations

import json

import pytest

from helpers import ROOT
from lwm_core.errors import LWMError
from lwm_core.needle import eval as needle_eval
from lwm_core.needle import make as making
from lwm_core.needle.config import MakeConfig
from lwm_core.needle.haystack import read_haystack
from lwm_core.needle.score import score
from lwm_core.needle.summary import read_results


@pytest.fixture(scope="module")
def tokenizer():
    from lwm_core.tokenizer import load_tokenizer

    return load_tokenizer(str(ROOT / "lwm_core" / "assets" / "tokenizer.model"))


@pytest.fixture(scope="module")
def rows(tokenizer):
    config = MakeConfig(tasks=("single", "multi"), ctx=(256, 512, 1024), depths=(0.0, 50.0, 100.0),
                        max_new_tokens=32)
    return list(making.make_rows(config, tokenizer, read_haystack("prose")))


def test_batches_keep_to_the_budget_sorted_by_length_with_every_row_once(rows):
    for budget in (1, 600, 2048, 10**6):
        out = needle_eval.batches(rows, budget)
        assert sorted(r["id"] for b in out for r in b) == sorted(r["id"] for r in rows)
        assert all(b and (len(b) == 1 or len(b) * max(r["length"] for r in b) <= budget) for b in out)
        lengths = [r["length"] for b in out for r in b]
        assert lengths == sorted(lengths)
    assert len(needle_eval.batches(rows, 1)) == len(rows)
    assert len(needle_eval.batches(rows, 10**6)) == 1
    # one max_new_tokens per batch
    mixed = rows[:2] + [dict(rows[2], max_new_tokens=8)]
    assert all(len({r["max_new_tokens"] for r in b}) == 1 for b in needle_eval.batches(mixed, 10**6))


def test_rows_longer_than_the_context_or_of_another_tokenizer_are_refused(rows):
    tid = rows[0]["tokenizer"]
    needle_eval.check_rows(rows, max_context=1024, tokenizer_id=tid, model="m")
    first_long = next(r for r in rows if r["length"] + r["max_new_tokens"] > 512)["id"]
    with pytest.raises(LWMError, match=f"row {first_long} needs .* context of m \\(512\\)"):
        needle_eval.check_rows(rows, max_context=512, tokenizer_id=tid, model="m")
    with pytest.raises(LWMError, match=f"row {rows[0]['id']} was counted with tokenizer {tid}, but m uses sha256:x"):
        needle_eval.check_rows(rows, max_context=1024, tokenizer_id="sha256:x", model="m")


def _result(row, response):
    return needle_eval.result_row(row, response, seconds=1.0, prefill_tokens_per_s=10.0)


def test_an_echoed_prompt_scores_nothing_but_an_answer_in_the_needles_words_scores_one(rows, tokenizer):
    for row in rows:
        answer = row["answers"]
        # The whole prompt, and the start of it that max_new_tokens would let through (at depth 0 it
        # holds the needle): a recitation, scored 0, although string matching alone would credit it.
        ids = tokenizer.encode(row["prompt"])
        cuts = [tokenizer.decode(ids[:n]) for n in (32, 64, 128)]
        for echo in (row["prompt"], *cuts, "Sure. " + row["prompt"][-400:]):
            result = _result(row, echo)
            assert result["score"] == 0.0, (row["id"], echo[:80])
            # credited by the match alone only when it holds the needle, and then it is a recitation
            assert result["recited"] or score(echo, answer) < 1, (row["id"], echo[:80])
        assert _result(row, row["prompt"])["recited"] is True
        assert score(row["prompt"], answer) == 1.0  # what RULER's match alone would give the echo
        # Right answers: in the model's own words, or quoting the needles (their words are not recitation).
        right = _result(row, "The answer is " + ", ".join(answer) + ".")
        quoted = _result(row, " ".join(row["needles"][:len(answer)]) if row["task"] == "single"
                         else "\n".join(row["needles"]))
        assert (right["score"], right["recited"]) == (1.0, False)
        assert quoted["recited"] is False and quoted["score"] == 1.0
        assert _result(row, "I do not know.")["score"] == 0.0


def test_result_rows_have_the_schema(rows):
    result = _result(rows[0], "  ")
    assert "prompt" not in result and result["empty"] is True and result["score"] == 0.0
    assert set(result) == set(rows[0]) - {"prompt"} | {"response", "score", "recited", "empty",
                                                        "prefill_tokens_per_s", "seconds"}


def _fake_generate(batch):
    return [_result(row, "The answer is " + row["answers"][0]) for row in batch]


def test_a_kill_mid_line_resumes_with_every_id_once(rows, tmp_path):
    directory = str(tmp_path / "run")
    digest = needle_eval.dataset_digest(rows)
    assert needle_eval.open_run(directory, digest, force=False) == []
    path = tmp_path / "run" / needle_eval.RESULTS
    batches = needle_eval.run(_fake_generate, rows, 1500)
    for _ in range(2):
        needle_eval.append_results(str(path), next(batches))
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # a torn last line
    done = needle_eval.open_run(directory, digest, force=False)
    assert path.read_bytes() == data[:data[:-1].rfind(b"\n") + 1]  # the torn line is dropped
    for scored in needle_eval.run(_fake_generate, rows, 1500, {r["id"] for r in done}):
        needle_eval.append_results(str(path), scored)
    ids = [r["id"] for r in read_results(str(path))]
    assert sorted(ids) == sorted(r["id"] for r in rows)
    # another dataset is refused; --force starts afresh
    other = [replace_row(r) for r in rows]
    with pytest.raises(LWMError, match="holds the results of another dataset"):
        needle_eval.open_run(directory, needle_eval.dataset_digest(other), force=False)
    assert needle_eval.open_run(directory, needle_eval.dataset_digest(other), force=True) == []
    assert not path.exists()
    stored = json.loads((tmp_path / "run" / needle_eval.DATASET).read_text())
    assert stored["digest"] == needle_eval.dataset_digest(other)


def replace_row(row):
    return dict(row, seed=row["seed"] + 1)


def test_a_random_model_scores_about_zero_with_one_result_per_row(rows):
    import lwm_core

    model = lwm_core.load_model("random:tiny", mesh="1,1,1,1", overrides={"max_sequence_length": 1024})
    small = [r for r in rows if r["ctx"] <= 512]
    results = [r for batch in needle_eval.run(lambda b: needle_eval.generate_batch(model, b), small, 1024)
               for r in batch]
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in small)
    assert sum(r["score"] for r in results) / len(results) < 0.1
    assert all(r["seconds"] > 0 and r["prefill_tokens_per_s"] > 0 and isinstance(r["response"], str)
               for r in results)


class _TimedModel:
    """A model whose generate reports known prefill seconds (as `LWM.generate` fills in its stats)."""

    def __init__(self, tokenizer, prefill_seconds):
        import lwm_core

        self.tokenizer, self.prefill_seconds = tokenizer, prefill_seconds
        self.config = lwm_core.get_config("tiny")

    def generate(self, prompts, n, *, temperature, stats):
        import time

        import numpy as np

        stats.rows, stats.prompt_tokens = len(prompts), sum(len(p) for p in prompts)
        stats.prefill_seconds, stats.decode_seconds, stats.new_tokens = self.prefill_seconds, 0.25, n
        time.sleep(0.01)
        return np.full((len(prompts), n), self.config.eos_token_id)


def test_prefill_speed_is_prompt_tokens_over_the_prefill_seconds_alone(rows, tokenizer):
    batch = [r for r in rows if r["ctx"] == 512][:3]
    tokens = sum(len(tokenizer.encode(r["prompt"])) for r in batch)
    results = needle_eval.generate_batch(_TimedModel(tokenizer, 0.5), batch)
    assert [r["id"] for r in results] == [r["id"] for r in batch]
    assert all(r["prefill_tokens_per_s"] == tokens / 0.5 and r["seconds"] >= 0.01 for r in results)
    assert all(r["response"] == "" for r in results)  # EOS ends the reply
    # a prefill that took no measurable time has no speed (JSON null), not infinity
    assert all(r["prefill_tokens_per_s"] is None
               for r in needle_eval.generate_batch(_TimedModel(tokenizer, 0.0), batch))


def test_a_real_model_s_prefill_speed_is_above_the_batch_s_overall_speed(rows):
    import lwm_core

    model = lwm_core.load_model("random:tiny", mesh="1,1,1,1", overrides={"max_sequence_length": 1024})
    batch = [r for r in rows if r["ctx"] == 512][:2]
    needle_eval.generate_batch(model, batch)  # compiles
    results = needle_eval.generate_batch(model, batch)
    tokens = sum(len(model.tokenizer.encode(r["prompt"])) for r in batch)
    assert all(r["prefill_tokens_per_s"] > tokens / r["seconds"] for r in results)
