"""Which weights generation reads (lwm_core.generate.weights): the layer copy and the packed CPU weights."""

import jax
import numpy as np

import lwm_core
from lwm_core.generate import weights
from lwm_core.generate.weights import DecodeWeights, cpu_kernel_unusable, layer_copy_fits


def _tiny(mesh="1,1,1,1", dtype="float32"):
    return lwm_core.load_model("random:tiny", mesh=mesh, dtype=dtype)


def test_the_layer_copy_is_made_where_it_fits_and_asked_for(monkeypatch):
    model = _tiny()
    choose = DecodeWeights().for_generation
    args = (model.config, model.params, model.mesh, model.dtype)
    prefill, decode = choose(*args, copy_layers=True, cpu_kernels=False)
    assert prefill is decode and prefill is not None  # one copy, read by prefill and decode
    assert choose(*args, copy_layers=False, cpu_kernels=False) == (None, None)
    assert layer_copy_fits(model.params)  # a tiny model fits in any free memory ...
    assert choose(*args, copy_layers=None, cpu_kernels=False)[0] is not None
    monkeypatch.setattr(weights, "free_host_bytes", lambda: 0)  # ... and no model in none
    assert not layer_copy_fits(model.params)
    assert choose(*args, copy_layers=None, cpu_kernels=False) == (None, None)


def test_the_cpu_kernels_say_why_they_cannot_run():
    sharded = _tiny(mesh="1,2,2,1")
    assert cpu_kernel_unusable(sharded.config, sharded.params, sharded.mesh, sharded.dtype, cpu_kernels=None) == \
        "the model is on 4 cpu device(s), not one CPU"
    assert DecodeWeights().packed_weights(sharded.config, sharded.params, sharded.mesh, sharded.dtype,
                                          cpu_kernels=None) is None
    bf16 = _tiny(dtype="bfloat16")
    assert cpu_kernel_unusable(bf16.config, bf16.params, bf16.mesh, bf16.dtype, cpu_kernels=True) == \
        "the weights are not float32"


def test_astype_is_a_new_model_and_leaves_this_one():
    bf16 = _tiny(dtype="bfloat16")
    f32 = bf16.astype("float32")
    assert f32 is not bf16 and f32.dtype == np.float32 and bf16.dtype == jax.numpy.bfloat16
    assert {a.dtype for a in jax.tree.leaves(f32.params)} == {np.dtype(np.float32)}
    assert {a.dtype for a in jax.tree.leaves(bf16.params)} == {np.dtype(jax.numpy.bfloat16)}
    assert (f32.config, f32.mesh, f32.tokenizer) == (bf16.config, bf16.mesh, bf16.tokenizer)
    # the same (rounded) weights computed in float32: logits within bfloat16's rounding (~0.7 in size here)
    ids = np.arange(3, 19)
    np.testing.assert_allclose(f32.logits(ids), bf16.logits(ids), atol=0.02)
    for a, b in zip(jax.tree.leaves(f32.params), jax.tree.leaves(bf16.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b, np.float32))
