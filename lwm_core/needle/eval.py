"""Running a model over a needle dataset: checks before any work, batches by a token budget, result rows,
and a results directory that a killed run resumes.

A run directory holds `dataset.json` (the digest of the dataset it scores: a rerun with other rows is
refused rather than mixed in), `results.jsonl` (one result row per dataset row, appended a batch at a
time, flushed and fsynced after each batch; each line is written whole, so a kill leaves at most a torn
last line, which `open_results` drops and `summary.read_results` ignores), then `summary.json` and
`heatmap.png`.

Generation is greedy (`temperature=0`), a batch of prompts of different lengths at a time (left-padded
by `LWM.generate`). `prefill_tokens_per_s` is the batch's prompt tokens (unpadded) over the seconds of
its prefill alone, as `LWM.generate` measures them (`GenerationStats`: until the first new token is
ready; decode, tokenizing and scoring excluded); the first batch of each padded prompt length also
compiles that shape, and so reads slower. `seconds` is the wall time of the batch's `LWM.generate`,
prefill and decode together; both are the same for every row of the batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from lwm_core.errors import LWMError
from lwm_core.needle.make import row_line
from lwm_core.needle.score import is_empty, recites, score
from lwm_core.needle.summary import RESULTS, check_row

DATASET = "dataset.json"


def read_dataset(path: str) -> list[dict[str, Any]]:
    """The rows of a dataset JSONL that `lwm needle make` wrote; a malformed line is an `LWMError`."""
    from lwm_core.text import decode_utf8, json_line

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LWMError(f"cannot read {path}: {e.strerror or e}") from None
    rows = []
    for number, line in enumerate(decode_utf8(data, path).splitlines(), 1):
        if not line.strip():
            continue
        row = json_line(line, f"{path} line {number}")
        missing = [k for k in ("id", "prompt", "length", "answers", "max_new_tokens", "tokenizer", "task",
                               "ctx", "depth") if not isinstance(row, dict) or k not in row]
        if missing:
            raise LWMError(f"{path} line {number} is not a needle row (no {missing[0]!r}); make one with "
                           f"lwm needle make")
        rows.append(row)
    if not rows:
        raise LWMError(f"{path} has no rows; make a dataset with lwm needle make")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise LWMError(f"{path} has row {twice} more than once")
    return rows


def dataset_digest(rows: Iterable[dict[str, Any]]) -> str:
    """`sha256:<16 hex>` of the rows' canonical lines, in id order: the same rows, the same digest."""
    h = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["id"]):
        h.update(row_line(row).encode("utf-8"))
    return f"sha256:{h.hexdigest()[:16]}"


def check_rows(rows: Sequence[dict[str, Any]], *, max_context: int, tokenizer_id: str, model: str) -> None:
    """Refuse, before any work, a row made with another tokenizer or longer than the model's context."""
    for row in rows:
        if row["tokenizer"] != tokenizer_id:
            raise LWMError(f"row {row['id']} was counted with tokenizer {row['tokenizer']}, but {model} uses "
                           f"{tokenizer_id}; make the dataset with -m {model} (or its --tokenizer)")
    for row in rows:
        if row["length"] + row["max_new_tokens"] > max_context:
            raise LWMError(f"row {row['id']} needs {row['length']} + {row['max_new_tokens']} tokens, more than "
                           f"the context of {model} ({max_context}); make the dataset with --ctx "
                           f"{max_context} or less, or --set max_sequence_length=...")


def batches(rows: Sequence[dict[str, Any]], batch_tokens: int) -> list[list[dict[str, Any]]]:
    """Rows sorted by (max_new_tokens, length), cut into batches whose padded size (rows x longest
    prompt) stays within `batch_tokens`; a row longer than the budget is a batch of its own. One
    max_new_tokens per batch, so that every row gets exactly its own budget."""
    out: list[list[dict[str, Any]]] = []
    for row in sorted(rows, key=lambda r: (r["max_new_tokens"], r["length"], r["id"])):
        batch = out[-1] if out else None
        if (batch and batch[0]["max_new_tokens"] == row["max_new_tokens"]
                and (len(batch) + 1) * row["length"] <= batch_tokens):
            batch.append(row)
        else:
            out.append([row])
    return out


def result_row(row: dict[str, Any], response: str, *, seconds: float, prefill_tokens_per_s: float | None) -> dict:
    """The dataset row without its prompt, plus the response (raw) and its score (0 for a recitation of
    the context: see `score.recites`)."""
    recited = recites(response, row["prompt"], row.get("needles", ()))
    out = {k: v for k, v in row.items() if k != "prompt"}
    out.update(response=response, score=0.0 if recited else score(response, row["answers"]), recited=recited,
               empty=is_empty(response), prefill_tokens_per_s=prefill_tokens_per_s, seconds=seconds)
    return out


def reply_text(tokenizer, tokens, eos: int, pad: int, limit: int) -> str:
    """The reply of generated `tokens`: the first `limit`, cut at EOS (or at the padding of a row that
    finished before its batch), decoded."""
    ids = [int(t) for t in tokens[:limit]]
    for stop in (eos, pad):  # EOS ends the reply; a finished row of a batch is padded after it
        if stop in ids:
            ids = ids[: ids.index(stop)]
    return tokenizer.decode(ids)


def generate_batch(model, batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Greedy replies to a batch's prompts (one max_new_tokens) -> their result rows."""
    from lwm_core.generate.decode import GenerationStats

    n = batch[0]["max_new_tokens"]
    prompts = [model.tokenizer.encode(row["prompt"]) for row in batch]
    stats = GenerationStats()
    start = time.perf_counter()
    new = model.generate(prompts, n, temperature=0.0, stats=stats)
    seconds = time.perf_counter() - start
    cfg = model.config
    return [result_row(row, reply_text(model.tokenizer, tokens, cfg.eos_token_id, cfg.pad_token_id, n),
                       seconds=seconds, prefill_tokens_per_s=stats.prefill_tokens_per_s)
            for row, tokens in zip(batch, new)]


def run(generate: Callable[[Sequence[dict]], list[dict]], rows: Sequence[dict[str, Any]], batch_tokens: int,
        done: Iterable[str] = ()) -> Iterator[list[dict[str, Any]]]:
    """The result rows of each batch of the rows not `done`, a batch at a time (the caller writes each
    before asking for the next, and may stop between batches)."""
    skip = set(done)
    for batch in batches([r for r in rows if r["id"] not in skip], batch_tokens):
        yield generate(batch)


# ------------------------------------------------------------------------------------ run directory


def open_run(directory: str, digest: str, *, force: bool) -> list[dict]:
    """Prepare `directory` for a run over the dataset `digest` -> the result rows already there (to
    skip). A directory of another dataset is refused unless `force`; `force` starts results afresh.
    The directory itself is created (its parent must exist)."""
    from lwm_core.checkpoint.atomic import check_target, drop_torn_line, os_errors, write_text
    from lwm_core.needle.summary import read_results

    check_target(directory, kind="dir", overwrite=True)  # an existing run directory is resumed
    with os_errors(directory):
        os.makedirs(directory, exist_ok=True)
    results = os.path.join(directory, RESULTS)
    meta_path = os.path.join(directory, DATASET)
    if not force:
        stored = None
        if os.path.exists(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    stored = json.load(f).get("digest")
            except (OSError, ValueError, AttributeError):
                stored = "unreadable"
        elif os.path.exists(results):
            stored = "unknown"
        if stored is not None and stored != digest:
            raise LWMError(f"{directory} holds the results of another dataset ({stored}, this one is {digest}); "
                           f"pass another -o DIR, or --force to start it afresh")
    if force:
        with os_errors(results):
            if os.path.exists(results):
                os.remove(results)
    write_text(meta_path, json.dumps({"digest": digest}) + "\n")
    if not os.path.exists(results):
        return []
    drop_torn_line(results)
    return read_results(results)


def append_results(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Append result rows as whole lines in one write, then flush and fsync."""
    from lwm_core.checkpoint.atomic import append_lines

    append_lines(path, [json.dumps(check_row(r, path), sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
                        for r in rows])
