"""The msgpack format of LWM's checkpoints, shared by the reader and the writer.

A streaming checkpoint (the files named `params` in the `LargeWorldModel/*-Jax` repos), as the original
code writes it, is a plain concatenation of msgpack objects with no header and no index. Each object is
`[key_path, value]`: `key_path` is the flattened tree path (a list of strings) and `value` is a msgpack
bin holding one Flax-serialized leaf (`flax.serialization.to_bytes(leaf)`):

- ndarray: `ExtType(1, packb([shape, dtype_name, raw C-order bytes]))`; numpy scalar: `ExtType(3, same)`;
  Python complex: `ExtType(2, packb([re, im]))`.
- ndarray over 2**30 bytes: `{"__msgpack_chunked_array__": True, "shape": {"0": d0, ...},
  "chunks": {"0": <ExtType 1 of a 1-D slice>, ...}}`, the slices cutting the flattened array into runs
  of 2**30 / itemsize elements (msgpack cannot hold a bin over 2**32 - 1 bytes, Flax stops at 2**30).

A `flax_params` file is one such Flax document: a map of the params tree with the same leaves.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

# Flax's limit (flax.serialization.MAX_CHUNK_SIZE): arrays with more bytes than this are chunked.
FLAX_CHUNK_BYTES = 2**30

CHUNK_MARKER = "__msgpack_chunked_array__"

# dtype names we accept from a file. An allowlist, not np.dtype(name): "object" would make np.empty
# hand out an array of pointers that readinto then fills with file bytes.
NUMPY_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
})
ML_DTYPES = frozenset({
    "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e4m3", "float8_e3m4", "float8_e8m0fnu", "float4_e2m1fn",
    "float6_e2m3fn", "float6_e3m2fn", "int2", "int4", "uint2", "uint4",
})


def allowed_dtype(name: str) -> np.dtype | None:
    """The dtype a file may name (numeric numpy or ml_dtypes, by name), or None."""
    if name in NUMPY_DTYPES:
        return np.dtype(name)
    if name in ML_DTYPES and hasattr(ml_dtypes, name):
        return np.dtype(getattr(ml_dtypes, name))
    return None
