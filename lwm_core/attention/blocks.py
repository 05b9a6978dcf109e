"""Attention on one (query block, key/value block) pair with carried online-softmax state.

These two functions are the unit of work of ring attention (each ring step attends the local queries
to one visiting key/value block) and the reference that the Pallas kernels are tested against:

- `block_forward` folds one key/value block into the running state (m, l, acc) in float32;
- `block_backward` gives the gradient contributions of one block pair from the saved log-sum-exp.

Both tile the pair into (q_chunk x k_chunk) pieces so that memory stays O(chunk^2) however long the
blocks are, and skip pieces that the causal mask hides entirely. Positions are *global* (so causality is
right whichever device a block came from); segment ids keep packed sequences apart.

Shapes: q (B, T, N, H); k, v (B, S, K, H) with K dividing N (GQA, G = N / K); positions q_pos (T,),
k_pos (S,); segments q_seg (B, T), k_seg (B, S). State: m, l (B, K, G, T); acc (B, K, G, T, H).

Every implementation of this contract (the Pallas kernels; `dispatch.block_fns` finds them) checks its
arguments with `check_block_args` and fits its tiles as `_fit` does here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lwm_core.attention.reference import MASK_VALUE


class SoftmaxState(NamedTuple):
    m: jax.Array  # running max of the scores, (B, K, G, T) float32
    l: jax.Array  # running sum of exp(score - m), (B, K, G, T) float32
    acc: jax.Array  # running sum of exp(score - m) * v, (B, K, G, T, H) float32


def init_state(B: int, K: int, G: int, T: int, H: int) -> SoftmaxState:
    return SoftmaxState(jnp.full((B, K, G, T), MASK_VALUE, jnp.float32), jnp.zeros((B, K, G, T), jnp.float32),
                        jnp.zeros((B, K, G, T, H), jnp.float32))


def finalize(state: SoftmaxState, dtype) -> tuple[jax.Array, jax.Array]:
    """-> output (B, T, N, H) in `dtype` and log-sum-exp (B, N, T) float32."""
    B, K, G, T, H = state.acc.shape
    out = state.acc / jnp.maximum(state.l, 1e-30)[..., None]
    lse = state.m + jnp.log(jnp.maximum(state.l, 1e-30))
    return jnp.einsum("bkgth->btkgh", out).reshape(B, T, K * G, H).astype(dtype), lse.reshape(B, K * G, T)


def _chunks(x, axis: int, size: int):
    """Split `axis` into (n, size) and move n to the front: the scan axis."""
    shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unchunk(x, axis: int):
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _mask(qp, kp, qs, ks, causal):
    """(B, 1, 1, tq, tk) visibility of keys to queries."""
    mask = qs[:, None, None, :, None] == ks[:, None, None, None, :]
    if causal:
        mask &= kp[None, None, None, None, :] <= qp[None, None, None, :, None]
    return mask


def _fit(n: int, chunk: int) -> int:
    chunk = min(chunk, n)
    if n % chunk:
        raise ValueError(f"block length {n} is not divisible by the chunk size {chunk}")
    return chunk


def check_block_args(q, k, v, q_pos, k_pos, q_seg, k_seg, q_chunk: int, k_chunk: int, *, state=None, do=None,
                     lse=None, delta=None):
    """Validate the shapes of a block_forward/backward call -> (B, T, N, H, S, K, G, cq, ck).

    cq, ck are the tile sizes, min(chunk, length) as in the reference; a length that the tile does not
    divide raises (the reference's `_fit` message).
    """
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"expected q (B, T, N, H) and k, v (B, S, K, H); got q {q.shape}, k {k.shape}, "
                         f"v {v.shape}")
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != H:
        raise ValueError(f"k/v batch and head dim {k.shape[0]}, {k.shape[3]} must match q's {B}, {H} "
                         f"(q {q.shape}, k {k.shape})")
    if K == 0 or N % K:
        raise ValueError(f"kv heads K={K} must divide query heads N={N} (GQA)")
    expected = {"q_pos": (q_pos.shape, (T,)), "k_pos": (k_pos.shape, (S,)), "q_seg": (q_seg.shape, (B, T)),
                "k_seg": (k_seg.shape, (B, S))}
    G = N // K
    if state is not None:
        expected.update(m=(state.m.shape, (B, K, G, T)), l=(state.l.shape, (B, K, G, T)),
                        acc=(state.acc.shape, (B, K, G, T, H)))
    if do is not None:
        expected.update(do=(do.shape, q.shape), lse=(lse.shape, (B, N, T)), delta=(delta.shape, (B, N, T)))
    for name, (got, want) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"{name} has shape {tuple(got)}, expected {want} for q {q.shape}, k {k.shape}")
    return B, T, N, H, S, K, G, _fit(T, q_chunk), _fit(S, k_chunk)


def block_forward(q, k, v, state: SoftmaxState, *, q_pos, k_pos, q_seg, k_seg, causal: bool, scale: float,
                  q_chunk: int = 512, k_chunk: int = 512) -> SoftmaxState:
    """Fold key/value block (k, v) into `state` for queries q."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    cq, ck = _fit(T, q_chunk), _fit(S, k_chunk)
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(B, T, K, G, H)
    kb, vb, kpb, ksb = _chunks(k, 1, ck), _chunks(v, 1, ck), _chunks(k_pos, 0, ck), _chunks(k_seg, 1, ck)

    def per_query_chunk(args):
        qi, qp, qs, m, l, acc = args  # (B, cq, K, G, H), (cq,), (B, cq), state pieces of this chunk

        def step(carry, kargs):
            ki, vi, kp, ks = kargs

            @jax.checkpoint  # autodiff through this (blockwise training) keeps the carries, not the scores
            def update(carry):
                m, l, acc = carry
                s = jnp.einsum("bqkgh,bskh->bkgqs", qi, ki, preferred_element_type=jnp.float32)
                s = jnp.where(_mask(qp, kp, qs, ks, causal), s, MASK_VALUE)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])
                correction = jnp.exp(m - m_new)
                pv = jnp.einsum("bkgqs,bskh->bkgqh", p.astype(vi.dtype), vi, preferred_element_type=jnp.float32)
                return m_new, l * correction + p.sum(-1), acc * correction[..., None] + pv

            if causal:  # key chunk entirely in this query chunk's future: nothing to add
                return jax.lax.cond(kp.min() > qp.max(), lambda c: c, update, carry), None
            return update(carry), None

        (m, l, acc), _ = jax.lax.scan(step, (m, l, acc), (kb, vb, kpb, ksb))
        return m, l, acc

    m, l, acc = jax.lax.map(per_query_chunk, (
        _chunks(qg, 1, cq), _chunks(q_pos, 0, cq), _chunks(q_seg, 1, cq),
        _chunks(state.m, 3, cq), _chunks(state.l, 3, cq), _chunks(state.acc, 3, cq)))
    return SoftmaxState(_unchunk(m, 3), _unchunk(l, 3), _unchunk(acc, 3))


def block_backward(q, k, v, do, lse, delta, *, q_pos, k_pos, q_seg, k_seg, causal: bool, scale: float,
                   q_chunk: int = 512, k_chunk: int = 512):
    """Gradient contributions of one block pair: (dq (B,T,N,H), dk (B,S,K,H), dv (B,S,K,H)), float32.

    lse (B, N, T) is the final log-sum-exp of the forward pass and delta (B, N, T) = sum_h(do * out),
    as in FlashAttention-2's backward: p = exp(s - lse), ds = p * (do.v - delta).
    """
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    cq, ck = _fit(T, q_chunk), _fit(S, k_chunk)
    qg = q.reshape(B, T, K, G, H)
    dog = do.reshape(B, T, K, G, H)
    lse_g, delta_g = lse.reshape(B, K, G, T), delta.reshape(B, K, G, T)
    kb, vb, kpb, ksb = _chunks(k, 1, ck), _chunks(v, 1, ck), _chunks(k_pos, 0, ck), _chunks(k_seg, 1, ck)
    nk = S // ck

    def per_query_chunk(dkv, qargs):
        qi, doi, qp, qs, lse_i, delta_i = qargs

        def step(dq, kargs):
            ki, vi, kp, ks = kargs

            def grads(_):
                s = jnp.einsum("bqkgh,bskh->bkgqs", qi, ki, preferred_element_type=jnp.float32) * scale
                s = jnp.where(_mask(qp, kp, qs, ks, causal), s, MASK_VALUE)
                p = jnp.exp(s - lse_i[..., None])
                dv = jnp.einsum("bkgqs,bqkgh->bskh", p, doi.astype(jnp.float32))
                dp = jnp.einsum("bqkgh,bskh->bkgqs", doi, vi, preferred_element_type=jnp.float32)
                ds = p * (dp - delta_i[..., None]) * scale
                dq = jnp.einsum("bkgqs,bskh->bqkgh", ds, ki.astype(jnp.float32))
                dk = jnp.einsum("bkgqs,bqkgh->bskh", ds, qi.astype(jnp.float32))
                return dq, dk, dv

            zeros = (jnp.zeros(qi.shape, jnp.float32), jnp.zeros(ki.shape, jnp.float32),
                     jnp.zeros(vi.shape, jnp.float32))
            if causal:
                dqi, dki, dvi = jax.lax.cond(kp.min() > qp.max(), lambda _: zeros, grads, None)
            else:
                dqi, dki, dvi = grads(None)
            return dq + dqi, (dki, dvi)

        dq, (dk_parts, dv_parts) = jax.lax.scan(step, jnp.zeros(qi.shape, jnp.float32), (kb, vb, kpb, ksb))
        dk, dv = dkv
        return (dk + dk_parts, dv + dv_parts), dq

    init = (jnp.zeros((nk, B, ck, K, H), jnp.float32), jnp.zeros((nk, B, ck, K, H), jnp.float32))
    (dk, dv), dq = jax.lax.scan(per_query_chunk, init, (
        _chunks(qg, 1, cq), _chunks(dog, 1, cq), _chunks(q_pos, 0, cq), _chunks(q_seg, 1, cq),
        _chunks(lse_g, 3, cq), _chunks(delta_g, 3, cq)))
    return _unchunk(dq, 1).reshape(B, T, N, H), _unchunk(dk, 1), _unchunk(dv, 1)
