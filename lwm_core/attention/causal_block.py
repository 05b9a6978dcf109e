"""Causal-block attention with its hand-written gradient: what `attention=auto` runs for prompts and
training rows up to `dispatch.CAUSAL_BLOCK_MAX` positions. Its reference is `reference.dense_attention`
(tests/attention/test_ring.py compares outputs and gradients)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from lwm_core.attention.reference import MASK_VALUE, softmax_values


def causal_block_attention(q, k, v, *, q_seg=None, k_seg=None, block: int = 256):
    """Causal self-attention over positions 0..T-1 (q and k/v of the same T positions, same shapes as
    `dense_attention`), computed as dense attention for each block of `block` query rows against the
    keys up to the block's last row. Equal to `dense_attention(q, k, v, q_seg=.., k_seg=..)` within
    float32 rounding: the keys left out lie in every row's future, where dense masks them anyway.

    Only the causal triangle and the diagonal blocks are computed, and only the diagonal block needs a
    causal mask; no online-softmax state as in blockwise attention. Peak scores B*N*block*T floats, so
    for prompts and training rows of moderate length; long sequences use blockwise attention.

    The gradient is hand-written (flash-attention style, per block from the saved log-sum-exp): autodiff
    of the forward kept the masks and unnormalised probabilities of every block and transposed them,
    which made the backward ~3x slower than the forward on CPU.
    """
    return _causal_block(q, k, v, q_seg, k_seg, block)


def _heads(q, k, v):
    """Scaled head-major q (B, K, G, T, H) and k/v (B, K, T, H), once for all blocks."""
    B, T, N, H = q.shape
    K = k.shape[2]
    q = q / jnp.sqrt(jnp.asarray(H, jnp.float32)).astype(q.dtype)
    qh = jnp.einsum("btkgh->bkgth", q.reshape(B, T, K, N // K, H))
    return qh, jnp.einsum("btkh->bkth", k), jnp.einsum("btkh->bkth", v)


def _block_scores(qh, kh, q_seg, k_seg, start: int, end: int):
    """Masked float32 scores (B, K, G, n, end) of query rows [start, end) against keys [0, end)."""
    n = end - start
    scores = jnp.einsum("bkgth,bksh->bkgts", qh[:, :, :, start:end], kh[:, :, :end],
                        preferred_element_type=jnp.float32)
    if q_seg is not None:
        same = q_seg[:, start:end, None] == k_seg[:, None, :end]  # (B, n, end)
        scores = jnp.where(same[:, None, None], scores, MASK_VALUE)
    future = ~jnp.tril(jnp.ones((n, n), bool))
    diagonal = jnp.where(future, MASK_VALUE, scores[..., start:end])
    return jax.lax.dynamic_update_slice_in_dim(scores, diagonal, start, axis=-1)


def _causal_block_forward(q, k, v, q_seg, k_seg, block):
    """(out (B, T, N, H) in q's dtype, head-major out (B, K, G, T, H) float32, lse (B, K, G, T))."""
    B, T, N, H = q.shape
    qh, kh, vh = _heads(q, k, v)
    outs, lses = [], []
    for start in range(0, T, block):
        end = min(start + block, T)
        o, lse = softmax_values(_block_scores(qh, kh, q_seg, k_seg, start, end), vh[:, :, :end],
                                 "bkgts,bksh->bkgth")
        outs.append(o)
        lses.append(lse)
    out_h, lse = jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)
    # (B, K, G, T, H) -> (B, T, K, G, H) -> (B, T, N, H)
    out = jnp.einsum("bkgth->btkgh", out_h).reshape(B, T, N, H).astype(q.dtype)
    return out, out_h, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _causal_block(q, k, v, q_seg, k_seg, block):
    return _causal_block_forward(q, k, v, q_seg, k_seg, block)[0]


def _causal_block_fwd(q, k, v, q_seg, k_seg, block):
    out, out_h, lse = _causal_block_forward(q, k, v, q_seg, k_seg, block)
    out_h, lse = checkpoint_name(out_h, "attention"), checkpoint_name(lse, "attention")  # remat dots_attention
    return out, (q, k, v, q_seg, k_seg, out_h, lse)


def _causal_block_bwd(block, res, dout):
    """Per query block: p = exp(s - lse); dv += p^T do; ds = p * (do v^T - delta); dq = ds k; dk += ds^T q,
    with delta = rowsum(do * out) (Dao et al., FlashAttention, Alg. 2), all in float32."""
    q, k, v, q_seg, k_seg, out_h, lse = res
    B, T, N, H = q.shape
    K = k.shape[2]
    qh, kh, vh = _heads(q, k, v)
    # (B, T, N, H) -> (B, K, G, T, H)
    do = jnp.einsum("btkgh->bkgth", dout.reshape(B, T, K, N // K, H)).astype(jnp.float32)
    delta = jnp.sum(do * out_h, axis=-1)  # (B, K, G, T)
    dq_blocks = []
    dk = jnp.zeros(kh.shape, jnp.float32)
    dv = jnp.zeros(vh.shape, jnp.float32)
    for start in range(0, T, block):
        end = min(start + block, T)
        p = jnp.exp(_block_scores(qh, kh, q_seg, k_seg, start, end) - lse[..., start:end, None])
        d = do[:, :, :, start:end]
        dv = dv.at[:, :, :end].add(jnp.einsum("bkgts,bkgth->bksh", p, d))
        dp = jnp.einsum("bkgth,bksh->bkgts", d, vh[:, :, :end], preferred_element_type=jnp.float32)
        ds = p * (dp - delta[..., start:end, None])
        dq_blocks.append(jnp.einsum("bkgts,bksh->bkgth", ds, kh[:, :, :end], preferred_element_type=jnp.float32))
        dk = dk.at[:, :, :end].add(jnp.einsum("bkgts,bkgth->bksh", ds, qh[:, :, :, start:end],
                                              preferred_element_type=jnp.float32))
    scale = 1.0 / jnp.sqrt(jnp.asarray(H, jnp.float32))  # q was scaled before the product
    # (B, K, G, T, H) -> (B, T, N, H); (B, K, T, H) -> (B, T, K, H)
    dq = jnp.einsum("bkgth->btkgh", jnp.concatenate(dq_blocks, axis=3)).reshape(B, T, N, H) * scale
    dk, dv = jnp.einsum("bkth->btkh", dk), jnp.einsum("bkth->btkh", dv)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_causal_block.defvjp(_causal_block_fwd, _causal_block_bwd)
