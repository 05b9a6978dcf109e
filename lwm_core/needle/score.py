"""Scoring a needle response: RULER's `string_match_all`, and whether the model said nothing at all.

RULER (Hsieh et al. 2024, `scripts/eval/synthetic/constants.py`) scores a response by the share of the
expected answers that occur in it, case-insensitively, after its `postprocess_pred` has replaced every
control character (U+0000..U+001F) with a newline and stripped the ends. We keep that definition exactly,
so our numbers compare with RULER's, and apply the same clean-up to the answers. Two consequences worth
knowing:

- a match is a substring match: the answer `1234` is found in `51234` or in `12345`. RULER accepts that
  (its answers are 7-digit numbers and UUIDs, which a model rarely embeds by accident); a response that
  recites every number of the haystack could therefore score, which is why the raw response is always
  kept beside the score;
- control characters become a newline rather than vanishing, so `12\\x0034` does not turn into `1234`.

What must not fool it: an empty answer (the empty string occurs in every response) and an empty answer
list (0/0) are refused as errors of the dataset, not scored. Nor an echo of the prompt: the prompt holds
every needle, so a response that copies it contains every answer, and `string_match_all` alone would
score it 1. `lwm needle eval` therefore scores a response that `recites` the context 0 (and records
`recited`): one that repeats a run of `RECITED_WORDS` consecutive words of the prompt outside its needles
(the haystack, the template, the question). Retrieval needs none of that text; quoting a needle, or
answering in the needle's own words, is not recitation (the needles are cut out of the prompt before the
comparison, and a run never spans a cut). A response that is cut short by max_new_tokens while echoing
is caught the same way, wherever the needle sits: the prompt's first words are the template's.
"""

from __future__ import annotations

import re
from typing import Sequence

from lwm_core.errors import LWMError

_CONTROL = re.compile(r"[\x00-\x1f]")  # RULER's np_pattern
_WORD = re.compile(r"\w+")
# Consecutive words of the context a response may share before it counts as a recitation: longer than
# the phrases an answer borrows from the question ("the special magic Paris number is"), far shorter
# than the shortest echo that reaches a needle (the system prompt and template come first).
RECITED_WORDS = 12


def clean(text: str) -> str:
    """RULER's `postprocess_pred`: control characters -> newline, then strip the ends."""
    return _CONTROL.sub("\n", text.strip()).strip()


def score(response: str, answers: Sequence[str]) -> float:
    """The share (0..1) of `answers` found in `response`, case-insensitive, after `clean` on both.

    Raises `LWMError` for an empty answer list, an answer that is not a string, or one that is empty
    once cleaned: each would score a response without looking at it."""
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise LWMError(f"answers must be a list of strings, got {answers!r}")
    if not answers:
        raise LWMError("a needle row has no answers (an empty 'answers' list); every row needs at least one")
    found = 0
    text = clean(response).lower()
    for answer in answers:
        if not isinstance(answer, str):
            raise LWMError(f"answers must be strings, got {answer!r} in {list(answers)!r}")
        needle = clean(answer).lower()
        if not needle:
            raise LWMError(f"an answer is empty ({answer!r} in {list(answers)!r}); it would match every response")
        found += needle in text
    return found / len(answers)


def is_empty(response: str) -> bool:
    """Whether the model said nothing: the response is empty once cleaned (whitespace and control
    characters only)."""
    return not clean(response)


def recites(response: str, prompt: str, needles: Sequence[str] = (), *, words: int = RECITED_WORDS) -> bool:
    """Whether `response` repeats `words` consecutive words (case-insensitive, punctuation ignored) of
    `prompt` outside its `needles`: an echo of the context rather than an answer (see the module)."""
    said = _WORD.findall(response.lower())
    if len(said) < words:
        return False
    pieces = [prompt.lower()]
    for needle in needles:
        pieces = [part for piece in pieces for part in piece.split(needle.lower())]
    # One string, each piece's words joined by spaces, pieces by "|": a run found in it never spans a cut.
    context = " " + " | ".join(" ".join(_WORD.findall(p)) for p in pieces) + " "
    return any(f" {' '.join(said[i:i + words])} " in context for i in range(len(said) - words + 1))
