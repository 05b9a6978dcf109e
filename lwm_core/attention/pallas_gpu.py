"""Pallas GPU (Triton) kernels for one ring-attention step: the same contract as `blocks.py`.

`block_forward` and `block_backward` here take the same arguments and return the same values as
`lwm_core.attention.blocks.block_forward` / `block_backward`, which stay their plain-`jnp` reference
(tests/attention/test_pallas.py runs both in interpret mode on CPU and compares). What the kernels add is
that the (q_chunk x k_chunk) score tile only ever lives in registers/shared memory.

Layout (no transposes in HBM): q, do (B, T, N, H) and k, v (B, S, K, H) are read in place; a program
of the grid picks head n with a squeezed BlockSpec dimension, and GQA maps query head n to kv head
n // G inside the index maps (the state (B, K, G, T) is indexed (n // G, n % G)).

- forward: grid (B, N, T / q_chunk). A program loads its carried (m, l, acc) tile, loops over the
  key tiles of the block, and stores the tile back (the state is aliased input -> output).
- backward (FlashAttention-2, from the final lse and delta = rowsum(do * out)):
  dk/dv kernel, grid (B, K, S / k_chunk): a kv tile loops over the G query heads of its group and
  all query tiles, so the GQA sum over the group happens in registers (no atomics);
  dq kernel, grid (B, N, T / q_chunk): a query tile loops over the key tiles.

Causal skipping uses the *global* positions, not tile indices: a key tile whose smallest position
exceeds the largest query position of the tile is skipped (`lax.cond`), exactly where the reference
skips. Positions may be any int32 arrays (the zigzag layout gives a device two non-adjacent chunks).

Triton wants power-of-two tiles of at least 16 for its dot (and a power-of-two H); q_chunk/k_chunk of
64-128 suit an H100/H200 with H = 128, hence the defaults of 128 (the reference's 512 would starve the
registers). `scale` must be a Python float (it is baked into the kernel).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lwm_core.attention.blocks import SoftmaxState, check_block_args
from lwm_core.attention.reference import MASK_VALUE

# dot_general dimension numbers for x @ y.T and x.T @ y on 2-D tiles.
_NT = (((1,), (1,)), ((), ()))
_TN = (((0,), (0,)), ((), ()))


def _check_triton_tiles(cq: int, ck: int, H: int):
    """Triton tensors must have power-of-two sizes and tl.dot needs every dimension >= 16."""
    for name, value in (("q_chunk", cq), ("k_chunk", ck), ("head dim H", H)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"pallas_gpu needs {name} to be a power of two >= 16 (Triton tiles), got {value}")


def _visible(qp, qs, kp, ks, causal: bool):
    """(tq, tk) visibility of keys to queries: same segment, and not in the future under causal."""
    mask = qs[:, None] == ks[None, :]
    if causal:
        mask &= kp[None, :] <= qp[:, None]
    return mask


def _compiler_params(H: int):
    return plgpu.CompilerParams(num_warps=4 if H <= 64 else 8, num_stages=2)


# ---------------------------------------------------------------------------------------------
# forward


def _forward_kernel(q_ref, k_ref, v_ref, qp_ref, kp_ref, qs_ref, ks_ref, m_ref, l_ref, acc_ref,
                    m_out, l_out, acc_out, *, causal: bool, scale: float, ck: int):
    # q_ref (cq, H); k_ref, v_ref (S, H); qp_ref, qs_ref (cq,); kp_ref, ks_ref (S,);
    # m_ref, l_ref (cq,); acc_ref (cq, H): the carried state of this (batch, head, query tile).
    q = q_ref[...]
    q = q * jnp.asarray(scale, q.dtype)  # scaled in the input dtype, as the reference does
    qp, qs = qp_ref[...], qs_ref[...]
    qp_max = jnp.max(qp)

    def body(j, carry):
        keys = pl.ds(j * ck, ck)
        kp = kp_ref[keys]

        def update(carry):
            m, l, acc = carry
            k, v = k_ref[keys, :], v_ref[keys, :]
            s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32)  # (cq, ck)
            s = jnp.where(_visible(qp, qs, kp, ks_ref[keys], causal), s, MASK_VALUE)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            p = jnp.exp(s - m_new[:, None])
            correction = jnp.exp(m - m_new)
            pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32)
            return m_new, l * correction + jnp.sum(p, axis=1), acc * correction[:, None] + pv

        if causal:  # the whole key tile lies in the future of every query of this tile
            return lax.cond(jnp.min(kp) > qp_max, lambda c: c, update, carry)
        return update(carry)

    m, l, acc = lax.fori_loop(0, k_ref.shape[0] // ck, body, (m_ref[...], l_ref[...], acc_ref[...]))
    m_out[...] = m
    l_out[...] = l
    acc_out[...] = acc


def block_forward(q, k, v, state: SoftmaxState, *, q_pos, k_pos, q_seg, k_seg, causal: bool, scale: float,
                  q_chunk: int = 128, k_chunk: int = 128, interpret: bool = False) -> SoftmaxState:
    """Fold key/value block (k, v) into `state` for queries q (see `blocks.block_forward`)."""
    B, T, N, H, S, K, G, cq, ck = check_block_args(q, k, v, q_pos, k_pos, q_seg, k_seg, q_chunk, k_chunk,
                                                   state=state)
    _check_triton_tiles(cq, ck, H)
    kernel = functools.partial(_forward_kernel, causal=causal, scale=float(scale), ck=ck)
    grid = (B, N, T // cq)
    state_specs = [
        pl.BlockSpec((None, None, None, cq), lambda b, n, i: (b, n // G, n % G, i)),  # m
        pl.BlockSpec((None, None, None, cq), lambda b, n, i: (b, n // G, n % G, i)),  # l
        pl.BlockSpec((None, None, None, cq, H), lambda b, n, i: (b, n // G, n % G, i, 0)),  # acc
    ]
    in_specs = [
        pl.BlockSpec((None, cq, None, H), lambda b, n, i: (b, i, n, 0)),  # q
        pl.BlockSpec((None, S, None, H), lambda b, n, i: (b, 0, n // G, 0)),  # k (whole block)
        pl.BlockSpec((None, S, None, H), lambda b, n, i: (b, 0, n // G, 0)),  # v
        pl.BlockSpec((cq,), lambda b, n, i: (i,)),  # q_pos
        pl.BlockSpec((S,), lambda b, n, i: (0,)),  # k_pos
        pl.BlockSpec((None, cq), lambda b, n, i: (b, i)),  # q_seg
        pl.BlockSpec((None, S), lambda b, n, i: (b, 0)),  # k_seg
        *state_specs,
    ]
    m, l, acc = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=state_specs,
        out_shape=[jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in state],
        input_output_aliases={7: 0, 8: 1, 9: 2},  # the state is updated in place
        compiler_params=_compiler_params(H),
        interpret=interpret,
        name="lwm_block_forward",
    )(q, k, v, q_pos.astype(jnp.int32), k_pos.astype(jnp.int32), q_seg.astype(jnp.int32),
      k_seg.astype(jnp.int32), *(x.astype(jnp.float32) for x in state))
    return SoftmaxState(m, l, acc)


# ---------------------------------------------------------------------------------------------
# backward


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, kp_ref, qs_ref, ks_ref,
                dk_out, dv_out, *, causal: bool, scale: float, cq: int, G: int):
    # q_ref, do_ref (T, G, H): the G query heads of this kv head; k_ref, v_ref (ck, H);
    # lse_ref, delta_ref (G, T); qp_ref (T,), qs_ref (T,); kp_ref, ks_ref (ck,).
    k, v = k_ref[...], v_ref[...]
    kp, ks = kp_ref[...], ks_ref[...]
    kp_min = jnp.min(kp)
    nq = q_ref.shape[0] // cq

    def body(t, carry):
        g, i = lax.div(t, nq), lax.rem(t, nq)  # query head g of the group, query tile i (t >= 0)
        rows = pl.ds(i * cq, cq)
        qp = qp_ref[rows]

        def update(carry):
            dk, dv = carry
            q, do = q_ref[rows, g, :], do_ref[rows, g, :]
            s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale  # (cq, ck)
            s = jnp.where(_visible(qp, qs_ref[rows], kp, ks, causal), s, MASK_VALUE)
            p = jnp.exp(s - lse_ref[g, rows][:, None])
            dv = dv + lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32)
            dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_ref[g, rows][:, None]) * scale
            dk = dk + lax.dot_general(ds.astype(q.dtype), q, _TN, preferred_element_type=jnp.float32)
            return dk, dv

        if causal:
            return lax.cond(kp_min > jnp.max(qp), lambda c: c, update, carry)
        return update(carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, G * nq, body, (zeros, zeros))
    dk_out[...] = dk
    dv_out[...] = dv


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, kp_ref, qs_ref, ks_ref, dq_out,
               *, causal: bool, scale: float, ck: int):
    # q_ref, do_ref (cq, H); k_ref, v_ref (S, H); lse_ref, delta_ref, qp_ref, qs_ref (cq,); kp_ref, ks_ref (S,).
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    qp, qs = qp_ref[...], qs_ref[...]
    qp_max = jnp.max(qp)

    def body(j, dq):
        keys = pl.ds(j * ck, ck)
        kp = kp_ref[keys]

        def update(dq):
            k, v = k_ref[keys, :], v_ref[keys, :]
            s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
            s = jnp.where(_visible(qp, qs, kp, ks_ref[keys], causal), s, MASK_VALUE)
            p = jnp.exp(s - lse[:, None])
            dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
            ds = p * (dp - delta[:, None]) * scale
            return dq + lax.dot_general(ds.astype(k.dtype), k, (((1,), (0,)), ((), ())),
                                        preferred_element_type=jnp.float32)

        if causal:
            return lax.cond(jnp.min(kp) > qp_max, lambda d: d, update, dq)
        return update(dq)

    dq_out[...] = lax.fori_loop(0, k_ref.shape[0] // ck, body, jnp.zeros(q.shape, jnp.float32))


def block_backward(q, k, v, do, lse, delta, *, q_pos, k_pos, q_seg, k_seg, causal: bool, scale: float,
                   q_chunk: int = 128, k_chunk: int = 128, interpret: bool = False):
    """Gradient contributions of one block pair: (dq (B,T,N,H), dk, dv (B,S,K,H)), float32.

    lse, delta (B, N, T) as in `blocks.block_backward`: p = exp(s - lse), ds = p * (do.v - delta).
    """
    B, T, N, H, S, K, G, cq, ck = check_block_args(q, k, v, q_pos, k_pos, q_seg, k_seg, q_chunk, k_chunk,
                                                   do=do, lse=lse, delta=delta)
    _check_triton_tiles(cq, ck, H)
    q_pos, k_pos = q_pos.astype(jnp.int32), k_pos.astype(jnp.int32)
    q_seg, k_seg = q_seg.astype(jnp.int32), k_seg.astype(jnp.int32)
    lse, delta = lse.astype(jnp.float32), delta.astype(jnp.float32)
    f32 = jnp.float32

    # dk, dv: one program per (batch, kv head, key tile); the G query heads of the group are a
    # (T, G, H) slab of q viewed as (B, T, K, G, H) (a free reshape: heads are k * G + g).
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, causal=causal, scale=float(scale), cq=cq, G=G),
        grid=(B, K, S // ck),
        in_specs=[
            pl.BlockSpec((None, T, None, G, H), lambda b, h, j: (b, 0, h, 0, 0)),  # q
            pl.BlockSpec((None, ck, None, H), lambda b, h, j: (b, j, h, 0)),  # k
            pl.BlockSpec((None, ck, None, H), lambda b, h, j: (b, j, h, 0)),  # v
            pl.BlockSpec((None, T, None, G, H), lambda b, h, j: (b, 0, h, 0, 0)),  # do
            pl.BlockSpec((None, None, G, T), lambda b, h, j: (b, h, 0, 0)),  # lse
            pl.BlockSpec((None, None, G, T), lambda b, h, j: (b, h, 0, 0)),  # delta
            pl.BlockSpec((T,), lambda b, h, j: (0,)),  # q_pos
            pl.BlockSpec((ck,), lambda b, h, j: (j,)),  # k_pos
            pl.BlockSpec((None, T), lambda b, h, j: (b, 0)),  # q_seg
            pl.BlockSpec((None, ck), lambda b, h, j: (b, j)),  # k_seg
        ],
        out_specs=[pl.BlockSpec((None, ck, None, H), lambda b, h, j: (b, j, h, 0))] * 2,
        out_shape=[jax.ShapeDtypeStruct(k.shape, f32), jax.ShapeDtypeStruct(v.shape, f32)],
        compiler_params=_compiler_params(H),
        interpret=interpret,
        name="lwm_block_backward_dkv",
    )(q.reshape(B, T, K, G, H), k, v, do.reshape(B, T, K, G, H), lse.reshape(B, K, G, T),
      delta.reshape(B, K, G, T), q_pos, k_pos, q_seg, k_seg)

    dq = pl.pallas_call(
        functools.partial(_dq_kernel, causal=causal, scale=float(scale), ck=ck),
        grid=(B, N, T // cq),
        in_specs=[
            pl.BlockSpec((None, cq, None, H), lambda b, n, i: (b, i, n, 0)),  # q
            pl.BlockSpec((None, S, None, H), lambda b, n, i: (b, 0, n // G, 0)),  # k
            pl.BlockSpec((None, S, None, H), lambda b, n, i: (b, 0, n // G, 0)),  # v
            pl.BlockSpec((None, cq, None, H), lambda b, n, i: (b, i, n, 0)),  # do
            pl.BlockSpec((None, None, cq), lambda b, n, i: (b, n, i)),  # lse
            pl.BlockSpec((None, None, cq), lambda b, n, i: (b, n, i)),  # delta
            pl.BlockSpec((cq,), lambda b, n, i: (i,)),  # q_pos
            pl.BlockSpec((S,), lambda b, n, i: (0,)),  # k_pos
            pl.BlockSpec((None, cq), lambda b, n, i: (b, i)),  # q_seg
            pl.BlockSpec((None, S), lambda b, n, i: (b, 0)),  # k_seg
        ],
        out_specs=pl.BlockSpec((None, cq, None, H), lambda b, n, i: (b, i, n, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, f32),
        compiler_params=_compiler_params(H),
        interpret=interpret,
        name="lwm_block_backward_dq",
    )(q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg)
    return dq, dk, dv
