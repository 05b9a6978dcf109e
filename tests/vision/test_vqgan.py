"""The VQGAN model: the released parameter tree by name and shape, numerics against an independent numpy
implementation, nearest-code quantisation, batching and meshes, config and input checks."""

from __future__ import annotations

import math

import jax
import numpy as np
import numpy_vqgan as ref
import pytest
from flax.traverse_util import unflatten_dict

from lwm_core.errors import LWMError
from lwm_core.parallel.mesh import make_mesh
from lwm_core.vision.codec import VQGAN, chunk_plan
from lwm_core.vision.config import VQGANConfig, get_vqgan_config
from lwm_core.vision.vqgan import VQGANModel, param_shapes, random_params


def released_tree() -> dict[str, tuple[int, ...]]:
    """The released VQGAN's parameters, written out from LWM_REFERENCE.md section 8 (and lwm/vqgan.py):
    name -> shape."""
    ch, mult, blocks, z, embed, codes = 128, (1, 2, 2, 4, 6), 2, 64, 64, 8192
    out: dict[str, tuple[int, ...]] = {}

    def conv(path, k, cin, cout):
        out[f"{path}/kernel"], out[f"{path}/bias"] = (k, k, cin, cout), (cout,)

    def norm(path, c):
        out[f"{path}/scale"], out[f"{path}/bias"] = (c,), (c,)

    def resnet(path, cin, cout):
        norm(f"{path}/GroupNorm_0", cin)
        conv(f"{path}/Conv_0", 3, cin, cout)
        norm(f"{path}/GroupNorm_1", cout)
        conv(f"{path}/Conv_1", 3, cout, cout)
        if cin != cout:
            conv(f"{path}/Conv_2", 1, cin, cout)  # the 1x1 shortcut

    conv("encoder/Conv_0", 3, 3, ch)
    width = ch
    for k in range(5):
        for j in range(blocks):
            resnet(f"encoder/DownsamplingBlock_{k}/ResnetBlock_{j}", width, ch * mult[k])
            width = ch * mult[k]
        if k != 4:
            conv(f"encoder/DownsamplingBlock_{k}/Downsample_0/Conv_0", 3, width, width)
    resnet("encoder/MidBlock_0/ResnetBlock_0", 768, 768)
    resnet("encoder/MidBlock_0/ResnetBlock_1", 768, 768)
    norm("encoder/GroupNorm_0", 768)
    conv("encoder/Conv_1", 3, 768, z)
    conv("quant_conv", 1, z, embed)
    out["quantize/embeddings"] = (codes, embed)
    conv("post_quant_conv", 1, embed, z)
    conv("decoder/Conv_0", 3, z, 768)
    resnet("decoder/MidBlock_0/ResnetBlock_0", 768, 768)
    resnet("decoder/MidBlock_0/ResnetBlock_1", 768, 768)
    width = 768
    for k, level in enumerate([4, 3, 2, 1, 0]):  # UpsamplingBlock_0 is the 768-channel level
        for j in range(blocks + 1):
            resnet(f"decoder/UpsamplingBlock_{k}/ResnetBlock_{j}", width, ch * mult[level])
            width = ch * mult[level]
        if level != 0:
            conv(f"decoder/UpsamplingBlock_{k}/Upsample_0/Conv_0", 3, width, width)
    norm("decoder/GroupNorm_0", ch)
    conv("decoder/Conv_1", 3, ch, 3)
    return out


def test_default_config_has_the_released_parameter_tree():
    ours = {"/".join(path): shape for path, shape in param_shapes(get_vqgan_config("default")).items()}
    expected = released_tree()
    assert sorted(set(ours) - set(expected)) == [] and sorted(set(expected) - set(ours)) == []
    assert ours == expected
    assert len(ours) == 277
    # ~585 MB of float32: the size of the released `vqgan` file
    assert sum(math.prod(s) for s in ours.values()) == 146_244_675
    assert VQGANConfig() == get_vqgan_config("default") and VQGANConfig().codes_per_side == 16


def _attention_config() -> VQGANConfig:
    # Attention at 16 and 8 pixels and in the mid block, pooling/plain resampling: the other branches.
    return get_vqgan_config("tiny", attn_resolutions=(16, 8), no_attn_mid_block=False, resample_with_conv=False)


def test_parameter_names_of_the_other_branches():
    names = {"/".join(p) for p in param_shapes(_attention_config())}
    assert "encoder/DownsamplingBlock_1/AttnBlock_0/Conv_3/kernel" in names
    assert "encoder/MidBlock_0/AttnBlock_0/GroupNorm_0/scale" in names
    assert "encoder/MidBlock_0/ResnetBlock_1/Conv_1/kernel" in names
    assert not any("Downsample_0" in n or "Upsample_0" in n for n in names)  # no conv to resample


def _local_config() -> VQGANConfig:
    # No encoder ResNet blocks and no encoder mid block: a code's convolutions see only its neighbourhood
    # (the final GroupNorm's statistics are still the frame's); the decoder keeps its mid block and one
    # ResNet block per level.
    return get_vqgan_config("tiny", num_res_blocks=0, encoder_mid_block=False)


def test_a_local_encoder_has_no_encoder_resnet_or_mid_block():
    config = _local_config()
    names = {"/".join(p) for p in param_shapes(config)}
    assert not any(n.startswith("encoder/MidBlock_0") or "encoder/DownsamplingBlock_0/Resnet" in n for n in names)
    assert "decoder/MidBlock_0/ResnetBlock_1/Conv_1/kernel" in names
    assert "decoder/UpsamplingBlock_0/ResnetBlock_0/Conv_0/kernel" in names


def varied_params(config: VQGANConfig, seed: int = 0) -> dict:
    """Random parameters with nothing at a neutral value (a swapped GroupNorm scale/bias or a dropped bias
    shows) and a spread-out codebook (nearest codes are clear-cut)."""
    rng = np.random.default_rng(seed + 1)
    flat = random_params(config, seed)
    for path, value in flat.items():
        if path[-1] == "bias":
            flat[path] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        elif path[-1] == "scale":
            flat[path] = (1 + 0.2 * rng.standard_normal(value.shape)).astype(np.float32)
        elif path[-1] == "embeddings":
            flat[path] = rng.standard_normal(value.shape).astype(np.float32)
    return unflatten_dict(flat)


def frames(config: VQGANConfig, n: int, seed: int = 0) -> np.ndarray:
    """Smooth frames in [-1, 1] (a random low-resolution image upsampled), less noise-like than uniform."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(-1, 1, (n, config.resolution // 4, config.resolution // 4, 3))
    return small.repeat(4, axis=1).repeat(4, axis=2).astype(np.float32)


@pytest.mark.parametrize("config", [get_vqgan_config("tiny"), _attention_config(), _local_config()],
                         ids=["tiny", "attention", "local"])
def test_forward_matches_an_independent_numpy_implementation(config):
    params = varied_params(config)
    model = VQGANModel(config)
    x = frames(config, 2)
    latents = jax.jit(lambda p, x: model.apply({"params": p}, x, method=VQGANModel.latents))(params, x)
    expected = ref.latents(params, config, x)
    np.testing.assert_allclose(np.asarray(latents), expected, atol=2e-4, rtol=2e-4)
    z = np.random.default_rng(1).standard_normal(np.shape(expected)).astype(np.float32)
    unclipped = jax.jit(lambda p, z: model.apply({"params": p}, z, method=lambda m, z: m.decoder(m.post_quant_conv(z))))
    out = np.asarray(unclipped(params, z))
    want = ref.decode_unclipped(params, config, z)
    assert out.shape == (2, config.resolution, config.resolution, 3)
    np.testing.assert_allclose(out, want, atol=2e-4 * np.abs(want).max(), rtol=1e-3)


@pytest.fixture(scope="module")
def tiny():
    """The tiny VQGAN on one device, with `varied_params`, two frames per call."""
    config = get_vqgan_config("tiny")
    return VQGAN(config, jax.device_put(varied_params(config)), make_mesh("1,1,1,1"), batch_size=2)


def test_codes_are_the_nearest_codebook_entries_and_decode_reads_those_entries(tiny):
    config, params = tiny.config, tiny.params
    x = frames(config, 4, seed=2)
    codes = tiny.encode(x)  # two calls of two frames
    assert codes.shape == (4, 8, 8) and codes.dtype == np.int32
    model = VQGANModel(config)
    latents = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method=VQGANModel.latents))(params, x))
    embeddings = np.asarray(params["quantize"]["embeddings"])
    brute, gap = ref.nearest_codes(latents, embeddings)
    assert gap.min() > 1e-4  # no near-ties (float32 resolves ~1e-5 here): the comparison is meaningful
    np.testing.assert_array_equal(codes, brute)
    assert len(np.unique(codes)) > 10
    pixels = tiny.decode(codes)
    assert pixels.shape == x.shape and pixels.dtype == np.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    # decode(codes) is the decoder on exactly those codebook rows, clipped
    unclipped = ref.decode_unclipped(jax.device_get(params), config, embeddings[codes])
    np.testing.assert_allclose(pixels, np.clip(unclipped, -1, 1), atol=2e-4 * np.abs(unclipped).max())
    assert np.any(np.abs(unclipped) > 1)  # the clip mattered
    # deterministic, and frame by frame (which call a frame is in changes nothing)
    np.testing.assert_array_equal(tiny.encode(x), codes)
    np.testing.assert_array_equal(tiny.encode(x[1:3]), codes[1:3])
    # leading axes are kept: (B, T, H, W, 3) videos
    np.testing.assert_array_equal(tiny.encode(x.reshape(2, 2, *x.shape[1:])), codes.reshape(2, 2, 8, 8))


def test_results_are_equal_on_any_mesh(tiny):
    """8 devices (dp=4, fsdp=2), 5 frames padded to 8 (one per device) vs one device, two at a time."""
    from jax.sharding import NamedSharding, PartitionSpec

    x = frames(tiny.config, 5, seed=4)
    mesh = make_mesh("4,2,1,1")
    eight = VQGAN(tiny.config, jax.device_put(tiny.params, NamedSharding(mesh, PartitionSpec())), mesh)
    assert eight.batch_size == 64
    codes = eight.encode(x)
    np.testing.assert_array_equal(codes, tiny.encode(x))
    np.testing.assert_allclose(eight.decode(codes), tiny.decode(codes), atol=1e-5)


def test_chunk_plan_compiles_few_sizes():
    assert chunk_plan(0, 8, 1) == []
    assert chunk_plan(11, 8, 1) == [(8, 8), (3, 4)]
    assert chunk_plan(11, 8, 8) == [(8, 8), (3, 8)]
    assert chunk_plan(20, 16, 2) == [(16, 16), (4, 4)]
    sizes = {size for n in range(1, 200) for _, size in chunk_plan(n, 64, 4)}
    assert sizes == {4, 8, 16, 32, 64}


def test_inputs_are_checked_with_one_line_errors(tiny):
    with pytest.raises(LWMError, match=r"frames of shape \(2, 64, 64, 3\): it takes \(\.\.\., 32, 32, 3\)"):
        tiny.encode(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(LWMError, match=r"frames are uint8; pass floats in \[-1, 1\] \(from uint8: x / 127.5 - 1\)"):
        tiny.encode(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(LWMError, match=r"frames span \[0, 255\]"):
        tiny.encode(np.full((1, 32, 32, 3), 255.0, np.float32) * (np.arange(3) > 0))
    with pytest.raises(LWMError, match=r"code 8192 at \(0, 1, 2\) is outside the codebook \(0\.\.63\)"):
        codes = np.zeros((1, 8, 8), np.int32)
        codes[0, 1, 2] = 8192
        tiny.decode(codes)
    with pytest.raises(LWMError, match="codes are float32; pass integers"):
        tiny.decode(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(LWMError, match="batch_size 6 is not a positive multiple of the mesh's 4 devices"):
        VQGAN(tiny.config, tiny.params, make_mesh("1,4,1,1"), batch_size=6)
    assert tiny.encode(np.zeros((0, 32, 32, 3), np.float32)).shape == (0, 8, 8)


def test_config_fields_overrides_and_errors():
    c = get_vqgan_config("default", channel_mult="1,2", attn_resolutions="()", no_attn_mid_block="false",
                         dropout="0.1")
    assert c.channel_mult == (1, 2) and c.attn_resolutions == () and c.no_attn_mid_block is False
    assert c.replace(channel_mult=[1, 1, 2, 2]).downsample_factor == 8
    assert VQGANConfig.from_dict(c.to_dict()) == c and c.to_dict()["model_type"] == "vqgan"
    with pytest.raises(LWMError, match=r"unknown VQGAN config key 'chanel_mult'; did you mean 'channel_mult'\?"):
        get_vqgan_config("default", chanel_mult=(1, 2))
    with pytest.raises(LWMError, match=r"unknown VQGAN preset 'tine'; did you mean 'tiny'\?"):
        get_vqgan_config("tine")
    with pytest.raises(LWMError, match="gives width 48, not a multiple of the 32 GroupNorm groups"):
        get_vqgan_config("tiny", hidden_channels=48)
    with pytest.raises(LWMError, match="resolution=40 is not divisible by the downsampling factor 16"):
        get_vqgan_config("default", resolution=40)
    with pytest.raises(LWMError, match="channel_mult='1,x' is not a list of integers, e.g. 1,2,2,4,6"):
        get_vqgan_config("default", channel_mult="1,x")
    with pytest.raises(LWMError, match="model_type='llama' describes another model"):
        VQGANConfig.from_dict({"model_type": "llama"})

