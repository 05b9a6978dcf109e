"""A msgpack reader for LWM's checkpoint files that reads array bytes straight into numpy arrays.

A 7B checkpoint is 13.5 GB, so `msgpack.Unpacker` is not used to read it: it would hold the bin, the
nested document and the array (3-4 copies of a 2.9 GB w1). `Reader` parses the msgpack headers itself
and reads each array's raw bytes with `readinto` straight into the `np.empty` that is returned, so host
memory stays near the largest single array. Every length is checked against what encloses it before
anything is allocated, so a truncated or corrupt file ends in a one-line `LWMError` that names the
record and the byte. The format is described in `msgpack_format`.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

from lwm_core.checkpoint.msgpack_format import CHUNK_MARKER, allowed_dtype
from lwm_core.checkpoint.specs import LOAD_KINDS
from lwm_core.errors import LWMError

# Nesting deeper than this is not a checkpoint; the cap keeps a hostile file from a RecursionError.
_MAX_DEPTH = 64


class Reader:
    """A msgpack reader over a binary file that reads ndarray bytes straight into numpy arrays.

    `pos` is the offset of the next byte; `end` is where the value being parsed must end (the file, or
    the enclosing bin/ext), so a length that points past it is caught before anything is allocated.
    """

    def __init__(self, f: BinaryIO, path: str, size: int, *, streaming: bool) -> None:
        self._f = f
        self.path = path
        self.size = size
        self.streaming = streaming
        self.pos = 0
        self.end = size
        self.record = -1  # index of the current record, for messages
        self.key: tuple[str, ...] | None = None
        self._in_value = False  # inside a record's bin: a bad byte there is a corrupt record
        self._depth = 0
        self._byte = 0  # the last type byte read, for messages

    # -- errors -------------------------------------------------------------------------------------

    def _where(self) -> str:
        key = "/".join(self.key) if self.key else "unknown"
        if self.streaming:
            return f"record {self.record} (key {key})"
        return f"key {key}"

    def truncated(self, need: int, at: int) -> LWMError:
        return LWMError(
            f"checkpoint {self.path} is truncated: {self._where()} needs {need} bytes at offset {at} "
            f"but the file ends at {self.size}; re-download it"
        )

    def bad(self, at: int, detail: str) -> LWMError:
        if self._in_value:
            return LWMError(
                f"checkpoint {self.path} has a corrupt record: {self._where()}, byte {at}: {detail}; "
                f"re-download it"
            )
        if self.streaming:
            return LWMError(
                f"{self.path} is not an LWM streaming msgpack checkpoint (byte {at}: {detail}); pass the "
                f"`params` file of an LWM *-Jax repo, or flax_params::{self.path} for a single Flax blob"
            )
        return LWMError(
            f"{self.path} is not a Flax msgpack checkpoint (byte {at}: {detail}); "
            f"for LWM's streaming `params` files use params::{self.path}"
        )

    def found(self) -> str:
        return f"byte 0x{self._byte:02x}"

    # -- raw bytes ----------------------------------------------------------------------------------

    def _check_room(self, n: int) -> None:
        if self.pos + n > self.end:
            if self.end >= self.size:
                raise self.truncated(n, self.pos)
            raise self.bad(self.pos, f"{n} bytes needed but the enclosing value ends at byte {self.end}")

    def _take(self, n: int) -> bytes:
        self._check_room(n)
        data = self._f.read(n)
        if len(data) != n:  # the file shrank while we read it
            raise self.truncated(n, self.pos)
        self.pos += n
        return data

    def _readinto(self, array: np.ndarray) -> None:
        """Fills a C-contiguous array from the file: the only copy of these bytes in host memory."""
        n = array.nbytes
        self._check_room(n)
        view = memoryview(array.reshape(-1).view(np.uint8))
        got = 0
        while got < n:  # one read() returns at most ~2 GiB on Linux
            k = self._f.readinto(view[got:])
            if not k:
                raise self.truncated(n - got, self.pos + got)
            got += k
        self.pos += n

    def skip(self, n: int) -> None:
        self._f.seek(n, os.SEEK_CUR)
        self.pos += n

    # -- msgpack ------------------------------------------------------------------------------------

    def head(self) -> tuple[str, Any]:
        """Reads one msgpack type header: (kind, length / value), kind in int nil bool float str bin
        array map ext; for ext the value is (code, length)."""
        at = self.pos
        b = self._byte = self._take(1)[0]
        if b <= 0x7F:
            return "int", b
        if b >= 0xE0:
            return "int", b - 0x100
        if b <= 0x8F:
            return "map", b & 0x0F
        if b <= 0x9F:
            return "array", b & 0x0F
        if b <= 0xBF:
            return "str", b & 0x1F
        if b == 0xC0:
            return "nil", None
        if b in (0xC2, 0xC3):
            return "bool", b == 0xC3
        if 0xD4 <= b <= 0xD8:  # fixext 1, 2, 4, 8, 16
            return "ext", (struct.unpack(">b", self._take(1))[0], 1 << (b - 0xD4))
        if b in _SIZED:
            kind, fmt = _SIZED[b]
            (value,) = struct.unpack(fmt, self._take(struct.calcsize(fmt)))
            if kind == "ext":
                return "ext", (struct.unpack(">b", self._take(1))[0], value)
            return kind, value
        raise self.bad(at, "byte 0xc1 is never used in msgpack")

    def _count(self, n: int, per_item: int, at: int) -> None:
        # Every element takes at least one byte: a count beyond what is left is a bad length.
        if n * per_item > self.end - self.pos:
            if self.end >= self.size:
                raise self.truncated(n * per_item, self.pos)
            raise self.bad(at, f"{n} elements declared but the value ends at byte {self.end}")

    def _str(self, n: int, at: int) -> str:
        try:
            return self._take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise self.bad(at, "string is not UTF-8") from None

    def value(self) -> Any:
        """Reads one msgpack value, with Flax's ndarray/scalar/complex extensions and chunked arrays."""
        at = self.pos
        kind, arg = self.head()
        return self._build(kind, arg, at)

    def map_key(self) -> Any:
        at = self.pos
        key = self.value()
        if not isinstance(key, str):
            raise self.bad(at, f"map key is {type(key).__name__}, expected a string")
        return key

    def _build(self, kind: str, arg: Any, at: int) -> Any:
        if kind in ("int", "nil", "bool", "float"):
            return arg
        if kind == "str":
            return self._str(arg, at)
        if kind == "bin":
            return self._take(arg)
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise self.bad(at, f"nesting deeper than {_MAX_DEPTH} levels")
        try:
            if kind == "array":
                self._count(arg, 1, at)
                return [self.value() for _ in range(arg)]
            if kind == "map":
                self._count(arg, 2, at)
                if arg == 0:
                    return {}
                first = self.map_key()
                if first == CHUNK_MARKER:
                    return self._chunked(arg, at)
                out = {first: self.value()}
                for _ in range(arg - 1):
                    k = self.map_key()
                    out[k] = self.value()
                return out
            code, length = arg
            return self._ext(code, length, at)
        finally:
            self._depth -= 1

    def _ext(self, code: int, length: int, at: int) -> Any:
        if code == 1:
            return self._ndarray(length)
        if code == 3:  # numpy scalar, stored as a 0-d array
            return self._ndarray(length)[()]
        if code == 2:  # Python complex: packb([re, im])
            outer, self.end = self.end, self._ext_end(length)
            pair = self.value()
            if self.pos != self.end or not (isinstance(pair, list) and len(pair) == 2):
                raise self.bad(at, "malformed complex number")
            self.end = outer
            return complex(pair[0], pair[1])
        raise self.bad(at, f"unknown msgpack extension type {code} (Flax uses 1, 2 and 3)")

    def _ext_end(self, length: int) -> int:
        self._check_room(length)
        return self.pos + length

    def _ndarray(
        self, length: int, alloc: Callable[[tuple[int, ...], np.dtype, int], np.ndarray] | None = None
    ) -> np.ndarray:
        """Reads Flax's ndarray payload `[shape, dtype_name, raw bytes]` of `length` bytes into
        `np.empty(shape, dtype)`, or into the array `alloc(shape, dtype, offset)` returns."""
        outer, self.end = self.end, self._ext_end(length)
        at = self.pos
        kind, n = self.head()
        if kind != "array" or n != 3:
            raise self.bad(at, f"expected an ndarray [shape, dtype, bytes], found {self.found()}")
        at = self.pos
        shape = self.value()
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise self.bad(at, f"bad array shape {shape!r}")
        shape = tuple(shape)
        dtype = self._dtype()
        at = self.pos
        kind, nbytes = self.head()
        if kind != "bin":
            raise self.bad(at, f"expected the array's raw bytes as msgpack bin, found {self.found()}")
        if nbytes != math.prod(shape) * dtype.itemsize:
            raise self.bad(at, f"{nbytes} bytes of data for an array of shape {shape} and dtype {dtype.name}")
        out = np.empty(shape, dtype) if alloc is None else alloc(shape, dtype, at)
        self._readinto(out)
        if self.pos != self.end:
            raise self.bad(self.pos, f"{self.end - self.pos} stray bytes after the array data")
        self.end = outer
        return out

    def _dtype(self) -> np.dtype:
        at = self.pos
        name = self.value()
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if not isinstance(name, str):
            raise self.bad(at, f"array dtype name is {type(name).__name__}, expected a string")
        dtype = allowed_dtype(name)
        if dtype is None:
            raise LWMError(
                f"checkpoint {self.path}: {self._where()} has unknown dtype {name!r}; expected a numeric numpy "
                f"or ml_dtypes name such as bfloat16, float32 or int32 (re-save it with one)"
            )
        return dtype

    # -- Flax's chunked arrays ----------------------------------------------------------------------

    def _chunked(self, n: int, at: int) -> np.ndarray:
        """Flax's chunked array, a map of `n` entries whose marker key is read: the marker's `true`, then
        `shape` and `chunks` in either order. With `shape` first, as Flax writes it, the full array is
        allocated once and each chunk is read straight into its slice (`_chunks_into`)."""
        if self.value() is not True:
            raise self.bad(at, f"{CHUNK_MARKER} is not true")
        shape: tuple[int, ...] | None = None
        flat: np.ndarray | None = None
        filled = 0  # elements of `flat` read so far
        for _ in range(n - 1):
            key_at = self.pos
            key = self.map_key()
            if key == "shape":
                shape = self._chunked_shape(key_at)
            elif key == "chunks" and shape is None:
                flat = self._chunks_joined(key_at)
                filled = flat.size
            elif key == "chunks":
                flat, filled = self._chunks_into(shape, key_at, flat, filled)
            else:
                raise self.bad(key_at, f"unexpected key {key!r} in a chunked array")
        if shape is None or flat is None or filled != math.prod(shape):
            raise self.bad(at, f"chunked array is incomplete ({filled} elements for shape {shape})")
        return flat.reshape(shape)

    def _chunked_shape(self, key_at: int) -> tuple[int, ...]:
        shape = self._index_tuple(self.value(), key_at, "shape")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise self.bad(key_at, f"bad chunked array shape {shape!r}")
        return shape

    def _chunks_joined(self, key_at: int) -> np.ndarray:
        """`chunks` before `shape`: not what Flax writes; the chunks are read whole and joined (one extra
        copy), as the size of the array they make is not known yet."""
        chunks = self._index_tuple(self.value(), key_at, "chunks")
        if not chunks or not all(isinstance(c, np.ndarray) and c.ndim == 1 for c in chunks):
            raise self.bad(key_at, "chunks must be 1-D arrays")
        return np.concatenate(chunks)

    def _chunks_into(
        self, shape: tuple[int, ...], key_at: int, flat: np.ndarray | None, filled: int
    ) -> tuple[np.ndarray | None, int]:
        """`chunks` after `shape`: the map {"0": ndarray, "1": ...} read in order into `flat` from
        element `filled` on; returns `flat` (allocated at the first chunk, in its dtype) and the new count."""
        kind, m = self.head()
        if kind != "map":
            raise self.bad(key_at, f"expected a map of chunks, found {self.found()}")
        self._count(m, 2, key_at)
        for i in range(m):
            if self.map_key() != str(i):
                raise self.bad(key_at, f"chunk {i} is missing or out of order")
            ext_at = self.pos
            kind, arg = self.head()
            if kind != "ext" or arg[0] != 1:
                raise self.bad(ext_at, f"chunk {i} is not an ndarray")
            flat, n = self._chunk_into(i, arg[1], shape, flat, filled)
            filled += n
        return flat, filled

    def _chunk_into(
        self, i: int, length: int, shape: tuple[int, ...], flat: np.ndarray | None, filled: int
    ) -> tuple[np.ndarray, int]:
        """Chunk `i` (an ndarray payload of `length` bytes) read into `flat[filled:]`, after checking that
        it is 1-D, fits the array's `shape` and has the dtype of chunk 0; returns `flat` and its size."""
        total = math.prod(shape)

        def slot(cshape: tuple[int, ...], dtype: np.dtype, data_at: int) -> np.ndarray:
            nonlocal flat
            if len(cshape) != 1 or filled + cshape[0] > total:
                raise self.bad(data_at, f"chunk {i} of shape {cshape} does not fit shape {shape}")
            if flat is None:
                flat = np.empty(total, dtype)
            elif dtype != flat.dtype:
                raise self.bad(data_at, f"chunk {i} is {dtype.name}, chunk 0 is {flat.dtype.name}")
            return flat[filled : filled + cshape[0]]

        n = self._ndarray(length, slot).size
        return flat, n

    def _index_tuple(self, value: Any, at: int, what: str) -> tuple:
        """Flax stores tuples as {"0": x0, "1": x1, ...}."""
        if not isinstance(value, dict) or set(value) != {str(i) for i in range(len(value))}:
            raise self.bad(at, f"chunked array {what} is not a map with keys '0', '1', ...")
        return tuple(value[str(i)] for i in range(len(value)))

    # -- records and trees --------------------------------------------------------------------------

    def record_head(self) -> tuple[tuple[str, ...], int] | None:
        """Reads `[key_path,` and the value's bin header; returns (key, value length), None at EOF."""
        if self.pos == self.size:
            return None
        self.record += 1
        self.key = None
        at = self.pos
        kind, n = self.head()
        if kind != "array" or n != 2:
            raise self.bad(at, f"expected a record [key_path, value] (0x92), found {self.found()}")
        at = self.pos
        kind, n = self.head()
        if kind != "array" or n == 0:
            raise self.bad(at, f"expected the record's key path (an array of strings), found {self.found()}")
        self._count(n, 1, at)
        key = []
        for _ in range(n):
            at = self.pos
            kind, m = self.head()
            if kind != "str":
                raise self.bad(at, f"expected a key path string, found {self.found()}")
            key.append(self._str(m, at))
        self.key = tuple(key)
        at = self.pos
        kind, length = self.head()
        if kind != "bin":
            raise self.bad(at, f"expected the value of {'/'.join(key)} as msgpack bin, found {self.found()}")
        if self.pos + length > self.size:
            raise self.truncated(length, self.pos)
        return self.key, length

    def record_value(self, length: int) -> Any:
        """Parses the Flax document in the record's bin, which must end exactly where the bin does."""
        self.end = self.pos + length
        self._in_value = True
        try:
            value = self.value()
            if self.pos != self.end:
                raise self.bad(self.pos, f"{self.end - self.pos} stray bytes after the value, inside its bin")
            return value
        finally:
            self.end = self.size
            self._in_value = False

    def iter_tree(self, prefix: tuple[str, ...], n: int, first: str) -> Iterator[tuple[tuple[str, ...], Any]]:
        """Yields the leaves of a map whose header and first key are read, depth first."""
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise self.bad(self.pos, f"nesting deeper than {_MAX_DEPTH} levels")
        for i in range(n):
            key = prefix + (first if i == 0 else self.map_key(),)
            self.key = key
            at = self.pos
            kind, arg = self.head()
            if kind == "map" and arg > 0:
                sub_first = self.map_key()
                if sub_first == CHUNK_MARKER:
                    yield key, self._chunked(arg, at)
                else:
                    yield from self.iter_tree(key, arg, sub_first)
            elif kind != "map":  # an empty map is an empty subtree: no leaves
                yield key, self._build(kind, arg, at)
        self._depth -= 1

    def as_array(self, value: Any) -> np.ndarray:
        """A params leaf as an ndarray; numpy and Python scalars become 0-d arrays."""
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, (np.generic, bool, int, float, complex)):
            return np.asarray(value)
        raise LWMError(
            f"checkpoint {self.path}: {self._where()} holds a {type(value).__name__}, not an array; "
            f"check the load spec kind (one of {', '.join(LOAD_KINDS)})"
        )


# type byte -> (kind, struct format of the length or value that follows)
_SIZED = {
    0xC4: ("bin", ">B"), 0xC5: ("bin", ">H"), 0xC6: ("bin", ">I"),
    0xC7: ("ext", ">B"), 0xC8: ("ext", ">H"), 0xC9: ("ext", ">I"),
    0xCA: ("float", ">f"), 0xCB: ("float", ">d"),
    0xCC: ("int", ">B"), 0xCD: ("int", ">H"), 0xCE: ("int", ">I"), 0xCF: ("int", ">Q"),
    0xD0: ("int", ">b"), 0xD1: ("int", ">h"), 0xD2: ("int", ">i"), 0xD3: ("int", ">q"),
    0xD9: ("str", ">B"), 0xDA: ("str", ">H"), 0xDB: ("str", ">I"),
    0xDC: ("array", ">H"), 0xDD: ("array", ">I"),
    0xDE: ("map", ">H"), 0xDF: ("map", ">I"),
}
