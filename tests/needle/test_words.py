"""The list tasks of `lwm needle make` (`cwe`, `fwe`): their answers really are the most frequent words of
the prompt's list (counted again here, from the prompt alone), strictly apart from the rest, and their
rows fill the budget, regenerate from their ids and score like every other row."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest

from lwm_core.errors import LWMError
from lwm_core.needle import eval as needle_eval
from lwm_core.needle import haystack as haystacks
from lwm_core.needle import make
from lwm_core.needle.config import MakeConfig
from lwm_core.needle.tasks import (
    CWE_COMMON,
    CWE_PREAMBLE,
    FWE_ASKED,
    FWE_FILLER,
    FWE_MIN_SIZE,
    FWE_PREAMBLE,
    cwe_counts,
    fwe_counts,
)
from lwm_core.tokenizer import load_tokenizer

# Below 4K cwe's words occur 6 and 1 times, from 4K on 30 and 3 (RULER's counts): both are covered.
CTX = (800, 2048, 4096, 8192)
_WORD = re.compile(r"[a-z]+")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def rows(tok):
    rows = []
    for template in ("lwm-chat", "base", "raw"):
        config = MakeConfig(tasks=("cwe", "fwe"), ctx=CTX, depths=(0.0, 50.0, 100.0), rounds=2, seed=3,
                            template=template)
        rows += [json.loads(make.row_line(r)) for r in make.make_rows(config, tok, haystacks.builtin("prose"))]
    return rows


def test_cwe_leaves_room_for_ten_words_unless_told(rows, tok):
    # Without --max-new-tokens each task gets its own answer budget: ten numbered words need ~75 tokens.
    assert {r["max_new_tokens"] for r in rows if r["task"] == "cwe"} == {128}
    assert {r["max_new_tokens"] for r in rows if r["task"] == "fwe"} == {64}
    config = MakeConfig(tasks=("cwe", "single"), ctx=(2048,), depths=(50.0,), max_new_tokens=40)
    assert {r["max_new_tokens"] for r in make.make_rows(config, tok, haystacks.builtin("prose"))} == {40}


def listed(row: dict) -> list[str]:
    """The list of a row's prompt, read from the prompt: what follows the preamble's line, up to the
    question (lwm-chat puts it after a space, base and raw on the next line)."""
    preamble = CWE_PREAMBLE if row["task"] == "cwe" else FWE_PREAMBLE
    body = row["prompt"].split(preamble + "\n", 1)[1]
    body = re.split(r" What are | Leaving out |\n", body, maxsplit=1)[0]
    if row["task"] == "fwe":
        return body.split(" ")
    entries = re.findall(r"(\d+)\. ([a-z]+)", body)
    assert [int(n) for n, _ in entries] == list(range(1, len(entries) + 1)), row["id"]
    assert " ".join(f"{n}. {w}" for n, w in entries) == body, row["id"]  # nothing else in the list
    return [w for _, w in entries]


def test_one_row_per_length_and_round_at_depth_50(rows):
    assert len(rows) == 3 * 2 * len(CTX) * 2
    assert {r["depth"] for r in rows} == {50}
    assert all(r["needles"] == [] and r["needle_positions"] == [] for r in rows)
    keys = list(make.row_keys(MakeConfig(tasks=("single", "cwe"), ctx=(1024, 2048), depths=(0.0, 50.0, 100.0))))
    assert [k for k in keys if k[0] == "cwe"] == [("cwe", 1024, 50.0, 0), ("cwe", 2048, 50.0, 0)]
    assert len([k for k in keys if k[0] == "single"]) == 6


def test_rows_fill_the_budget_and_count_exactly(rows, tok):
    for row in rows:
        budget = row["ctx"] - row["max_new_tokens"]
        assert len(tok.encode(row["prompt"])) == row["length"] <= budget, row["id"]
        # a syllable's top-up: within a token or two, far inside 1 % of the context
        assert budget - row["length"] <= 3, (row["id"], budget - row["length"])


def test_cwe_answers_are_the_common_words_strictly_most_frequent(rows):
    rare_entries = {}
    for row in rows:
        if row["task"] != "cwe":
            continue
        counts = Counter(listed(row))
        common_times, rare_times = cwe_counts(row["ctx"])
        answers = row["answers"]
        assert len(answers) == len(set(answers)) == CWE_COMMON, row["id"]
        assert [counts[w] for w in answers] == [common_times] * CWE_COMMON, row["id"]
        rest = [n for w, n in counts.items() if w not in answers]
        assert rest and max(rest) <= rare_times < common_times, row["id"]
        rare_entries[row["template"], row["id"]] = sum(rest)
    # the list grows with the context by rare words (the common ones' counts stay those of the regime)
    for template in ("lwm-chat", "base", "raw"):
        for low, high in ((800, 2048), (4096, 8192)):
            assert rare_entries[template, f"cwe-{high}-50-0"] > 2 * rare_entries[template, f"cwe-{low}-50-0"]


def test_fwe_answers_are_the_three_most_frequent_coded_words_strictly_apart(rows):
    for row in rows:
        if row["task"] != "fwe":
            continue
        counts = Counter(listed(row))
        filler = counts.pop(FWE_FILLER)
        ranked = counts.most_common()
        assert [w for w, _ in ranked[:FWE_ASKED]] == row["answers"], row["id"]
        tops = [n for _, n in ranked[:FWE_ASKED + 1]]
        assert filler > tops[0] > tops[1] > tops[2] > tops[3], (row["id"], filler, tops)
        assert all(_WORD.fullmatch(w) for w in counts), row["id"]


def test_fwe_counts_follow_zipf_and_stay_apart_from_the_smallest_size():
    for size in range(FWE_MIN_SIZE, 20_000, 7):
        counts = fwe_counts(size)
        assert counts == sorted(counts, reverse=True) and counts[-1] >= 1
        assert counts[1] > counts[2] > counts[3] > counts[4], size
        assert abs(counts[1] / size - 6 / math.pi**2 / 4) < 1 / size
    assert fwe_counts(FWE_MIN_SIZE)[:6] == [44, 11, 4, 2, 1, 1]


def test_no_other_word_of_a_list_contains_an_answer(rows):
    # RULER scores by substring: a response naming any other word of the list must not count as an answer
    for row in rows:
        words = set(listed(row)) - set(row["answers"]) - {FWE_FILLER}
        assert not any(a in w for w in words for a in row["answers"]), row["id"]
        lengths = Counter(len(w) for w in words)
        # lengthened entries are the top-up, less than one more entry's tokens (a number and a word: < 16)
        assert set(lengths) <= {6, 8} and lengths[8] < 16, (row["id"], lengths)


def test_rows_are_identical_on_reruns_and_regenerate_from_their_ids(rows, tok):
    prose = haystacks.builtin("prose")
    for row in rows:
        assert make.row_line(make.regenerate(row, tok, prose)) == make.row_line(row), row["id"]
    by_id = {(r["template"], r["id"]): r for r in rows}
    assert by_id["raw", "cwe-2048-50-0"]["prompt"] != by_id["raw", "cwe-2048-50-1"]["prompt"]
    assert by_id["raw", "cwe-2048-50-0"]["answers"] != by_id["raw", "cwe-2048-50-1"]["answers"]
    with pytest.raises(LWMError, match="row cwe-2048-0-0: task cwe has no depth; its rows are made at depth 50"):
        make.make_row(MakeConfig(tasks=("cwe",)), tok, prose, "cwe", 2048, 0.0, 0)


def test_templates_frame_the_list(rows):
    for row in rows:
        prompt, template = row["prompt"], row["template"]
        preamble = CWE_PREAMBLE if row["task"] == "cwe" else FWE_PREAMBLE
        if template == "lwm-chat":
            assert prompt.startswith(f"You are a helpful assistant. USER: {preamble}\n")
            assert prompt.endswith("? Don't give information outside the document or repeat your findings. Keep "
                                   "your response short and direct. ASSISTANT: ")
        else:
            assert prompt.startswith(preamble + "\n")
        if template == "base":
            assert prompt.endswith("most common words in the list are:" if row["task"] == "cwe"
                                   else "most frequent coded words are:")
        if template == "raw":
            assert prompt.endswith("above?")


def test_eval_scores_list_rows_and_takes_a_recited_list_for_an_echo(rows):
    row = next(r for r in rows if r["task"] == "cwe" and r["ctx"] == 4096 and r["template"] == "lwm-chat")
    answers = row["answers"]
    right = "The 10 most common words in the list above are: " + ", ".join(answers)
    assert needle_eval.result_row(row, right, seconds=1.0, prefill_tokens_per_s=None)["score"] == 1.0
    half = " ".join(f"{i}. {w}" for i, w in enumerate(answers[:5], 1))
    scored = needle_eval.result_row(row, half, seconds=1.0, prefill_tokens_per_s=None)
    assert scored["score"] == 0.5 and not scored["recited"]
    # the list's first entries, word for word, hold common words but are an echo of the context
    echo = " ".join(f"{i}. {w}" for i, w in enumerate(listed(row)[:40], 1))
    scored = needle_eval.result_row(row, echo, seconds=1.0, prefill_tokens_per_s=None)
    assert scored["recited"] and scored["score"] == 0.0
    fwe = next(r for r in rows if r["task"] == "fwe")
    assert needle_eval.result_row(fwe, ", ".join(fwe["answers"][::-1]), seconds=1.0,
                                  prefill_tokens_per_s=None)["score"] == 1.0


def test_too_short_contexts_are_refused_before_any_row(tok):
    with pytest.raises(LWMError, match="--ctx 300 is too short for task cwe: its shortest word list, question"):
        make.check(MakeConfig(tasks=("single", "cwe"), ctx=(300, 2048)), tok)
    # From 4K the shortest list is 30-fold (2727 tokens here), below it 6-fold (588 at 2K): every ctx is checked
    with pytest.raises(LWMError, match="--ctx 4096 is too short for task cwe: .* take 2727 tokens plus"):
        make.check(MakeConfig(tasks=("cwe",), ctx=(2048, 4096), max_new_tokens=1400), tok)
    make.check(MakeConfig(tasks=("cwe", "fwe"), ctx=CTX), tok)
