"""Ring attention against dense attention on 8 fake CPU devices: outputs, gradients, layouts, balance."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, free_port
from lwm_core.attention.blocks import block_forward, finalize, init_state
from lwm_core.attention.layout import inverse, order, unmasked_work, zigzag_order
from lwm_core.attention.reference import dense_attention
from lwm_core.attention.ring import ring_attention
from lwm_core.parallel.mesh import make_mesh

B, T, N, K, H = 2, 64, 4, 2, 8


def _inputs(dtype=jnp.float32, kv_heads=K, seed=0):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(B, T, N, H)), dtype)
    k = jnp.asarray(r.normal(size=(B, T, kv_heads, H)), dtype)
    v = jnp.asarray(r.normal(size=(B, T, kv_heads, H)), dtype)
    seg = jnp.asarray(np.repeat([[1] * 40 + [2] * 17 + [3] * 7], B, 0), jnp.int32)  # three packed examples
    return q, k, v, seg


def _ring_fn(mesh, sp, layout, causal, packed):
    perm = order(layout, T, sp)
    perm = np.arange(T) if perm is None else perm
    inv = inverse(perm)

    def f(q, k, v, seg):
        out = ring_attention(q[:, perm], k[:, perm], v[:, perm], mesh=mesh, positions=perm,
                             segment_ids=seg[:, perm] if packed else None, causal=causal, q_chunk=4, k_chunk=8)
        return out[:, inv]

    return jax.jit(f)


def _with_vjp(f, q, k, v, do):
    """f(q, k, v) and its vjp of `do`, as one jitted program. Run op by op, the dense reference and its
    gradient compiled hundreds of one-op programs (test_ring_matches_dense and the causal-block test:
    58 s op by op, 43 s jitted)."""

    def both(q, k, v, do):
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(do)

    return jax.jit(both)(q, k, v, do)


@pytest.mark.parametrize("sp", [1, 2, 4, 8])
@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_ring_matches_dense(sp, layout):
    mesh = make_mesh(f"1,{8 // sp},1,{sp}")
    for causal, packed, kv_heads in [(True, True, K), (False, False, N), (True, False, 1)]:
        q, k, v, seg = _inputs(kv_heads=kv_heads)
        dense_seg = seg if packed else None
        ref = functools.partial(dense_attention, q_seg=dense_seg, k_seg=dense_seg, causal=causal)
        do = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
        out, grads = _with_vjp(functools.partial(_ring_fn(mesh, sp, layout, causal, packed), seg=seg), q, k, v, do)
        expected, ref_grads = _with_vjp(ref, q, k, v, do)
        assert float(jnp.abs(out - expected).max()) <= 1e-5
        for got, want in zip(grads, ref_grads):
            assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) <= 1e-4


def test_ring_bf16():
    mesh = make_mesh("1,2,1,4")
    q, k, v, seg = _inputs(jnp.bfloat16)
    out = _ring_fn(mesh, 4, "zigzag", True, True)(q, k, v, seg).astype(jnp.float32)
    f32 = lambda x: x.astype(jnp.float32)
    expected = dense_attention(f32(q), f32(k), f32(v), q_seg=seg, k_seg=seg)
    assert float(jnp.abs(out - expected).max() / jnp.abs(expected).max()) <= 1e-2


def test_block_state_gives_dense_log_sum_exp():
    q, k, v, seg = _inputs()
    pos = jnp.arange(T)
    state = init_state(B, K, N // K, T, H)
    for part in (slice(32, 64), slice(0, 32)):  # any order of blocks
        state = block_forward(q, k[:, part], v[:, part], state, q_pos=pos, k_pos=pos[part], q_seg=seg,
                              k_seg=seg[:, part], causal=True, scale=H ** -0.5, q_chunk=16, k_chunk=8)
    out, lse = finalize(state, jnp.float32)
    ref, ref_lse = dense_attention(q, k, v, q_seg=seg, k_seg=seg, return_lse=True)
    assert float(jnp.abs(out - ref).max()) <= 1e-5 and float(jnp.abs(lse - ref_lse).max()) <= 1e-5


@pytest.mark.parametrize("sp", [2, 4, 8, 16])
def test_zigzag_balances_causal_work(sp):
    length = 2 * sp * 64
    zigzag = unmasked_work(zigzag_order(length, sp), sp)
    contiguous = unmasked_work(np.arange(length), sp)
    per_step_balance = zigzag.max(0) / zigzag.mean(0)
    assert per_step_balance.max() <= 1.05
    assert zigzag.sum() == contiguous.sum()  # the same work, only spread differently
    if sp == 8:
        assert contiguous.max(0).sum() / contiguous.mean(0).sum() > 1.8  # why the zigzag exists



@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path):
    """2 processes x 4 CPU devices over gloo give the ring outputs of 1 process x 8 devices."""
    script = ROOT / "tests" / "attention" / "multiprocess_ring.py"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    procs = [subprocess.Popen([sys.executable, str(script), str(port), "2", str(i), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), logs
    single = subprocess.run([sys.executable, str(script), "0", "1", "0", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr
    two = np.load(tmp_path / "ring_2proc.npy")
    one = np.load(tmp_path / "ring_1proc.npy")
    np.testing.assert_allclose(two, one, atol=1e-6)
    assert np.abs(one).max() > 0.1


def test_sharded_cache_attention_and_writes():
    from lwm_core.attention.reference import cached_attention
    from lwm_core.attention.ring import sharded_cached_attention, write_sharded_cache

    r = np.random.default_rng(2)
    S, G = 64, N // K
    mesh = make_mesh("1,1,1,8")
    k = jnp.asarray(r.normal(size=(B * K, S, H)), jnp.float32)
    v = jnp.asarray(r.normal(size=(B * K, S, H)), jnp.float32)
    q = jnp.asarray(r.normal(size=(B, K, G, H)), jnp.float32)
    # row 0 left-padded by 3 slots, both rows filled up to slot 39
    seg = jnp.asarray((np.arange(S)[None] >= np.array([[3], [0]])) & (np.arange(S) < 40), jnp.int32)
    f = jax.jit(lambda q, k, v, s, slot: sharded_cached_attention(q, k, v, mesh=mesh, q_slot=slot, k_seg=s))
    for slot in (39, 5):
        got = f(q, k, v, seg, jnp.int32(slot))
        want = cached_attention(q, k, v, q_slot=slot, k_seg=seg)
        assert float(jnp.abs(got - want).max()) <= 1e-5
    write = jax.jit(lambda c, x, s: write_sharded_cache(c, x, s, mesh=mesh))
    for slot in (0, 37, 63):
        out = write(k, jnp.full((B * K, 1, H), 7.0), jnp.int32(slot))
        np.testing.assert_array_equal(np.asarray(out), np.asarray(k.at[:, slot].set(7.0)))
        assert len(out.sharding.device_set) == 8


@pytest.mark.parametrize("mesh, layout", [("1,1,1,8", "zigzag"), ("1,2,1,4", "zigzag"), ("1,2,1,4", "contiguous")])
def test_fixture_logits_with_ring_attention(reference, mesh, layout):
    import lwm_core

    config = reference["config"].replace(sequence_layout=layout, query_chunk_size=4, key_chunk_size=4)
    model = lwm_core.load_model(f"params::{reference['params']}", config=config, mesh=mesh)
    assert model.mesh.shape["sp"] > 1  # auto picks ring attention
    got = model.logits(reference["ids"])
    assert np.abs(got - reference["logits"]).max() <= 1e-4


@pytest.mark.parametrize("mesh", ["1,2,1,4", "1,1,2,4", "1,2,2,2"])
def test_decode_with_a_sequence_sharded_cache_equals_unsharded(mesh):
    """Prefill as a ring (contiguous) into a cache split over sp (its rows over fsdp or tp), then decode."""
    import lwm_core

    config = lwm_core.get_config("tiny", num_key_value_heads=2)
    one = lwm_core.load_model("random:tiny", config=config, mesh="1,1,1,1")
    ring = lwm_core.load_model("random:tiny", config=config, mesh=mesh)
    prompts = [list(range(5, 45)), list(range(100, 117))]
    expected = one.generate(prompts, 24)
    got = ring.generate(prompts, 24)
    np.testing.assert_array_equal(got, expected)
    state, _, _ = ring._start([prompts[0]], 8, 0.0, 0, 1.0, 0)
    spec = state.cache.k[0].sharding.spec  # (B*K, S, H): the slots really are split over sp
    assert spec[1] == "sp" and len(state.cache.k[0].sharding.device_set) == 8


@pytest.mark.parametrize("impl", ["pallas_gpu_interpret", "pallas_tpu_interpret"])
def test_ring_with_pallas_kernels_in_interpret_mode(impl):
    """The kernels inside the real ring (zigzag, packed, GQA, causal), forward and backward."""
    r = np.random.default_rng(5)
    length, heads, kv, dim = 64, 4, 2, 16
    q = jnp.asarray(r.normal(size=(1, length, heads, dim)), jnp.float32)
    k = jnp.asarray(r.normal(size=(1, length, kv, dim)), jnp.float32)
    v = jnp.asarray(r.normal(size=(1, length, kv, dim)), jnp.float32)
    seg = jnp.asarray([[1] * 40 + [2] * 24], jnp.int32)
    mesh = make_mesh("1,4,1,2")
    perm = zigzag_order(length, 2)
    inv = inverse(perm)
    chunk = 16 if impl.startswith("pallas_gpu") else 32

    def f(q, k, v):
        return ring_attention(q[:, perm], k[:, perm], v[:, perm], mesh=mesh, positions=perm,
                              segment_ids=seg[:, perm], q_chunk=chunk, k_chunk=chunk, impl=impl)[:, inv]

    do = jnp.ones(q.shape, jnp.float32)
    out, grads = _with_vjp(f, q, k, v, do)
    expected, ref_grads = _with_vjp(functools.partial(dense_attention, q_seg=seg, k_seg=seg), q, k, v, do)
    assert float(jnp.abs(out - expected).max()) <= 1e-5
    for got, want in zip(grads, ref_grads):
        assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) <= 1e-4


@pytest.mark.parametrize("length", [64, 50])
def test_causal_block_attention_matches_dense(length):
    from lwm_core.attention.causal_block import causal_block_attention

    r = np.random.default_rng(7)
    q = jnp.asarray(r.normal(size=(B, length, N, H)), jnp.float32)
    k = jnp.asarray(r.normal(size=(B, length, K, H)), jnp.float32)
    v = jnp.asarray(r.normal(size=(B, length, K, H)), jnp.float32)
    seg = jnp.asarray(np.repeat([[1] * 30 + [2] * (length - 30)], B, 0), jnp.int32)
    blocked = jax.jit(functools.partial(causal_block_attention, block=16))
    got = blocked(q, k, v, q_seg=seg, k_seg=seg)
    want = jax.jit(dense_attention)(q, k, v, q_seg=seg, k_seg=seg)
    assert float(jnp.abs(got - want).max()) <= 1e-5
    bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    got16 = blocked(bf(q), bf(k), bf(v), q_seg=seg, k_seg=seg).astype(jnp.float32)
    assert float(jnp.abs(got16 - want).max() / jnp.abs(want).max()) <= 2e-2
    # the hand-written gradient against autodiff of dense attention, with and without segments
    do = jnp.asarray(r.normal(size=(B, length, N, H)), jnp.float32)
    for s in (seg, None):
        _, grads = _with_vjp(functools.partial(causal_block_attention, q_seg=s, k_seg=s, block=16), q, k, v, do)
        _, ref_grads = _with_vjp(functools.partial(dense_attention, q_seg=s, k_seg=s), q, k, v, do)
        for got_g, want_g in zip(grads, ref_grads):
            assert float(jnp.abs(got_g - want_g).max() / jnp.abs(want_g).max()) <= 1e-5
