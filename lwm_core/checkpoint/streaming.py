"""LWM's streaming msgpack checkpoints (the files named `params` in the `LargeWorldModel/*-Jax` repos).

Format, as the original code writes it: a plain concatenation of msgpack objects with no header and no
index. Each object is `[key_path, value]`: `key_path` is the flattened tree path (a list of strings) and
`value` is a msgpack bin holding one Flax-serialized leaf (`flax.serialization.to_bytes(leaf)`):

- ndarray: `ExtType(1, packb([shape, dtype_name, raw C-order bytes]))`; numpy scalar: `ExtType(3, same)`;
  Python complex: `ExtType(2, packb([re, im]))`.
- ndarray over 2**30 bytes: `{"__msgpack_chunked_array__": True, "shape": {"0": d0, ...},
  "chunks": {"0": <ExtType 1 of a 1-D slice>, ...}}`, the slices cutting the flattened array into runs
  of 2**30 / itemsize elements (msgpack cannot hold a bin over 2**32 - 1 bytes, Flax stops at 2**30).

A 7B checkpoint is 13.5 GB, so `msgpack.Unpacker` is not used to read it: it would hold the bin, the
nested document and the array (3-4 copies of a 2.9 GB w1). `_Reader` below parses the msgpack headers
itself and reads each array's raw bytes with `readinto` straight into the `np.empty` that is returned,
so host memory stays near the largest single array. The writer mirrors it: headers are built by hand,
array bytes are written from a memoryview of the array, and the output is byte-identical to
`msgpack.packb([key, flax.serialization.to_bytes(array)])`.

Load specs name how a file is read (as in LWM's `--load_checkpoint`): `params::PATH`,
`trainstate::PATH`, `trainstate_params::PATH` (both yield the `params/params/...` records with that
prefix removed) and `flax_params::PATH` (one ordinary Flax msgpack blob of the params tree).
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import ml_dtypes
import msgpack
import numpy as np

from lwm_core.checkpoint.atomic import atomic_file
from lwm_core.errors import LWMError

LOAD_KINDS = ("params", "trainstate", "trainstate_params", "flax_params")

# Flax's limit (flax.serialization.MAX_CHUNK_SIZE): arrays with more bytes than this are chunked.
FLAX_CHUNK_BYTES = 2**30

_CHUNK_MARKER = "__msgpack_chunked_array__"
_TRAINSTATE_PREFIX = ("params", "params")
# First keys of a params tree; seeing one in a file loaded as a train state means the kind is wrong.
_PARAMS_ROOTS = frozenset({"transformer", "lm_head", "vision_head"})
# First keys of a train state (EasyLM/LWM TrainState: step, params, opt_state).
_TRAINSTATE_ROOTS = frozenset({"step", "opt_state"})

# dtype names we accept from a file. An allowlist, not np.dtype(name): "object" would make np.empty
# hand out an array of pointers that readinto then fills with file bytes.
_NUMPY_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
})
_ML_DTYPES = frozenset({
    "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e4m3", "float8_e3m4", "float8_e8m0fnu", "float4_e2m1fn",
    "float6_e2m3fn", "float6_e3m2fn", "int2", "int4", "uint2", "uint4",
})

# Nesting deeper than this is not a checkpoint; the cap keeps a hostile file from a RecursionError.
_MAX_DEPTH = 64

_KIND_RE = re.compile(r"[A-Za-z_]+")


# ---------------------------------------------------------------------------------------------------
# Public API


def parse_load_spec(spec: str) -> tuple[str, str] | None:
    """Splits `KIND::PATH` into `(kind, path)`; returns None for a string without a `KIND::` prefix."""
    kind, sep, path = spec.partition("::")
    # A plain path may contain "::" further on; only an identifier before it counts as a kind.
    if not sep or not _KIND_RE.fullmatch(kind):
        return None
    if kind not in LOAD_KINDS:
        raise LWMError(
            f"unknown checkpoint kind {kind!r} in load spec {spec!r}; "
            f"use one of {', '.join(k + '::PATH' for k in LOAD_KINDS)}"
        )
    if not path:
        raise LWMError(f"load spec {spec!r} has no path after '::'; write it as {kind}::PATH")
    return kind, path


def iter_checkpoint(kind: str, path: str | os.PathLike) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Streams `(key_path, array)` for the params records that `kind` selects, one record at a time.

    - `params`: every record. A train-state file (keys `step`, `params/params/...`, `opt_state/...`)
      raises an LWMError at its first such record that names `trainstate_params::` as the fix, rather
      than handing the loader keys it cannot place.
    - `trainstate`, `trainstate_params`: the records under `params/params`, prefix removed; the other
      records (`step`, the optimizer state, 2x the params in fp32) are skipped with a seek, unread.
    - `flax_params`: the leaves of the single Flax blob, with a lone top-level `params` key unwrapped.

    The file is checked (exists, is a file, not empty) when this is called; it is opened and read as
    the iterator is consumed, and each array is the only copy in host memory.
    """
    if kind not in LOAD_KINDS:
        raise LWMError(f"unknown checkpoint kind {kind!r}; use one of {', '.join(LOAD_KINDS)}")
    path = os.fspath(path)
    size = _checkpoint_size(path)
    if kind == "flax_params":
        return _iter_flax(path, size)
    return _iter_streaming(path, size, kind)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[tuple[str, ...], np.ndarray | Any]]:
    """Streams every record of a streaming checkpoint raw: arrays, numpy scalars (ExtType 3), ints..."""
    path = os.fspath(path)
    return _iter_streaming(path, _checkpoint_size(path), None)


def write_records(
    path: str | os.PathLike,
    records: Iterable[tuple[Sequence[str], np.ndarray]],
    *,
    chunk_bytes: int = FLAX_CHUNK_BYTES,
) -> None:
    """Writes records in LWM's streaming format, atomically (temp file in the same directory, fsync,
    rename); on any error nothing is left at `path` (an existing file there is untouched).

    Values may be numpy or JAX arrays, numpy scalars, or plain bool/int/float/None. Arrays with more
    than `chunk_bytes` bytes are chunked into runs of `max(1, chunk_bytes // itemsize)` elements, as
    Flax does at 2**30; tests lower it to exercise chunking on small arrays.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")

    def fill(f: BinaryIO) -> None:
        for key, value in records:
            key = _check_key(key)
            parts = _encode_leaf(value, chunk_bytes, key)
            del value  # the parts hold views of the array; drop our extra reference early
            size = sum(_nbytes(p) for p in parts)
            if size > 0xFFFFFFFF:
                raise LWMError(
                    f"record {'/'.join(key)} encodes to {size} bytes, over msgpack's 4 GiB limit for one "
                    f"value; lower chunk_bytes or split the array"
                )
            f.write(b"\x92")  # [key_path, value]
            f.write(msgpack.packb(list(key)))
            f.write(_bin_header(size))
            for part in parts:
                f.write(part)
            del parts

    _atomic_write(os.fspath(path), fill)


def write_flax_params(path: str | os.PathLike, tree: Mapping) -> None:
    """Writes `tree` as one Flax msgpack blob (what `flax.serialization.msgpack_serialize` returns,
    byte for byte: keys sorted as jax's tree_map leaves them, arrays over 2**30 bytes chunked), atomically.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(f"write_flax_params takes a mapping of arrays, got {type(tree).__name__}")

    def fill(f: BinaryIO) -> None:
        for part in _encode_tree(tree, ()):
            f.write(part)

    _atomic_write(os.fspath(path), fill)


# ---------------------------------------------------------------------------------------------------
# Reading


def _checkpoint_size(path: str) -> int:
    """The file's size, after the checks that give a clear error before any reading starts."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LWMError(f"checkpoint file {path} does not exist; check the path or download it") from None
    except OSError as e:
        raise LWMError(f"cannot read checkpoint {path}: {e.strerror}; check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise LWMError(
            f"checkpoint path {path} is a directory; pass the checkpoint file inside it "
            f"(named `params` in LWM's *-Jax repos)"
        )
    if st.st_size == 0:
        raise LWMError(f"checkpoint file {path} is empty (0 bytes); re-download it")
    return st.st_size


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise LWMError(f"cannot read checkpoint {path}: {e.strerror}; check the path and its permissions") from None


def _iter_streaming(path: str, size: int, kind: str | None) -> Iterator[tuple[tuple[str, ...], Any]]:
    """All records (kind None) or the params records of `kind` from a streaming file."""
    with _open(path) as f:
        reader = _Reader(f, path, size, streaming=True)
        found = 0
        while (head := reader.record_head()) is not None:
            key, length = head
            if kind == "params":
                if key[0] in _TRAINSTATE_ROOTS or key[:2] == _TRAINSTATE_PREFIX:
                    raise LWMError(
                        f"checkpoint {path} holds a train state (record key {'/'.join(key)}), not a params "
                        f"tree; load it as trainstate_params::{path}"
                    )
            elif kind in ("trainstate", "trainstate_params"):
                if key[0] in _PARAMS_ROOTS:
                    raise LWMError(
                        f"checkpoint {path} holds a params tree (record key {'/'.join(key)}), not a train "
                        f"state; load it as params::{path}"
                    )
                if key[:2] != _TRAINSTATE_PREFIX or len(key) == 2:
                    reader.skip(length)
                    continue
                key = key[2:]
            found += 1
            if kind is None:
                yield key, reader.record_value(length)
            else:
                # No local keeps the array: once the caller drops it, it is freed before the next read.
                yield key, reader.as_array(reader.record_value(length))
        if kind in ("trainstate", "trainstate_params") and found == 0:
            raise LWMError(
                f"checkpoint {path} has no records under params/params, so it is not a train state; "
                f"load it as params::{path}"
            )


def _iter_flax(path: str, size: int) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """The leaves of a single Flax msgpack blob, read with the same in-place array reader."""
    with _open(path) as f:
        reader = _Reader(f, path, size, streaming=False)
        at = reader.pos
        kind, n = reader.head()
        if kind != "map":
            raise reader.bad(at, f"expected a msgpack map of the params tree, found {reader.found()}")
        if n == 0:
            return
        first = reader.map_key()
        # LWM's flax_params loader accepts {"params": tree} as well as the tree itself.
        unwrap = n == 1 and first == "params"
        for key, value in reader.iter_tree((), n, first):
            if unwrap and len(key) > 1:
                key = key[1:]
            yield key, reader.as_array(value)
            del value
        if reader.pos != size:
            raise reader.bad(reader.pos, f"{size - reader.pos} trailing bytes after the params tree")


class _Reader:
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
                if first == _CHUNK_MARKER:
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
        if name in _NUMPY_DTYPES:
            return np.dtype(name)
        if name in _ML_DTYPES and hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name))
        raise LWMError(
            f"checkpoint {self.path}: {self._where()} has unknown dtype {name!r}; expected a numeric numpy "
            f"or ml_dtypes name such as bfloat16, float32 or int32 (re-save it with one)"
        )

    def _chunked(self, n: int, at: int) -> np.ndarray:
        """Flax's chunked array (the marker key is read). With `shape` before `chunks`, as Flax writes
        it, the full array is allocated once and each chunk is read straight into its slice."""
        if self.value() is not True:
            raise self.bad(at, f"{_CHUNK_MARKER} is not true")
        shape: tuple[int, ...] | None = None
        flat: np.ndarray | None = None
        filled = 0
        for _ in range(n - 1):
            key_at = self.pos
            key = self.map_key()
            if key == "shape":
                shape = self._index_tuple(self.value(), key_at, "shape")
                if not all(isinstance(d, int) and d >= 0 for d in shape):
                    raise self.bad(key_at, f"bad chunked array shape {shape!r}")
            elif key == "chunks" and shape is None:
                # Not what Flax writes; read the chunks whole and join them (one extra copy).
                chunks = self._index_tuple(self.value(), key_at, "chunks")
                if not chunks or not all(isinstance(c, np.ndarray) and c.ndim == 1 for c in chunks):
                    raise self.bad(key_at, "chunks must be 1-D arrays")
                flat = np.concatenate(chunks)
                filled = flat.size
            elif key == "chunks":
                total = math.prod(shape)
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

                    def into(cshape: tuple[int, ...], dtype: np.dtype, data_at: int) -> np.ndarray:
                        nonlocal flat
                        if len(cshape) != 1 or filled + cshape[0] > total:
                            raise self.bad(data_at, f"chunk {i} of shape {cshape} does not fit shape {shape}")
                        if flat is None:
                            flat = np.empty(total, dtype)
                        elif dtype != flat.dtype:
                            raise self.bad(data_at, f"chunk {i} is {dtype.name}, chunk 0 is {flat.dtype.name}")
                        return flat[filled : filled + cshape[0]]

                    filled += self._ndarray(arg[1], into).size
            else:
                raise self.bad(key_at, f"unexpected key {key!r} in a chunked array")
        if shape is None or flat is None or filled != math.prod(shape):
            raise self.bad(at, f"chunked array is incomplete ({filled} elements for shape {shape})")
        return flat.reshape(shape)

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
                if sub_first == _CHUNK_MARKER:
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


# ---------------------------------------------------------------------------------------------------
# Writing

_Part = bytes | memoryview


def _nbytes(part: _Part) -> int:
    return part.nbytes if isinstance(part, memoryview) else len(part)


# Headers as msgpack-python's Packer writes them (smallest form), so our bytes equal packb's.
def _bin_header(n: int) -> bytes:
    if n <= 0xFF:
        return struct.pack(">BB", 0xC4, n)
    if n <= 0xFFFF:
        return struct.pack(">BH", 0xC5, n)
    return struct.pack(">BI", 0xC6, n)


def _ext_header(code: int, n: int) -> bytes:
    if n in (1, 2, 4, 8, 16):
        return struct.pack(">Bb", 0xD4 + n.bit_length() - 1, code)
    if n <= 0xFF:
        return struct.pack(">BBb", 0xC7, n, code)
    if n <= 0xFFFF:
        return struct.pack(">BHb", 0xC8, n, code)
    return struct.pack(">BIb", 0xC9, n, code)


def _map_header(n: int) -> bytes:
    if n <= 0x0F:
        return bytes([0x80 | n])
    if n <= 0xFFFF:
        return struct.pack(">BH", 0xDE, n)
    return struct.pack(">BI", 0xDF, n)


def _check_key(key: Sequence[str]) -> tuple[str, ...]:
    if isinstance(key, (str, bytes)) or not key or not all(isinstance(k, str) for k in key):
        raise TypeError(f"a record key must be a non-empty sequence of strings like ('lm_head', 'kernel'), got {key!r}")
    return tuple(key)


def _encode_leaf(value: Any, chunk_bytes: int, key: tuple[str, ...]) -> list[_Part]:
    """The Flax document of one leaf (what `flax.serialization.to_bytes(value)` returns) as parts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return [msgpack.packb(value)]
    if isinstance(value, np.generic):
        return _ndarray_parts(np.asarray(value), 3, key)
    array = np.asarray(value)  # also fetches a (fully addressable) jax.Array to host
    if array.nbytes > chunk_bytes:
        return _chunked_parts(array, chunk_bytes, key)
    return _ndarray_parts(array, 1, key)


def _ndarray_parts(array: np.ndarray, code: int, key: tuple[str, ...]) -> list[_Part]:
    name = array.dtype.name
    if name not in _NUMPY_DTYPES and name not in _ML_DTYPES:
        raise LWMError(
            f"cannot write record {'/'.join(key)}: dtype {array.dtype} is not supported; cast it to a "
            f"numeric dtype such as bfloat16 or float32"
        )
    if not array.flags.c_contiguous:
        array = np.array(array, order="C")  # Flax writes C order; np.ascontiguousarray would make 0-d 1-d
    head = b"\x93" + msgpack.packb(list(array.shape)) + msgpack.packb(name) + _bin_header(array.nbytes)
    raw = memoryview(array.reshape(-1).view(np.uint8))
    return [_ext_header(code, len(head) + array.nbytes), head, raw]


def _chunked_parts(array: np.ndarray, chunk_bytes: int, key: tuple[str, ...]) -> list[_Part]:
    """flax.serialization._chunk: consecutive runs of the flattened array, as views, not copies."""
    if not array.flags.c_contiguous:
        array = np.array(array, order="C")
    flat = array.reshape(-1)
    per_chunk = max(1, chunk_bytes // array.dtype.itemsize)
    starts = range(0, flat.size, per_chunk)
    parts: list[_Part] = [
        _map_header(3)
        + msgpack.packb(_CHUNK_MARKER) + msgpack.packb(True)
        + msgpack.packb("shape") + msgpack.packb({str(i): d for i, d in enumerate(array.shape)})
        + msgpack.packb("chunks") + _map_header(len(starts))
    ]
    for i, start in enumerate(starts):
        parts.append(msgpack.packb(str(i)))
        parts.extend(_ndarray_parts(flat[start : start + per_chunk], 1, key))
    return parts


def _encode_tree(tree: Mapping, prefix: tuple[str, ...]) -> Iterator[_Part]:
    # msgpack_serialize runs the tree through jax.tree_util.tree_map, which sorts dict keys.
    keys = sorted(tree)
    yield _map_header(len(keys))
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"params tree keys must be strings, got {k!r} under {'/'.join(prefix) or 'the root'}")
        yield msgpack.packb(k)
        value = tree[k]
        if isinstance(value, Mapping):
            yield from _encode_tree(value, prefix + (k,))
        else:
            yield from _encode_leaf(value, FLAX_CHUNK_BYTES, prefix + (k,))


def _atomic_write(path: str, fill: Callable[[BinaryIO], None]) -> None:
    """Runs `fill` on a temp file next to `path` and renames it over `path` (see `atomic`), so a crash or
    an error never leaves a half-written checkpoint that a later load would take for a truncated one."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise LWMError(f"cannot write checkpoint {path}: it is a directory; give a file path")
    if not os.path.isdir(directory):
        raise LWMError(f"cannot write checkpoint {path}: directory {directory} does not exist; create it first")
    with atomic_file(path) as f:
        fill(f)
