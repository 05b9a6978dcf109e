"""Weight-only quantization: the projections and output heads of a model stored in fewer bits, the rest
(embedding tables, norms) as it was. Two modes:

- int8: one float32 scale per output channel (symmetric: w[..., i, o] ~ scale[..., 0, o] * q[..., i, o]), a
  quarter of float32's bytes. The node is {"kernel": int8, "scale": float32}, the scale shaped as the
  kernel with its contracted (input) axis of size 1.
- int4: groups of GROUP (32) input rows per output channel, each with its own float32 scale (w ~ scale *
  n, n in [-8, 7]; the group's largest |w| maps to -8, as llama.cpp's q4_0 does), 5 bits a weight with
  the scales. The node is {"kernel": uint8 (..., in/2, out), "scale": float32 (..., in/32, out)}: byte j
  of group g's 16 holds rows 32g + j (low nibble) and 32g + 16 + j (high nibble), each as n + 8. Every
  quantized kernel's input size must be a multiple of 32 (all LLaMA shapes are).

The model dequantizes one layer at a time where it reads the weights (`dequantize`), so a forward holds
the quantized model plus one layer in float; the CPU decode kernels read the quantized weights themselves
(`lwm_core.cpu_decode`, `llama.packed_weights(quant=)`). Activations and the KV cache stay in the
compute dtype (the int4 decode kernel rounds each 32 of its input vector to int8 for its integer dot
products, as llama.cpp's q4_0 does).

Every kernel of the model is (in, out), y = x @ w (stacked over layers: (L, in, out)), so the contracted
axis is always the second to last.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lwm_core.errors import LWMError

QUANTIZE_MODES = ("none", "int8", "int4")
GROUP = 32  # int4: input rows per scale

# The weights that are quantized: every kernel with two or more axes (per layer) except the norms; the
# embedding tables are looked up one row per token, not read whole, and stay as they are.
_KEEP = ("attention_norm", "ffn_norm", "ln_f")


def quantized_key(path: tuple[str, ...]) -> bool:
    """Whether the parameter at `path` (a flat key of `llama.param_layout`) is stored quantized."""
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


def quantize_array_int4(w) -> tuple[np.ndarray, np.ndarray]:
    """A kernel (..., in, out), `in` a multiple of GROUP -> (q uint8 (..., in/2, out), scale float32
    (..., in/GROUP, out)) on the host, in the int4 layout of this module's docstring. Each group's signed
    extreme m gets scale m / -8 (so it is n = -8 exactly, and a dequantized weight quantizes back to the
    same q); an all-zero group gets scale 0. Like `quantize_array`, layer by layer and _ROWS rows at a time."""
    w = np.asarray(w)
    if w.ndim > 2:
        out = [quantize_array_int4(w[i]) for i in range(w.shape[0])]
        return np.stack([q for q, _ in out]), np.stack([s for _, s in out])
    K, N = w.shape
    if K % GROUP:
        raise ValueError(f"int4 needs input sizes that are multiples of {GROUP}, got {K}")
    q = np.empty((K // 2, N), np.uint8)
    scale = np.empty((K // GROUP, N), np.float32)
    for r in range(0, K, _ROWS):
        x = w[r:r + _ROWS].astype(np.float32).reshape(-1, GROUP, N)  # (rows, N) -> (groups, 32, N)
        extreme = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)  # (groups, 1, N), signed
        d = extreme / -8
        n = np.clip(np.rint(np.divide(x, d, out=np.zeros_like(x), where=d != 0)), -8, 7).astype(np.int16) + 8
        # rows j and 16 + j of a group share byte j: (groups, 16, N) -> (groups * 16, N)
        q[r // 2:(r + len(x) * GROUP) // 2] = (n[:, :16] | (n[:, 16:] << 4)).reshape(-1, N)
        scale[r // GROUP:r // GROUP + len(x)] = d[:, 0]
    return q, scale


def unpack_int4(q, scale, dtype=jnp.float32):
    """The int4 layout (q uint8 (..., in/2, out), scale (..., in/GROUP, out)) -> float (..., in, out):
    scale * n. jnp (works under jit) or numpy in, jnp out."""
    q = jnp.asarray(q)
    *lead, half, N = q.shape
    groups = q.reshape(*lead, half // 16, 16, N)  # (..., K/2, N) -> (..., G, 16, N): each group's 16 bytes
    n = jnp.concatenate([groups & 15, groups >> 4], axis=-2).astype(jnp.float32) - 8  # (..., G, 32, N)
    # (..., G, 32, N) * (..., G, 1, N) -> (..., K, N)
    return (n * jnp.asarray(scale)[..., None, :]).reshape(*lead, 2 * half, N).astype(dtype)


def quantization(params: Any) -> str:
    """How a parameter tree's weights are stored: "int4", "int8" or "none"."""
    kinds = {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(params) if hasattr(leaf, "dtype")}
    return "int4" if np.dtype(np.uint8) in kinds else "int8" if np.dtype(np.int8) in kinds else "none"


def is_quantized(params: Any) -> bool:
    """Whether a parameter tree holds quantized (int8 or int4) weights."""
    return quantization(params) != "none"


def dequantize(tree: Any, dtype) -> Any:
    """`tree` (a parameter tree or part of one) with every {"kernel": int8 or uint8 (int4), "scale"} node
    replaced by {"kernel": its float weights} in `dtype`; float trees come back unchanged. Under jit, the
    product is made where it is used: for one layer's slice inside the layer loop, one layer's worth of float
    weights."""
    if isinstance(tree, dict):
        if "scale" in tree and "kernel" in tree and tree["kernel"].dtype in (jnp.int8, jnp.uint8):
            rest = {k: v for k, v in tree.items() if k not in ("kernel", "scale")}
            if tree["kernel"].dtype == jnp.uint8:
                return {**rest, "kernel": unpack_int4(tree["kernel"], tree["scale"], dtype)}
            return {**rest, "kernel": (tree["kernel"].astype(jnp.float32) * tree["scale"]).astype(dtype)}
        return {k: dequantize(v, dtype) for k, v in tree.items()}
    return tree


def quantized_layout(layout: dict, mode: str = "int8") -> dict:
    """`llama.param_layout`'s {flat key: (shape, logical axes)} for a quantized model: each quantized kernel
    gains a (..., "scale") entry, its contracted axis unsharded (of size 1 for int8, in/GROUP for int4), and
    an int4 kernel's contracted axis holds two rows a byte (in/2). int4 refuses a kernel whose input size
    is not a multiple of GROUP."""
    out = dict(layout)
    for key, (shape, axes) in layout.items():
        if not quantized_key(key):
            continue
        *lead, K, N = shape
        if mode == "int4":
            if K % GROUP:
                raise LWMError(f"int4 quantizes groups of {GROUP} input rows, and {'/'.join(key)} has {K}; "
                               f"quantize this model to int8 instead")
            out[key] = ((*lead, K // 2, N), axes)
            out[(*key[:-1], "scale")] = ((*lead, K // GROUP, N), (*axes[:-2], None, axes[-1]))
        else:
            out[(*key[:-1], "scale")] = ((*lead, 1, N), (*axes[:-2], None, axes[-1]))
    return out


def stored_dtype(path: tuple[str, ...], mode: str, dtype):
    """What the parameter at `path` (a key of `quantized_layout(layout, mode)`) is held as once loaded: a
    quantized kernel int8 (int4: uint8, two a byte), its scale float32, the rest `dtype`."""
    if mode != "none" and path[-1] == "scale":
        return np.dtype(np.float32)
    if mode != "none" and quantized_key(path):
        return np.dtype(np.uint8 if mode == "int4" else np.int8)
    return dtype


def quantize_records(arrays, mode: str = "int8"):
    """(flat key, array) records of a float checkpoint -> those of its `mode` (int8, int4) form, one array at a
    time (the loader's stream: host memory holds one float array and its quantized copy at a time). A kernel
    int4 cannot group is refused in one line by `quantized_layout`, which the loader builds before it reads
    the first record."""
    for path, arr in arrays:
        path = tuple(path)
        if quantized_key(path) and np.ndim(arr) >= 2:
            q, scale = quantize_array_int4(arr) if mode == "int4" else quantize_array(arr)
            del arr
            yield path, q
            yield (*path[:-1], "scale"), scale
        else:
            yield path, arr


def _float_weights(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """One stored quantized kernel (int8 or int4) and its scale -> float32 on the host."""
    if q.dtype == np.uint8:
        return np.asarray(unpack_int4(q, scale))
    return q.astype(np.float32) * scale


def dequantize_records(arrays):
    """Quantized records (each kernel and its scale, in either order) -> float32 ones, one weight at a time."""
    waiting: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    for path, arr in arrays:
        path = tuple(path)
        if path[-1] not in ("kernel", "scale") or not quantized_key((*path[:-1], "kernel")) or \
                (path[-1] == "kernel" and np.asarray(arr).dtype not in (np.int8, np.uint8)):
            yield path, arr
            continue
        pair = waiting.setdefault(path[:-1], {})
        pair[path[-1]] = np.asarray(arr)
        if len(pair) == 2:
            del waiting[path[:-1]]
            yield (*path[:-1], "kernel"), _float_weights(pair["kernel"], pair["scale"])
    for node, pair in waiting.items():
        missing = "scale" if "kernel" in pair else "kernel"
        raise LWMError(f"quantized checkpoint: {'/'.join(node)} has no {missing}; it is incomplete (write it again "
                       f"with lwm convert quantize)")
