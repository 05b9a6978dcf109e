"""The CPU decode kernels (lwm_core/cpu_decode.py): against XLA's dot and its jnp twin, inside
generation (same tokens as the XLA path), and its fallbacks (no compiler, several devices, bf16)."""

import json
import os
import platform
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
from lwm_core.errors import LWMError
from lwm_core.model.llama import cached_layers, forward_cached, init_cache, packed_weights
from lwm_core.quantize import quantize_array, quantize_array_int4, unpack_int4

needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")),
                                    reason="no C++ compiler to build the kernel")


@pytest.fixture(scope="module")
def kernel():
    assert cpu_decode.available(), cpu_decode.unavailable_reason()


def _weights(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s, np.float32)) for s in shapes]


@needs_compiler
@pytest.mark.parametrize("rows", [(1,), (3,), (2, 2)])
def test_matvec_matches_dot_on_odd_and_model_shapes(kernel, rows):
    # K, N not multiples of the 16 x 8 panel (padding), model-like shapes, and one larger than a chunk
    shapes = [(37, 13), (16, 8), (512, 1376), (1376, 512), (200, 2000)]
    weights = _weights(shapes)
    packed = cpu_decode.pack_all(weights)
    rng = np.random.default_rng(1)
    for w, p in zip(weights, packed):
        x = jnp.asarray(rng.standard_normal((*rows, w.shape[0]), np.float32))
        want = np.asarray(jnp.einsum("...k,kn->...n", x, w, precision="highest"))
        got = np.asarray(jax.jit(cpu_decode.matvec)(x, p))
        twin = np.asarray(jax.jit(cpu_decode.matvec_reference)(x, p))
        assert got.shape == want.shape == twin.shape == (*rows, w.shape[1])
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=2e-6 * scale * np.sqrt(w.shape[0]))
        np.testing.assert_allclose(twin, want, atol=2e-6 * scale * np.sqrt(w.shape[0]))


def _dequantized(w):
    """w with each output channel (last axis) rounded to 255 levels of its own scale: what int8 keeps."""
    top = jnp.max(jnp.abs(w), axis=-2, keepdims=True)
    scale = jnp.where(top > 0, top / 127, 1.0)
    return jnp.round(w / scale) * scale


def test_int8_packing_quantizes_per_output_channel():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((40, 6), np.float32)).at[:, 2].set(0)
    q, scales = quantize_array(w)  # what pack_all(quant="int8") packs
    assert q.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (1, 6)
    scales = scales[0]
    top = np.abs(np.asarray(w)).max(axis=0)
    np.testing.assert_allclose(np.asarray(scales)[[0, 1, 3, 4, 5]], top[[0, 1, 3, 4, 5]] / 127, rtol=1e-6)
    assert np.abs(np.asarray(q)).max(axis=0).tolist() == [127, 127, 0, 127, 127, 127]  # the largest -> +-127
    np.testing.assert_allclose(np.asarray(q * scales), np.asarray(_dequantized(w)), atol=1e-6)
    assert np.abs(np.asarray(q * scales) - np.asarray(w)).max() <= (top / 254).max() * 1.0001  # half a level


@needs_compiler
@pytest.mark.parametrize("rows", [(1,), (3,)])
def test_int8_matvec_matches_the_dequantized_dot(kernel, rows):
    shapes = [(37, 13), (512, 1376), (1376, 512), (200, 2000)]
    weights = _weights(shapes)
    packed = cpu_decode.pack_all(weights, quant="int8")
    assert packed[0].flat.dtype == jnp.int8 and all(p.int8 for p in packed)
    rng = np.random.default_rng(1)
    for w, p in zip(weights, packed):
        x = jnp.asarray(rng.standard_normal((*rows, w.shape[0]), np.float32))
        want = np.asarray(jnp.einsum("...k,kn->...n", x, _dequantized(w), precision="highest"))
        got = np.asarray(jax.jit(cpu_decode.matvec)(x, p))
        twin = np.asarray(jax.jit(cpu_decode.matvec_reference)(x, p))
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=2e-6 * scale * np.sqrt(w.shape[0]))
        np.testing.assert_allclose(twin, want, atol=2e-6 * scale * np.sqrt(w.shape[0]))


def _dequantized_int4(w):
    """w as int4 keeps it (lwm_core.quantize): groups of 32 inputs per output channel."""
    return unpack_int4(*quantize_array_int4(w))


@needs_compiler
@pytest.mark.parametrize("rows", [(1,), (3,)])
def test_int4_matvec_matches_the_dequantized_dot(kernel, rows):
    """The int4 kernel against one dot of its dequantized weights with its int8-rounded input (exact
    arithmetic up to float32 sums), and against the float weights and input (the error int4 costs)."""
    shapes = [(32, 13), (64, 8), (512, 1376), (1376, 512), (96, 2000)]
    weights = _weights(shapes)
    packed = cpu_decode.pack_all(weights, quant="int4")
    assert packed[0].flat.dtype == jnp.uint8 and all(p.quant == "int4" and not p.int8 for p in packed)
    rng = np.random.default_rng(1)
    for w, p in zip(weights, packed):
        x = jnp.asarray(rng.standard_normal((*rows, w.shape[0]), np.float32))
        want = np.asarray(jnp.einsum("...k,kn->...n", cpu_decode.quantize_input_int8(x), _dequantized_int4(w),
                                     precision="highest"))
        got = np.asarray(jax.jit(cpu_decode.matvec)(x, p))
        twin = np.asarray(jax.jit(cpu_decode.matvec_reference)(x, p))
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=2e-6 * scale * np.sqrt(w.shape[0]))
        np.testing.assert_allclose(twin, want, atol=2e-6 * scale * np.sqrt(w.shape[0]))
        exact = np.asarray(jnp.einsum("...k,kn->...n", x, w, precision="highest"))
        if w.size >= 512 * 512:  # RMS error ~8% of the RMS output for Gaussian weights (half a step of max/8)
            assert np.sqrt(np.mean((got - exact) ** 2) / np.mean(exact ** 2)) < 0.12


def test_int8_rounding_of_the_int4_kernels_input():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64), np.float32)).at[1, 32:].set(0)
    r = np.asarray(cpu_decode.quantize_input_int8(x)).reshape(2, 2, 32)
    top = np.abs(np.asarray(x)).reshape(2, 2, 32).max(-1, keepdims=True)
    levels = r / np.where(top > 0, top / 127, 1)
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)  # whole levels of each 32's own scale
    assert np.abs(levels).max() <= 127.001 and not r[1, 1].any()
    assert np.abs(r - np.asarray(x).reshape(2, 2, 32)).max() <= (top / 254).max() * 1.0001


@needs_compiler
@pytest.mark.parametrize("flags", [("-mno-avx512vnni",),
                                   pytest.param(("-mno-avx512f", "-mno-avx2"), marks=pytest.mark.slow)],
                         ids=["avx2", "portable"])
def test_int4_kernels_other_paths(tmp_path, flags):
    """The int4 kernel's AVX2 and portable paths (built with those instruction sets switched off) give
    the twin's products too; the AVX512-VNNI path is the one the other tests run where the CPU has it.
    (Each builds the kernels' library again, ~8 s: the portable path, for CPUs without AVX2, is slow-marked.)"""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 flags")
    code = f"""
import jax, jax.numpy as jnp, numpy as np
from pathlib import Path
from lwm_core import cpu_decode
cpu_decode._FLAGS = (*cpu_decode._FLAGS, *{flags!r})
assert cpu_decode.available(directory=Path({str(tmp_path)!r})), cpu_decode.unavailable_reason()
rng = np.random.default_rng(0)
weights = [jnp.asarray(rng.standard_normal(s, np.float32)) for s in [(64, 24), (512, 1376)]]
for w, p in zip(weights, cpu_decode.pack_all(weights, quant="int4")):
    x = jnp.asarray(rng.standard_normal((3, w.shape[0]), np.float32))
    got, twin = jax.jit(cpu_decode.matvec)(x, p), jax.jit(cpu_decode.matvec_reference)(x, p)
    np.testing.assert_allclose(got, twin, atol=2e-6 * float(jnp.abs(twin).max()) * np.sqrt(w.shape[0]))
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@needs_compiler
def test_pack_all_shares_one_aligned_buffer(kernel):
    weights = _weights([(64, 24), (40, 16), (512, 512)])
    packed = cpu_decode.pack_all(weights)
    flat = packed[0].flat
    assert all(p.flat is flat for p in packed)
    assert [p.shape for p in packed] == [(64, 24), (40, 16), (512, 512)]
    # segments in order, each padded to whole panels, and the buffer exactly their sum
    sizes = [cpu_decode.padded(k, cpu_decode.COLS) * cpu_decode.padded(n, cpu_decode.ROWS)
             for k, n in [(64, 24), (40, 16), (512, 512)]]
    assert [p.segment.offset for p in packed] == [0, sizes[0], sizes[0] + sizes[1]]
    assert flat.shape == (sum(sizes),)
    assert flat.unsafe_buffer_pointer() % 64 == 0  # the kernel's loads; 2 MB where mmap exists
    if sys.platform.startswith("linux"):
        assert flat.unsafe_buffer_pointer() % (2 << 20) == 0
    # made one at a time from an iterator, with the shapes given: the same buffer
    lazy = cpu_decode.pack_all(iter(weights), [(64, 24), (40, 16), (512, 512)])
    np.testing.assert_array_equal(lazy[0].flat, flat)
    with pytest.raises(ValueError, match=r"weight 1 is \(40, 16\), its shape was given as \(40, 17\)"):
        cpu_decode.pack_all(iter(weights), [(64, 24), (40, 17), (512, 512)])


@needs_compiler
def test_matvec_checks_its_operands(kernel):
    (p,) = cpu_decode.pack_all(_weights([(32, 16)]))
    with pytest.raises(ValueError, match="x has 31 columns, the weight 32 rows"):
        cpu_decode.matvec(jnp.ones((1, 31)), p)


@needs_compiler
def test_argmax_is_jnp_argmax(kernel):
    """First maximum on ties, first NaN if any, 0 when every logit is -inf; rows of any width."""
    rng = np.random.default_rng(4)
    rows = [rng.standard_normal((B, V)).astype(np.float32) for B, V in [(1, 32000), (3, 17), (2, 1), (2, 40001)]]
    ties = np.zeros((5, 50), np.float32)
    ties[0, [7, 30]] = 5  # a tie: the first
    ties[1, [40, 45]], ties[1, 3] = np.nan, 9  # NaNs win, the first of them
    ties[2] = -np.inf
    ties[3, 49] = np.nan  # a NaN in the tail past the last 16
    ties[4, [33, 49]] = 2  # the maximum in a lane and again in the tail
    for x in [*rows, ties]:
        np.testing.assert_array_equal(np.asarray(jax.jit(cpu_decode.argmax)(x)), np.asarray(jnp.argmax(x, -1)))
    from lwm_core.generate.sampling import Sampling, sample

    greedy = jax.jit(lambda x: sample(x, jax.random.key(0), Sampling(0.0, 1.0), cpu_kernels=True))
    np.testing.assert_array_equal(np.asarray(greedy(rows[0])), np.argmax(rows[0], -1))


@needs_compiler
@pytest.mark.parametrize("B, K, G, H, S, slot", [(1, 8, 1, 64, 256, 130), (2, 2, 3, 24, 40, 0), (2, 2, 3, 24, 40, 39),
                                                 (3, 1, 4, 16, 17, 9)])
def test_decode_attention_matches_cached_attention(kernel, B, K, G, H, S, slot):
    from lwm_core.attention.reference import cached_attention

    rng = np.random.default_rng(S + slot)
    q = jnp.asarray(rng.standard_normal((B, K, G, H), np.float32))
    k_cache = jnp.asarray(rng.standard_normal((B * K, S, H), np.float32))
    v_cache = jnp.asarray(rng.standard_normal((B * K, S, H), np.float32))
    seg = np.ones((B, S), np.int32)
    seg[1:, : min(slot, 5)] = 0  # left padding in the later rows (the query's own slot stays visible)
    seg = jnp.asarray(seg)
    want = cached_attention(q, k_cache, v_cache, q_slot=jnp.int32(slot), k_seg=seg)
    got = jax.jit(cpu_decode.decode_attention)(q, k_cache, v_cache, q_slot=jnp.int32(slot), k_seg=seg)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # slots after the query's are never read: garbage there changes nothing
    later = jnp.where(jnp.arange(S)[None, :, None] > slot, jnp.nan, k_cache)
    again = jax.jit(cpu_decode.decode_attention)(q, later, v_cache.at[:, slot + 1:].set(jnp.inf),
                                                 q_slot=jnp.int32(slot), k_seg=seg)
    np.testing.assert_array_equal(again, got)


def _bench_like(seed=0, **kw):
    shape = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_sequence_length=256)
    config = lwm_core.get_config("debug", **{**shape, **kw})
    return lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="float32", seed=seed)


@needs_compiler
def test_packed_decode_step_matches_the_xla_path(kernel):
    model = _bench_like()
    config, params = model.config, model.params
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, config.vocab_size, (2, 12)), jnp.int32)
    seg = jnp.ones((2, 12), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (2, 12))
    cache = init_cache(config, 2, 16, jnp.float32)
    _, cache = forward_cached(config, params, ids, positions, seg, cache, jnp.int32(0), fresh=True)
    step = dict(ids=ids[:, :1], positions=positions[:, :1] + 12, seg=seg[:, :1], start=jnp.int32(12))

    def run(layers):
        return jax.jit(lambda c, layers: forward_cached(config, params, step["ids"], step["positions"], step["seg"], c,
                                                        step["start"], layers=layers))(cache, layers)

    want, want_cache = run(cached_layers(config, params))
    got, got_cache = run(packed_weights(config, params))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_cache), jax.tree.leaves(want_cache)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _quantized_step(model, rounded, quant):
    """One decode step after a 12-token prefill, (packed kernels' logits, XLA's logits, the packed weights):
    `quant` packing against the XLA path on the weights `rounded` as that packing keeps them (each projection
    and head; the embedding table and norms stay float)."""
    config, params = model.config, model.params
    quantized = jax.tree_util.tree_map_with_path(
        lambda path, w: rounded(w) if "kernel" in str(path) and "norm" not in str(path)
        and "wte" not in str(path) and w.ndim >= 2 else w, params)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, config.vocab_size, (2, 12)), jnp.int32)
    seg = jnp.ones((2, 12), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (2, 12))
    cache = init_cache(config, 2, 16, jnp.float32)
    _, cache = forward_cached(config, quantized, ids, positions, seg, cache, jnp.int32(0), fresh=True)
    step = jax.jit(lambda c, layers: forward_cached(config, quantized, ids[:, :1], positions[:, :1] + 12, seg[:, :1],
                                                    c, jnp.int32(12), layers=layers))
    want, _ = step(cache, cached_layers(config, quantized))
    packed = packed_weights(config, params, quant=quant)
    got, _ = step(cache, packed)
    return np.asarray(got), np.asarray(want), packed


@needs_compiler
def test_int8_packed_decode_step_matches_the_xla_path_on_dequantized_weights(kernel):
    """int8 packing quantizes each projection and head per output channel; the XLA path on weights rounded
    the same way (the embedding table and norms stay float) gives the same step."""
    got, want, packed = _quantized_step(_bench_like(), _dequantized, "int8")
    assert packed.layers[0]["wqkv"].int8 and packed.heads["lm_head"].int8
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_compiler
def test_int4_packed_decode_step_matches_the_xla_path_on_dequantized_weights(kernel):
    """int4 packing quantizes each projection and head in groups of 32 inputs; the XLA path on weights
    rounded the same way gives the same step up to the kernel's int8 rounding of its inputs (~0.4% of
    each 32's largest input)."""
    # int4 groups 32 inputs: the MLP width 176 does not divide
    got, want, packed = _quantized_step(_bench_like(intermediate_size=192), _dequantized_int4, "int4")
    assert packed.layers[0]["w13"].quant == "int4" and packed.heads["lm_head"].quant == "int4"
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < 0.02, error


@needs_compiler
def test_generation_with_the_kernel_gives_the_xla_tokens(kernel):
    model = _bench_like()
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 512, 20).tolist(), rng.integers(3, 512, 7).tolist()]  # left padding too
    model.cpu_kernels = False
    want_one, want_batch = model.generate(prompts[0], 24), model.generate(prompts, 16)
    assert model._packed is None
    model.cpu_kernels = None  # auto: one float32 CPU device, the kernel builds
    got_one, got_batch = model.generate(prompts[0], 24), model.generate(prompts, 16)
    assert model._packed is not None
    np.testing.assert_array_equal(got_one, want_one)
    np.testing.assert_array_equal(got_batch, want_batch)
    assert list(model.stream(prompts[0], 24)) == [t for t in want_one.tolist() if t != model.config.eos_token_id]

    # new params -> new packed weights (not the stale copy)
    other = _bench_like(seed=1)
    model.params = other.params
    other.cpu_kernels = False
    np.testing.assert_array_equal(model.generate(prompts[0], 24), other.generate(prompts[0], 24))
    assert model._packed[0] is other.params


def test_kernel_is_not_used_where_it_cannot_be():
    config = lwm_core.get_config("debug", vocab_size=512, max_sequence_length=128)
    sharded = lwm_core.load_model("random:debug", config=config, mesh="1,2,2,1", dtype="float32")
    assert sharded._packed_weights() is None  # auto: several devices -> XLA's dots
    sharded.cpu_kernels = True
    with pytest.raises(LWMError, match="on 4 cpu device"):
        sharded.generate([5, 6, 7], 2)
    bf16 = lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="bfloat16", cpu_kernels=True)
    with pytest.raises(LWMError, match="not float32"):
        bf16.generate([5, 6, 7], 2)


def test_without_a_compiler_generation_falls_back(tmp_path):
    """No compiler on PATH: available() says why, auto mode generates with XLA, cpu_kernels=True refuses."""
    script = """
import lwm_core
from lwm_core.errors import LWMError
from lwm_core import cpu_decode
config = lwm_core.get_config("debug", vocab_size=512, max_sequence_length=128)
model = lwm_core.load_model("random:debug", config=config, mesh="1,1,1,1", dtype="float32")
print(len(model.generate([5, 6, 7], 4)), model._packed is None)
print(cpu_decode.available(), cpu_decode.unavailable_reason())
model.cpu_kernels = True
try:
    model.generate([5, 6, 7], 4)
except LWMError as e:
    print("refused:", e)
"""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PATH=str(tmp_path), PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "4 True"
    assert lines[1] == "False no C++ compiler (c++, g++ or clang++) on PATH"
    assert lines[2] == ("refused: the CPU decode kernels were required (cpu_kernels=True, --cpu-kernels) but cannot "
                        "be used: no C++ compiler (c++, g++ or clang++) on PATH; leave the default to decode with "
                        "XLA where they cannot")
    assert not (tmp_path / "cache").exists()


@needs_compiler
def test_unwritable_cache_falls_back_to_the_temp_directory(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # $XDG_CACHE_HOME/lwm/kernels cannot be made under a file
    script = "from lwm_core import cpu_decode; print(cpu_decode.available(), cpu_decode.unavailable_reason())"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(blocker), JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["True", "None"], out.stderr
    built = list((tmp_path / "tmp").glob("lwm-kernels-*/kernels-*.so"))
    assert len(built) == 1


@needs_compiler
def test_build_is_cached_and_atomic(tmp_path):
    """A fresh cache directory gets one .so (no temp files left); a second build reuses it."""
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    first = cpu_decode._build(compiler, tmp_path)
    mtime = first.stat().st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert cpu_decode._build(compiler, tmp_path) == first and first.stat().st_mtime_ns == mtime


def test_chat_cli_switch(cli_env):
    """`lwm chat` decodes with the kernels by default on one CPU device; --no-cpu-kernels gives the same reply
    through XLA; --cpu-kernels where they cannot run (bf16) is one error line, exit 1."""
    from helpers import lwm

    args = ["chat", "-m", "random:tiny", "-t", "0", "-n", "12", "--json", "hello"]
    default, off = lwm(cli_env, *args), lwm(cli_env, *args, "--no-cpu-kernels")
    assert default.returncode == off.returncode == 0, default.stderr + off.stderr
    assert json.loads(default.stdout)["text"] == json.loads(off.stdout)["text"]
    refused = lwm(cli_env, *args, "--dtype", "bfloat16", "--cpu-kernels")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: the CPU decode kernels were required (cpu_kernels=True, --cpu-kernels) but cannot be used: the "
        "weights are not float32; leave the default to decode with XLA where they cannot"]
