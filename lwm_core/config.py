"""Model configuration: one frozen, typed dataclass, presets, released-model cards and safe overrides.

The same `ModelConfig` object comes from a preset name, a card, a JSON file, `--set key=value` on the
command line, or LWM's own override strings (`"dict(theta=50000000,max_sequence_length=32768)"`), which
are parsed with `ast` and never evaluated.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

# The attention vocabularies are the attention package's (its dispatcher decides among them).
from lwm_core.attention.dispatch import ATTENTION_IMPLS, ATTENTION_KINDS, SEQUENCE_LAYOUTS
from lwm_core.errors import LWMError

REMAT_POLICIES = ("auto", "none", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "dots_attention", "checkpoint_dots", "everything_saveable")

# Vision vocabulary: 8192 VQGAN codes + 256 reserved ids (8192 = end of frame, 8193 = end of vision).
VISION_VOCAB_SIZE = 8448


def _f(description: str, **kwargs: Any) -> Any:
    return field(metadata={"help": description}, **kwargs)


@dataclass(frozen=True)
class ModelConfig:
    """A LLaMA-2 / LWM model. Field help strings are what `lwm ... --help-config` prints."""

    vocab_size: int = _f("text vocabulary size (32000 for LLaMA-2 sentencepiece)", default=32000)
    hidden_size: int = _f("model width D", default=4096)
    intermediate_size: int = _f("FFN width F", default=11008)
    num_hidden_layers: int = _f("number of transformer blocks L", default=32)
    num_attention_heads: int = _f("query heads N; head_dim = hidden_size / num_attention_heads", default=32)
    num_key_value_heads: int = _f("key/value heads K (GQA); 0 means equal to num_attention_heads", default=0)
    rms_norm_eps: float = _f("RMSNorm epsilon", default=1e-6)
    theta: float = _f("RoPE base; per model (1e7 for 128K/256K text, 2.5e7 for 512K, 5e7 for 1M and vision)",
                      default=1e4)
    max_sequence_length: int = _f("context length: the longest prompt + reply the model accepts", default=4096)
    initializer_range: float = _f("std of the normal init for random weights", default=0.02)
    bos_token_id: int = _f("<s> id", default=1)
    eos_token_id: int = _f("</s> id", default=2)
    pad_token_id: int = _f("padding id", default=0)
    vision: bool = _f("vision-language model: adds vte (8448 x D) and vision_head", default=False)
    vision_vocab_size: int = _f("vision vocabulary (VQGAN codes + reserved ids)", default=VISION_VOCAB_SIZE)
    attention: str = _f("attention: auto (ring when the mesh has sp > 1, else dense/blockwise by length) | "
                        "dense | blockwise | ring", default="auto")
    sequence_layout: str = _f("ring attention layout over sp: zigzag (causal load balance) | contiguous",
                              default="zigzag")
    attention_impl: str = _f("attention kernels: auto (Pallas ring steps on GPU/TPU; lwm's fused C++ attention on "
                             "one CPU device, else JAX) | jax | pallas_gpu | pallas_tpu (| *_interpret for CPU "
                             "tests)", default="auto")
    query_chunk_size: int = _f("blockwise attention: query positions per block", default=512)
    key_chunk_size: int = _f("blockwise attention: key positions per block", default=1024)
    mlp_chunk_size: int = _f("blockwise FFN: positions per block (0 = no chunking)", default=1024)
    remat: str = _f("rematerialisation policy for each block in training (auto: keep the weight products and "
                    "the attention's output where the step fits in half a device's memory, else recompute "
                    "them): " + " | ".join(REMAT_POLICIES), default="auto")
    scan_layers: bool = _f("checkpoint layout written by lwm: stacked (scan) or one entry per layer", default=True)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_sequence_length", "query_chunk_size", "key_chunk_size"):
            if getattr(self, name) <= 0:
                raise LWMError(f"config {name}={getattr(self, name)} must be positive")
        if self.hidden_size % self.num_attention_heads:
            raise LWMError(
                f"config hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; pick heads that divide the width")
        if self.num_key_value_heads < 0 or (
                self.num_key_value_heads and self.num_attention_heads % self.num_key_value_heads):
            raise LWMError(
                f"config num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads="
                f"{self.num_attention_heads} (0 means no GQA)")
        if self.attention not in ATTENTION_KINDS:
            raise LWMError(f"config attention={self.attention!r} is not one of {', '.join(ATTENTION_KINDS)}")
        if self.sequence_layout not in SEQUENCE_LAYOUTS:
            raise LWMError(f"config sequence_layout={self.sequence_layout!r} is not one of "
                           f"{', '.join(SEQUENCE_LAYOUTS)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise LWMError(f"config attention_impl={self.attention_impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")
        if self.remat not in REMAT_POLICIES:
            raise LWMError(f"config remat={self.remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        if self.mlp_chunk_size < 0:
            raise LWMError(f"config mlp_chunk_size={self.mlp_chunk_size} must be >= 0")
        if self.theta <= 0 or self.rms_norm_eps <= 0:
            raise LWMError(f"config theta={self.theta} and rms_norm_eps={self.rms_norm_eps} must be positive")

    # Derived sizes, named with the shape letters used everywhere (see lwm_core/model/llama.py).
    @property
    def head_dim(self) -> int:  # H
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:  # K
        return self.num_key_value_heads or self.num_attention_heads

    def replace(self, **overrides: Any) -> "ModelConfig":
        return apply_overrides(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        return apply_overrides(cls(), data)

    def num_params(self) -> int:
        D, F, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        kv = self.kv_heads * self.head_dim
        per_layer = 2 * D * D + 2 * D * kv + 3 * D * F + 2 * D
        n = 2 * V * D + L * per_layer + D
        if self.vision:
            n += 2 * self.vision_vocab_size * D
        return n


# name: (hidden, intermediate, layers, heads, rms eps), from LWM's LLaMAConfig presets.
_PRESET_SIZES = {
    "debug": (256, 256, 2, 2, 1e-6),
    "200m": (1024, 2048, 14, 8, 1e-6),
    "1b": (2048, 5504, 22, 16, 1e-6),
    "3b": (3200, 8640, 26, 32, 1e-6),
    "7b": (4096, 11008, 32, 32, 1e-6),
    "13b": (5120, 13824, 40, 40, 1e-6),
    "30b": (6656, 17920, 60, 52, 1e-6),
    "65b": (8192, 22016, 80, 64, 1e-5),
}


def _preset(name: str) -> ModelConfig:
    if name == "tiny":  # for tests: compiles in well under a second
        return ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, max_sequence_length=1024, query_chunk_size=32,
                           key_chunk_size=32, mlp_chunk_size=32)
    D, F, L, N, eps = _PRESET_SIZES[name]
    return ModelConfig(hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=N,
                       rms_norm_eps=eps)


PRESETS = ("tiny", *_PRESET_SIZES)


@dataclass(frozen=True)
class ModelCard:
    """One released LWM checkpoint: where it lives and the config it was trained with."""

    name: str
    repo: str  # Hugging Face repo holding the Jax `params` (+ `tokenizer.model`, and `vqgan` for vision)
    preset: str
    theta: float
    max_sequence_length: int
    vision: bool


def _card(name: str, theta: float, context: int, vision: bool) -> ModelCard:
    return ModelCard(name, f"LargeWorldModel/{name}-Jax", "7b", theta, context, vision)


CARDS: dict[str, ModelCard] = {c.name: c for c in [
    _card("LWM-Text-128K", 1e7, 131072, False),
    _card("LWM-Text-256K", 1e7, 262144, False),
    _card("LWM-Text-512K", 2.5e7, 524288, False),
    _card("LWM-Text-1M", 5e7, 1048576, False),
    _card("LWM-Text-Chat-128K", 1e7, 131072, False),
    _card("LWM-Text-Chat-256K", 1e7, 262144, False),
    _card("LWM-Text-Chat-512K", 2.5e7, 524288, False),
    _card("LWM-Text-Chat-1M", 5e7, 1048576, False),
    _card("LWM-Chat-32K", 5e7, 32768, True),
    _card("LWM-Chat-128K", 5e7, 131072, True),
    _card("LWM-Chat-1M", 5e7, 1048576, True),
]}


def find_card(name: str) -> ModelCard | None:
    """The card for a card name or hub id (`LWM-Text-Chat-1M`, `LargeWorldModel/LWM-Text-Chat-1M-Jax`)."""
    key = name.rstrip("/").split("/")[-1].lower().removesuffix("-jax")
    for card in CARDS.values():
        if card.name.lower() == key:
            return card
    return None


def did_you_mean(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def get_config(name: str = "debug", **overrides: Any) -> ModelConfig:
    """A preset (`debug`, `7b`, ..., `tiny`) or card (`LWM-Text-Chat-1M`) with typed overrides applied."""
    card = find_card(name)
    if card is not None:
        base = _preset(card.preset).replace(theta=card.theta, max_sequence_length=card.max_sequence_length,
                                            vision=card.vision)
    elif name in PRESETS:
        base = _preset(name)
    else:
        raise LWMError(f"unknown preset or card {name!r}{did_you_mean(name, [*PRESETS, *CARDS])} "
                       f"(presets: {', '.join(PRESETS)}; cards: {', '.join(CARDS)})")
    return apply_overrides(base, overrides)


# Names used by the original LWM / EasyLM configs, mapped onto ours so their override strings work.
LWM_ALIASES = {
    "scan_query_chunk_size": "query_chunk_size",
    "scan_key_chunk_size": "key_chunk_size",
    "scan_mlp_chunk_size": "mlp_chunk_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "rope_theta": "theta",
    "max_position_embeddings": "max_sequence_length",
}
# LWM knobs that have no meaning here (their job is done differently); accepted and ignored so that
# LWM command lines keep working. Each comment says why.
LWM_IGNORED = {
    "scan_attention",  # our `attention` field chooses blockwise
    "scan_mlp",  # blockwise FFN is on whenever mlp_chunk_size > 0
    "remat_block", "remat_attention", "remat_mlp",  # our `remat` field is the one policy
    "mesh_dim",  # the mesh is a run option (`--mesh`), not part of the model
    "embd_pdrop", "attn_pdrop", "resid_pdrop",  # released models use no dropout
    "fcm_min_ratio", "fcm_max_ratio", "tie_word_embeddings", "use_cache", "update_llama_config",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(name: str, kind: Any, value: Any) -> Any:
    """Turn `value` (a string from the CLI, or a Python/JSON value) into the field's declared type."""
    if kind in (bool, "bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise LWMError(f"config {name}={value!r} is not a boolean; use true or false")
    if kind in (int, "int"):
        if isinstance(value, bool):
            raise LWMError(f"config {name}={value!r} is not an integer")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            raise LWMError(f"config {name}={value!r} is not an integer") from None
        if not number.is_integer():
            raise LWMError(f"config {name}={value!r} is not an integer")
        return int(number)
    if kind in (float, "float"):
        if isinstance(value, bool):
            raise LWMError(f"config {name}={value!r} is not a number")
        try:
            return float(str(value).replace("_", "")) if not isinstance(value, (int, float)) else float(value)
        except ValueError:
            raise LWMError(f"config {name}={value!r} is not a number") from None
    return str(value)


def apply_overrides(config: ModelConfig, overrides: Mapping[str, Any]) -> ModelConfig:
    """Return `config` with `overrides` applied, each parsed by its field's type; unknown keys refused."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    changes: dict[str, Any] = {}
    for raw_name, value in overrides.items():
        name = LWM_ALIASES.get(raw_name, raw_name)
        if name in LWM_IGNORED:
            continue
        if name not in fields:
            raise LWMError(f"unknown config key {raw_name!r}{did_you_mean(raw_name, [*fields, *LWM_ALIASES])}")
        changes[name] = coerce(name, fields[name].type, value)
    return dataclasses.replace(config, **changes) if changes else config


def parse_set_options(items: typing.Iterable[str]) -> dict[str, Any]:
    """`["theta=5e7", "dict(max_sequence_length=32768)"]` -> `{"theta": "5e7", "max_sequence_length": 32768}`."""
    out: dict[str, Any] = {}
    for item in items:
        text = item.strip()
        if text.startswith("dict(") or text.startswith("{"):
            out.update(parse_lwm_override(text))
            continue
        name, value = split_key_value(item, what="override", example="theta=50000000")
        out[name] = value
    return out


def split_key_value(item: str, *, what: str, example: str) -> tuple[str, str]:
    """`" theta = 5e7 "` -> `("theta", "5e7")`: split at the first `=`, both sides stripped; the value
    may be empty. The one parser of `--set key=value` items (model overrides and run configs); the error
    names the item as `what` and shows `--set example`."""
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
        raise LWMError(f"{what} {item!r} is not key=value; e.g. --set {example}")
    return name.strip(), value.strip()


def parse_lwm_override(text: str) -> dict[str, Any]:
    """Parse LWM's `dict(a=1, b='x')` (or `{'a': 1}`) override string without evaluating code."""
    text = text.strip()
    if not text:
        return {}
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise LWMError(f"override {text!r} is not of the form dict(key=value, ...)") from None
    try:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
                and not node.args:
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        if isinstance(node, ast.Dict):
            value = ast.literal_eval(node)
            return {str(k): v for k, v in value.items()}
    except ValueError:
        pass
    raise LWMError(f"override {text!r} is not of the form dict(key=value, ...) with literal values")


def load_config_file(path: str) -> ModelConfig:
    """A `config.json` written by lwm (our field names) or by the original code (LWM names)."""
    from lwm_core.text import decode_utf8

    try:
        with open(path, "rb") as f:
            data = json.loads(decode_utf8(f.read(), f"config file {path}"))
    except FileNotFoundError:
        raise LWMError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise LWMError(f"config file {path} is a directory; pass the config.json inside it") from None
    except json.JSONDecodeError as e:
        raise LWMError(f"config file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise LWMError(f"config file {path} must hold a JSON object")
    preset = data.pop("preset", None)
    data = {k: v for k, v in data.items() if k not in {"architectures", "model_type", "torch_dtype", "dtype", "format",
                                                 "quantize"}}
    base = get_config(preset) if preset else ModelConfig()
    return apply_overrides(base, data)
