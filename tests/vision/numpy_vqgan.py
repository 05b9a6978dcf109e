"""An independent float64 numpy VQGAN, written from LWM's lwm/vqgan.py and LWM_REFERENCE.md section 8 and
reading the parameters by their original names: the reference that lwm_core/vision/vqgan.py is checked
against (tests/vision/test_vqgan.py)."""

from __future__ import annotations

import numpy as np

GROUPS, EPS = 32, 1e-6  # Flax's GroupNorm defaults, which the original uses


def conv(x, p, stride=1, pad=None):
    """NHWC conv with an HWIO kernel; `pad` None is SAME for stride 1 (kernel // 2 on every side)."""
    k, b = p["kernel"].astype(np.float64), p["bias"].astype(np.float64)
    kh, kw = k.shape[:2]
    if pad is None:
        pad = [(kh // 2, kh // 2), (kw // 2, kw // 2)]
    x = np.pad(x, [(0, 0), *pad, (0, 0)])
    H = (x.shape[1] - kh) // stride + 1
    W = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], H, W, k.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + stride * H:stride, j:j + stride * W:stride, :] @ k[i, j]
    return out + b


def group_norm(x, p):
    N, H, W, C = x.shape
    g = x.reshape(N, H, W, GROUPS, C // GROUPS)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + EPS)).reshape(x.shape) * p["scale"] + p["bias"]


def silu(x):
    return x / (1 + np.exp(-x))


def resnet(x, p):
    h = conv(silu(group_norm(x, p["GroupNorm_0"])), p["Conv_0"])
    h = conv(silu(group_norm(h, p["GroupNorm_1"])), p["Conv_1"])
    return h + (conv(x, p["Conv_2"]) if "Conv_2" in p else x)


def attention(x, p):
    N, H, W, C = x.shape
    h = group_norm(x, p["GroupNorm_0"])
    q, k, v = (conv(h, p[f"Conv_{i}"]).reshape(N, H * W, C) for i in range(3))
    s = q @ k.transpose(0, 2, 1) / np.sqrt(C)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return conv((s @ v).reshape(N, H, W, C), p["Conv_3"]) + x


def downsample(x, p, with_conv):
    if not with_conv:
        N, H, W, C = x.shape
        return x.reshape(N, H // 2, 2, W // 2, 2, C).mean(axis=(2, 4))
    return conv(x, p["Conv_0"], stride=2, pad=[(0, 1), (0, 1)])  # pad bottom/right only, then VALID


def upsample(x, p, with_conv):
    x = x.repeat(2, axis=1).repeat(2, axis=2)  # nearest
    return conv(x, p["Conv_0"]) if with_conv else x


def _level(x, p, c, out_blocks):
    """The ResNet blocks of one level, each followed by attention at the attn_resolutions."""
    for j in range(out_blocks):
        x = resnet(x, p[f"ResnetBlock_{j}"])
        if x.shape[1] in c.attn_resolutions:
            x = attention(x, p[f"AttnBlock_{j}"])
    return x


def mid(x, p, c):
    x = resnet(x, p["ResnetBlock_0"])
    if not c.no_attn_mid_block:
        x = attention(x, p["AttnBlock_0"])
    return resnet(x, p["ResnetBlock_1"])


def latents(params, c, pixels):
    """pixels (N, R, R, 3) -> what is quantized (N, R/f, R/f, quantized_embed_dim)."""
    e = params["encoder"]
    x = conv(pixels.astype(np.float64), e["Conv_0"])
    L = len(c.channel_mult)
    for level in range(L):
        p = e.get(f"DownsamplingBlock_{level}", {})  # a last level without ResNet blocks has no parameters
        x = _level(x, p, c, c.num_res_blocks)
        if level != L - 1:
            x = downsample(x, p.get("Downsample_0"), c.resample_with_conv)
    if c.encoder_mid_block:
        x = mid(x, e["MidBlock_0"], c)
    x = conv(silu(group_norm(x, e["GroupNorm_0"])), e["Conv_1"])
    return conv(x, params["quant_conv"])


def nearest_codes(z, embeddings):
    """Exact squared distances in float64 -> (codes, distance gap between the best and the second)."""
    d = ((z[..., None, :] - embeddings.astype(np.float64)) ** 2).sum(-1)  # (..., V)
    order = np.sort(d, axis=-1)
    return d.argmin(-1), order[..., 1] - order[..., 0]


def decode_unclipped(params, c, z):
    """z (N, h, w, quantized_embed_dim) -> pixels (N, R, R, 3) before the clip."""
    d = params["decoder"]
    x = conv(conv(z.astype(np.float64), params["post_quant_conv"]), d["Conv_0"])
    x = mid(x, d["MidBlock_0"], c)
    L = len(c.channel_mult)
    for k, level in enumerate(reversed(range(L))):  # UpsamplingBlock_0 is the deepest level
        p = d[f"UpsamplingBlock_{k}"]
        x = _level(x, p, c, c.num_res_blocks + 1)
        if level != 0:
            x = upsample(x, p.get("Upsample_0"), c.resample_with_conv)
    return conv(silu(group_norm(x, d["GroupNorm_0"])), d["Conv_1"])
