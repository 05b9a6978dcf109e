"""What `lwm needle make` makes: one frozen config, and the parsers of its `--ctx` and `--depths` specs.

The config is everything a row depends on besides its (task, ctx, depth, round), the tokenizer and the
haystack's text: a row is rebuilt from its id plus these fields (every row carries them; see
`lwm_core.needle.make.config_of_row`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lwm_core.errors import LWMError

# K and M are binary, as LWM counts: its "1M" context is 1048576 tokens.
_UNITS = {"": 1, "K": 1024, "M": 1024**2}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KkMm]?)\s*$")

TEMPLATES = ("lwm-chat", "base", "raw")
SPACINGS = ("linear", "sigmoid")
# Tasks in the order `--help` lists them (lwm_core.needle.tasks defines each).
TASK_NAMES = ("single", "multi", "multikey", "multivalue", "multiquery", "vt", "cwe", "fwe")
# The tasks whose context is a word list, not a haystack with needles: they have no depth, and are made
# once per (ctx, round), at LIST_DEPTH whatever --depths says. Their words are spread over the whole
# list (shuffled, as RULER's), so a row per depth would only repeat the task; 50 is the mean depth of
# the words they ask about, and keeps `depth` a number where summaries and heatmaps key cells by it.
LIST_TASKS = ("cwe", "fwe")
LIST_DEPTH = 50.0
# Tokens left for the answer when --max-new-tokens is not given: a 7-digit number or a few of them fit
# in 64; cwe names ten words, a numbered list of about 75 tokens (RULER gives it 120).
ANSWER_TOKENS = {"cwe": 128}
DEFAULT_ANSWER_TOKENS = 64
# The built-in haystacks (lwm_core.needle.haystack): any other --haystack value is a path.
BUILTIN_HAYSTACKS = ("prose", "noise", "needles")


def parse_size(text: str, what: str = "--ctx") -> int:
    """`4096`, `4K`, `1M`, `1.5K` -> tokens (K = 1024, M = 1024^2)."""
    match = _SIZE.match(text)
    if not match:
        raise LWMError(f"{what} {text!r} is not a length: write tokens as 4096, 4K or 1M (K = 1024, M = 1024^2)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value != int(value) or value < 1:
        raise LWMError(f"{what} {text!r} is not a whole positive number of tokens")
    return int(value)


def parse_ctx(spec: str) -> tuple[int, ...]:
    """`1M`, `4K,32K,128K` or `1K:1M:20` (20 lengths from 1K to 1M, linearly spaced, both included)
    -> the context lengths, in the order given, without repeats."""
    spec = spec.strip()
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3:
            raise LWMError(f"--ctx {spec!r}: a range is FIRST:LAST:COUNT, e.g. 1K:1M:20")
        first, last = parse_size(parts[0]), parse_size(parts[1])
        try:
            count = int(parts[2])
        except ValueError:
            raise LWMError(f"--ctx {spec!r}: the count {parts[2]!r} is not an integer (FIRST:LAST:COUNT)") from None
        if count < 1 or last < first:
            raise LWMError(f"--ctx {spec!r}: a range needs FIRST <= LAST and COUNT >= 1, e.g. 1K:1M:20")
        if count == 1:
            sizes = [first]
        else:
            sizes = [round(first + (last - first) * i / (count - 1)) for i in range(count)]
    else:
        parts = spec.split(",")
        if not all(part.strip() for part in parts):
            raise LWMError(f"--ctx {spec!r} has an empty length; write e.g. 4K,32K,128K")
        sizes = [parse_size(part) for part in parts]
    return tuple(dict.fromkeys(sizes))


def parse_depths(spec: str, spacing: str = "linear") -> tuple[float, ...]:
    """`10` (ten depths from 0 to 100 %, both included), `0,50,100` (these) or `50%` (one depth: a bare `50`
    is a count, so one percent is written with its sign; `%` is allowed in lists too) -> depths in percent,
    rounded to 2 decimals. `sigmoid` spacing crowds a count's depths near both ends, as gkamradt's NIAH
    does (the ends are where retrieval fails first); it does not change an explicit list."""
    if spacing not in SPACINGS:
        raise LWMError(f"--depth-spacing {spacing!r} is not one of {', '.join(SPACINGS)}")
    spec = spec.strip()
    if "," not in spec and not spec.endswith("%"):
        try:
            count = int(spec)
        except ValueError:
            raise LWMError(f"--depths {spec!r} is neither a count (10), a list of percents (0,50,100) nor one "
                           f"percent (50%)") from None
        if count < 1:
            raise LWMError(f"--depths {spec!r}: the count must be at least 1")
        xs = [50.0] if count == 1 else [100 * i / (count - 1) for i in range(count)]
        if spacing == "sigmoid":
            # gkamradt's logistic (L=100, x0=50, k=0.1), with the ends pinned to exactly 0 and 100.
            xs = [x if x in (0.0, 100.0) else 100 / (1 + math.exp(-0.1 * (x - 50))) for x in xs]
        depths = xs
    else:
        depths = []
        for part in spec.split(","):
            try:
                depths.append(float(part.strip().removesuffix("%")))
            except ValueError:
                raise LWMError(f"--depths {spec!r}: {part.strip()!r} is not a percent") from None
    for depth in depths:
        if not 0 <= depth <= 100:
            raise LWMError(f"--depths {spec!r}: depth {depth:g} is outside 0..100 (percent)")
    return tuple(dict.fromkeys(round(d, 2) for d in depths))


def depth_text(depth: float) -> str:
    """A depth as ids and JSON show it: `0`, `12.5`, `33.33`."""
    return f"{depth:.2f}".rstrip("0").rstrip(".")


def depth_value(depth: float) -> int | float:
    """A depth as a JSON number: an int when whole, so that files read the same in every language."""
    return int(depth) if depth == int(depth) else float(depth_text(depth))


@dataclass(frozen=True)
class MakeConfig:
    """The settings of a needle dataset (what `lwm needle make`'s options say).

    Attributes:
        tasks: task names (lwm_core.needle.tasks.TASKS), in output order.
        ctx: requested context lengths in tokens (prompt + max_new_tokens fit in each).
        depths: where the needle goes, in percent of the haystack (0 first, 100 last); the list tasks
            (LIST_TASKS) have none and are made at LIST_DEPTH only.
        rounds: rows per (task, ctx, depth), each over a different stretch of the haystack (or list).
        seed: the one seed every random choice is derived from (per row, never global state).
        template: lwm-chat (LWM's exact needle prompt), base (RULER-style answer prefix) or raw.
        needles: needles per row for multi-needle tasks (distractors included; not the list tasks).
        retrieve: needles asked for in `multi` (and `multiquery`), at most `needles`.
        max_new_tokens: tokens left for the answer: prompt tokens + this <= ctx; None: per task
            (`answer_tokens`: 64, cwe 128).
        haystack: a built-in haystack name (prose, noise, needles), or where the text came from (the list
            tasks read none, but their rows record it as every row does).
    """

    tasks: tuple[str, ...] = ("single",)
    ctx: tuple[int, ...] = (4096,)
    depths: tuple[float, ...] = (0.0, 50.0, 100.0)
    rounds: int = 1
    seed: int = 0
    template: str = "lwm-chat"
    needles: int = 4
    retrieve: int = 2
    max_new_tokens: int | None = None
    haystack: str = "prose"

    def answer_tokens(self, task: str) -> int:
        """max_new_tokens of `task`'s rows: the one given, or the task's own default."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return ANSWER_TOKENS.get(task, DEFAULT_ANSWER_TOKENS)

    def __post_init__(self):
        if not self.tasks:
            raise LWMError("--task is empty; give one or more of " + ", ".join(TASK_NAMES))
        for task in self.tasks:
            if task not in TASK_NAMES:
                raise LWMError(f"unknown task {task!r}; the tasks are {', '.join(TASK_NAMES)}")
        if not self.ctx or min(self.ctx) < 1:
            raise LWMError(f"--ctx needs positive lengths, got {self.ctx}")
        if not self.depths or not all(0 <= d <= 100 for d in self.depths):
            raise LWMError(f"--depths must be percents in 0..100, got {self.depths}")
        if self.rounds < 1:
            raise LWMError(f"--rounds must be at least 1, got {self.rounds}")
        if not 0 <= self.seed < 2**32:
            raise LWMError(f"--seed must be an integer from 0 to {2**32 - 1}, got {self.seed}")
        if self.template not in TEMPLATES:
            raise LWMError(f"--template {self.template!r} is not one of {', '.join(TEMPLATES)}")
        if self.needles < 1:
            raise LWMError(f"--needles must be at least 1, got {self.needles}")
        if not 1 <= self.retrieve:
            raise LWMError(f"--retrieve must be at least 1, got {self.retrieve}")
        if self.retrieve > self.needles:
            raise LWMError(f"--retrieve {self.retrieve} is more than --needles {self.needles}: a row cannot "
                           f"ask for more needles than it holds")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise LWMError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
