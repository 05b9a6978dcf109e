"""Counts in messages: `1 device`, `8 devices`, never `1 devices`."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`n` and `noun`, in the plural unless n is 1; `nouns` for irregular plurals (`process`,
    `processes`), otherwise `noun + "s"`."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"
