"""Pallas TPU (Mosaic) kernels for one ring-attention step: the same contract as `blocks.py`.

`block_forward` and `block_backward` take the arguments of `lwm_core.attention.blocks` (the
plain-`jnp` reference that tests/attention/test_pallas.py compares them with, in interpret mode on CPU: Pallas'
generic interpreter and the TPU interpret mode) plus `interpret`.

Mosaic moves whole blocks HBM -> VMEM and tiles the last two dimensions of every block by (8, 128),
so the wrapper lays the data out the way the TPU flash-attention kernels do:
- q, do (B, T, N, H) -> (B, N, T, H) and k, v (B, S, K, H) -> (B, K, S, H): a head's (tile, H) slab
  must be the two minor dimensions (the (B, T, N, H) layout would put one head on the sublane axis);
- per-row scalars (m, l, lse, delta, query positions and segments) are broadcast along 128 lanes,
  (.., T, 128), so that they are columns in the kernel without a relayout; per-key ones (positions,
  segments) are rows, (.., 8, S);
- the per-tile causal bounds (max query position of each query tile, min key position of each key
  tile) are scalar-prefetched into SMEM: the kernel skips a hidden tile with `pl.when`, and the index
  maps send the DMA of a skipped step to a block that is already (or next) in VMEM, as in the TPU
  flash-attention kernel, so hidden tiles cost neither compute nor bandwidth.

Grids: forward and dq (B, N, T/q_chunk, S/k_chunk) with the key axis innermost ("arbitrary": the
output tile stays in VMEM across it and accumulates); dk/dv (B, K, S/k_chunk, G * T/q_chunk) whose
innermost axis walks the G query heads of the kv head's group and their query tiles, so the GQA sum
happens in the VMEM accumulator. GQA maps query head n to kv head n // G in the index maps.

Tile rules (checked, with the values in the error): q_chunk a multiple of 8 (16 for bf16) or all of T;
k_chunk a multiple of 128 or all of S; H at most 128 or a multiple of 128. `scale` must be a Python
float (it is baked into the kernel).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lwm_core.attention.blocks import SoftmaxState, check_block_args
from lwm_core.attention.reference import MASK_VALUE

LANES = 128  # a vreg is (8 sublanes, 128 lanes) of 32-bit values
SUBLANES = 8
_NT = (((1,), (1,)), ((), ()))  # x @ y.T
_PARALLEL3_ARBITRARY = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _check_tpu_tiles(T: int, S: int, H: int, cq: int, ck: int, dtype):
    rows = SUBLANES * max(1, 4 // jnp.dtype(dtype).itemsize)  # 16-bit values pack 16 rows per vreg
    if cq % rows and cq != T:
        raise ValueError(f"pallas_tpu needs q_chunk to be a multiple of {rows} ({jnp.dtype(dtype).name}) or all of "
                         f"T={T}, got {cq}")
    if ck % LANES and ck != S:
        raise ValueError(f"pallas_tpu needs k_chunk to be a multiple of {LANES} or all of S={S}, got {ck}")
    if H > LANES and H % LANES:
        raise ValueError(f"pallas_tpu needs the head dim H to be <= {LANES} or a multiple of {LANES}, got {H}")




def _lanes(x, n: int):
    """(rows, 128) lane-replicated column -> (rows, n)."""
    if n <= LANES:
        return x[:, :n]
    return jnp.tile(x, (1, n // LANES))


def _column(x):
    """(..., T) -> (..., T, 128): a per-row scalar replicated along lanes."""
    return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


def _row(x):
    """(..., S) -> (..., 8, S): a per-key scalar replicated along sublanes."""
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], SUBLANES, x.shape[-1]))


def _visible(qp_ref, qs_ref, kp_ref, ks_ref, ck: int, causal: bool):
    """(cq, ck) visibility from the lane-replicated query columns and sublane-replicated key rows."""
    mask = _lanes(qs_ref[...], ck) == ks_ref[:1, :]
    if causal:
        mask &= kp_ref[:1, :] <= _lanes(qp_ref[...], ck)
    return mask


def _tile_bounds(q_pos, k_pos, cq: int, ck: int):
    """Largest query position of each query tile, smallest key position of each key tile (for SMEM)."""
    return q_pos.reshape(-1, cq).max(axis=1), k_pos.reshape(-1, ck).min(axis=1)


# ---------------------------------------------------------------------------------------------
# forward


def _forward_kernel(qmax_ref, kmin_ref, q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, m_ref, l_ref,
                    acc_ref, m_out, l_out, acc_out, *, causal: bool, scale: float):
    # q_ref (cq, H); k_ref, v_ref (ck, H); qp_ref, qs_ref (cq, 128); kp_ref, ks_ref (8, ck);
    # m, l (cq, 128) lane-replicated; acc (cq, H). The outputs stay in VMEM across the key axis j.
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _load_state():  # output blocks are not read from HBM: start them from the carried state
        m_out[...] = m_ref[...]
        l_out[...] = l_ref[...]
        acc_out[...] = acc_ref[...]

    def update():
        q = q_ref[...]
        q = q * jnp.asarray(scale, q.dtype)  # scaled in the input dtype, as the reference does
        k, v = k_ref[...], v_ref[...]
        ck, H = k.shape
        s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32)  # (cq, ck)
        s = jnp.where(_visible(qp_ref, qs_ref, kp_ref, ks_ref, ck, causal), s, MASK_VALUE)
        m_prev, l_prev = m_out[...], l_out[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1)[:, None])  # (cq, 128)
        p = jnp.exp(s - _lanes(m_next, ck))
        correction = jnp.exp(m_prev - m_next)
        l_out[...] = l_prev * correction + jnp.sum(p, axis=1)[:, None]
        m_out[...] = m_next
        pv = lax.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        acc_out[...] = acc_out[...] * _lanes(correction, H) + pv

    if causal:  # run unless the key tile lies wholly in the future of the query tile
        pl.when(kmin_ref[j] <= qmax_ref[i])(update)
    else:
        update()


def block_forward(q, k, v, state: SoftmaxState, *, q_pos, k_pos, q_seg, k_seg, causal: bool, scale: float,
                  q_chunk: int = 512, k_chunk: int = 512, interpret=False) -> SoftmaxState:
    """Fold key/value block (k, v) into `state` for queries q (see `blocks.block_forward`).

    interpret: False; True for Pallas' generic interpreter (runs anywhere, also inside shard_map); or a
    `pltpu.InterpretParams` for TPU interpret mode, which simulates VMEM/SMEM and DMAs and poisons
    uninitialised memory with NaNs (single-device calls: inside a multi-device shard_map on CPU it
    waits for the other simulated devices and can hang).
    """
    B, T, N, H, S, K, G, cq, ck = check_block_args(q, k, v, q_pos, k_pos, q_seg, k_seg, q_chunk, k_chunk,
                                                   state=state)
    _check_tpu_tiles(T, S, H, cq, ck, q.dtype)
    q_pos, k_pos = q_pos.astype(jnp.int32), k_pos.astype(jnp.int32)
    qmax, kmin = _tile_bounds(q_pos, k_pos, cq, ck)

    def kv_tile(i, j, qmax_ref, kmin_ref):
        # A skipped step asks for key tile 0, which the next query tile starts with: no extra DMA.
        return lax.select(kmin_ref[j] <= qmax_ref[i], j, 0) if causal else j

    row = lambda b, n, i, j, *_: (b, n, i, 0)  # noqa: E731  (per-query-tile blocks)
    kv = lambda b, n, i, j, *r: (b, lax.div(n, G), kv_tile(i, j, *r), 0)  # noqa: E731  (kv head n // G)
    in_specs = [
        pl.BlockSpec((None, None, cq, H), row),  # q (B, N, T, H)
        pl.BlockSpec((None, None, ck, H), kv),  # k (B, K, S, H)
        pl.BlockSpec((None, None, ck, H), kv),  # v
        pl.BlockSpec((cq, LANES), lambda b, n, i, j, *_: (i, 0)),  # q_pos (T, 128)
        pl.BlockSpec((None, cq, LANES), lambda b, n, i, j, *_: (b, i, 0)),  # q_seg (B, T, 128)
        pl.BlockSpec((SUBLANES, ck), lambda b, n, i, j, *r: (0, kv_tile(i, j, *r))),  # k_pos (8, S)
        pl.BlockSpec((None, SUBLANES, ck), lambda b, n, i, j, *r: (b, 0, kv_tile(i, j, *r))),  # k_seg (B, 8, S)
    ]
    state_specs = [pl.BlockSpec((None, None, cq, LANES), row), pl.BlockSpec((None, None, cq, LANES), row),
                   pl.BlockSpec((None, None, cq, H), row)]
    # state (B, K, G, T[, H]) -> (B, N, T[, H]) is a free reshape (head n = k * G + g)
    m = _column(state.m.reshape(B, N, T).astype(jnp.float32))
    l = _column(state.l.reshape(B, N, T).astype(jnp.float32))
    acc = state.acc.reshape(B, N, T, H).astype(jnp.float32)
    m, l, acc = pl.pallas_call(
        functools.partial(_forward_kernel, causal=causal, scale=float(scale)),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(B, N, T // cq, S // ck), in_specs=in_specs + state_specs,
            out_specs=state_specs),
        out_shape=[jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (m, l, acc)],
        input_output_aliases={9: 0, 10: 1, 11: 2},  # argument indices count the 2 prefetched arrays
        compiler_params=_PARALLEL3_ARBITRARY,
        interpret=interpret,
        name="lwm_block_forward",
    )(qmax, kmin, q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
      _column(q_pos), _column(q_seg.astype(jnp.int32)), _row(k_pos), _row(k_seg.astype(jnp.int32)),
      m, l, acc)
    return SoftmaxState(m[..., 0].reshape(B, K, G, T), l[..., 0].reshape(B, K, G, T), acc.reshape(B, K, G, T, H))


# ---------------------------------------------------------------------------------------------
# backward


def _dkv_kernel(qmax_ref, kmin_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, qs_ref, kp_ref,
                ks_ref, dk_out, dv_out, *, causal: bool, scale: float, nq: int):
    # q, do (cq, H) of query head (kv head * G + t // nq), tile t % nq; k, v (ck, H); lse, delta (cq, 128).
    j, t = pl.program_id(2), pl.program_id(3)

    @pl.when(t == 0)
    def _zero():
        dk_out[...] = jnp.zeros(dk_out.shape, jnp.float32)
        dv_out[...] = jnp.zeros(dv_out.shape, jnp.float32)

    def update():
        q, do, k, v = q_ref[...], do_ref[...], k_ref[...], v_ref[...]
        ck = k.shape[0]
        s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale  # (cq, ck)
        s = jnp.where(_visible(qp_ref, qs_ref, kp_ref, ks_ref, ck, causal), s, MASK_VALUE)
        p = jnp.exp(s - _lanes(lse_ref[...], ck))
        dv_out[...] += lax.dot(p.T.astype(do.dtype), do, preferred_element_type=jnp.float32)
        dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
        ds = p * (dp - _lanes(delta_ref[...], ck)) * scale
        dk_out[...] += lax.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)

    if causal:
        pl.when(kmin_ref[j] <= qmax_ref[lax.rem(t, nq)])(update)
    else:
        update()


def _dq_kernel(qmax_ref, kmin_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, qs_ref, kp_ref,
               ks_ref, dq_out, *, causal: bool, scale: float):
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _zero():
        dq_out[...] = jnp.zeros(dq_out.shape, jnp.float32)

    def update():
        q, do, k, v = q_ref[...], do_ref[...], k_ref[...], v_ref[...]
        ck = k.shape[0]
        s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
        s = jnp.where(_visible(qp_ref, qs_ref, kp_ref, ks_ref, ck, causal), s, MASK_VALUE)
        p = jnp.exp(s - _lanes(lse_ref[...], ck))
        dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
        ds = p * (dp - _lanes(delta_ref[...], ck)) * scale
        dq_out[...] += lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    if causal:
        pl.when(kmin_ref[j] <= qmax_ref[i])(update)
    else:
        update()


def block_backward(q, k, v, do, lse, delta, *, q_pos, k_pos, q_seg, k_seg, causal: bool, scale: float,
                   q_chunk: int = 512, k_chunk: int = 512, interpret=False):
    """Gradient contributions of one block pair: (dq (B,T,N,H), dk, dv (B,S,K,H)), float32.

    lse, delta (B, N, T) as in `blocks.block_backward`: p = exp(s - lse), ds = p * (do.v - delta).
    """
    B, T, N, H, S, K, G, cq, ck = check_block_args(q, k, v, q_pos, k_pos, q_seg, k_seg, q_chunk, k_chunk,
                                                   do=do, lse=lse, delta=delta)
    _check_tpu_tiles(T, S, H, cq, ck, q.dtype)
    nq, nk = T // cq, S // ck
    q_pos, k_pos = q_pos.astype(jnp.int32), k_pos.astype(jnp.int32)
    qmax, kmin = _tile_bounds(q_pos, k_pos, cq, ck)
    f32 = jnp.float32
    # (B, T, N, H) -> (B, N, T, H) etc.; per-row scalars lane-replicated, per-key ones sublane-replicated
    args = (qmax, kmin, q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
            do.transpose(0, 2, 1, 3), _column(lse.astype(f32)), _column(delta.astype(f32)),
            _column(q_pos), _column(q_seg.astype(jnp.int32)), _row(k_pos), _row(k_seg.astype(jnp.int32)))
    kernel_args = dict(causal=causal, scale=float(scale))

    # dk, dv: grid (b, kv head h, key tile j, t = g * nq + i) for query head h * G + g, query tile i.
    def q_block(b, h, j, t, qmax_ref, kmin_ref):
        g, i = lax.div(t, nq), lax.rem(t, nq)
        if causal:
            # A skipped step re-asks for the block of the step before the hidden run (the last tile
            # of the previous head of the group; hidden tiles come first under causal), so no DMA.
            run = kmin_ref[j] <= qmax_ref[i]
            g, i = lax.select(run, g, lax.rem(g + G - 1, G)), lax.select(run, i, nq - 1)
        return b, h * G + g, i

    q_spec = lambda width: pl.BlockSpec(  # noqa: E731
        (None, None, cq, width), lambda *a: (*q_block(*a), 0))
    dkv_specs = [
        q_spec(H),  # q
        pl.BlockSpec((None, None, ck, H), lambda b, h, j, t, *_: (b, h, j, 0)),  # k
        pl.BlockSpec((None, None, ck, H), lambda b, h, j, t, *_: (b, h, j, 0)),  # v
        q_spec(H),  # do
        q_spec(LANES),  # lse
        q_spec(LANES),  # delta
        pl.BlockSpec((cq, LANES), lambda *a: (q_block(*a)[2], 0)),  # q_pos
        pl.BlockSpec((None, cq, LANES), lambda *a: (a[0], q_block(*a)[2], 0)),  # q_seg
        pl.BlockSpec((SUBLANES, ck), lambda b, h, j, t, *_: (0, j)),  # k_pos
        pl.BlockSpec((None, SUBLANES, ck), lambda b, h, j, t, *_: (b, 0, j)),  # k_seg
    ]
    dkv_out = pl.BlockSpec((None, None, ck, H), lambda b, h, j, t, *_: (b, h, j, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, nq=nq, **kernel_args),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(B, K, nk, G * nq), in_specs=dkv_specs, out_specs=[dkv_out, dkv_out]),
        out_shape=[jax.ShapeDtypeStruct((B, K, S, H), f32)] * 2,
        compiler_params=_PARALLEL3_ARBITRARY,
        interpret=interpret,
        name="lwm_block_backward_dkv",
    )(*args)

    # dq: grid (b, query head n, query tile i, key tile j)
    def kv_tile(i, j, qmax_ref, kmin_ref):
        return lax.select(kmin_ref[j] <= qmax_ref[i], j, 0) if causal else j

    row = lambda b, n, i, j, *_: (b, n, i, 0)  # noqa: E731
    kv = lambda b, n, i, j, *r: (b, lax.div(n, G), kv_tile(i, j, *r), 0)  # noqa: E731
    dq_specs = [
        pl.BlockSpec((None, None, cq, H), row),  # q
        pl.BlockSpec((None, None, ck, H), kv),  # k
        pl.BlockSpec((None, None, ck, H), kv),  # v
        pl.BlockSpec((None, None, cq, H), row),  # do
        pl.BlockSpec((None, None, cq, LANES), row),  # lse
        pl.BlockSpec((None, None, cq, LANES), row),  # delta
        pl.BlockSpec((cq, LANES), lambda b, n, i, j, *_: (i, 0)),  # q_pos
        pl.BlockSpec((None, cq, LANES), lambda b, n, i, j, *_: (b, i, 0)),  # q_seg
        pl.BlockSpec((SUBLANES, ck), lambda b, n, i, j, *r: (0, kv_tile(i, j, *r))),  # k_pos
        pl.BlockSpec((None, SUBLANES, ck), lambda b, n, i, j, *r: (b, 0, kv_tile(i, j, *r))),  # k_seg
    ]
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, **kernel_args),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(B, N, nq, nk), in_specs=dq_specs,
            out_specs=pl.BlockSpec((None, None, cq, H), row)),
        out_shape=jax.ShapeDtypeStruct((B, N, T, H), f32),
        compiler_params=_PARALLEL3_ARBITRARY,
        interpret=interpret,
        name="lwm_block_backward_dq",
    )(*args)
    # back to the contract's layouts: dq (B, T, N, H); dk, dv (B, S, K, H)
    return dq.transpose(0, 2, 1, 3), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)
