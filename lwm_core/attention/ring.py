"""Ring attention (Liu, Zaharia & Abbeel 2023): exact attention over a sequence sharded on `sp`.

Inside `shard_map`, each device keeps its query block and passes its key/value block around the ring
with `ppermute`; after N steps every query has seen every key. The online-softmax state is carried in
float32; masks use global token indices (positions travel with their block), so causality is right
whatever the layout, and fully masked tiles are skipped. The send of the next block is issued before
the current block is computed so that XLA can overlap communication with compute.

The backward pass is a custom VJP that passes (k, v, dk, dv) around the same ring: each device adds
its queries' contribution to the visiting block's dk/dv, and after N steps the block is home with its
full gradient. Memory per device never depends on the total length, only on the local block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lwm_core.attention import blocks
from lwm_core.attention.dispatch import block_fns, ring_step
from lwm_core.parallel.mesh import CACHE_AXES, logical_spec

AXIS = "sp"


def _ring_perm(n: int):
    return [(j, (j + 1) % n) for j in range(n)]


def _local_ring_forward(q, k, v, q_pos, k_pos, q_seg, k_seg, *, causal, n, q_chunk, k_chunk, impl):
    forward, _ = block_fns(impl)
    B, T, N, H = q.shape
    K = k.shape[2]
    scale = H ** -0.5
    state = blocks.init_state(B, K, N // K, T, H)

    def step(carry, _):
        state, k, v, kp, ks = carry
        # Send first: the transfer of the next block overlaps with this block's compute.
        nxt = jax.lax.ppermute((k, v, kp, ks), AXIS, _ring_perm(n))

        def compute(state):
            return forward(q, k, v, state, q_pos=q_pos, k_pos=kp, q_seg=q_seg, k_seg=ks, causal=causal,
                           scale=scale, q_chunk=q_chunk, k_chunk=k_chunk)

        if causal:  # the whole visiting block lies in the future of every local query
            state = jax.lax.cond(kp.min() > q_pos.max(), lambda s: s, compute, state)
        else:
            state = compute(state)
        return (state, *nxt), None

    (state, *_), _ = jax.lax.scan(step, (state, k, v, k_pos, k_seg), None, length=n)
    return blocks.finalize(state, q.dtype)


def _local_ring_backward(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, do, *, causal, n, q_chunk, k_chunk,
                         impl):
    _, backward = block_fns(impl)
    H = q.shape[-1]
    scale = H ** -0.5
    delta = jnp.einsum("btnh,btnh->bnt", do.astype(jnp.float32), out.astype(jnp.float32))
    dq = jnp.zeros(q.shape, jnp.float32)

    def step(carry, _):
        dq, k, v, dk, dv, kp, ks = carry

        def compute(_):
            return backward(q, k, v, do, lse, delta, q_pos=q_pos, k_pos=kp, q_seg=q_seg, k_seg=ks,
                            causal=causal, scale=scale, q_chunk=q_chunk, k_chunk=k_chunk)

        zeros = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
        if causal:
            dqi, dki, dvi = jax.lax.cond(kp.min() > q_pos.max(), lambda _: zeros, compute, None)
        else:
            dqi, dki, dvi = compute(None)
        # dk/dv travel with their block: after n steps they are back at the owner, complete.
        k, v, dk, dv, kp, ks = jax.lax.ppermute((k, v, dk + dki, dv + dvi, kp, ks), AXIS, _ring_perm(n))
        return (dq + dqi, k, v, dk, dv, kp, ks), None

    init = (dq, k, v, jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32), k_pos, k_seg)
    (dq, _, _, dk, dv, _, _), _ = jax.lax.scan(step, init, None, length=n)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _ring(q, k, v, q_pos, k_pos, q_seg, k_seg, causal, n, q_chunk, k_chunk, impl):
    out, _ = _local_ring_forward(q, k, v, q_pos, k_pos, q_seg, k_seg, causal=causal, n=n, q_chunk=q_chunk,
                                 k_chunk=k_chunk, impl=impl)
    return out


def _ring_fwd(q, k, v, q_pos, k_pos, q_seg, k_seg, causal, n, q_chunk, k_chunk, impl):
    out, lse = _local_ring_forward(q, k, v, q_pos, k_pos, q_seg, k_seg, causal=causal, n=n, q_chunk=q_chunk,
                                   k_chunk=k_chunk, impl=impl)
    out, lse = checkpoint_name(out, "attention"), checkpoint_name(lse, "attention")  # remat dots_attention
    return out, (q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)


def _ring_bwd(causal, n, q_chunk, k_chunk, impl, residuals, do):
    q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = residuals
    dq, dk, dv = _local_ring_backward(q, k, v, q_pos, k_pos, q_seg, k_seg, out, lse, do, causal=causal, n=n,
                                      q_chunk=q_chunk, k_chunk=k_chunk, impl=impl)
    return dq, dk, dv, None, None, None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q, k, v, *, mesh: Mesh, positions, segment_ids=None, causal: bool = True,
                   q_chunk: int = 512, k_chunk: int = 512, impl: str = "auto"):
    """q (B, T, N, H), k/v (B, T, K, H) sharded over `sp` along T -> (B, T, N, H).

    positions (T,) are the global token indices in the order the sequence is laid out (for the zigzag
    layout, the permuted indices); segment_ids (B, T) keep packed examples apart.
    """
    B, T, N, H = q.shape
    n = mesh.shape[AXIS]
    # The kernels of `impl` on this backend and the tiles they take (the dispatcher's rule: a plan of
    # dispatch.choose passes through unchanged).
    impl, q_chunk, k_chunk = ring_step(impl, backend=jax.default_backend(), q_chunk=q_chunk, k_chunk=k_chunk)
    if segment_ids is None:
        segment_ids = jnp.zeros((B, T), jnp.int32)
    positions = jnp.asarray(positions, jnp.int32)
    qspec = logical_spec(("batch", "seq", "act_heads", None), mesh, q.shape)
    kspec = logical_spec(("batch", "seq", "act_heads", None), mesh, k.shape)
    sspec = logical_spec(("batch", "seq"), mesh, segment_ids.shape)
    pspec = P(AXIS)
    # jax.shard_map does not reshard its inputs: put them where the specs say first.
    place = lambda x, spec: jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
    q, k, v = place(q, qspec), place(k, kspec), place(v, kspec)
    segment_ids, positions = place(segment_ids, sspec), place(positions, pspec)

    def local(q, k, v, pos, seg):
        return _ring(q, k, v, pos, pos, seg, seg, causal, n, min(q_chunk, q.shape[1]), min(k_chunk, k.shape[1]),
                     impl)

    return jax.shard_map(local, mesh=mesh, in_specs=(qspec, kspec, kspec, pspec, sspec), out_specs=qspec,
                         check_vma=False)(q, k, v, positions, segment_ids)


# ------------------------------------------------------------------------- decoding with a sharded cache

def sharded_cached_attention(q, k_cache, v_cache, *, mesh: Mesh, q_slot, k_seg):
    """`reference.cached_attention` with the cache's slots sharded over `sp`.

    q (B, K, G, H) is replicated over `sp`; k_cache/v_cache (B*K, S, H) and k_seg (B, S) are sharded on
    S. Each device attends to its own slots and produces a partial (max, sum, weighted values); the
    partials are combined with one `pmax` and one `psum` (all-reduces: O(log N) steps), never a ring,
    so a decode step costs one local pass over 1/N of the cache plus two small collectives.
    """
    B, K, G, H = q.shape
    # The cache's rows (B*K: each row's kv heads) stay split over the batch axes as the cache is made
    # (generate.decode.empty_cache): a spec without them would gather the whole cache over dp x fsdp at
    # every step, and hand it back replicated (7B at 128K on 1,8,1,8: 15 GB sent per token).
    cspec = logical_spec(CACHE_AXES, mesh, k_cache.shape)
    xspec = P(cspec[0], None, None)
    place = lambda x, spec: jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
    # (B, K, G, H) -> (B*K, G, H): query rows as the cache's; the visible slots per cache row
    qs = place((q * jnp.asarray(H ** -0.5, q.dtype)).reshape(B * K, G, H), xspec)
    visible = place(jnp.repeat(k_seg == 1, K, axis=0), P(cspec[0], cspec[1]))  # (B*K, S)
    k_cache, v_cache = place(k_cache, cspec), place(v_cache, cspec)

    def local(qs, k, v, visible, q_slot):
        s_local = k.shape[1]
        k_slot = jax.lax.axis_index(AXIS) * s_local + jnp.arange(s_local, dtype=jnp.int32)
        scores = jnp.einsum("xgh,xsh->xgs", qs, k, preferred_element_type=jnp.float32)
        scores = jnp.where((visible & (k_slot <= q_slot))[:, None, :], scores, blocks.MASK_VALUE)
        m = jax.lax.pmax(scores.max(-1), AXIS)  # (B*K, G), the global max
        p = jnp.exp(scores - m[..., None])
        total = jax.lax.psum(p.sum(-1), AXIS)
        acc = jax.lax.psum(jnp.einsum("xgs,xsh->xgh", p.astype(v.dtype), v, preferred_element_type=jnp.float32),
                           AXIS)
        return (acc / total[..., None]).astype(qs.dtype)

    out = jax.shard_map(local, mesh=mesh, in_specs=(xspec, cspec, cspec, P(cspec[0], cspec[1]), P()),
                        out_specs=xspec, check_vma=False)(qs, k_cache, v_cache, visible, jnp.asarray(q_slot, jnp.int32))
    return out.reshape(B, K, G, H)


def write_sharded_cache(cache, new, start, *, mesh: Mesh):
    """cache (B*K, S, H) sharded over `sp` on S; write `new` (B*K, T, H) at slots [start, start + T) on
    the device that owns them, without gathering the cache. The T slots must lie in one shard (decode
    writes one slot at a time)."""
    cspec = logical_spec(CACHE_AXES, mesh, cache.shape)
    nspec = P(cspec[0], None, None)
    new = jax.lax.with_sharding_constraint(new, jax.sharding.NamedSharding(mesh, nspec))

    def local(cache, new, start):
        s_local = cache.shape[1]
        offset = start - jax.lax.axis_index(AXIS) * s_local
        inside = (offset >= 0) & (offset < s_local)
        return jax.lax.cond(inside, lambda c: jax.lax.dynamic_update_slice(
            c, new.astype(c.dtype), (0, jnp.clip(offset, 0, s_local - 1), 0)), lambda c: c, cache)

    return jax.shard_map(local, mesh=mesh, in_specs=(cspec, nspec, P()), out_specs=cspec, check_vma=False)(
        cache, new, jnp.asarray(start, jnp.int32))
