"""The fused CPU attention kernel (lwm_core/attention/cpu_flash.py, cpu_attention.cc) against its reference,
dense attention: outputs and gradients, over causal and not, GQA, packed segments, ragged lengths, a
cache before the queries, tiles that do not divide, bf16; in the model (the dispatcher's cpu_flash); and
the fallback without a compiler."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lwm_core
from helpers import ROOT
from lwm_core import cpu_decode
from lwm_core.attention.cpu_flash import flash_attention
from lwm_core.attention.reference import dense_attention
from lwm_core.model import llama

pytestmark = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")),
                                reason="no C++ compiler to build the kernel")


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert cpu_decode.available(), cpu_decode.unavailable_reason()


def _inputs(B, T, S, N, K, H, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, N, H), np.float32)
    k, v = rng.standard_normal((2, B, S, K, H), np.float32)
    return [jnp.asarray(x, dtype) for x in (q, k, v)]


def _rel(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return np.abs(got - want).max() / np.abs(want).max()


def _segments(B, n, seed):
    """Packed rows: 1-3 sequences per row of lengths that do not fall on tiles, in order."""
    return jnp.asarray(np.sort(np.random.default_rng(seed).integers(1, 4, (B, n)), axis=1), jnp.int32)


# (B, T, S, N, K, H, causal, packed, block_q, block_k)
CASES = [
    (1, 100, 100, 4, 4, 64, True, False, 64, 256),  # one key tile, ragged query tiles
    (2, 130, 130, 4, 2, 32, True, False, 16, 32),  # GQA 2, several tiles each way
    (2, 130, 130, 6, 2, 40, True, True, 16, 48),  # packed segments, H not a multiple of 16
    (1, 77, 77, 4, 1, 64, False, False, 20, 32),  # not causal, multi-query (K = 1)
    (2, 77, 77, 4, 2, 24, False, True, 32, 32),  # not causal with segments
    (2, 300, 300, 8, 8, 64, True, True, 64, 256),  # the default tiles, a partial last tile each way
    (1, 513, 513, 2, 1, 128, True, False, 64, 256),  # head dim 128 (LWM-7B's)
]


@pytest.mark.parametrize("B, T, S, N, K, H, causal, packed, block_q, block_k", CASES)
def test_matches_dense_attention_and_its_gradient(B, T, S, N, K, H, causal, packed, block_q, block_k):
    q, k, v = _inputs(B, T, S, N, K, H)
    masks = dict(q_seg=_segments(B, T, 1), k_seg=_segments(B, T, 1)) if packed else {}
    flash = lambda q, k, v: flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k, **masks)  # noqa: E731
    dense = lambda q, k, v: dense_attention(q, k, v, causal=causal, **masks)  # noqa: E731
    assert _rel(jax.jit(flash)(q, k, v), jax.jit(dense)(q, k, v)) <= 1e-5
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape, np.float32))
    grads = [jax.jit(jax.grad(lambda *x, f=f: (f(*x) * weights).sum(), argnums=(0, 1, 2)))(q, k, v)
             for f in (flash, dense)]
    for name, got, want in zip("qkv", *grads):
        assert _rel(got, want) <= 1e-4, name


def test_queries_after_a_cache():
    """Extend's shape: 8 new queries at slots 92..99 against 100 cached keys, some slots empty (segment 0)."""
    q, k, v = _inputs(2, 8, 100, 4, 2, 64)
    q_slot, k_slot = jnp.arange(92, 100, dtype=jnp.int32), jnp.arange(100, dtype=jnp.int32)
    k_seg = jnp.asarray(np.random.default_rng(3).random((2, 100)) < 0.8, jnp.int32).at[:, 92:].set(1)
    masks = dict(q_slot=q_slot, k_slot=k_slot, q_seg=jnp.ones((2, 8), jnp.int32), k_seg=k_seg)
    got = jax.jit(lambda q, k, v: flash_attention(q, k, v, block_q=4, block_k=32, **masks))(q, k, v)
    assert _rel(got, dense_attention(q, k, v, **masks)) <= 1e-5


def test_bad_shapes_say_what_they_are():
    q, k, v = _inputs(2, 8, 8, 4, 3, 16)
    with pytest.raises(ValueError, match=r"K dividing N; got q \(2, 8, 4, 16\), k \(2, 8, 3, 16\)"):
        flash_attention(q, k, v)
    q, k, v = _inputs(2, 8, 8, 4, 2, 16)
    with pytest.raises(ValueError, match=r"q_seg has shape \(1, 8\), expected \(2, 8\)"):
        flash_attention(q, k, v, q_seg=jnp.ones((1, 8), jnp.int32), k_seg=jnp.ones((2, 8), jnp.int32))


def test_bf16_is_within_its_rounding():
    q, k, v = _inputs(1, 200, 200, 4, 2, 64, dtype=jnp.bfloat16)
    got = jax.jit(flash_attention)(q, k, v)
    assert got.dtype == jnp.bfloat16
    assert _rel(got, dense_attention(q, k, v)) <= 1e-2
    dq = jax.jit(jax.grad(lambda q: flash_attention(q, k, v).astype(jnp.float32).sum()))(q)
    want = jax.jit(jax.grad(lambda q: dense_attention(q, k, v).astype(jnp.float32).sum()))(q)
    assert dq.dtype == jnp.bfloat16 and _rel(dq, want) <= 2e-2


def test_a_query_that_sees_nothing_gets_zeros():
    q, k, v = _inputs(1, 4, 4, 2, 2, 16)
    seg = jnp.asarray([[1, 1, 2, 2]], jnp.int32)
    out = flash_attention(q, k, v, q_seg=jnp.asarray([[1, 3, 2, 2]], jnp.int32), k_seg=seg)
    np.testing.assert_array_equal(np.asarray(out[0, 1]), 0)  # segment 3: no key
    want = dense_attention(q, k, v, q_seg=seg, k_seg=seg)
    np.testing.assert_allclose(np.asarray(out[0, [0, 2, 3]]), np.asarray(want[0, [0, 2, 3]]), atol=1e-6)
    grads = jax.grad(lambda q, k, v: flash_attention(q, k, v, q_seg=jnp.asarray([[1, 3, 2, 2]], jnp.int32),
                                                     k_seg=seg).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


# 300 positions are more than a chunk: plain JAX's plan is causal-block attention, not dense
SMALL = dict(vocab_size=512, max_sequence_length=512, query_chunk_size=64, key_chunk_size=64)


def test_the_model_runs_it_and_matches_plain_jax():
    """On one CPU device `auto` attention is the kernel; attention_impl=jax is the JAX path: same logits
    and training gradients."""
    config = lwm_core.get_config("debug", **SMALL)
    assert llama._plan(config, None, "forward", 300, 300).kind == "cpu_flash"
    plain = lwm_core.get_config("debug", **SMALL, attention_impl="jax")
    assert llama._plan(plain, None, "forward", 300, 300).kind == "causal_block"
    model = lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="float32")
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 512, (2, 300)), jnp.int32)
    seg = jnp.asarray(np.repeat([[1, 2], [1, 2]], 150, axis=1), jnp.int32)  # two packed sequences per row

    def loss(c, params):
        logits = llama.forward(c, params, ids, segment_ids=seg)
        return jax.nn.log_softmax(logits.astype(jnp.float32))[..., 5].mean(), logits

    (l1, logits1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(config, p), has_aux=True))(model.params)
    (l2, logits2), g2 = jax.jit(jax.value_and_grad(lambda p: loss(plain, p), has_aux=True))(model.params)
    assert _rel(logits1, logits2) <= 1e-5 and abs(float(l1) - float(l2)) <= 1e-5
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert _rel(a, b) <= 1e-4


def test_without_a_compiler_the_model_falls_back(tmp_path):
    """No compiler on PATH: the plan is plain JAX's, and the logits are the kernel's."""
    script = f"""
import jax.numpy as jnp, numpy as np
import lwm_core
from lwm_core.model import llama
config = lwm_core.get_config("debug", **{SMALL!r})
model = lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="float32")
ids = jnp.asarray(np.random.default_rng(0).integers(3, 512, (1, 300)), jnp.int32)
print(llama._plan(config, None, "forward", 300, 300).kind)
np.save({str(tmp_path / "logits.npy")!r}, np.asarray(llama.forward(config, model.params, ids)))
"""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PATH=str(tmp_path), PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["causal_block"]
    config = lwm_core.get_config("debug", **SMALL)
    model = lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="float32")
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 512, (1, 300)), jnp.int32)
    assert _rel(llama.forward(config, model.params, ids), np.load(tmp_path / "logits.npy")) <= 1e-5
