"""Blockwise attention (memory-efficient, online softmax) for long sequences on one device.

Queries are processed in chunks of `q_chunk`; for each, key/value chunks of `k_chunk` stream past with
the running max `m`, normaliser `l` and accumulator in float32 (Rabe & Staats 2021; Liu et al. 2023,
"Blockwise Parallel Transformer"). Peak memory is O(B N q_chunk k_chunk) for scores instead of
O(B N T S). Causal key chunks that lie wholly in a query chunk's future are skipped with `lax.cond`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lwm_core.attention.reference import MASK_VALUE


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
    nq, nk = q.shape[1] // q_chunk, k.shape[1] // k_chunk

    q = q / jnp.sqrt(jnp.asarray(H, jnp.float32)).astype(q.dtype)
    # (B, nq*cq, N, H) -> (nq, B, cq, K, G, H)
    qb = jnp.moveaxis(q.reshape(B, nq, q_chunk, K, G, H), 1, 0)
    # (B, nk*ck, K, H) -> (nk, B, ck, K, H)
    kb = jnp.moveaxis(k.reshape(B, nk, k_chunk, K, H), 1, 0)
    vb = jnp.moveaxis(v.reshape(B, nk, k_chunk, K, H), 1, 0)
    qslot_b = q_slot.reshape(nq, q_chunk)
    kslot_b = k_slot.reshape(nk, k_chunk)
    qseg_b = jnp.moveaxis(q_seg.reshape(B, nq, q_chunk), 1, 0)
    kseg_b = jnp.moveaxis(k_seg.reshape(B, nk, k_chunk), 1, 0)

    def query_block(args):
        qi, qs, qg = args  # (B, cq, K, G, H), (cq,), (B, cq)

        def key_step(carry, kargs):
            ki, vi, ks, kg = kargs

            @jax.checkpoint  # keep only the small carries for the backward pass, not the scores
            def update(carry):
                m, l, acc = carry
                s = jnp.einsum("bqkgh,bskh->bkgqs", qi, ki, preferred_element_type=jnp.float32)
                mask = qg[:, None, None, :, None] == kg[:, None, None, None, :]
                if causal:
                    mask &= ks[None, None, None, None, :] <= qs[None, None, None, :, None]
                s = jnp.where(mask, s, MASK_VALUE)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])
                correction = jnp.exp(m - m_new)
                l = l * correction + p.sum(-1)
                pv = jnp.einsum("bkgqs,bskh->bkgqh", p.astype(vi.dtype), vi, preferred_element_type=jnp.float32)
                return m_new, l, acc * correction[..., None] + pv

            if causal:  # a key chunk wholly after every query of this chunk contributes nothing
                carry = jax.lax.cond(ks.min() > qs.max(), lambda c: c, update, carry)
            else:
                carry = update(carry)
            return carry, None

        init = (jnp.full((B, K, G, q_chunk), MASK_VALUE, jnp.float32),
                jnp.zeros((B, K, G, q_chunk), jnp.float32),
                jnp.zeros((B, K, G, q_chunk, H), jnp.float32))
        (m, l, acc), _ = jax.lax.scan(key_step, init, (kb, vb, kslot_b, kseg_b))
        out = acc / jnp.maximum(l, 1e-30)[..., None]  # (B, K, G, cq, H)
        return jnp.einsum("bkgqh->bqkgh", out).astype(q.dtype)

    out = jax.lax.map(query_block, (qb, qslot_b, qseg_b))  # (nq, B, cq, K, G, H)
    out = jnp.moveaxis(out, 0, 1).reshape(B, nq * q_chunk, N, H)
    return out[:, :T]
