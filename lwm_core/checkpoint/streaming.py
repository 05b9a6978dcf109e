"""LWM's streaming msgpack checkpoints (the files named `params` in the `LargeWorldModel/*-Jax` repos),
read as a stream of `(key_path, array)` records, one array in host memory at a time.

The entry point for every reader and writer of these files; the work is done by
`specs` (load specs `KIND::PATH` and which records each kind keeps), `msgpack_format` (the format),
`msgpack_reader` (the in-place msgpack parser) and `msgpack_writer` (records and Flax blobs, atomically),
whose public names are re-exported here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from lwm_core.checkpoint.msgpack_format import FLAX_CHUNK_BYTES
from lwm_core.checkpoint.msgpack_reader import Reader
from lwm_core.checkpoint.msgpack_writer import write_flax_params, write_records
from lwm_core.checkpoint.specs import LOAD_KINDS, check_found, check_kind, params_key, parse_load_spec
from lwm_core.errors import LWMError

__all__ = ["FLAX_CHUNK_BYTES", "LOAD_KINDS", "iter_checkpoint", "iter_records", "parse_load_spec",
           "write_flax_params", "write_records"]


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
    check_kind(kind)
    path = os.fspath(path)
    size = _checkpoint_size(path)
    if kind == "flax_params":
        return _iter_flax(path, size)
    return _iter_streaming(path, size, kind)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[tuple[str, ...], np.ndarray | Any]]:
    """Streams every record of a streaming checkpoint raw: arrays, numpy scalars (ExtType 3), ints..."""
    path = os.fspath(path)
    return _iter_streaming(path, _checkpoint_size(path), None)


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
        reader = Reader(f, path, size, streaming=True)
        found = 0
        while (head := reader.record_head()) is not None:
            key = params_key(kind, head[0], path)
            if key is None:  # a train state's step or optimizer state: skipped with a seek, unread
                reader.skip(head[1])
                continue
            found += 1
            if kind is None:
                yield key, reader.record_value(head[1])
            else:
                # No local keeps the array: once the caller drops it, it is freed before the next read.
                yield key, reader.as_array(reader.record_value(head[1]))
        check_found(kind, found, path)


def _iter_flax(path: str, size: int) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """The leaves of a single Flax msgpack blob, read with the same in-place array reader."""
    with _open(path) as f:
        reader = Reader(f, path, size, streaming=False)
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
