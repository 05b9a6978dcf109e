"""Blockwise attention (memory-efficient, online softmax) for long sequences on one device.

Queries are processed in chunks of `q_chunk`; for each, key/value chunks of `k_chunk` stream past with
the running max `m`, normaliser `l` and accumulator in float32 (Rabe & Staats 2021; Liu et al. 2023,
"Blockwise Parallel Transformer"). Peak memory is O(B N q_chunk k_chunk) for scores instead of
O(B N T S). Causal key chunks that lie wholly in a query chunk's future are skipped with `lax.cond`.
"""

from __future__ import annotations

import jax.numpy as jnp

from lwm_core.attention import blocks


def _pad(x, axis: int, multiple: int, value):
    n = x.shape[axis]
    extra = -n % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(q, k, v, *, q_slot=None, k_slot=None, q_seg=None, k_seg=None, causal: bool = True,
                        q_chunk: int = 512, k_chunk: int = 1024):
    """Same contract as `dense_attention`; equal to it within float32 rounding."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    q_chunk, k_chunk = min(q_chunk, T), min(k_chunk, S)
    if q_slot is None:
        q_slot = jnp.arange(T) + (S - T)
    if k_slot is None:
        k_slot = jnp.arange(S)
    if q_seg is None:
        q_seg = jnp.zeros((B, T), jnp.int32)
        k_seg = jnp.zeros((B, S), jnp.int32)
    # Pad to whole chunks. Padded keys get a segment no query has, so they are never attended; padded
    # queries are dropped at the end.
    q = _pad(q, 1, q_chunk, 0)
    q_slot = _pad(q_slot, 0, q_chunk, jnp.iinfo(jnp.int32).max)
    q_seg = _pad(q_seg, 1, q_chunk, 0)
    k, v = _pad(k, 1, k_chunk, 0), _pad(v, 1, k_chunk, 0)
    k_slot = _pad(k_slot, 0, k_chunk, jnp.iinfo(jnp.int32).max)
    k_seg = _pad(k_seg.astype(jnp.int32), 1, k_chunk, jnp.iinfo(jnp.int32).min)

    # One online-softmax implementation serves both paths: the ring step's block function, over the
    # whole (padded) sequence as a single block.
    state = blocks.block_forward(q, k, v, blocks.init_state(B, K, G, q.shape[1], H), q_pos=q_slot, k_pos=k_slot,
                                 q_seg=q_seg, k_seg=k_seg, causal=causal, scale=H ** -0.5, q_chunk=q_chunk,
                                 k_chunk=k_chunk)
    out, _ = blocks.finalize(state, q.dtype)
    return out[:, :T]
