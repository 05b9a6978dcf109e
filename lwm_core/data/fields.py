"""LWM's fields syntax: which keys of a JSON line become tokens, in which order, and which carry loss.

    "text"                        the value of key `text`, with loss
    "[question],answer"           `question` without loss (a prompt), then `answer` with loss
    "title+body"                  the values of `title` and `body` joined with subfield_separator
    "[<|bos|>],text,<|eos|>"      a BOS id (no loss), `text`, an EOS id (with loss)

In vision-text data a field whose name contains "vision" holds VQGAN codes, not text (LWM's rule, so
LWM data sets with keys such as `vision` or `vision_1` work unchanged).

Names are stripped of surrounding spaces (`"[q], a"` reads keys `q` and `a`); LWM used them as
written, which only ever turned a typo into a KeyError.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lwm_core.errors import LWMError

BOS_FIELD = "<|bos|>"
EOS_FIELD = "<|eos|>"


@dataclass(frozen=True)
class Field:
    """One comma-separated item of a fields spec."""

    name: str  # as written, brackets and surrounding spaces removed: "question+answer", "<|bos|>"
    keys: tuple[str, ...]  # the record keys whose values are joined; () for <|bos|> and <|eos|>
    loss: bool  # False when the field was written as [name]
    special: str = ""  # "bos" | "eos" for <|bos|> / <|eos|>, else ""

    @property
    def vision(self) -> bool:
        """Whether this field holds VQGAN codes (only consulted for vision-text data)."""
        return not self.special and "vision" in self.name


@functools.lru_cache(maxsize=256)  # fields_from_example repeats a few specs on every line
def parse_fields(spec: str, *, vision_text: bool = False) -> tuple[Field, ...]:
    """Parse an LWM fields spec; `vision_text` also checks that vision fields name a single key."""
    if not spec.strip():
        raise LWMError(f"fields spec {spec!r} is empty; name at least one key, e.g. 'text' or '[question],answer'")
    fields = []
    for item in spec.split(","):
        name = item.strip()
        loss = True
        if name.startswith("[") and name.endswith("]"):
            name, loss = name[1:-1].strip(), False
        elif name.startswith("[") or name.endswith("]"):
            raise LWMError(f"fields spec {spec!r}: {item.strip()!r} has an unbalanced bracket; "
                           "write [key] for a field without loss")
        if not name:
            raise LWMError(f"fields spec {spec!r} has an empty field (a stray comma or []); "
                           "write keys separated by commas, e.g. '[question],answer'")
        if name in (BOS_FIELD, EOS_FIELD):
            fields.append(Field(name, (), loss, "bos" if name == BOS_FIELD else "eos"))
            continue
        keys = tuple(key.strip() for key in name.split("+"))
        if not all(keys):
            raise LWMError(f"fields spec {spec!r}: {name!r} joins an empty key; write a+b with both keys named")
        field = Field(name, keys, loss)
        if vision_text and field.vision and len(keys) > 1:
            raise LWMError(f"fields spec {spec!r}: vision field {name!r} joins several keys; VQGAN codes "
                           "cannot be joined, list each vision key as its own field")
        fields.append(field)
    return tuple(fields)
