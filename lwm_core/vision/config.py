"""The VQGAN's configuration: one frozen dataclass with the original `VQGANConfig`'s field names, presets
and typed overrides.

The field names, defaults and meanings are those of LWM's `lwm/vqgan.py` (`VQGANConfig`), so a dict of
the original's keys configures this model unchanged; the defaults are the released VQGAN (`preset
"default"`). The original had no config file for its VQGAN (its `load_config` ignored the path and
returned the defaults); `lwm convert vqgan` writes one, `config.json`, beside the safetensors.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from lwm_core.config import coerce, did_you_mean
from lwm_core.errors import LWMError

# GroupNorm in the original is Flax's default nn.GroupNorm(): 32 groups (eps 1e-6), so every width that
# it normalises must be a multiple of 32.
GROUPS = 32
MODEL_TYPE = "vqgan"  # what config.json says, so that a directory tells what it holds


def _f(description: str, **kwargs: Any) -> Any:
    return field(metadata={"help": description}, **kwargs)


@dataclass(frozen=True)
class VQGANConfig:
    """An LWM VQGAN. Frames are square, NHWC, pixels in [-1, 1]; codes are (resolution / f)^2 per frame
    with f = 2^(len(channel_mult) - 1) (16 x 16 = 256 for the released model)."""

    resolution: int = _f("frame height and width in pixels (the encoder accepts only this size)", default=256)
    num_channels: int = _f("pixel channels (3: RGB)", default=3)
    hidden_channels: int = _f("width of the first level; level i has hidden_channels * channel_mult[i]",
                              default=128)
    channel_mult: tuple[int, ...] = _f("width multiplier per level; each level but the last halves the "
                                       "frame", default=(1, 2, 2, 4, 6))
    num_res_blocks: int = _f("ResNet blocks per encoder level, 0 or more (the decoder has one more per level)",
                             default=2)
    attn_resolutions: tuple[int, ...] = _f("frame sizes at which a self-attention block follows each ResNet "
                                           "block (none in the released model)", default=())
    no_attn_mid_block: bool = _f("no self-attention between the two mid-block ResNet blocks", default=True)
    encoder_mid_block: bool = _f("the encoder's MidBlock (the released model has one); without it, and with few "
                                 "ResNet blocks, a code sees only its own neighbourhood of pixels", default=True)
    z_channels: int = _f("channels of the encoder output and of the decoder input", default=64)
    num_embeddings: int = _f("codebook size: codes are 0 .. num_embeddings - 1", default=8192)
    quantized_embed_dim: int = _f("width of a codebook entry", default=64)
    dropout: float = _f("ResNet dropout rate; training only (encode and decode are deterministic)", default=0.0)
    resample_with_conv: bool = _f("a 3x3 conv in each down/upsample (else average pooling / plain nearest "
                                  "upsampling)", default=True)
    commitment_cost: float = _f("VQ commitment loss weight; training only", default=0.25)

    def __post_init__(self) -> None:
        for name in ("resolution", "num_channels", "hidden_channels", "z_channels", "num_embeddings",
                     "quantized_embed_dim"):
            if getattr(self, name) <= 0:
                raise LWMError(f"VQGAN config {name}={getattr(self, name)} must be positive")
        if self.num_res_blocks < 0:
            raise LWMError(f"VQGAN config num_res_blocks={self.num_res_blocks} must not be negative")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise LWMError(f"VQGAN config channel_mult={list(self.channel_mult)} must be one or more positive "
                           f"integers, e.g. 1,2,2,4,6")
        bad = [self.hidden_channels * m for m in self.channel_mult if self.hidden_channels * m % GROUPS]
        if bad:
            raise LWMError(f"VQGAN config hidden_channels={self.hidden_channels} x channel_mult="
                           f"{list(self.channel_mult)} gives width {bad[0]}, not a multiple of the {GROUPS} "
                           f"GroupNorm groups; use widths that are")
        if self.resolution % self.downsample_factor:
            raise LWMError(f"VQGAN config resolution={self.resolution} is not divisible by the downsampling "
                           f"factor {self.downsample_factor} (2^(levels - 1)); pick a multiple of it")
        if not 0.0 <= self.dropout < 1.0:
            raise LWMError(f"VQGAN config dropout={self.dropout} must be in [0, 1)")

    # Derived sizes.
    @property
    def num_resolutions(self) -> int:  # levels (the original's config.num_resolutions)
        return len(self.channel_mult)

    @property
    def downsample_factor(self) -> int:  # f: pixels per code along each side
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def codes_per_side(self) -> int:  # 16 for the released model
        return self.resolution // self.downsample_factor

    def replace(self, **overrides: Any) -> "VQGANConfig":
        return apply_vqgan_overrides(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The fields, with `model_type` first so that a config.json says it describes a VQGAN."""
        return {"model_type": MODEL_TYPE, **{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in dataclasses.asdict(self).items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VQGANConfig":
        return apply_vqgan_overrides(cls(), data)


_PRESETS = {
    "default": {},  # the released LWM VQGAN
    # For tests: 32 x 32 frames -> 8 x 8 codes, three levels so that both resampling steps, a width
    # change (the 1x1 shortcut conv) and every parameter kind are there; compiles in about a second.
    "tiny": dict(resolution=32, hidden_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, z_channels=8,
                 num_embeddings=64, quantized_embed_dim=8),
    # For the synthetic world (`lwm world make --size 40`: 40 x 40 frames of flat shapes and sparks): f = 4 gives
    # 10 x 10 = 100 codes per frame, in LWM's layout (a code grid per frame, end-of-frame, end-of-vision), so the
    # demo models read and write frames as the released ones do; a video of 8 frames is 808 codes (at 64 x 64,
    # 16 x 16 codes and LWM's own 256 a frame, 2,056: 2.5x longer to learn on a CPU, docs/demo.md). Widths
    # 64/128/128: at 40 pixels the narrower 32/64/64 blurred sparks into smears (29.6 dB against 31.1, and 36
    # of 60 clips still recognised after encode -> decode against 50). 512 entries of width 16 (a
    # low-dimensional lookup, as ViT-VQGAN argues, uses more of a codebook) are plenty for a world of a few
    # colours and shapes. The encoder has no ResNet blocks and no mid block, so a code's convolutions see only
    # its own neighbourhood: with LWM's deep encoder a patch of plain background also encodes where the
    # nearest shapes are, and the background took hundreds of codes that a language model over them must
    # then learn as noise (docs/demo.md has the measurements). The decoder keeps its depth (one ResNet block
    # per level and the mid block). (f = 8 was tried at 64 pixels: 4x fewer tokens per clip, but its
    # 8 x 8-pixel codes averaged the colours of a shape's edge away: 23 dB and 2 of 60 clips still
    # recognised after 750 steps, against 29 dB for f = 4.)
    "world": dict(resolution=40, hidden_channels=64, channel_mult=(1, 2, 2), num_res_blocks=0,
                  encoder_mid_block=False, z_channels=32, num_embeddings=512, quantized_embed_dim=16),
}
VQGAN_PRESETS = tuple(_PRESETS)

# Keys a config.json may carry besides the fields: what it describes, not how.
_INFORMATIONAL = {"model_type", "format", "num_resolutions"}


def get_vqgan_config(name: str = "default", **overrides: Any) -> VQGANConfig:
    """A preset (`default` = the released VQGAN, `tiny`, `world`) with typed overrides applied."""
    if name not in _PRESETS:
        raise LWMError(f"unknown VQGAN preset {name!r}{did_you_mean(name, VQGAN_PRESETS)} "
                       f"(presets: {', '.join(VQGAN_PRESETS)})")
    return apply_vqgan_overrides(VQGANConfig(), {**_PRESETS[name], **overrides})


def apply_vqgan_overrides(config: VQGANConfig, overrides: Mapping[str, Any]) -> VQGANConfig:
    """`config` with `overrides` (field -> value, or a string as typed on a command line) applied, each
    parsed by its field's type; unknown keys are refused with the nearest valid one."""
    fields = {f.name: f for f in dataclasses.fields(VQGANConfig)}
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in fields:
            if name in _INFORMATIONAL:
                if name == "model_type" and value != MODEL_TYPE:
                    raise LWMError(f"config model_type={value!r} describes another model, not a VQGAN")
                continue
            raise LWMError(f"unknown VQGAN config key {name!r}{did_you_mean(name, fields)} "
                           f"(keys: {', '.join(fields)})")
        kind = fields[name].type
        changes[name] = _int_tuple(name, value) if str(kind).startswith("tuple") else coerce(name, kind, value)
    return dataclasses.replace(config, **changes) if changes else config


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    """`(1, 2)`, `[1, 2]`, `"1,2"`, `"(1, 2)"`, `""` or `"()"` -> a tuple of ints (strings are parsed with
    `ast`, never evaluated)."""
    error = LWMError(f"config {name}={value!r} is not a list of integers, e.g. 1,2,2,4,6")
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "([":
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise error from None
        else:
            value = [part for part in text.split(",") if part.strip()]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise error
    try:
        return tuple(coerce(name, int, v) for v in value)
    except LWMError:
        raise error from None
