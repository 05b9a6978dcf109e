"""The numbers of a needle run: reading `results.jsonl`, summarising it, writing `summary.json`.

A result row is a dataset row without its `prompt`, plus `response` (raw), `score` (0..1, from
`score.score`), `empty`, `prefill_tokens_per_s` (or null) and `seconds`. Here only `task`, `ctx`,
`depth`, `score`, `empty`, `prefill_tokens_per_s` and `length` (the prompt's tokens, for the speed) matter.

Every accuracy is a mean over rows (each row weighs the same, whatever its task or cell). The effective
context of a set of rows is the longest length L such that every measured length <= L reaches the
threshold (`accuracy >= threshold`); when the shortest length already fails it is 0 (an int rather
than null: "no length held", which sorts, compares and prints like the others). A length that passes
after a failing shorter one does not count: RULER's effective length asks for a model that holds up to
L, not one that happens to recover at L.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any, Iterable, Mapping

from lwm_core.errors import LWMError
from lwm_core.text import decode_utf8

RESULTS = "results.jsonl"
SUMMARY = "summary.json"

# The fields a result row must have for a summary, and a check of each.
_FIELDS = {
    "task": lambda v: isinstance(v, str) and v != "",
    "ctx": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "depth": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100,
    "score": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
    "empty": lambda v: isinstance(v, bool),
}


def check_row(row: Any, where: str) -> dict:
    """`row` if it is a result row with the fields a summary needs, else an `LWMError` naming `where`
    (a path and line) and the first bad field."""
    if not isinstance(row, dict):
        raise LWMError(f"{where}: a result row must be a JSON object, got {type(row).__name__}")
    for name, ok in _FIELDS.items():
        if name not in row:
            raise LWMError(f"{where}: the result row has no {name!r} field")
        if not ok(row[name]):
            raise LWMError(f"{where}: bad {name!r} in the result row: {row[name]!r}")
    speed = row.get("prefill_tokens_per_s")
    if speed is not None and not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed >= 0):
        raise LWMError(f"{where}: bad 'prefill_tokens_per_s' in the result row: {speed!r}")
    return row


def read_results(path: str) -> list[dict]:
    """The rows of a `results.jsonl`. A final line without its newline is the torn write of a killed
    run and is ignored when it does not parse; a malformed line anywhere else is an `LWMError` naming
    the path and line. A missing file is an `LWMError`; an empty one gives []."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise LWMError(f"{path} does not exist; run lwm needle eval -o DIR first") from None
    except OSError as e:
        raise LWMError(f"cannot read {path}: {e.strerror or e}") from None
    lines = decode_utf8(data, path).split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            rows.append(check_row(_parse(line, f"{path} line {number}"), f"{path} line {number}"))
    if torn.strip():
        try:
            row = json.loads(torn)
        except ValueError:
            return rows  # the half-written row of a killed run
        rows.append(check_row(row, f"{path} line {len(lines) + 1}"))
    return rows


def _parse(line: str, where: str) -> Any:
    from lwm_core.text import json_line

    return json_line(line, where, "only the last line of a killed run may be incomplete")


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _stats(rows: list[dict]) -> dict:
    return {"accuracy": _mean([r["score"] for r in rows]), "count": len(rows),
            "empty": sum(r["empty"] for r in rows)}


def _group(rows: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return dict(sorted(groups.items()))


def cells(results: list[dict]) -> list[dict]:
    """One record per (task, ctx, depth): accuracy, count, empty; sorted by task, ctx, depth."""
    return [{"task": task, "ctx": ctx, "depth": depth, **_stats(rows)}
            for (task, ctx, depth), rows in _group(results, "task", "ctx", "depth").items()]


def effective_context(accuracy_by_ctx: Mapping[int, float], threshold: float) -> int:
    """The longest length L such that every length <= L has accuracy >= threshold; 0 if the shortest
    fails (see the module's docstring)."""
    effective = 0
    for ctx in sorted(accuracy_by_ctx):
        if accuracy_by_ctx[ctx] < threshold:
            break
        effective = ctx
    return effective


def _effective(rows: list[dict], threshold: float) -> int:
    return effective_context({ctx: _mean([r["score"] for r in group])
                              for (ctx,), group in _group(rows, "ctx").items()}, threshold)


def summarize(results: list[dict], *, threshold: float = 0.85, meta: Mapping[str, Any]) -> dict:
    """The summary of a run's result rows, with `meta` (model spec, tokenizer hash, seed, version,
    argv, ...) merged in at the top level.

    Keys: accuracy, count, empty, effective_context, threshold (overall); tasks {task: {accuracy, count,
    empty, effective_context}}; lengths [{ctx, accuracy, count, empty, prefill_tokens_per_s (the rows
    that measured it: their prompt tokens over their prefill seconds, each row's share of its batch's
    prefill being length / speed; null if none did)}]; depths [{depth, accuracy, count, empty}]; cells [{task, ctx,
    depth, accuracy, count, empty}]. Lists are sorted by their numbers (JSON object keys would sort
    "32768" before "4096")."""
    if not results:
        raise LWMError("no result rows to summarise")
    if not 0 <= threshold <= 1:
        raise LWMError(f"threshold must be in 0..1, got {threshold}")
    rows = [check_row(row, f"result row {i}") for i, row in enumerate(results)]
    lengths = []
    for (ctx,), group in _group(rows, "ctx").items():
        timed = [r for r in group if r.get("prefill_tokens_per_s") and isinstance(r.get("length"), int)
                 and r["length"] > 0]
        speed = (sum(r["length"] for r in timed) / sum(r["length"] / r["prefill_tokens_per_s"] for r in timed)
                 if timed else None)
        lengths.append({"ctx": ctx, **_stats(group), "prefill_tokens_per_s": speed})
    summary = {
        **_stats(rows),
        "effective_context": _effective(rows, threshold),
        "threshold": threshold,
        "tasks": {task: {**_stats(group), "effective_context": _effective(group, threshold)}
                  for (task,), group in _group(rows, "task").items()},
        "lengths": lengths,
        "depths": [{"depth": depth, **_stats(group)} for (depth,), group in _group(rows, "depth").items()],
        "cells": cells(rows),
    }
    clash = sorted(set(meta) & set(summary))
    if clash:
        raise ValueError(f"meta keys {clash} would overwrite the summary's own")
    return {**summary, **meta}


def dumps(summary: Mapping[str, Any]) -> str:
    """`summary` as summary.json's text: sorted keys, so that two runs diff line by line."""
    return json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_summary(directory: str, summary: Mapping[str, Any]) -> str:
    """Write `directory`/summary.json atomically; returns its path."""
    from lwm_core.checkpoint.atomic import write_text

    path = os.path.join(directory, SUMMARY)
    write_text(path, dumps(summary))
    return path

