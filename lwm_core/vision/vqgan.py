"""The LWM VQGAN in Flax (linen): frames (N, H, W, 3) in [-1, 1] <-> codes (N, H/f, W/f).

A re-implementation of LWM's `lwm/vqgan.py` whose parameter tree is the original's, name for name, so
that the released `vqgan` params load unchanged. The names come from Flax's auto-naming: inside a
compact module each submodule is `<ClassName>_<k>`, k counting that class's submodules in creation order.
That is why the classes below keep the original's names (ResnetBlock, DownsamplingBlock, MidBlock, ...)
and create their submodules in the original's order, and why the decoder's first UpsamplingBlock
(`UpsamplingBlock_0`) is the deepest, widest level: the decoder walks the levels from the last to the
first. The top-level names are those of the original's `setup` (encoder, decoder, quantize, quant_conv,
post_quant_conv).

Shapes (released model, f = 16): pixels (N, 256, 256, 3) -> encoder (N, 16, 16, 64) -> quant_conv
(N, 16, 16, 64) -> nearest codebook entry of 8192 x 64 -> codes (N, 16, 16); decode: codes -> entries
(N, 16, 16, 64) -> post_quant_conv -> decoder -> (N, 256, 256, 3), clipped to [-1, 1].

Arithmetic follows the original where it decides a result: Flax's default GroupNorm (32 groups, eps 1e-6,
its one-pass variance), 3x3 convs with SAME padding, a downsample that pads only the bottom and right by
one before a stride-2 VALID conv, nearest-neighbour upsampling (`jax.image.resize`), the codebook distance
expanded as |z|^2 + |e|^2 - 2 z.e, and the clip of decoded pixels. Everything is float32.

Not ported: dropout (the original applies it with `deterministic=True`, i.e. never) and the training
losses. One fix: the original's attention block projected its output while it was still flattened to
(N, H*W, C) and then added the (N, H, W, C) residual, which fails for every H > 1, so no checkpoint with
attention can exist; here the output is reshaped back first. The parameters are the same.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lwm_core.vision.config import VQGANConfig


class ResnetBlock(nn.Module):
    """GN, SiLU, conv3x3, GN, SiLU, conv3x3, plus the input (through a 1x1 conv, `Conv_2`, when the width
    changes). Names: GroupNorm_0, Conv_0, GroupNorm_1, Conv_1[, Conv_2]."""

    out_channels: int | None = None

    @nn.compact
    def __call__(self, x):  # (N, H, W, C) -> (N, H, W, out)
        out = self.out_channels or x.shape[-1]
        h = nn.Conv(out, (3, 3))(nn.silu(nn.GroupNorm()(x)))
        h = nn.Conv(out, (3, 3))(nn.silu(nn.GroupNorm()(h)))
        if out != x.shape[-1]:
            x = nn.Conv(out, (1, 1))(x)  # the original's use_conv_shortcut is never set: always 1x1
        return h + x


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions. Names: GroupNorm_0, Conv_0..2 (q, k, v),
    Conv_3 (output)."""

    @nn.compact
    def __call__(self, x):  # (N, H, W, C)
        N, H, W, C = x.shape
        h = nn.GroupNorm()(x)
        q, k, v = (nn.Conv(C, (1, 1))(h).reshape(N, H * W, C) for _ in range(3))  # each (N, HW, C)
        weights = jax.nn.softmax(jnp.einsum("nqc,nkc->nqk", q, k) * C ** -0.5, axis=-1)
        h = jnp.einsum("nqk,nkc->nqc", weights, v).reshape(N, H, W, C)  # (N, HW, C) -> (N, H, W, C)
        return nn.Conv(C, (1, 1))(h) + x


class Downsample(nn.Module):
    """Halve H and W. With a conv: pad the bottom and right by one (not symmetric: this is what the
    weights were trained with), then a 3x3 stride-2 VALID conv. Name: Conv_0."""

    with_conv: bool

    @nn.compact
    def __call__(self, x):  # (N, H, W, C) -> (N, H/2, W/2, C)
        if not self.with_conv:
            return nn.avg_pool(x, (2, 2), (2, 2))
        x = jnp.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="VALID")(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour resizing, then (with_conv) a 3x3 conv. Name: Conv_0."""

    with_conv: bool

    @nn.compact
    def __call__(self, x):  # (N, H, W, C) -> (N, 2H, 2W, C)
        N, H, W, C = x.shape
        x = jax.image.resize(x, (N, 2 * H, 2 * W, C), method="nearest")
        return nn.Conv(C, (3, 3))(x) if self.with_conv else x


class DownsamplingBlock(nn.Module):
    """Encoder level `block_idx`: num_res_blocks ResNet blocks (each followed by attention at the
    attn_resolutions), then a Downsample unless it is the last level."""

    config: VQGANConfig
    block_idx: int

    @nn.compact
    def __call__(self, x):
        c = self.config
        for _ in range(c.num_res_blocks):
            x = ResnetBlock(c.hidden_channels * c.channel_mult[self.block_idx])(x)
            if x.shape[1] in c.attn_resolutions:
                x = AttnBlock()(x)
        if self.block_idx != c.num_resolutions - 1:
            x = Downsample(c.resample_with_conv)(x)
        return x


class UpsamplingBlock(nn.Module):
    """Decoder level `block_idx`: num_res_blocks + 1 ResNet blocks (attention as in the encoder), then
    an Upsample unless it is level 0."""

    config: VQGANConfig
    block_idx: int

    @nn.compact
    def __call__(self, x):
        c = self.config
        for _ in range(c.num_res_blocks + 1):
            x = ResnetBlock(c.hidden_channels * c.channel_mult[self.block_idx])(x)
            if x.shape[1] in c.attn_resolutions:
                x = AttnBlock()(x)
        if self.block_idx != 0:
            x = Upsample(c.resample_with_conv)(x)
        return x


class MidBlock(nn.Module):
    """ResnetBlock_0, AttnBlock_0 (unless no_attn_mid_block), ResnetBlock_1; the width stays."""

    config: VQGANConfig

    @nn.compact
    def __call__(self, x):
        x = ResnetBlock()(x)
        if not self.config.no_attn_mid_block:
            x = AttnBlock()(x)
        return ResnetBlock()(x)


class Encoder(nn.Module):
    """Conv_0 (to hidden_channels), DownsamplingBlock_0..L-1, MidBlock_0 (unless not encoder_mid_block),
    GroupNorm_0, SiLU, Conv_1 (to z_channels)."""

    config: VQGANConfig

    @nn.compact
    def __call__(self, x):  # (N, R, R, num_channels) -> (N, R/f, R/f, z_channels)
        c = self.config
        x = nn.Conv(c.hidden_channels, (3, 3))(x)
        for level in range(c.num_resolutions):
            x = DownsamplingBlock(c, level)(x)
        if c.encoder_mid_block:
            x = MidBlock(c)(x)
        return nn.Conv(c.z_channels, (3, 3))(nn.silu(nn.GroupNorm()(x)))


class Decoder(nn.Module):
    """Conv_0 (to the last level's width), MidBlock_0, UpsamplingBlock_0..L-1 for levels L-1..0 (so
    UpsamplingBlock_0 is the deepest level), GroupNorm_0, SiLU, Conv_1 (to num_channels)."""

    config: VQGANConfig

    @nn.compact
    def __call__(self, x):  # (N, R/f, R/f, z_channels) -> (N, R, R, num_channels), not clipped
        c = self.config
        x = nn.Conv(c.hidden_channels * c.channel_mult[-1], (3, 3))(x)
        x = MidBlock(c)(x)
        for level in reversed(range(c.num_resolutions)):
            x = UpsamplingBlock(c, level)(x)
        return nn.Conv(c.num_channels, (3, 3))(nn.silu(nn.GroupNorm()(x)))


class VectorQuantizer(nn.Module):
    """The codebook (`embeddings`, num_embeddings x quantized_embed_dim): nearest entry by L2, lookup."""

    n_e: int
    e_dim: int

    def setup(self):
        # The original's init: uniform in [-1/n_e, 1/n_e).
        self.embeddings = self.param(
            "embeddings", lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -1 / self.n_e, 1 / self.n_e),
            (self.n_e, self.e_dim))

    def codes(self, z):  # (..., e_dim) -> int32 (...)
        """Index of the nearest codebook entry. The squared distance is expanded as the original computes
        it, |z|^2 + |e|^2 - 2 z.e, in float32: near-ties are decided as in the original."""
        flat = z.reshape(-1, z.shape[-1])  # (P, E): every position of every frame
        e = self.embeddings  # (V, E)
        d = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(e.T ** 2, axis=0, keepdims=True)
             - 2 * jnp.einsum("pe,ve->pv", flat, e))  # (P, V)
        return jnp.argmin(d, axis=1).astype(jnp.int32).reshape(z.shape[:-1])

    def lookup(self, codes):  # int (...) -> (..., e_dim)
        return self.embeddings[codes]


class VQGANModel(nn.Module):
    """The whole VQGAN. `encode` and `decode` are the methods to `apply`; `__call__` (encode then
    decode) exists so that `init` creates every parameter."""

    config: VQGANConfig

    def setup(self):
        c = self.config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quantize = VectorQuantizer(c.num_embeddings, c.quantized_embed_dim)
        self.quant_conv = nn.Conv(c.quantized_embed_dim, (1, 1))
        self.post_quant_conv = nn.Conv(c.z_channels, (1, 1))

    def latents(self, pixels):  # (N, R, R, 3) -> (N, R/f, R/f, quantized_embed_dim): what is quantized
        return self.quant_conv(self.encoder(pixels))

    def encode(self, pixels):  # (N, R, R, 3) float32 in [-1, 1] -> (N, R/f, R/f) int32 codes
        return self.quantize.codes(self.latents(pixels))

    def decode_latents(self, z):  # (N, h, w, quantized_embed_dim) -> (N, R, R, 3) in [-1, 1]
        return jnp.clip(self.decoder(self.post_quant_conv(z)), -1, 1)

    def decode(self, codes):  # (N, h, w) int -> (N, R, R, 3) float32 in [-1, 1]
        return self.decode_latents(self.quantize.lookup(codes))

    def __call__(self, pixels):
        return self.decode(self.encode(pixels))


def init_params(config: VQGANConfig, key: jax.Array) -> dict:
    """Random parameters by Flax's `init` (the original's initialisers). Used for its shapes
    (`param_shapes`); `random_params` makes the values (compiling this takes seconds)."""
    pixels = jnp.zeros((1, config.resolution, config.resolution, config.num_channels), jnp.float32)
    return VQGANModel(config).init(key, pixels)["params"]


def param_shapes(config: VQGANConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every parameter's path and shape, without computing anything (`jax.eval_shape`)."""
    from flax.traverse_util import flatten_dict

    tree = jax.eval_shape(lambda key: init_params(config, key), jax.random.key(0))
    return {path: tuple(leaf.shape) for path, leaf in flatten_dict(tree).items()}


def random_params(config: VQGANConfig, seed: int = 0) -> dict[tuple[str, ...], np.ndarray]:
    """Random float32 parameters by key path, at the scales of the original's initialisers (LeCun-normal
    conv kernels, zero biases, unit GroupNorm scales, a codebook uniform in [-1/n, 1/n)), drawn with numpy
    on the host: for tests and smoke runs, instantly and for any size."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, shape in sorted(param_shapes(config).items()):
        if path[-1] == "kernel":  # (kh, kw, in, out): fan-in kh * kw * in
            value = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(np.prod(shape[:-1])))
        elif path[-1] == "scale":
            value = np.ones(shape, np.float32)
        elif path[-1] == "embeddings":
            value = rng.uniform(-1 / shape[0], 1 / shape[0], shape).astype(np.float32)
        else:  # bias
            value = np.zeros(shape, np.float32)
        out[path] = value
    return out
