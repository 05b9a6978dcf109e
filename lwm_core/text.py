"""Text that comes from outside (arguments, stdin, config and data files) is UTF-8, or it is refused.

One policy for every text input: bytes that are not UTF-8 are an error that names the input, the byte
offset and the byte, never a silent replacement (a replaced character would change the tokens a model
sees, and a config value would change meaning). Python hands non-UTF-8 bytes in argv and in a
C-locale stdin over as lone surrogates (PEP 383, `surrogateescape`); `check_text` finds those.
"""

from __future__ import annotations

from typing import Sequence

from lwm_core.errors import LWMError

_HINT = "convert it to UTF-8 first (e.g. iconv -f latin1 -t utf-8)"


def decode_utf8(data: bytes, what: str) -> str:
    """`data` as text; an `LWMError` naming `what` (a path, 'stdin', ...) and the first bad byte if it
    is not UTF-8. A UTF-8 byte-order mark is dropped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(what, e.start, data[e.start]) from None
    return text[1:] if text.startswith("\ufeff") else text


def check_text(text: str, what: str) -> str:
    """`text` unchanged if it holds no lone surrogates (undecodable bytes that Python smuggled in with
    `surrogateescape`), else the same error as `decode_utf8` for the bytes the user gave."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = text.encode("utf-8", "surrogateescape")
        offset = len(text[:e.start].encode("utf-8", "surrogateescape"))
        raise _error(what, offset, raw[offset]) from None
    return text


def _error(what: str, offset: int, byte: int) -> LWMError:
    return LWMError(f"{what} is not UTF-8 text: byte 0x{byte:02X} at offset {offset}; {_HINT}")


def json_line(line: str, where: str, hint: str = ""):
    """One JSONL line's value; a line that is not JSON is one LWMError naming `where` (a path and line)
    and the column, then `hint` (what to do), if any."""
    import json

    try:
        return json.loads(line)
    except ValueError as e:
        raise LWMError(f"{where} is not valid JSON ({e.msg} at column {e.colno}){'; ' + hint if hint else ''}") \
            from None


def choices(values: str | Sequence[str], allowed: Sequence[str], what: str, note: str = "") -> tuple[str, ...]:
    """A subset of `allowed` given as a comma-separated string or a sequence -> those values in `allowed`'s
    order; an unknown value or none at all is one LWMError that lists the choices (then `note`)."""
    items = [v.strip() for v in (values.split(",") if isinstance(values, str) else values) if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        said = f"unknown {what} {unknown[0]!r}" if unknown else f"no {what} given"
        raise LWMError(f"{said}: choose from {', '.join(allowed)}{note}")
    return tuple(v for v in allowed if v in items)
