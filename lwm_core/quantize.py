"""Weight-only int8: the projections and output heads of a model stored as int8 with one float32 scale per
output channel (symmetric: w[..., i, o] ~ scale[..., 0, o] * q[..., i, o]), a quarter of float32's bytes.

In the parameter tree a quantized weight is its node with two entries, {"kernel": int8, "scale": float32},
the scale shaped as the kernel with its contracted (input) axis of size 1; everything else (embedding
tables, norms) stays as it was. The model dequantizes one layer at a time where it reads the weights
(`dequantize`), so a forward holds the int8 model plus one layer in float; the CPU decode kernels read
the int8 weights themselves (`lwm_core.cpu_decode`, `llama.packed_weights(int8=True)`). Activations and
the KV cache stay in the compute dtype.

Every kernel of the model is (in, out), y = x @ w (stacked over layers: (L, in, out)), so the contracted
axis is always the second to last.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lwm_core.errors import LWMError

QUANTIZE_MODES = ("none", "int8")

# The weights that are quantized: every kernel with two or more axes (per layer) except the norms; the
# embedding tables are looked up one row per token, not read whole, and stay as they are.
_KEEP = ("attention_norm", "ffn_norm", "ln_f")


def quantized_key(path: tuple[str, ...]) -> bool:
    """Whether the parameter at `path` (a flat key of `llama.param_layout`) is stored as int8."""
    return path[-1] == "kernel" and path[-2] not in _KEEP


_ROWS = 256  # input rows quantized at a time: float32 temporaries of 256 x out, not of a whole layer


def quantize_array(w) -> tuple[np.ndarray, np.ndarray]:
    """A kernel (..., in, out) -> (q int8, scale float32 (..., 1, out)) on the host: each output channel's
    largest |w| maps to +-127; an all-zero channel gets scale 1 (its q is 0). Done layer by layer and
    _ROWS input rows at a time (a 7B layer's w1 is 180 MB in float32): besides the source array and q,
    it holds a few MB whatever the source dtype."""
    w = np.asarray(w)
    if w.ndim > 2:
        q = np.empty(w.shape, np.int8)
        scale = np.empty((*w.shape[:-2], 1, w.shape[-1]), np.float32)
        for i in range(w.shape[0]):
            q[i], scale[i] = quantize_array(w[i])
        return q, scale
    rows = range(0, w.shape[0], _ROWS)
    top = np.zeros((1, w.shape[1]), np.float32)
    for r in rows:
        np.maximum(top, np.abs(w[r:r + _ROWS].astype(np.float32)).max(axis=0, keepdims=True), out=top)
    scale = np.where(top > 0, top / 127, 1.0).astype(np.float32)
    q = np.empty(w.shape, np.int8)
    for r in rows:
        x = w[r:r + _ROWS].astype(np.float32)
        np.divide(x, scale, out=x)
        np.rint(x, out=x)
        np.clip(x, -127, 127, out=x)
        q[r:r + _ROWS] = x
    return q, scale


def is_quantized(params: Any) -> bool:
    """Whether a parameter tree holds int8 weights."""
    return any(getattr(leaf, "dtype", None) == jnp.int8 for leaf in jax.tree.leaves(params))


def dequantize(tree: Any, dtype) -> Any:
    """`tree` (a parameter tree or part of one) with every {"kernel": int8, "scale"} node replaced by
    {"kernel": q * scale} in `dtype`; float trees come back unchanged. Under jit, the product is made where
    it is used: for one layer's slice inside the layer loop, one layer's worth of float weights."""
    if isinstance(tree, dict):
        if "scale" in tree and "kernel" in tree and tree["kernel"].dtype == jnp.int8:
            rest = {k: v for k, v in tree.items() if k not in ("kernel", "scale")}
            return {**rest, "kernel": (tree["kernel"].astype(jnp.float32) * tree["scale"]).astype(dtype)}
        return {k: dequantize(v, dtype) for k, v in tree.items()}
    return tree


def quantized_layout(layout: dict) -> dict:
    """`llama.param_layout`'s {flat key: (shape, logical axes)} for an int8 model: each quantized kernel
    keeps its entry (int8) and gains a (..., "scale") entry, its contracted axis of size 1 and unsharded."""
    out = dict(layout)
    for key, (shape, axes) in layout.items():
        if quantized_key(key):
            out[(*key[:-1], "scale")] = ((*shape[:-2], 1, shape[-1]), (*axes[:-2], None, axes[-1]))
    return out


def quantize_records(arrays):
    """(flat key, array) records of a float checkpoint -> those of its int8 form, one array at a time (the
    loader's stream: host memory holds one float array and its int8 copy at a time)."""
    for path, arr in arrays:
        path = tuple(path)
        if quantized_key(path) and np.ndim(arr) >= 2:
            q, scale = quantize_array(arr)
            del arr
            yield path, q
            yield (*path[:-1], "scale"), scale
        else:
            yield path, arr


def dequantize_records(arrays):
    """int8 records (each kernel and its scale, in either order) -> float32 ones, one weight at a time."""
    waiting: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    for path, arr in arrays:
        path = tuple(path)
        if path[-1] not in ("kernel", "scale") or not quantized_key((*path[:-1], "kernel")) or \
                (path[-1] == "kernel" and np.asarray(arr).dtype != np.int8):
            yield path, arr
            continue
        pair = waiting.setdefault(path[:-1], {})
        pair[path[-1]] = np.asarray(arr)
        if len(pair) == 2:
            del waiting[path[:-1]]
            yield (*path[:-1], "kernel"), pair["kernel"].astype(np.float32) * pair["scale"]
    for node, pair in waiting.items():
        missing = "scale" if "kernel" in pair else "kernel"
        raise LWMError(f"int8 checkpoint: {'/'.join(node)} has no {missing}; it is incomplete (write it again "
                       f"with lwm convert quantize)")
