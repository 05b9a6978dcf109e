"""Writing LWM's checkpoint files: streaming records (`params`) and single Flax blobs (`flax_params`).

The mirror of `msgpack_reader`: headers are built by hand, array bytes are written from a memoryview of
the array, and the output is byte-identical to `msgpack.packb([key, flax.serialization.to_bytes(array)])`
per record (to `flax.serialization.msgpack_serialize(tree)` for a blob), so host memory holds no second
copy of any array. Every file is published atomically (`atomic.atomic_file`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import msgpack
import numpy as np

from lwm_core.checkpoint.atomic import atomic_file
from lwm_core.checkpoint.msgpack_format import CHUNK_MARKER, FLAX_CHUNK_BYTES, ML_DTYPES, NUMPY_DTYPES
from lwm_core.errors import LWMError


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
# Encoding

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
    if name not in NUMPY_DTYPES and name not in ML_DTYPES:
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
        + msgpack.packb(CHUNK_MARKER) + msgpack.packb(True)
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
