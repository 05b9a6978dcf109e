"""summary.json's numbers on a crafted grid, and results.jsonl read back after a killed run."""

import json

import pytest

from lwm_core.errors import LWMError
from lwm_core.needle.summary import effective_context, read_results, summarize, write_summary

CTXS = (1024, 4096, 32768)
DEPTHS = (0, 50, 100)


def _row(task, ctx, depth, score, *, empty=False, speed=None):
    return {"id": f"{task}-{ctx}-{depth}", "task": task, "ctx": ctx, "depth": depth, "round": 0, "seed": 0,
            "length": ctx - 10, "answers": ["1"], "needle_positions": [0], "max_new_tokens": 8, "tokenizer": "h",
            "response": "", "score": score, "empty": empty, "prefill_tokens_per_s": speed, "seconds": 1.0}


def _grid():
    """Task a: perfect at 1K, 2/3 at 4K (one miss at depth 100), perfect at 32K. Task b: perfect
    everywhere except 32K where every response is empty."""
    rows = []
    for ctx in CTXS:
        for depth in DEPTHS:
            rows.append(_row("a", ctx, depth, 0.0 if (ctx, depth) == (4096, 100) else 1.0, speed=float(ctx)))
            rows.append(_row("b", ctx, depth, 0.0 if ctx == 32768 else 1.0, empty=ctx == 32768))
    return rows


def test_summary_numbers_on_a_grid():
    meta = {"model": "random:tiny", "tokenizer": "h", "seed": 3, "version": "0.1.0", "argv": ["lwm"]}
    s = summarize(_grid(), threshold=0.85, meta=meta)
    assert (s["count"], s["empty"]) == (18, 3)
    assert s["accuracy"] == pytest.approx(14 / 18)
    assert s["tasks"]["a"] == {"accuracy": pytest.approx(8 / 9), "count": 9, "empty": 0,
                               "effective_context": 1024}  # 4K at 2/3 stops it, though 32K passes
    assert s["tasks"]["b"] == {"accuracy": pytest.approx(6 / 9), "count": 9, "empty": 3,
                               "effective_context": 4096}
    assert [(r["ctx"], r["accuracy"], r["empty"]) for r in s["lengths"]] == [
        (1024, 1.0, 0), (4096, pytest.approx(5 / 6), 0), (32768, 0.5, 3)]
    # Over the rows that measured it (task b's rows measured nothing).
    assert [r["prefill_tokens_per_s"] for r in s["lengths"]] == [1024.0, 4096.0, 32768.0]
    # Prompt tokens over prefill seconds, not a mean of rates: a slow (compiling) batch of one 1000-token
    # row (1 s) and a fast batch of two (1000 tokens at 10000 tok/s, 0.2 s) is 3000 tokens in 1.2 s.
    mixed = [dict(_row("a", 1024, d, 1.0, speed=v), length=1000) for d, v in ((0, 1000.0), (50, 1e4), (100, 1e4))]
    assert summarize(mixed, threshold=0.85, meta={})["lengths"][0]["prefill_tokens_per_s"] == pytest.approx(2500)
    assert [(r["depth"], r["accuracy"]) for r in s["depths"]] == [
        (0, pytest.approx(5 / 6)), (50, pytest.approx(5 / 6)), (100, pytest.approx(4 / 6))]
    assert len(s["cells"]) == 18 and s["cells"][0] == {"task": "a", "ctx": 1024, "depth": 0, "accuracy": 1.0,
                                                       "count": 1, "empty": 0}
    assert s["effective_context"] == 1024  # 4K at 5/6 < 0.85
    assert summarize(_grid(), threshold=0.8, meta={})["effective_context"] == 4096
    assert {k: s[k] for k in meta} == meta and s["threshold"] == 0.85


def test_effective_context_edges():
    assert effective_context({1024: 0.5, 2048: 1.0}, 0.85) == 0  # the shortest fails: 0
    assert effective_context({1024: 0.85, 2048: 0.9}, 0.85) == 2048  # reaching the threshold passes
    assert effective_context({4096: 1.0, 1024: 1.0, 2048: 0.2}, 0.85) == 1024  # sorted by length


def test_summary_file_is_sorted_and_stable(tmp_path):
    s = summarize(_grid(), meta={"model": "m", "argv": ["lwm", "needle"]})
    path = write_summary(str(tmp_path), s)
    text = (tmp_path / "summary.json").read_text()
    assert path == str(tmp_path / "summary.json") and json.loads(text) == json.loads(json.dumps(s))
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind


def test_bad_summaries_are_refused():
    with pytest.raises(LWMError, match="no result rows"):
        summarize([], meta={})
    with pytest.raises(LWMError, match="bad 'score'.*1.5"):
        summarize([_row("a", 1024, 0, 1.5)], meta={})
    with pytest.raises(ValueError, match="overwrite"):
        summarize(_grid(), meta={"accuracy": 1.0})


def test_a_torn_last_line_is_ignored_and_a_bad_middle_line_is_not(tmp_path):
    rows = _grid()[:3]
    path = tmp_path / "results.jsonl"
    whole = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(whole + json.dumps(rows[0])[:40])  # killed while writing the fourth row
    assert read_results(str(path)) == rows
    path.write_text(whole + json.dumps(rows[0]))  # complete but for its newline: kept
    assert read_results(str(path)) == rows + rows[:1]
    path.write_text("")
    assert read_results(str(path)) == []
    path.write_text(json.dumps(rows[0])[:40] + "\n" + whole)
    with pytest.raises(LWMError, match=r"results.jsonl line 1 is not valid JSON"):
        read_results(str(path))
    path.write_text(whole + json.dumps({"task": "a"}) + "\n")
    with pytest.raises(LWMError, match=r"line 4: the result row has no 'ctx' field"):
        read_results(str(path))
    with pytest.raises(LWMError, match="does not exist"):
        read_results(str(tmp_path / "nothing.jsonl"))
