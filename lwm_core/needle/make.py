"""Making a needle dataset: fit a haystack stretch to a token budget, place the needles, count exactly.

One tokenizer does all the counting (LWM cut with one and placed with another, so its lengths drifted).
For each row:

1. The round's stretch of haystack is split into sentences, each tokenized once (`_Stretch`, shared by
   every row of the round), so fitting costs a few encodes of the prompt, not one per sentence.
2. `_fit` finds the most whole sentences whose prompt fits `ctx - max_new_tokens`, first from the
   sentences' token counts, then by binary search on the real length of the assembled prompt (counts are
   not additive at the joins); then it tops the budget up with the tail of the next sentence, cut
   character by character and put in front, so that the prompt fills the budget to within a token or two.
3. Needles go in at sentence boundaries, each on its own line as LWM wrote them (`\\n{needle}\\n`): the
   needle at the row's depth (0 % before all the haystack, 100 % after it), the others at boundaries
   drawn from the row's seed. A newline splits sentencepiece's tokenization, so the tokens of the prompt
   up to a needle are exactly the tokens of that prefix: `needle_positions` is the length of the
   encoded prefix, checked against the encoded prompt.

The list tasks (`cwe`, `fwe`: `lwm_core.needle.tasks.WordList`) have no haystack and no needles: their
context is a word list grown to the budget the same way, by binary search on the real length of the
prompt over the list's size (about a word a step, from a secant estimate), then topped up by
lengthening its last few entries a syllable each, so that it too fills the budget to within a token or
two. Their rows hold no needles (`needles` and `needle_positions` are empty: a response that recites
the list is then an echo of the context for `score.recites`) and are made once per (ctx, round), at
depth `LIST_DEPTH` (50), whatever `depths` says (see `config.LIST_TASKS`).

Every random choice of a row comes from `random.Random` seeded with the row's id and the dataset seed,
so a row is rebuilt alone from its id (`make_row`) and the same settings give byte-identical files.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
from dataclasses import dataclass, replace
from typing import Any, Iterator

from lwm_core.errors import LWMError
from lwm_core.needle.config import LIST_DEPTH, LIST_TASKS, MakeConfig, depth_text, depth_value
from lwm_core.needle.haystack import Haystack
from lwm_core.needle.tasks import TASKS, Task, WordList
from lwm_core.prompts import SYSTEM

# LWM's needle prompt (docs/compatibility.md#prompts): its instruction, word for word.
LWM_INSTRUCTION = ("Don't give information outside the document or repeat your findings. Keep your response "
                   "short and direct.")
# Tokens of haystack read beyond a budget: room for the fitting's search to look past the estimate.
_MARGIN = 512


def frame(template: str, task: Task) -> tuple[str, str]:
    """The prompt around the context: (text before it, text after it)."""
    intro = f"{task.preamble}\n" if task.preamble else ""
    if template == "lwm-chat":
        return f"{SYSTEM} USER: {intro}", f" {task.question} {LWM_INSTRUCTION} ASSISTANT: "
    if template == "base":  # RULER-style: the answer's first words, so that a base model continues it
        return intro, f"\n{task.question}\nAnswer: {task.answer_prefix}"
    return intro, f"\n{task.question}"


def row_id(task: str, ctx: int, depth: float, round: int) -> str:
    """`single-4096-12.5-0`: task, requested context, depth in percent, round."""
    return f"{task}-{ctx}-{depth_text(depth)}-{round}"


def parse_row_id(text: str) -> tuple[str, int, float, int]:
    try:
        task, ctx, depth, round = text.split("-")
        return task, int(ctx), float(depth), int(round)
    except ValueError:
        raise LWMError(f"row id {text!r} is not TASK-CTX-DEPTH-ROUND (e.g. single-4096-50-0)") from None


def tokenizer_digest(tokenizer) -> str:
    """`sha256:<16 hex>` of the tokenizer's file(s): rows record which tokenizer counted them."""
    path = getattr(tokenizer, "path", None)
    h = hashlib.sha256()
    if path and os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            if name.startswith("tokenizer") and os.path.isfile(os.path.join(path, name)):
                with open(os.path.join(path, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    elif path and os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read())
    else:
        raise LWMError(f"tokenizer {path} has no file to identify it by; pass --tokenizer PATH")
    return f"sha256:{h.hexdigest()[:16]}"


@dataclass
class _Stretch:
    """A round's haystack sentences with their token counts (`cum[i]`: tokens of the first i)."""

    pieces: list[str]
    cum: list[int]
    stream: Iterator[str]

    def extend(self, tokens: int, encode) -> None:
        while self.cum[-1] < tokens:
            piece = next(self.stream)
            self.pieces.append(piece)
            self.cum.append(self.cum[-1] + len(encode(piece)))


def _stretch(haystack: Haystack, seed: int, round: int) -> _Stretch:
    return _Stretch([], [0], haystack.stream(seed, round))


def _row_rng(config: MakeConfig, task: str, ctx: int, depth: float, round: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: the same in every process and Python version.
    return random.Random(f"{config.seed}:{row_id(task, ctx, depth, round)}")


def _context(units: list[str], task: Task, depth: float, draws: list[float], counts: list[int]):
    """The haystack units with the needles inserted at boundaries -> (text, offset of each needle)."""
    k = len(units)
    cum = [0]
    for c in counts:
        cum.append(cum[-1] + c)
    target = depth / 100 * cum[-1]
    first = min(range(k + 1), key=lambda b: (abs(cum[b] - target), b))
    if depth == 100:
        first = k
    # (boundary, rank): at depth 0 the asked needle comes before the others at its boundary, at 100 after.
    places = [(first, 1 if depth == 100 and not task.ordered else -1)]
    for i, u in enumerate(sorted(draws) if task.ordered else draws, 1):
        if task.ordered:  # the rest of the chain, in order, after its start
            places.append((first + int(u * (k - first + 1)), i))
        else:
            places.append((int(u * (k + 1)), 0))
    at: dict[int, list[tuple[int, int]]] = {}
    for needle, (b, rank) in enumerate(places):
        at.setdefault(b, []).append((rank, needle))
    parts: list[str] = []
    size = 0
    offsets = [0] * len(places)
    after_unit = False
    for b in range(k + 1):
        for _, needle in sorted(at.get(b, [])):
            offsets[needle] = size
            text = f"\n{task.needles[needle]}\n"
            parts.append(text)
            size += len(text)
            after_unit = False
        if b < k:
            text = (" " if after_unit else "") + units[b]
            parts.append(text)
            size += len(text)
            after_unit = True
    return "".join(parts), offsets


def make_row(config: MakeConfig, tokenizer, haystack: Haystack, task_name: str, ctx: int, depth: float,
             round: int, *, tokenizer_id: str | None = None, stretch: _Stretch | None = None) -> dict[str, Any]:
    """One row, built from its (task, ctx, depth, round) and the config alone."""
    encode = tokenizer.encode
    rng = _row_rng(config, task_name, ctx, depth, round)
    task = TASKS[task_name](rng, config, ctx)
    before, after = frame(config.template, task)
    answer = config.answer_tokens(task_name)
    budget = ctx - answer
    if task.words is not None:
        if depth != LIST_DEPTH:
            raise LWMError(f"row {row_id(task_name, ctx, depth, round)}: task {task_name} has no depth; its rows "
                           f"are made at depth {depth_text(LIST_DEPTH)} only")
        prompt, offsets = _fit_list(task.words, before, after, budget, encode, task_name, ctx, config), []
    else:
        draws = [rng.random() for _ in task.needles[1:]]
        stretch = stretch or _stretch(haystack, config.seed, round)
        prompt, offsets = _fit_haystack(task, before, after, depth, draws, budget, stretch, encode, task_name,
                                        ctx, config)
    ids = encode(prompt)
    positions = []
    for offset in offsets:
        prefix = encode(prompt[:offset])
        if ids[: len(prefix)] != prefix:  # the tokenizer merged across the newline: counts would be wrong
            raise LWMError(f"tokenizer {tokenizer.path} does not split at the newline before a needle; "
                           f"needle positions cannot be exact with it")
        positions.append(len(prefix))
    return {
        "answers": list(task.answers),
        "ctx": ctx,
        "depth": depth_value(depth),
        "haystack": haystack.name,
        "haystack_digest": haystack.digest,
        "id": row_id(task_name, ctx, depth, round),
        "length": len(ids),
        "max_new_tokens": answer,
        "needle_positions": positions,
        "needles": list(task.needles),
        "num_needles": config.needles,
        "prompt": prompt,
        # the reply that answers it: what a training line of the row teaches (fields "[prompt],reply")
        "reply": ", ".join(task.answers),
        "retrieve": config.retrieve,
        "round": round,
        "seed": config.seed,
        "task": task_name,
        "template": config.template,
        "tokenizer": tokenizer_id or tokenizer_digest(tokenizer),
    }


def _fit_haystack(task: Task, before: str, after: str, depth: float, draws: list[float], budget: int,
                  stretch: _Stretch, encode, task_name: str, ctx: int, config: MakeConfig) -> tuple[str, list[int]]:
    """The prompt of a needle task that fills `budget` with haystack -> (prompt, offset of each needle)."""
    stretch.extend(budget + _MARGIN, encode)
    pieces, cum = stretch.pieces, stretch.cum

    def build(k: int, fill: int) -> tuple[str, list[int]]:
        units = list(pieces[:k])
        counts = [cum[i + 1] - cum[i] for i in range(k)]
        if fill and units:
            # The tail of the next sentence goes first, so every later boundary is still a sentence end.
            # Characters, not words: a word can be many tokens (a number is one token per digit).
            units[0] = pieces[k][-fill:].lstrip() + " " + units[0]
        context, offsets = _context(units, task, depth, draws, counts)
        return before + context + after, [len(before) + o for o in offsets]

    def length(k: int, fill: int = 0) -> int:
        return len(encode(build(k, fill)[0]))

    overhead = length(0)
    if overhead > budget:
        raise too_short(task_name, ctx, overhead, config.answer_tokens(task_name))
    # Whole sentences: estimate from the counts, then binary search on real lengths around it.
    k = max(0, bisect.bisect_right(cum, budget - overhead) - 1)
    lo, hi = _bracket(k, lambda n: length(n) <= budget, len(pieces) - 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if length(mid) <= budget else (lo, mid)
    k = lo
    # Then the tail of the next sentence (when there is a first sentence to put it in front of).
    fill = 0
    if k > 0:
        flo, fhi = 0, len(pieces[k]) + 1
        while fhi - flo > 1:
            mid = (flo + fhi) // 2
            flo, fhi = (mid, fhi) if length(k, mid) <= budget else (flo, mid)
        fill = flo
    return build(k, fill)


def _fit_list(words: WordList, before: str, after: str, budget: int, encode, task_name: str, ctx: int,
              config: MakeConfig) -> str:
    """The prompt of a list task whose list fills `budget`: the largest size that fits, then the most
    lengthened entries that still fit."""

    def length(size: int, longer: int = 0) -> int:
        return len(encode(before + words.text(size, longer) + after))

    overhead = length(0)
    if overhead > budget:
        raise too_short(task_name, ctx, overhead, config.answer_tokens(task_name))
    # Secant steps from a small probe: the tokens per size step grow with the list (longer numbers in
    # cwe), so a straight line through one probe would land far off at 1M tokens; three steps land a few
    # words off, and each step costs one encode of the prompt.
    size, grown = 64, length(64)
    for _ in range(3):
        size = max(0, int(size * (budget - overhead) / max(grown - overhead, 1)))
        grown = length(size)
    # No size from 2 * budget on fits: a step adds about a word, and a word is a token at least.
    lo, hi = _bracket(size, lambda n: length(n) <= budget, 2 * budget)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if length(mid) <= budget else (lo, mid)
    # Lengthening an entry adds a token or so (rarely none): twice the tokens left, plus one, is always
    # enough to overshoot, and bounds the search (a list has up to hundreds of thousands of entries).
    flo, fhi = 0, min(words.lengthenable(lo), 2 * (budget - length(lo)) + 1) + 1
    while fhi - flo > 1:
        mid = (flo + fhi) // 2
        flo, fhi = (mid, fhi) if length(lo, mid) <= budget else (flo, mid)
    return before + words.text(lo, flo) + after


def _bracket(k: int, fits, last: int) -> tuple[int, int]:
    """(lo, hi) with fits(lo) and not fits(hi) (hi may be last + 1, beyond the pieces), searched outwards
    from the estimate k in doubling steps."""
    k = min(k, last)
    step = 1
    if fits(k):
        lo = k
        while True:
            cand = lo + step
            if cand > last:
                return lo, last + 1
            if not fits(cand):
                return lo, cand
            lo, step = cand, step * 2
    hi = k
    while True:
        cand = max(0, hi - step)
        if fits(cand):
            return cand, hi
        if cand == 0:  # checked by the caller: the prompt without haystack fits
            raise AssertionError("no haystack length fits although the empty one did")
        hi, step = cand, step * 2


def too_short(task: str, ctx: int, overhead: int, max_new_tokens: int) -> LWMError:
    what = "shortest word list" if task in LIST_TASKS else "needles"
    return LWMError(f"--ctx {ctx} is too short for task {task}: its {what}, question and template take "
                    f"{overhead} tokens plus --max-new-tokens {max_new_tokens}; use --ctx "
                    f"{overhead + max_new_tokens + 64} or more")


def _shortest_prompt(template: str, task: Task) -> str:
    """The prompt with no haystack (the needles alone), or with a list task's shortest list."""
    before, after = frame(template, task)
    if task.words is not None:
        return before + task.words.text(0) + after
    return before + "".join(f"\n{n}\n" for n in task.needles) + after


def check(config: MakeConfig, tokenizer, *, max_context: int | None = None, model: str = "the model") -> None:
    """The checks that come before any row: every ctx within the model's context, and every row's ctx long
    enough for its shortest prompt (its own needles or words, question and template: each row draws
    its own, so a later round's can be a token longer than the first's). Every ctx is checked, not only
    the shortest: cwe's shortest list is five times longer from 4K tokens on."""
    if max_context is not None:
        for ctx in config.ctx:
            if ctx > max_context:
                raise LWMError(f"--ctx {ctx} is longer than the context of {model} ({max_context} tokens); "
                               f"use --ctx {max_context} or less")
    worst: dict[tuple[str, int], int] = {}  # the longest shortest prompt of each (task, ctx)
    for task_name, ctx, depth, round in row_keys(config):
        task = TASKS[task_name](_row_rng(config, task_name, ctx, depth, round), config, ctx)
        overhead = len(tokenizer.encode(_shortest_prompt(config.template, task)))
        worst[task_name, ctx] = max(overhead, worst.get((task_name, ctx), 0))
    for (task_name, ctx), overhead in sorted(worst.items(), key=lambda item: item[0][1]):
        if overhead + config.answer_tokens(task_name) > ctx:
            raise too_short(task_name, ctx, overhead, config.answer_tokens(task_name))


def _depths(config: MakeConfig, task: str) -> tuple[float, ...]:
    return (LIST_DEPTH,) if task in LIST_TASKS else config.depths


def row_keys(config: MakeConfig) -> Iterator[tuple[str, int, float, int]]:
    """(task, ctx, depth, round) of every row, in file order (a list task at LIST_DEPTH only)."""
    for task in config.tasks:
        for ctx in config.ctx:
            for depth in _depths(config, task):
                for round in range(config.rounds):
                    yield task, ctx, depth, round


def make_rows(config: MakeConfig, tokenizer, haystack: Haystack) -> Iterator[dict[str, Any]]:
    """Every row of the dataset, in file order; each round's haystack is tokenized once."""
    tokenizer_id = tokenizer_digest(tokenizer)
    stretches: dict[int, _Stretch] = {}
    for task, ctx, depth, round in row_keys(config):
        stretch = stretches.setdefault(round, _stretch(haystack, config.seed, round))
        yield make_row(config, tokenizer, haystack, task, ctx, depth, round, tokenizer_id=tokenizer_id,
                       stretch=stretch)


def row_line(row: dict[str, Any]) -> str:
    """A row as its JSONL line: sorted keys, no spaces, UTF-8 as is."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"


def config_of_row(row: dict[str, Any]) -> MakeConfig:
    """The settings a row was made with (each row carries them): with its id, all `make_row` needs."""
    return MakeConfig(tasks=(row["task"],), ctx=(row["ctx"],), depths=(float(row["depth"]),), seed=row["seed"],
                      template=row["template"], needles=row["num_needles"], retrieve=row["retrieve"],
                      max_new_tokens=row["max_new_tokens"], haystack=row["haystack"])


def regenerate(row: dict[str, Any], tokenizer, haystack: Haystack) -> dict[str, Any]:
    """Rebuild a row from its id and settings alone (with the same tokenizer and haystack text)."""
    if haystack.digest != row["haystack_digest"]:
        raise LWMError(f"haystack {haystack.name} is not the one row {row['id']} was made from "
                       f"({haystack.digest} vs {row['haystack_digest']})")
    task, ctx, depth, round = parse_row_id(row["id"])
    return make_row(replace(config_of_row(row), rounds=round + 1), tokenizer, haystack, task, ctx, depth, round)
