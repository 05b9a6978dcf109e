"""Hugging Face `LlamaForCausalLM` <-> LWM parameter names and layouts (LWM_REFERENCE 5).

Kernels are (in, out) in Flax and (out, in) in torch, so every kernel is transposed, except the
embedding table which has the same (V, D) layout in both. q and k also change RoPE layout: LWM rotates
interleaved feature pairs (2i, 2i+1), HF rotates halves (i, i + H/2), so each head's output features
are reordered evens-then-odds on export and back on import. Pure numpy: no torch needed.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError

# LWM path below transformer/h/scan_decoder -> HF name below model.layers.{i}
LAYER_NAMES = {
    ("attention", "wq", "kernel"): "self_attn.q_proj.weight",
    ("attention", "wk", "kernel"): "self_attn.k_proj.weight",
    ("attention", "wv", "kernel"): "self_attn.v_proj.weight",
    ("attention", "wo", "kernel"): "self_attn.o_proj.weight",
    ("feed_forward", "w1", "kernel"): "mlp.gate_proj.weight",
    ("feed_forward", "w2", "kernel"): "mlp.down_proj.weight",
    ("feed_forward", "w3", "kernel"): "mlp.up_proj.weight",
    ("attention_norm", "kernel"): "input_layernorm.weight",
    ("ffn_norm", "kernel"): "post_attention_layernorm.weight",
}
# LWM path -> (HF name, transposed)
TOP_NAMES = {
    ("transformer", "wte", "embedding"): ("model.embed_tokens.weight", False),
    ("transformer", "ln_f", "kernel"): ("model.norm.weight", False),
    ("lm_head", "kernel"): ("lm_head.weight", True),
}
SCAN = ("transformer", "h", "scan_decoder")


def interleaved_to_halves(weight: np.ndarray, heads: int) -> np.ndarray:
    """torch (heads*H, D) rows of each head reordered (0, 2, 4, ..., 1, 3, 5, ...)."""
    rows, cols = weight.shape
    H = rows // heads
    # (heads*H, D) -> (heads, H/2, 2, D) -> (heads, 2, H/2, D): evens, then odds
    return weight.reshape(heads, H // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def halves_to_interleaved(weight: np.ndarray, heads: int) -> np.ndarray:
    rows, cols = weight.shape
    H = rows // heads
    # (heads*H, D) -> (heads, 2, H/2, D) -> (heads, H/2, 2, D)
    return weight.reshape(heads, 2, H // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _heads_of(config: ModelConfig, name: tuple[str, ...]) -> int | None:
    return {"wq": config.num_attention_heads, "wk": config.kv_heads}.get(name[1]) if name[0] == "attention" else None


def to_hf(config: ModelConfig, path: tuple[str, ...], array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """One LWM array (scanned layout) -> its HF tensor(s): a stacked layer array yields one per layer."""
    if path in TOP_NAMES:
        name, transpose = TOP_NAMES[path]
        yield name, np.ascontiguousarray(array.T if transpose else array)
        return
    if path[:3] != SCAN or path[3:] not in LAYER_NAMES:
        if path[-2] in ("vte", "vision_head"):
            raise LWMError("vision-language models have no Hugging Face architecture; export text models only "
                           "(or drop the vision tables with --text-only)")
        raise LWMError(f"no Hugging Face name for weight {'/'.join(path)}")
    rest = path[3:]
    heads = _heads_of(config, rest)
    for i, layer in enumerate(array):
        weight = layer.T if layer.ndim == 2 else layer
        if heads:
            weight = interleaved_to_halves(weight, heads)
        yield f"model.layers.{i}.{LAYER_NAMES[rest]}", np.ascontiguousarray(weight)


_FROM_LAYER = {v: k for k, v in LAYER_NAMES.items()}
_FROM_TOP = {v[0]: (k, v[1]) for k, v in TOP_NAMES.items()}


def from_hf(config: ModelConfig, name: str, tensor: np.ndarray) -> tuple[tuple[str, ...], int | None, np.ndarray]:
    """One HF tensor -> (LWM path, layer index or None, array in LWM layout)."""
    if name in _FROM_TOP:
        path, transpose = _FROM_TOP[name]
        return path, None, np.ascontiguousarray(tensor.T if transpose else tensor)
    parts = name.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        rest = _FROM_LAYER.get(".".join(parts[3:]))
        if rest is not None:
            heads = _heads_of(config, rest)
            weight = halves_to_interleaved(tensor, heads) if heads else tensor
            return (*SCAN, *rest), int(parts[2]), np.ascontiguousarray(weight.T if weight.ndim == 2 else weight)
    raise LWMError(f"Hugging Face tensor {name!r} has no LWM equivalent; is this a LlamaForCausalLM checkpoint?")


def hf_config(config: ModelConfig, dtype: str = "float32") -> dict:
    """config.json for transformers 5 (`rope_parameters` holds theta)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_sequence_length,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.theta},
        "rope_theta": config.theta,  # read by transformers 4.x
        "initializer_range": config.initializer_range,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "dtype": dtype,
    }


def config_from_hf(data: dict) -> ModelConfig:
    if data.get("model_type") != "llama" and "LlamaForCausalLM" not in data.get("architectures", []):
        raise LWMError(f"Hugging Face model type {data.get('model_type')!r} / {data.get('architectures')} is not "
                       f"LlamaForCausalLM; only Llama checkpoints convert")
    rope = data.get("rope_parameters") or {}
    theta = rope.get("rope_theta", data.get("rope_theta", 1e4))
    heads = data["num_attention_heads"]
    kv_heads = data.get("num_key_value_heads") or heads
    return ModelConfig(
        vocab_size=data["vocab_size"], hidden_size=data["hidden_size"],
        intermediate_size=data["intermediate_size"], num_hidden_layers=data["num_hidden_layers"],
        num_attention_heads=heads, num_key_value_heads=0 if kv_heads == heads else kv_heads,
        rms_norm_eps=data.get("rms_norm_eps", 1e-6), theta=float(theta),
        max_sequence_length=data.get("max_position_embeddings", 4096),
        bos_token_id=data.get("bos_token_id") or 1, eos_token_id=_first(data.get("eos_token_id"), 2),
        pad_token_id=_first(data.get("pad_token_id"), 0))


def _first(value, default: int) -> int:
    if isinstance(value, list):
        value = value[0] if value else None
    return default if value is None else int(value)
