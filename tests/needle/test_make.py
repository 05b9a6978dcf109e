"""`lwm_core.needle`: the "done means" of `lwm needle make`, asserted over generated rows of every task
with the small shipped tokenizer: exact lengths, a filled budget, needles where their positions say,
depth 0 and 100 at the ends, distinct keys, and rows rebuilt alone from their ids."""

from __future__ import annotations

import json
import re

import pytest

from lwm_core.errors import LWMError
from lwm_core.needle import haystack as haystacks
from lwm_core.needle import make
from lwm_core.needle.config import LIST_TASKS, TASK_NAMES, MakeConfig, depth_text, parse_ctx, parse_depths
from lwm_core.needle.tasks import CITIES, TASKS
from lwm_core.tokenizer import load_tokenizer

CTX = (700, 1024, 2048)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def rows(tok):
    config = MakeConfig(tasks=TASK_NAMES, ctx=CTX, depths=(0.0, 33.33, 100.0), rounds=2, seed=7)
    return config, [json.loads(make.row_line(r)) for r in make.make_rows(config, tok, haystacks.builtin("prose"))]


def test_parse_ctx_and_depths():
    assert parse_ctx("1M") == (1048576,)
    assert parse_ctx("4K,32K,128K") == (4096, 32768, 131072)
    ladder = parse_ctx("1K:1M:20")
    assert len(ladder) == 20 and ladder[0] == 1024 and ladder[-1] == 1048576
    assert parse_depths("10")[:3] == (0.0, 11.11, 22.22) and parse_depths("10")[-1] == 100.0
    assert parse_depths("0,50,100") == (0.0, 50.0, 100.0)
    assert parse_depths("50") == parse_depths("50", "linear") and len(parse_depths("50")) == 50  # a count
    assert parse_depths("50%") == (50.0,) and parse_depths("0%,12.5%,100") == (0.0, 12.5, 100.0)
    sig = parse_depths("5", "sigmoid")
    assert sig[0] == 0 and sig[-1] == 100 and sig[1] < 25 and sig[2] == 50
    assert depth_text(33.333) == "33.33" and depth_text(50.0) == "50"
    for bad in ("x", "4K,,8K", "1K:2K", "2K:1K:3", "0"):
        with pytest.raises(LWMError):
            parse_ctx(bad)
    for bad in ("-1", "0,101", "a,b", "101%", "%", "x%"):
        with pytest.raises(LWMError):
            parse_depths(bad)


def test_config_refuses_bad_settings_in_one_line():
    for kwargs, message in [({"tasks": ("nope",)}, "unknown task 'nope'"), ({"retrieve": 5}, "--retrieve 5 is more"),
                            ({"template": "x"}, "--template 'x'"), ({"rounds": 0}, "--rounds")]:
        with pytest.raises(LWMError, match=re.escape(message)):
            MakeConfig(**kwargs)
    assert set(TASKS) == set(TASK_NAMES)
    assert len(set(CITIES)) == len(CITIES)


def test_every_row_counts_fills_and_places_exactly(rows, tok):
    config, rows = rows
    # the list tasks have no depth: one row per (ctx, round)
    assert len(rows) == (len(TASK_NAMES) - len(LIST_TASKS)) * len(CTX) * 3 * 2 + len(LIST_TASKS) * len(CTX) * 2
    for row in rows:
        ids = tok.encode(row["prompt"])
        assert len(ids) == row["length"], row["id"]
        budget = row["ctx"] - row["max_new_tokens"]
        assert row["length"] <= budget and budget - row["length"] <= 0.01 * row["ctx"], row["id"]
        assert len(row["needle_positions"]) == len(row["needles"]) >= (row["task"] not in LIST_TASKS)
        for position, needle in zip(row["needle_positions"], row["needles"]):
            assert tok.decode(ids[position:]).startswith("\n" + needle + "\n"), (row["id"], needle)
            assert tok.decode(ids[:position]) + tok.decode(ids[position:]) == tok.decode(ids)
        if row["task"] in LIST_TASKS:  # the answers are in the list (test_words counts them)
            assert row["depth"] == 50 and all(answer in row["prompt"] for answer in row["answers"]), row["id"]
        else:
            assert all(answer in "".join(row["needles"]) for answer in row["answers"]), row["id"]
        assert row["id"] == f"{row['task']}-{row['ctx']}-{depth_text(row['depth'])}-{row['round']}"
        assert row["tokenizer"].startswith("sha256:")


def test_keys_never_repeat_and_answers_match_the_task(rows):
    _, rows = rows
    for row in rows:
        task, needles = row["task"], row["needles"]
        if task in ("multi", "multikey", "multiquery"):
            keys = [re.match(r"The special magic (?:uuid for |number for )?(.+?)(?: number)? is: ", n).group(1)
                    for n in needles]
            assert len(set(keys)) == len(keys) == row["num_needles"], row["id"]
        if task == "multi":
            assert len(row["answers"]) == row["retrieve"]
        if task == "multivalue":
            assert len(set(row["answers"])) == row["num_needles"]
        if task == "vt":
            names = [n.split()[1] for n in needles]
            assert row["answers"] == names and len(set(names)) == len(names)
            # the chain keeps its order in the prompt
            assert row["needle_positions"] == sorted(row["needle_positions"])
        if task == "single":
            assert needles == [f"The special magic {needles[0].split(' magic ')[1].split(' number')[0]} "
                               f"number is: {row['answers'][0]}"]
            assert row["answers"][0].isdigit() and len(row["answers"][0]) == 7


def test_depth_0_and_100_put_the_needle_first_and_last(rows, tok):
    _, rows = rows
    for row in rows:
        if row["task"] in LIST_TASKS:
            continue
        prompt = row["prompt"]
        start = len("You are a helpful assistant. USER: ")
        first = prompt.index("\n" + row["needles"][0] + "\n")
        if row["depth"] == 0:
            assert first == start, row["id"]
            assert row["needle_positions"][0] == len(tok.encode(prompt[:start]))
            assert min(row["needle_positions"]) == row["needle_positions"][0]
        if row["depth"] == 100:
            # nothing but needles between it and the question
            tail = prompt[first:prompt.index(" What ") if " What " in prompt else prompt.index(" Find ")]
            rest = [line for line in tail.split("\n") if line.strip()]
            assert all(line in row["needles"] for line in rest), row["id"]
            if row["task"] != "vt":
                assert max(row["needle_positions"]) == row["needle_positions"][0]


def test_lwm_template_is_lwm_exact(rows):
    _, rows = rows
    row = next(r for r in rows if r["task"] == "single")
    city = row["needles"][0].split(" magic ")[1].split(" number")[0]
    assert row["prompt"].startswith("You are a helpful assistant. USER: ")
    assert row["prompt"].endswith(f" What is the special magic {city} number? Don't give information outside the "
                                  f"document or repeat your findings. Keep your response short and direct. "
                                  f"ASSISTANT: ")
    assert f"\nThe special magic {city} number is: {row['answers'][0]}\n" in row["prompt"]


def test_rounds_use_different_stretches_and_rows_regenerate_from_their_id(rows, tok):
    _, rows = rows
    by_id = {r["id"]: r for r in rows}
    assert by_id["single-700-33.33-0"]["prompt"] != by_id["single-700-33.33-1"]["prompt"]
    prose = haystacks.builtin("prose")
    for row in rows[::5] + [r for r in rows if r["task"] in LIST_TASKS]:
        assert make.row_line(make.regenerate(row, tok, prose)) == make.row_line(row), row["id"]


def test_same_settings_give_identical_rows_on_every_haystack_and_template(tok, tmp_path):
    (tmp_path / "book.jsonl").write_text(json.dumps({"text": "It was night. " * 3 + "The end came! Did it? Yes."})
                                         + "\n" + json.dumps({"text": "Another book begins here. And ends."}) + "\n")
    for name in ("noise", "needles", str(tmp_path / "book.jsonl")):
        for template in ("lwm-chat", "base", "raw"):
            config = MakeConfig(tasks=("single", "multi", "fwe"), ctx=(512,), depths=(0.0, 50.0, 100.0),
                                template=template, haystack=name)
            hay = haystacks.read_haystack(name)
            first = [make.row_line(r) for r in make.make_rows(config, tok, hay)]
            assert first == [make.row_line(r) for r in make.make_rows(config, tok, haystacks.read_haystack(name))]
            for line in first:
                row = json.loads(line)
                assert len(tok.encode(row["prompt"])) == row["length"] <= 512 - 64
                assert 448 - row["length"] <= 3, (name, template, row["id"], row["length"])
                ids = tok.encode(row["prompt"])
                for p, n in zip(row["needle_positions"], row["needles"]):
                    assert tok.decode(ids[p:]).startswith("\n" + n)
                if template == "base" and row["task"] == "single":
                    key = row["needles"][0].split(" is: ")[0]
                    assert row["prompt"].endswith(f"\nAnswer: {key} is:")
                if template == "raw":
                    assert row["prompt"].endswith("?") and "ASSISTANT" not in row["prompt"]


def test_haystack_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    (tmp_path / "dir").mkdir()
    for spec, message in [(tmp_path / "empty.jsonl", "has no text"), (tmp_path / "bad.jsonl", "line 1 is not JSON"),
                          (tmp_path / "dir", "has no .txt files"), (tmp_path / "missing", "does not exist")]:
        with pytest.raises(LWMError, match=message):
            haystacks.read_haystack(str(spec))


def test_too_short_and_too_long_contexts_are_refused_before_any_row(tok):
    with pytest.raises(LWMError, match="--ctx 200 is too short for task multi"):
        make.check(MakeConfig(tasks=("single", "multi"), ctx=(200, 4096)), tok)
    with pytest.raises(LWMError, match=r"--ctx 4096 is longer than the context of random:tiny \(1024 tokens\)"):
        make.check(MakeConfig(ctx=(4096,)), tok, max_context=1024, model="random:tiny")


def test_a_later_round_that_cannot_fit_is_refused_before_any_row(tok):
    # Each row draws its own city and number: find a ctx that the first round's needle and question fit
    # and a later round's do not; the refusal must come from check, not halfway through writing.
    def overhead(config, round):
        task = make.TASKS["single"](make._row_rng(config, "single", 1024, 0.0, round), config, 1024)
        return len(tok.encode(make._shortest_prompt(config.template, task)))

    probe = MakeConfig(ctx=(1024,), depths=(0.0,), rounds=10, max_new_tokens=8)
    sizes = [overhead(probe, r) for r in range(10)]
    assert max(sizes) > sizes[0]
    config = MakeConfig(ctx=(1024,), depths=(0.0,), rounds=10, max_new_tokens=1024 - sizes[0])
    with pytest.raises(LWMError, match=f"--ctx 1024 is too short for task single: .* take {max(sizes)} tokens"):
        make.check(config, tok)
    make.check(MakeConfig(ctx=(1024,), depths=(0.0,), rounds=1, max_new_tokens=1024 - sizes[0]), tok)
