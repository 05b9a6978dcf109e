"""The LWM VQGAN on CPU: lwm's encode and decode frames/s against the same network in torch.

lwm: `lwm_core.load_vqgan("random:<config>", mesh="1,1,1,1", batch_size=--frames)`, its public
`.encode(pixels)` (float32 (N, R, R, 3) in [-1, 1] -> int32 codes (N, R/f, R/f)) and `.decode(codes)`,
numpy in and out, one compiled call per batch. `random:default` is the released architecture with random
weights (~146M parameters; 256 x 256 frames -> 16 x 16 codes of 8192); `--config tiny` the test preset
(32 x 32 frames -> 8 x 8 codes, seconds), for a quick check.

torch: `TorchVQGAN` below, a plain `torch.nn` port of lwm_core/vision/vqgan.py (3x3 convs with padding 1,
GroupNorm(32, eps 1e-6), SiLU, the downsample that pads only the bottom and right before a stride-2 conv,
nearest 2x upsampling, the L2-nearest codebook entry by the same expanded distance |z|^2 + |e|^2 - 2 z.e,
the clip of decoded pixels). Its modules carry Flax's names, so lwm's parameter tree loads into it name
for name (`torch_state`: HWIO conv kernels -> OIHW) with `load_state_dict(strict=True)`. It runs in
`--layout` channels_last (default: oneDNN's fast path on CPU; the NHWC frames are then a view, no copy)
or NCHW, under `torch.inference_mode`, with `--threads` threads (default: all cores); XLA's CPU client
uses all cores too.

Before anything is timed the two must compute the same network (`compare`), on smooth random frames:
  - latents (the encoder + quant_conv output that is quantized): max |lwm - torch| relative to their scale;
  - codes: the fraction identical. A code may differ only at a near-tie: where the two chosen codebook
    entries are, in float64 from lwm's latents, at distances that differ by less than `TIE` times the
    distance's scale (|z|^2 + |e|^2), which float32 rounding of the expanded distance cannot resolve;
  - decode: both decode lwm's codes; max |lwm - torch| pixel difference (pixels in [-1, 1]).
It refuses to time if any of them is beyond its bound. Then `--reps` rounds, lwm and torch interleaved
(encode, encode, decode, decode) so drift on a shared machine hits both alike, after one warm-up call
each (lwm's compilation happened in the check): frames/s from the fastest call, and the ratio lwm/torch
(>= 1: lwm is faster; benchmarks/README.md sets no bar for the VQGAN) as the median of the rounds'
back-to-back ratios. Every call is shown with the cores it got (CPU time / wall time), and the same
figures per CPU-second, which a neighbour taking cores for a while moves far less than wall times.

`--breakdown` times every stage of the network (conv_in, each level, mid block, the output head, the
quantizer; jitted one by one on lwm's side) on both sides, to show where the time goes.

Usage: python benchmarks/vqgan_vs_torch.py [--reps 3] [--frames 8] [--config default|tiny] [--breakdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# torch is needed to define the port's modules (a benchmark, not the CLI: the import cost does not matter).
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Runs from a checkout without installing the package; cpu_vs_hf sits beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_vs_hf import interleaved  # noqa: E402
from train_vs_torch import clocked  # noqa: E402

from lwm_core.vision.config import GROUPS  # noqa: E402  (32: Flax's default GroupNorm, which the original uses)

EPS = 1e-6  # Flax's GroupNorm epsilon, which the original uses (lwm_core/vision/vqgan.py)
TIE = 1e-5  # a differing code must be a near-tie: float64 distance gap < TIE x (|z|^2 + |e|^2)
LATENT_TOL = 1e-4  # max |lwm - torch| latent difference, relative to the latents' max |value|
PIXEL_TOL = 1e-3  # max |lwm - torch| decoded pixel difference (pixels in [-1, 1])


# ---- the torch port. Attribute names are Flax's (`<Class>_<k>`), so a state dict key is a Flax path.

def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    # SAME padding for the stride-1 convs (k // 2 each side); the stride-2 conv is VALID after Downsample's pad.
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0)


def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, c, eps=EPS)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.GroupNorm_0, self.Conv_0 = group_norm(cin), conv(cin, cout)
        self.GroupNorm_1, self.Conv_1 = group_norm(cout), conv(cout, cout)
        if cin != cout:
            self.Conv_2 = conv(cin, cout, 1)  # the 1x1 shortcut

    def forward(self, x):  # (N, C, H, W) -> (N, out, H, W)
        h = self.Conv_0(F.silu(self.GroupNorm_0(x)))
        h = self.Conv_1(F.silu(self.GroupNorm_1(h)))
        return h + (self.Conv_2(x) if hasattr(self, "Conv_2") else x)


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.GroupNorm_0 = group_norm(c)
        self.Conv_0, self.Conv_1, self.Conv_2, self.Conv_3 = (conv(c, c, 1) for _ in range(4))

    def forward(self, x):  # (N, C, H, W)
        N, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        # (N, C, H, W) -> (N, HW, C) for each of q, k, v
        q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (self.Conv_0, self.Conv_1, self.Conv_2))
        weights = torch.softmax(q @ k.transpose(1, 2) * C ** -0.5, dim=-1)  # (N, HW, HW)
        h = (weights @ v).transpose(1, 2).reshape(N, C, H, W)  # (N, HW, C) -> (N, C, H, W)
        return self.Conv_3(h) + x


class Downsample(nn.Module):
    def __init__(self, c: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.Conv_0 = conv(c, c, 3, stride=2)

    def forward(self, x):
        if not hasattr(self, "Conv_0"):
            return F.avg_pool2d(x, 2)
        return self.Conv_0(F.pad(x, (0, 1, 0, 1)))  # (left, right, top, bottom): bottom and right only


class Upsample(nn.Module):
    def __init__(self, c: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.Conv_0 = conv(c, c)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # out[i] = in[i // 2], as jax.image.resize
        return self.Conv_0(x) if hasattr(self, "Conv_0") else x


class Sequence(nn.Module):
    """Children run in the order they were added (a level, the mid block)."""

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


def level(c, cin: int, cout: int, blocks: int, resolution: int, resample: nn.Module | None) -> Sequence:
    """A DownsamplingBlock (blocks = num_res_blocks) or UpsamplingBlock (num_res_blocks + 1)."""
    s = Sequence()
    for i in range(blocks):
        s.add_module(f"ResnetBlock_{i}", ResnetBlock(cin, cout))
        cin = cout
        if resolution in c.attn_resolutions:
            s.add_module(f"AttnBlock_{i}", AttnBlock(cout))
    if resample is not None:
        s.add_module(f"{type(resample).__name__}_0", resample)
    return s


def mid_block(c, width: int) -> Sequence:
    s = Sequence()
    s.add_module("ResnetBlock_0", ResnetBlock(width, width))
    if not c.no_attn_mid_block:
        s.add_module("AttnBlock_0", AttnBlock(width))
    s.add_module("ResnetBlock_1", ResnetBlock(width, width))
    return s


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        widths = [c.hidden_channels * m for m in c.channel_mult]
        self.Conv_0 = conv(c.num_channels, c.hidden_channels)
        cin = c.hidden_channels
        for i, w in enumerate(widths):
            last = i == c.num_resolutions - 1
            self.add_module(f"DownsamplingBlock_{i}", level(c, cin, w, c.num_res_blocks, c.resolution // 2**i,
                                                            None if last else Downsample(w, c.resample_with_conv)))
            cin = w
        self.MidBlock_0 = mid_block(c, widths[-1])
        self.GroupNorm_0, self.Conv_1 = group_norm(widths[-1]), conv(widths[-1], c.z_channels)
        self.stages = ["Conv_0", *(f"DownsamplingBlock_{i}" for i in range(c.num_resolutions)), "MidBlock_0", "head"]

    def stage(self, name: str, x):
        if name == "head":
            return self.Conv_1(F.silu(self.GroupNorm_0(x)))
        return getattr(self, name)(x)

    def forward(self, x):  # (N, num_channels, R, R) -> (N, z_channels, R/f, R/f)
        for name in self.stages:
            x = self.stage(name, x)
        return x


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        widths = [c.hidden_channels * m for m in c.channel_mult]
        self.Conv_0 = conv(c.z_channels, widths[-1])
        self.MidBlock_0 = mid_block(c, widths[-1])
        cin = widths[-1]
        for k, lvl in enumerate(reversed(range(c.num_resolutions))):  # UpsamplingBlock_0 is the deepest level
            w = widths[lvl]
            self.add_module(f"UpsamplingBlock_{k}", level(c, cin, w, c.num_res_blocks + 1,
                                                          c.codes_per_side * 2**k,
                                                          Upsample(w, c.resample_with_conv) if lvl else None))
            cin = w
        self.GroupNorm_0, self.Conv_1 = group_norm(widths[0]), conv(widths[0], c.num_channels)
        self.stages = ["Conv_0", "MidBlock_0", *(f"UpsamplingBlock_{k}" for k in range(c.num_resolutions)), "head"]

    stage = Encoder.stage
    forward = Encoder.forward  # (N, z_channels, R/f, R/f) -> (N, num_channels, R, R), not clipped


class Quantizer(nn.Module):
    def __init__(self, n_e: int, e_dim: int):
        super().__init__()
        self.embeddings = nn.Parameter(torch.empty(n_e, e_dim), requires_grad=False)

    def codes(self, z):  # (N, E, h, w) -> int (N, h, w)
        N, E, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, E)  # (P, E): every position of every frame
        e = self.embeddings  # (V, E)
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None] - 2 * flat @ e.T  # (P, V), as lwm expands it
        return d.argmin(1).reshape(N, h, w)  # the first minimum on a tie, as jnp.argmin


class TorchVQGAN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.encoder, self.decoder = Encoder(c), Decoder(c)
        self.quantize = Quantizer(c.num_embeddings, c.quantized_embed_dim)
        self.quant_conv = conv(c.z_channels, c.quantized_embed_dim, 1)
        self.post_quant_conv = conv(c.quantized_embed_dim, c.z_channels, 1)

    def latents(self, x):  # (N, 3, R, R) -> (N, E, h, w)
        return self.quant_conv(self.encoder(x))

    def decode_latents(self, z):  # (N, E, h, w) -> (N, 3, R, R) in [-1, 1]
        return self.decoder(self.post_quant_conv(z)).clamp(-1, 1)


def torch_state(flat: dict) -> dict:
    """lwm's parameters by Flax path -> the port's state dict: paths joined by '.', conv kernels HWIO ->
    OIHW, GroupNorm `scale` -> `weight`."""
    state = {}
    for path, value in flat.items():
        *module, leaf = path
        value = np.array(value, np.float32)  # a writable copy: torch shares its memory
        if leaf == "kernel":
            leaf, value = "weight", value.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        elif leaf == "scale":
            leaf = "weight"
        state[".".join([*module, leaf])] = torch.from_numpy(np.ascontiguousarray(value))
    return state


# ---- both sides

class Pair:
    """lwm's VQGAN and its torch port, holding the same weights, with numpy NHWC in and out on both sides."""

    def __init__(self, config_name: str, frames: int, layout: str, seed: int = 0):
        import jax
        from flax.traverse_util import flatten_dict

        import lwm_core
        from lwm_core.vision.vqgan import VQGANModel

        self.vq = lwm_core.load_vqgan(f"random:{config_name}", mesh="1,1,1,1", batch_size=frames, seed=seed)
        self.config = c = self.vq.config
        flax_model = VQGANModel(c)
        self._latents = jax.jit(lambda p, x: flax_model.apply({"params": p}, x, method=VQGANModel.latents))
        self.flat = {path: np.asarray(v) for path, v in flatten_dict(jax.device_get(self.vq.params)).items()}
        self.peer = TorchVQGAN(c).eval()
        self.peer.load_state_dict(torch_state(self.flat), strict=True)
        self.layout = layout
        if layout == "channels_last":
            self.peer = self.peer.to(memory_format=torch.channels_last)

    def to_torch(self, x: np.ndarray):  # NHWC numpy -> an (N, C, H, W) tensor in the peer's layout
        if not x.flags.writeable:  # jax's arrays read as numpy are read-only; torch wants to own writable memory
            x = x.copy()
        t = torch.from_numpy(x).permute(0, 3, 1, 2)  # a view: channels_last strides, no copy
        return t if self.layout == "channels_last" else t.contiguous()

    def lwm_latents(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self._latents(self.vq.params, pixels))

    def torch_latents(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.peer.latents(self.to_torch(pixels)).permute(0, 2, 3, 1).numpy()

    def torch_encode(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.peer.quantize.codes(self.peer.latents(self.to_torch(pixels))).to(torch.int32).numpy()

    def torch_decode(self, codes: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            z = self.peer.quantize.embeddings[torch.from_numpy(codes).long()]  # (N, h, w, E)
            z = z.permute(0, 3, 1, 2)  # (N, h, w, E) -> (N, E, h, w): channels_last strides already
            z = z.contiguous(memory_format=torch.channels_last if self.layout == "channels_last"
                             else torch.contiguous_format)
            # NHWC out, contiguous as lwm's (a view for channels_last, a copy for NCHW)
            return self.peer.decode_latents(z).permute(0, 2, 3, 1).contiguous().numpy()


def test_frames(config, n: int, seed: int = 0) -> np.ndarray:
    """Smooth frames in [-1, 1] (a random image at 1/4 of the resolution, upsampled): closer to video frames
    than uniform noise."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(-1, 1, (n, config.resolution // 4, config.resolution // 4, config.num_channels))
    return small.repeat(4, axis=1).repeat(4, axis=2).astype(np.float32)


def compare(pair: Pair, pixels: np.ndarray) -> dict:
    """The two sides on the same frames: latents, codes (identical but for near-ties) and decoded pixels.
    Returns the figures and `ok` (every one within its bound)."""
    za, zb = pair.lwm_latents(pixels), pair.torch_latents(pixels)
    latent_diff = float(np.abs(za - zb).max() / np.abs(za).max())
    codes, peer_codes = pair.vq.encode(pixels), pair.torch_encode(pixels)
    differ = codes != peer_codes
    # Differing codes: the float64 distances from lwm's latents to both choices, against the distance's scale.
    e = pair.flat[("quantize", "embeddings")].astype(np.float64)
    z = za[differ].astype(np.float64)  # (M, E)
    gap = np.abs(((z - e[codes[differ]]) ** 2).sum(-1) - ((z - e[peer_codes[differ]]) ** 2).sum(-1))
    scale = (z ** 2).sum(-1) + (e[codes[differ]] ** 2).sum(-1)
    worst_tie = float((gap / scale).max()) if differ.any() else 0.0
    pixels_a, pixels_b = pair.vq.decode(codes), pair.torch_decode(codes)
    pixel_diff = float(np.abs(pixels_a - pixels_b).max())
    out = {"latent_diff": latent_diff, "agreement": 1 - float(differ.mean()), "differ": int(differ.sum()),
           "codes": int(differ.size), "worst_tie": worst_tie, "pixel_diff": pixel_diff,
           "distinct_codes": len(np.unique(codes))}
    out["ok"] = latent_diff < LATENT_TOL and worst_tie < TIE and pixel_diff < PIXEL_TOL
    return out


def breakdown(pair: Pair, pixels: np.ndarray) -> dict:
    """Callables for `--breakdown`: each stage of the network alone, on its real input, on both sides (lwm:
    the Flax submodule with its own parameters, jitted on its own; torch: the port's module)."""
    import flax.linen as fnn
    import jax

    from lwm_core.vision import vqgan as fv

    c, params, peer = pair.config, pair.vq.params, pair.peer

    class Head(fnn.Module):  # GroupNorm_0, SiLU, Conv_1: the end of the encoder and of the decoder
        out: int

        @fnn.compact
        def __call__(self, x):
            return fnn.Conv(self.out, (3, 3), name="Conv_1")(fnn.silu(fnn.GroupNorm(name="GroupNorm_0")(x)))

    fns: dict = {}

    def add(part: str, stages: dict, tree: dict, ours, x):
        """Time `stages` (name -> Flax module) in order, each on the previous one's output."""
        x_lwm, x_torch = jax.device_put(x), pair.to_torch(np.ascontiguousarray(x))
        for name, module in stages.items():
            p = tree if name == "head" else tree[name]  # the head's params sit in the part's own tree
            f = jax.jit(lambda p, x, m=module: m.apply({"params": p}, x))
            y_lwm = jax.block_until_ready(f(p, x_lwm))
            with torch.inference_mode():
                y_torch = ours.stage(name, x_torch)
            label = f"{part} {name} -> {'x'.join(map(str, y_lwm.shape[1:]))}"
            fns[f"lwm {label}"] = lambda f=f, p=p, x=x_lwm: jax.block_until_ready(f(p, x))
            fns[f"torch {label}"] = lambda n=name, x=x_torch: _no_grad(ours.stage, n, x)
            x_lwm, x_torch = y_lwm, y_torch

    levels = range(c.num_resolutions)
    add("encoder", {"Conv_0": fnn.Conv(c.hidden_channels, (3, 3)),
                    **{f"DownsamplingBlock_{i}": fv.DownsamplingBlock(c, i) for i in levels},
                    "MidBlock_0": fv.MidBlock(c), "head": Head(c.z_channels)},
        params["encoder"], peer.encoder, pixels)
    z = pair.lwm_latents(pixels)
    quant = fv.VectorQuantizer(c.num_embeddings, c.quantized_embed_dim)
    qf = jax.jit(lambda p, z: quant.apply({"params": p}, z, method=fv.VectorQuantizer.codes))
    z_lwm, z_torch = jax.device_put(z), pair.to_torch(np.ascontiguousarray(z))
    fns["lwm quantize"] = lambda: jax.block_until_ready(qf(params["quantize"], z_lwm))
    fns["torch quantize"] = lambda: _no_grad(peer.quantize.codes, z_torch)
    # The decoder's input: the codebook rows of the codes through post_quant_conv (lwm's, on both sides).
    entries = pair.flat[("quantize", "embeddings")][pair.vq.encode(pixels)]
    post = jax.jit(lambda p, z: fnn.Conv(c.z_channels, (1, 1)).apply({"params": p}, z))
    add("decoder", {"Conv_0": fnn.Conv(c.hidden_channels * c.channel_mult[-1], (3, 3)), "MidBlock_0": fv.MidBlock(c),
                    **{f"UpsamplingBlock_{k}": fv.UpsamplingBlock(c, lvl) for k, lvl in enumerate(reversed(levels))},
                    "head": Head(c.num_channels)},
        params["decoder"], peer.decoder, np.asarray(post(params["post_quant_conv"], entries)))
    return fns


def _no_grad(fn, *args):
    with torch.inference_mode():
        return fn(*args)


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per figure (medians reported)")
    parser.add_argument("--frames", type=int, default=8, help="frames per batch (lwm's batch_size: one call)")
    parser.add_argument("--config", choices=("default", "tiny"), default="default",
                        help="default: the released architecture (256 x 256 -> 16 x 16 codes); tiny: the test preset")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last",
                        help="torch memory format of activations")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each stage (levels, mid block, head, quantizer) on both sides")
    parser.add_argument("--trace", metavar="DIR", default=None,
                        help="after timing, write a JAX profile of one lwm encode and decode to DIR")
    args = parser.parse_args()

    import jax

    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    print(f"jax {jax.__version__} ({jax.default_backend()}, {len(jax.devices())} device), torch {torch.__version__}"
          f" ({torch.get_num_threads()} threads, {args.layout}), {os.cpu_count()} cores; load average {load[0]:.2f}",
          file=sys.stderr)
    t0 = time.perf_counter()
    pair = Pair(args.config, args.frames, args.layout)
    c = pair.config
    params = sum(v.size for v in pair.flat.values())
    print(f"VQGAN random:{args.config}: {params / 1e6:.1f}M parameters, {c.resolution}x{c.resolution} frames -> "
          f"{c.codes_per_side}x{c.codes_per_side} codes of {c.num_embeddings}; batch {args.frames} "
          f"(built in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    pixels = test_frames(c, args.frames)

    # ---- the same network on both sides (lwm compiles here)
    t0 = time.perf_counter()
    check = compare(pair, pixels)
    print(f"check ({time.perf_counter() - t0:.1f} s, lwm's compilation included):")
    print(f"  latents: max |lwm - torch| = {check['latent_diff']:.1e} of their max |value| (bound {LATENT_TOL:g})")
    print(f"  codes: {check['agreement']:.2%} identical ({check['differ']} of {check['codes']} differ; "
          f"{check['distinct_codes']} distinct codes); worst differing code's float64 distance gap "
          f"{check['worst_tie']:.1e} of |z|^2 + |e|^2 (a near-tie below {TIE:g})")
    print(f"  decode of lwm's codes: max |lwm - torch| pixel = {check['pixel_diff']:.1e} (bound {PIXEL_TOL:g})")
    if not check["ok"]:
        raise SystemExit("lwm and torch disagree beyond float32 rounding: the timings would compare different "
                         "networks")

    codes = pair.vq.encode(pixels)
    fns = {"lwm encode": lambda: pair.vq.encode(pixels), "torch encode": lambda: pair.torch_encode(pixels),
           "lwm decode": lambda: pair.vq.decode(codes), "torch decode": lambda: pair.torch_decode(codes)}
    if args.breakdown:
        fns.update(breakdown(pair, pixels))
    clocks: dict[str, list] = {name: [] for name in fns}  # (wall, CPU seconds) of every call, warm-up first
    t = interleaved({name: clocked(fn, clocks[name]) for name, fn in fns.items()}, args.reps)
    # Ratios are the median over rounds of each round's back-to-back pair (torch time / lwm time: >= 1 means lwm
    # is faster): on a shared machine a neighbour takes cores from whole rounds, which moves the wall times by
    # up to 3x but both sides of a round alike. The CPU seconds a call needs move far less: shown too.
    cpu = {name: statistics.median(used for _, used in log[1:]) for name, log in clocks.items()}
    best = {name: min(wall for wall, _ in log[1:]) for name, log in clocks.items()}  # the least disturbed call

    def ratio(ours: str, peer: str, k: int = 0) -> float:  # k = 0: wall time, 1: CPU time
        return statistics.median(b[k] / a[k] for a, b in zip(clocks[ours][1:], clocks[peer][1:]))

    load.append(os.getloadavg()[0])
    if args.trace:
        with jax.profiler.trace(args.trace, create_perfetto_trace=True):
            pair.vq.encode(pixels)
            pair.vq.decode(codes)
        print(f"profile of one lwm encode and decode: {args.trace}", file=sys.stderr)

    # ---- figures
    print(f"\n{cpu_model()}, {os.cpu_count()} cores; jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, {args.layout}); load average {load[0]:.2f} at the start, "
          f"{load[1]:.2f} at the end")
    for name in ("lwm encode", "torch encode", "lwm decode", "torch decode"):  # cores = CPU time / wall time
        print(f"{name}: " + ", ".join(f"{w:.3g} s ({used / w:.1f} cores)" for w, used in clocks[name][1:])
              + f"; median {t[name]:.3g} s per batch of {args.frames}")
    if args.breakdown:
        print(f"\n{'stage (s per batch, medians)':<46} {'lwm':>7} {'torch':>7} {'ratio':>6} {'lwm cpu-s':>9} "
              f"{'torch cpu-s':>11} {'ratio':>6}")
        for name in fns:
            if name.startswith("lwm ") and name not in ("lwm encode", "lwm decode"):
                stage, peer = name[4:], f"torch {name[4:]}"
                print(f"{stage:<46} {t[name]:>7.3f} {t[peer]:>7.3f} {ratio(name, peer):>6.2f} {cpu[name]:>9.3f} "
                      f"{cpu[peer]:>11.3f} {ratio(name, peer, 1):>6.2f}")
    # benchmarks/README.md: no bar for the VQGAN yet; a ratio >= 1 means lwm is faster.
    print(f"\nframes/s: the fastest of the {args.reps} calls; per CPU-second: the median; ratio: the median of the "
          f"rounds' lwm/torch ratios")
    print(f"{'figure':<38} {'lwm':>8} {'torch':>8} {'ratio':>6}  {'bar':>4}  met")
    for name in ("encode", "decode"):
        size = f"({c.resolution}x{c.resolution}, {args.frames})"
        for k, (figure, per) in enumerate(((f"{name} frames/s {size}", best), (f"{name} frames per CPU-second", cpu))):
            ours, peer = args.frames / per[f"lwm {name}"], args.frames / per[f"torch {name}"]
            print(f"{figure:<38} {ours:>8.4g} {peer:>8.4g} {ratio(f'lwm {name}', f'torch {name}', k):>6.2f}  "
                  f"{'-':>4}  -")

if __name__ == "__main__":
    from lwm_cli import _malloc

    _malloc.reexec()  # glibc's allocator as the `lwm` command runs with it
    main()
