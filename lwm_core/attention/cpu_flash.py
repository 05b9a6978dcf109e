"""Fused CPU attention: `reference.dense_attention`'s contract by lwm's C++ kernel (`cpu_attention.cc`,
built and registered with the decode kernels by `lwm_core.cpu_decode`), with its gradient.

The kernel tiles queries (`block_q` positions, all query heads of one kv head at once) against key tiles
(`block_k` slots) with an online softmax in float32, skips tiles the causal mask or the segments hide, and
keeps each tile's scores in cache; the backward recomputes the probabilities from the saved log-sum-exp
(FlashAttention-2) in one pass over key tiles: dk and dv per key tile, dq summed in per-item partials
(no atomics), the query side packed once per call. The attention dispatcher (plan kind "cpu_flash") runs
it for whole-sequence attention on one CPU device when `cpu_decode.available()`; its twin in tests is `dense_attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lwm_core import cpu_decode

# Query positions and key slots per tile. A tile of 64 query rows x 256 keys keeps the scores (64 KB),
# the keys and values (64 KB each at H = 64) and the accumulator in a core's L2
# (benchmarks/README.md#design-measurements has the sweep).
BLOCK_Q = 64
BLOCK_K = 256


def flash_attention(q, k, v, *, q_slot=None, k_slot=None, q_seg=None, k_seg=None, causal: bool = True,
                    block_q: int = BLOCK_Q, block_k: int = BLOCK_K):
    """`dense_attention(q, k, v, ...)` by the kernel (call `cpu_decode.available()` first): q (B, T, N, H),
    k/v (B, S, K, H), K dividing N -> (B, T, N, H) in q's dtype. Float32 inside (bf16 inputs are widened;
    the result is within bf16 rounding of the reference). A query that sees no key gets zeros."""
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] \
            or k.shape[2] == 0 or q.shape[2] % k.shape[2]:
        raise ValueError(f"flash_attention: expected q (B, T, N, H) and k, v (B, S, K, H) with K dividing N; got "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    B, T, N, H = q.shape
    S = k.shape[1]
    if q_slot is None:
        q_slot = jnp.arange(T) + (S - T)
    if k_slot is None:
        k_slot = jnp.arange(S)
    if q_seg is None:
        q_seg, k_seg = jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32)
    masks = (jnp.asarray(q_slot, jnp.int32), jnp.asarray(k_slot, jnp.int32), jnp.asarray(q_seg, jnp.int32),
             jnp.asarray(k_seg, jnp.int32))
    for name, mask, want in zip(("q_slot", "k_slot", "q_seg", "k_seg"), masks, ((T,), (S,), (B, T), (B, S))):
        if mask.shape != want:
            raise ValueError(f"flash_attention: {name} has shape {mask.shape}, expected {want} for q {q.shape}, "
                             f"k {k.shape}")
    return _flash(q, k, v, masks, (causal, block_q, block_k))


def _forward(q, k, v, masks, static):
    causal, block_q, block_k = static
    B, T, N, H = q.shape
    out_types = (jax.ShapeDtypeStruct((B, T, N, H), jnp.float32), jax.ShapeDtypeStruct((B, N, T), jnp.float32))
    return jax.ffi.ffi_call(cpu_decode.FLASH_TARGET, out_types, vmap_method="sequential")(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), *masks, causal=np.bool_(causal),
        block_q=np.int64(block_q), block_k=np.int64(block_k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, masks, static):
    return _forward(q, k, v, masks, static)[0].astype(q.dtype)


def _flash_fwd(q, k, v, masks, static):
    out, lse = _forward(q, k, v, masks, static)
    out, lse = checkpoint_name(out, "attention"), checkpoint_name(lse, "attention")  # remat dots_attention
    return out.astype(q.dtype), (q, k, v, masks, out, lse)


def _flash_bwd(static, residuals, dout):
    causal, block_q, block_k = static
    q, k, v, masks, out, lse = residuals
    do = dout.astype(jnp.float32)
    # delta = rowsum(do * out) (B, T, N) -> (B, N, T), as the kernel reads lse
    delta = jnp.einsum("btnh,btnh->bnt", do, out)
    shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct(k.shape, jnp.float32),
              jax.ShapeDtypeStruct(v.shape, jnp.float32))
    dq, dk, dv = jax.ffi.ffi_call(cpu_decode.FLASH_BWD_TARGET, shapes, vmap_method="sequential")(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), *masks, do, lse, delta,
        causal=np.bool_(causal), block_q=np.int64(block_q), block_k=np.int64(block_k))
    zeros = tuple(np.zeros(m.shape, jax.dtypes.float0) for m in masks)  # integer inputs: no gradient
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), zeros


_flash.defvjp(_flash_fwd, _flash_bwd)
