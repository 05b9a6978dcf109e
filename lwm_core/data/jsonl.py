"""Random access to the lines of JSONL files: one scan for line offsets, then seek + readline.

LWM read its JSONL files front to back and resumed from a byte offset, so a shuffled order or a
process reading only its share of rows was impossible. With an offset per line any example can be
read in O(1), and only the lines a process uses are ever parsed.

The scan reads the file once in binary chunks and keeps, per non-blank line, its byte offset and its
line number (for messages): 16 bytes per example. Blank lines (whitespace only) are skipped, as LWM
skipped them. Several files read as one: their lines end to end, in the order given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.plural import plural
from lwm_core.text import decode_utf8

_CHUNK = 1 << 22  # 4 MiB per read: large enough for sequential speed, small enough for the cumsum
# JSON's whitespace (RFC 8259): a line made only of these is blank.
_BLANK = np.zeros(256, np.bool_)
_BLANK[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = True


class JsonlIndex:
    """The non-blank lines of a JSONL file (or of several, end to end), numbered 0..len-1; `read(i)` parses
    line i.

    File handles are opened on first use and kept open; one index is meant for one process.
    """

    def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]):
        many = isinstance(paths, Sequence) and not isinstance(paths, str)
        self.paths = tuple(os.fspath(p) for p in paths) if many else (os.fspath(paths),)
        if not self.paths:
            raise LWMError("no data file given; pass a JSONL file (one JSON object per line)")
        self.path = " + ".join(self.paths)  # for messages
        offsets, lines, counts = [], [], []
        for path in self.paths:
            file_offsets, file_lines = _scan_file(path)
            offsets.append(file_offsets)
            lines.append(file_lines)
            counts.append(len(file_offsets))
        self._offsets, self._lines = np.concatenate(offsets), np.concatenate(lines)
        self._starts = np.cumsum([0, *counts])  # example index of each file's first line
        self._files: list[BinaryIO | None] = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self._offsets)

    def line_number(self, i: int) -> int:
        """1-based line number in its file of example i (blank lines counted), for messages."""
        return int(self._lines[self._check(i)]) + 1

    def where(self, i: int) -> str:
        """`path:line` of example i, the form editors and terminals jump to."""
        return f"{self.paths[self._file_of(i)]}:{self.line_number(i)}"

    def read_bytes(self, i: int) -> bytes:
        k = self._file_of(i)
        if self._files[k] is None:
            try:
                self._files[k] = open(self.paths[k], "rb")
            except OSError as e:
                raise LWMError(f"cannot read data file {self.paths[k]} ({e.strerror or e})") from None
        f = self._files[k]
        f.seek(int(self._offsets[i]))
        return f.readline()

    def read(self, i: int) -> dict[str, Any]:
        """The JSON object on example i's line; LWMError naming `path:line` if it is not one."""
        text = decode_utf8(self.read_bytes(i), f"line {self.where(i)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise LWMError(f"{self.where(i)}: not valid JSON ({e.msg} at column {e.colno}); "
                           "fix or delete the line") from None
        if not isinstance(value, dict):
            raise LWMError(f"{self.where(i)}: holds a JSON {type(value).__name__}, not an object; each line "
                           'must be one object such as {"text": "..."}')
        return value

    def validate(self) -> None:
        """Parse every line; raise LWMError for the first that is not a JSON object."""
        for i in range(len(self)):
            self.read(i)

    def close(self) -> None:
        for k, f in enumerate(self._files):
            if f is not None:
                f.close()
                self._files[k] = None

    def __enter__(self) -> "JsonlIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JsonlIndex({self.path!r}, {plural(len(self), 'example')})"

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self._offsets):
            raise IndexError(f"example {i} of {self.path}, which has {len(self._offsets)}")
        return i

    def _file_of(self, i: int) -> int:
        return int(np.searchsorted(self._starts, self._check(i), side="right")) - 1


def _scan_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    if os.path.isdir(path):
        raise LWMError(f"data file {path} is a directory; pass a JSONL file (one JSON object per line)")
    try:
        with open(path, "rb") as f:
            offsets, lines = _scan(f)
    except FileNotFoundError:
        raise LWMError(f"data file {path} does not exist; pass a JSONL file (one JSON object per line)") from None
    except OSError as e:
        raise LWMError(f"cannot read data file {path} ({e.strerror or e})") from None
    if not len(offsets):
        raise LWMError(f"data file {path} has no examples (it is empty or only blank lines)")
    return offsets, lines


def _scan(f: BinaryIO) -> tuple[np.ndarray, np.ndarray]:
    """(byte offset, 0-based line number) of every non-blank line, read in chunks.

    A line can span chunks, so the scan carries the current line's start and whether any of its bytes
    so far was not whitespace.
    """
    offsets: list[np.ndarray] = []
    numbers: list[np.ndarray] = []
    chunk_start = 0  # file offset of the current chunk
    line_start = 0  # file offset of the line being read
    line_number = 0  # its 0-based number
    line_has_text = False  # whether it has a non-whitespace byte so far
    while chunk := f.read(_CHUNK):
        data = np.frombuffer(chunk, np.uint8)
        # text_before[k] = non-whitespace bytes in data[:k]
        text_before = np.zeros(len(data) + 1, np.int32)
        np.cumsum(~_BLANK[data], out=text_before[1:])
        newlines = np.flatnonzero(data == ord("\n"))
        if len(newlines):
            # Lines ending in this chunk: the carried one, then one after each newline but the last.
            begins = np.concatenate([[0], newlines[:-1] + 1])
            has_text = text_before[newlines] > text_before[begins]
            has_text[0] |= line_has_text
            starts = np.concatenate([[line_start], chunk_start + newlines[:-1] + 1])
            offsets.append(starts[has_text])
            numbers.append(line_number + np.flatnonzero(has_text))
            line_number += len(newlines)
            line_start = chunk_start + int(newlines[-1]) + 1
            line_has_text = bool(text_before[-1] > text_before[newlines[-1] + 1])
        else:
            line_has_text |= bool(text_before[-1] > 0)
        chunk_start += len(data)
    if line_has_text:  # a last line without a trailing newline
        offsets.append(np.array([line_start]))
        numbers.append(np.array([line_number]))
    if not offsets:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(offsets).astype(np.int64), np.concatenate(numbers).astype(np.int64)
