"""The Pallas kernels (GPU/Triton and TPU/Mosaic) against their plain-jnp twin, `blocks.py`.

Both run here in Pallas interpret mode on CPU (no accelerator in CI); the TPU kernels also in the
stricter TPU interpret mode, which simulates VMEM/SMEM and DMAs and fills uninitialised memory with
NaNs, so a missing initialisation shows up as a mismatch. Each case is one device's queries in a tiny
ring: the state after folding two key/value blocks in (the device's own block, then another
device's), and the gradient contributions of both block pairs from the final lse and delta.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from lwm_core.attention import blocks, pallas_tpu
from lwm_core.attention.dispatch import ATTENTION_IMPLS, block_fns

TPU_STRICT = "pallas_tpu_strict_interpret"  # the TPU kernels in TPU interpret mode (pltpu.InterpretParams)


@dataclasses.dataclass(frozen=True)
class Tiles:
    C: int  # sequence chunk: the global sequence is 4 chunks, a device holds 2 of them (T = S = 2C)
    q_chunk: int
    k_chunk: int
    H: int


# Triton wants power-of-two tiles >= 16; Mosaic wants q tiles % 8 and k tiles % 128 (or all of S).
TILES = {"pallas_gpu_interpret": Tiles(C=16, q_chunk=16, k_chunk=16, H=16),
         "pallas_tpu_interpret": Tiles(C=32, q_chunk=32, k_chunk=64, H=32),
         TPU_STRICT: Tiles(C=32, q_chunk=32, k_chunk=64, H=32)}
KERNELS = ["pallas_gpu_interpret", "pallas_tpu_interpret"]
ALL = [*KERNELS, TPU_STRICT]


@functools.cache
def _fns(impl):
    """Jitted (forward, backward) of `impl`, one per process: cases with equal shapes share compiles."""
    if impl == TPU_STRICT:
        fns = [functools.partial(f, interpret=pltpu.InterpretParams())
               for f in (pallas_tpu.block_forward, pallas_tpu.block_backward)]
    else:
        fns = block_fns(impl)
    static = ("causal", "scale", "q_chunk", "k_chunk")
    return tuple(jax.jit(f, static_argnames=static) for f in fns)


def _case(impl, *, causal, N, K, layout, packed, dtype=jnp.float32, tiles=None, B=2, seed=0):
    """Inputs of one ring device: (q, do, [(k, v, k_pos, k_seg)] * 2, q_pos, q_seg, kwargs)."""
    t = tiles or TILES[impl]
    C, H = t.C, t.H
    chunks = np.arange(4 * C).reshape(4, C)
    if layout == "zigzag":  # load-balanced causal layout on 2 devices: device 0 holds chunks 0 and 3
        own, other = np.concatenate([chunks[0], chunks[3]]), np.concatenate([chunks[1], chunks[2]])
    else:  # contiguous: device 1 holds chunks 2-3, the visiting block comes from device 0 (chunks 0-1)
        own, other = chunks[2:].ravel(), chunks[:2].ravel()
    # packed sequences: segment boundaries at different places in each row of the batch
    cuts = np.array([[C // 2, 3 * C - 3], [2 * C + 5, 4 * C]])[:B] if packed else np.full((B, 2), 4 * C)
    seg = (np.arange(4 * C)[None, :] >= cuts[:, :1]).astype(np.int32) + (np.arange(4 * C)[None, :] >= cuts[:, 1:])
    keys = jax.random.split(jax.random.key(seed), 6)
    T = S = 2 * C
    q = jax.random.normal(keys[0], (B, T, N, H), jnp.float32).astype(dtype)
    do = jax.random.normal(keys[1], (B, T, N, H), jnp.float32).astype(dtype)
    kv_blocks = []
    for i, pos in enumerate((own, other)):
        k = jax.random.normal(keys[2 + 2 * i], (B, S, K, H), jnp.float32).astype(dtype)
        v = jax.random.normal(keys[3 + 2 * i], (B, S, K, H), jnp.float32).astype(dtype)
        kv_blocks.append((k, v, jnp.asarray(pos, jnp.int32), jnp.asarray(seg[:, pos])))
    kw = dict(causal=causal, scale=H ** -0.5, q_chunk=t.q_chunk, k_chunk=t.k_chunk)
    return q, do, kv_blocks, jnp.asarray(own, jnp.int32), jnp.asarray(seg[:, own]), kw


def _run(fns, q, do, kv_blocks, q_pos, q_seg, kw, lse=None, delta=None):
    """-> (states after each block, [(dq, dk, dv) per block], out, lse, delta) with functions `fns`.

    lse/delta default to this implementation's own; the kernels are compared with the reference's
    so that both backward passes see identical inputs."""
    forward, backward = fns
    B, T, N, H = q.shape
    K = kv_blocks[0][0].shape[2]
    state = blocks.init_state(B, K, N // K, T, H)
    states = []
    for k, v, k_pos, k_seg in kv_blocks:
        state = forward(q, k, v, state, q_pos=q_pos, k_pos=k_pos, q_seg=q_seg, k_seg=k_seg, **kw)
        states.append(state)
    out, own_lse = blocks.finalize(state, q.dtype)
    if lse is None:
        lse = own_lse
        delta = jnp.einsum("btnh,btnh->bnt", do.astype(jnp.float32), out.astype(jnp.float32))
    grads = [backward(q, k, v, do, lse, delta, q_pos=q_pos, k_pos=k_pos, q_seg=q_seg, k_seg=k_seg, **kw)
             for k, v, k_pos, k_seg in kv_blocks]
    return states, grads, out, lse, delta


def _close(got, want, dtype):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    if dtype == jnp.float32:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:  # bf16 inputs, f32 accumulation: within 1% of the largest reference value
        assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max(), np.abs(got - want).max()


def _check(impl, dtype=jnp.float32, **case):
    q, do, kv_blocks, q_pos, q_seg, kw = _case(impl, dtype=dtype, **case)
    want_states, want_grads, _, lse, delta = _run(_fns("jax"), q, do, kv_blocks, q_pos, q_seg, kw)
    got_states, got_grads, *_ = _run(_fns(impl), q, do, kv_blocks, q_pos, q_seg, kw, lse, delta)
    for got, want in zip(got_states, want_states):
        for name, g, w in zip(("m", "l", "acc"), got, want):
            assert g.shape == w.shape and g.dtype == jnp.float32, name
            _close(g, w, dtype)
    for got, want in zip(got_grads, want_grads):
        for name, g, w in zip(("dq", "dk", "dv"), got, want):
            assert g.shape == w.shape and g.dtype == jnp.float32, name
            _close(g, w, dtype)
    # the case is not vacuous: both blocks contributed (causal: the visiting block is partly visible)
    assert all(float(jnp.abs(g[1]).max()) > 1e-3 for g in want_grads)


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("causal,N,K,layout,packed", [
    (True, 4, 2, "zigzag", True),  # GQA, zigzag chunks (q_pos = 0..C-1, 3C..4C-1), packed sequences
    (False, 2, 2, "contiguous", False),  # bidirectional, MHA, contiguous shards
    pytest.param(True, 2, 2, "contiguous", False, marks=pytest.mark.slow),  # causal, MHA
    pytest.param(False, 4, 2, "zigzag", True, marks=pytest.mark.slow),  # bidirectional, GQA, packed
])
def test_kernel_matches_reference(impl, causal, N, K, layout, packed):
    _check(impl, causal=causal, N=N, K=K, layout=layout, packed=packed)


def test_tpu_kernel_in_tpu_interpret_mode():
    _check(TPU_STRICT, causal=True, N=4, K=2, layout="zigzag", packed=True)


@pytest.mark.parametrize("impl", KERNELS)
def test_kernel_matches_reference_bf16(impl):
    _check(impl, dtype=jnp.bfloat16, causal=True, N=4, K=2, layout="zigzag", packed=True, seed=1)


@pytest.mark.parametrize("impl", ["pallas_tpu_interpret", pytest.param(TPU_STRICT, marks=pytest.mark.slow)])
def test_tpu_kernel_several_key_tiles(impl):
    """k_chunk 128 < S = 256: key tiles skipped inside one block (the small TPU cases have one tile)."""
    _check(impl, causal=True, N=2, K=1, layout="zigzag", packed=True, B=1,
           tiles=Tiles(C=128, q_chunk=64, k_chunk=128, H=16))


@pytest.mark.parametrize("impl", ALL)
def test_future_block_leaves_state_unchanged(impl):
    """A key block wholly after the queries (causal) adds nothing: state and gradients untouched.

    Its keys and values are NaN, so this also checks that hidden tiles are skipped, not masked
    (a masked tile would still multiply NaN values by zero probabilities)."""
    q, do, kv_blocks, q_pos, q_seg, kw = _case(impl, causal=True, N=4, K=2, layout="contiguous", packed=True)
    forward, backward = _fns(impl)
    (B, T, N, H), K = q.shape, 2
    k, v, _, k_seg = kv_blocks[0]  # the device's own block: positions 2C..4C, like its queries
    own = forward(q, k, v, blocks.init_state(B, K, N // K, T, H), q_pos=q_pos, k_pos=q_pos, q_seg=q_seg,
                  k_seg=k_seg, **kw)
    future = q_pos + T  # positions 4C..6C: later than every query
    k, v = jnp.full_like(k, jnp.nan), jnp.full_like(v, jnp.nan)
    after = forward(q, k, v, own, q_pos=q_pos, k_pos=future, q_seg=q_seg, k_seg=k_seg, **kw)
    for a, b in zip(after, own):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out, lse = blocks.finalize(own, q.dtype)
    delta = jnp.einsum("btnh,btnh->bnt", do, out)
    for g in backward(q, k, v, do, lse, delta, q_pos=q_pos, k_pos=future, q_seg=q_seg, k_seg=k_seg, **kw):
        assert not np.asarray(g).any()


def test_block_fns_selects_implementation():
    assert block_fns("jax") == (blocks.block_forward, blocks.block_backward)
    assert block_fns("auto") == (blocks.block_forward, blocks.block_backward)  # CPU: the reference
    from lwm_core.attention import pallas_gpu, pallas_tpu

    assert block_fns("pallas_gpu") == (pallas_gpu.block_forward, pallas_gpu.block_backward)
    assert block_fns("pallas_tpu") == (pallas_tpu.block_forward, pallas_tpu.block_backward)
    forward, backward = block_fns("pallas_tpu_interpret")
    assert forward.func is pallas_tpu.block_forward and forward.keywords == {"interpret": True}
    with pytest.raises(ValueError, match=r"'triton'.*auto, jax, pallas_gpu"):
        block_fns("triton")
    assert set(ATTENTION_IMPLS) == {"auto", "jax", *KERNELS, "pallas_gpu", "pallas_tpu"}


@pytest.mark.parametrize("impl,kw,match", [
    ("pallas_gpu_interpret", dict(q_chunk=24), "q_chunk to be a power of two >= 16.*got 24"),
    ("pallas_gpu_interpret", dict(q_chunk=32), "block length 48 is not divisible by the chunk size 32"),
    ("pallas_tpu_interpret", dict(k_chunk=8), "k_chunk to be a multiple of 128 or all of S=48, got 8"),
    ("pallas_tpu_interpret", dict(q_chunk=4), r"q_chunk to be a multiple of 8 \(float32\) or all of T=48, got 4"),
    ("pallas_tpu_interpret", dict(k_pos=jnp.arange(47)), r"k_pos has shape \(47,\), expected \(48,\)"),
])
def test_bad_arguments_raise_with_values(impl, kw, match):
    B, T, N, K, H = 1, 48, 2, 1, 16
    q, k = jnp.zeros((B, T, N, H)), jnp.zeros((B, T, K, H))
    args = dict(q_pos=jnp.arange(T), k_pos=jnp.arange(T), q_seg=jnp.zeros((B, T), jnp.int32),
                k_seg=jnp.zeros((B, T), jnp.int32), causal=True, scale=0.25, q_chunk=48, k_chunk=48)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        block_fns(impl)[0](q, k, k, blocks.init_state(B, K, N // K, T, H), **args)
