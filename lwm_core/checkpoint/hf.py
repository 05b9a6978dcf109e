"""Hugging Face `LlamaForCausalLM` <-> LWM parameter names and layouts (docs/compatibility.md#hugging-face-export).

Kernels are (in, out) in Flax and (out, in) in torch, so every kernel is transposed, except the
embedding table which has the same (V, D) layout in both. q and k also change RoPE layout: LWM rotates
interleaved feature pairs (2i, 2i+1), HF rotates halves (i, i + H/2), so each head's output features
are reordered evens-then-odds on export and back on import. Pure numpy: no torch needed.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from lwm_core import dtypes
from lwm_core.checkpoint.layers import SCAN, split_unscanned, unscanned_path
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


def lwm_path_of(name: str) -> tuple[tuple[str, ...], int | None]:
    """HF tensor name -> (LWM path in the scanned layout, layer index or None)."""
    if name in _FROM_TOP:
        return _FROM_TOP[name][0], None
    parts = name.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        rest = _FROM_LAYER.get(".".join(parts[3:]))
        if rest is not None:
            return (*SCAN, *rest), int(parts[2])
    raise LWMError(f"Hugging Face tensor {name!r} has no LWM equivalent; is this a LlamaForCausalLM checkpoint?")


def from_hf(config: ModelConfig, name: str, tensor: np.ndarray) -> tuple[tuple[str, ...], int | None, np.ndarray]:
    """One HF tensor -> (LWM path, layer index or None, array in LWM layout)."""
    path, layer = lwm_path_of(name)
    if layer is None:
        transpose = _FROM_TOP[name][1]
        return path, None, np.ascontiguousarray(tensor.T if transpose else tensor)
    heads = _heads_of(config, path[3:])
    weight = halves_to_interleaved(tensor, heads) if heads else tensor
    return path, layer, np.ascontiguousarray(weight.T if weight.ndim == 2 else weight)


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
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if not isinstance(data.get(k), int)]
    if missing:
        raise LWMError(f"the Hugging Face config has no integer {missing[0]}; it is incomplete, re-download it")
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


# ------------------------------------------------------------------------------- directory writing

def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, `1000000` -> bytes."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise LWMError(f"size {text!r} is not a size like 5GB, 500MB or 2GiB")
    number, unit, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    power = "KMGT".find(unit) + 1 if unit else 0
    size = int(number * (1024 if binary else 1000) ** power)
    if size < 1:
        raise LWMError(f"size {text!r} is not positive; give a shard size such as 5GB or 500MB")
    return size


def export_dtype(name: str) -> np.dtype:
    """The numpy dtype of an export written in any spelling of `lwm_core.dtypes` (bf16, bfloat16, ...)."""
    return dtypes.np_dtype(name)


def _hf_records(config: ModelConfig, records, *, text_only: bool) -> Iterator[tuple[str, np.ndarray]]:
    for path, array in records:
        path = tuple(path)
        if path[-2] in ("vte", "vision_head"):
            if text_only:
                continue
            raise LWMError("vision-language models have no Hugging Face architecture: pass --text-only to "
                           "export the text model and drop the vision tables (vte, vision_head)")
        unscanned = split_unscanned(path)
        if unscanned is not None:  # one layer: exported as a stack of one, then renamed to its index
            scanned, layer = unscanned
            for name, tensor in to_hf(config, scanned, np.asarray(array)[None]):
                yield name.replace("model.layers.0.", f"model.layers.{layer}.", 1), tensor
        else:
            yield from to_hf(config, path, np.asarray(array))


def write_hf_dir(directory: str, config: ModelConfig, records, *, dtype: str = "bf16",
                 max_shard_bytes: int = 5 * 10**9, tokenizer_path: str | None = None, text_only: bool = False,
                 overwrite: bool = False) -> list[str]:
    """Stream LWM records into a Hugging Face Llama directory; returns the safetensors files written.

    All files go to a temporary sibling directory renamed into place at the end (`atomic`): a failure
    leaves nothing. To check the files before they are published, use `atomic_dir` + `write_hf_files`.
    """
    from lwm_core.checkpoint.atomic import atomic_dir, check_target

    check_hf_export(config, dtype, text_only)
    check_target(directory, kind="dir", overwrite=overwrite)
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        return write_hf_files(tmp, config, records, dtype=dtype, max_shard_bytes=max_shard_bytes,
                              tokenizer_path=tokenizer_path, text_only=text_only)


def check_hf_export(config: ModelConfig, dtype: str, text_only: bool) -> None:
    """The refusals of an export that come before any work."""
    export_dtype(dtype)
    if config.vision and not text_only:
        raise LWMError("vision-language models have no Hugging Face architecture: pass --text-only to export "
                       "the text model and drop the vision tables (vte, vision_head)")


def write_hf_files(directory: str, config: ModelConfig, records, *, dtype: str = "bf16",
                   max_shard_bytes: int = 5 * 10**9, tokenizer_path: str | None = None,
                   text_only: bool = False) -> list[str]:
    """Fill an empty `directory` with the Hugging Face files; returns the safetensors files written.

    Each source record is split into per-layer tensors that go into the shard being filled; a full
    shard is written and dropped, so host memory stays near one shard plus one source record.
    """
    import json
    import os

    from safetensors.numpy import save_file

    check_hf_export(config, dtype, text_only)
    target = export_dtype(dtype)
    shard: dict[str, np.ndarray] = {}
    size, parts, weight_map, total = 0, [], {}, 0

    def flush():
        nonlocal shard, size
        if shard:
            name = f"part-{len(parts):05d}.safetensors"
            save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
            parts.append((name, list(shard)))
            shard, size = {}, 0

    for name, tensor in _hf_records(config, records, text_only=text_only):
        tensor = np.ascontiguousarray(tensor.astype(target))
        if shard and size + tensor.nbytes > max_shard_bytes:
            flush()
        shard[name] = tensor
        size += tensor.nbytes
        total += tensor.nbytes
    flush()
    files = []
    for i, (name, keys) in enumerate(parts):
        final = "model.safetensors" if len(parts) == 1 else f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        os.replace(os.path.join(directory, name), os.path.join(directory, final))
        weight_map.update(dict.fromkeys(keys, final))
        files.append(final)
    if len(parts) > 1:
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                      f, indent=2)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config(config, dtypes.parse_dtype(dtype)), f, indent=2)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                   "pad_token_id": config.pad_token_id}, f, indent=2)
    if tokenizer_path:
        _write_tokenizer(directory, tokenizer_path, config)
    return files


def _write_tokenizer(directory: str, tokenizer_path: str, config: ModelConfig) -> None:
    """tokenizer.model + tokenizer_config.json (LlamaTokenizer); transformers builds its fast tokenizer
    from them. No automatic BOS, like the LWM tokenizer the model was trained with (docs/compatibility.md#tokenizer)."""
    import json
    import os
    import shutil

    shutil.copyfile(tokenizer_path, os.path.join(directory, "tokenizer.model"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                   "model_max_length": config.max_sequence_length, "legacy": True}, f, indent=2)


# ------------------------------------------------------------------------------- directory reading

def read_hf_dir(directory: str) -> tuple[ModelConfig, "HFTensors"]:
    import json
    import os

    if not os.path.exists(directory):
        raise LWMError(f"Hugging Face model directory {directory} does not exist; check the path")
    if not os.path.isdir(directory):
        raise LWMError(f"{directory} is a file; pass the Hugging Face model directory that holds it")
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise LWMError(f"{directory} has no config.json; is it a Hugging Face model directory?")
    from lwm_core.text import decode_utf8

    try:
        with open(config_path, "rb") as f:
            data = json.loads(decode_utf8(f.read(), config_path))
    except json.JSONDecodeError as e:
        raise LWMError(f"{config_path} is not valid JSON ({e.msg} at line {e.lineno}); re-download it") from None
    if not isinstance(data, dict):
        raise LWMError(f"{config_path} must hold a JSON object; re-download it")
    config = config_from_hf(data)
    return config, HFTensors(directory)


class HFTensors:
    """Lazy access to the tensors of an HF directory: safetensors (single or sharded with an index), or
    PyTorch `.bin` files read with `torch.load(weights_only=True)`."""

    def __init__(self, directory: str):
        import glob
        import json
        import os

        self.directory = directory
        self.location: dict[str, str] = {}
        self._bins: dict[str, dict] = {}  # .bin files loaded so far (torch has no lazy reader)
        index = os.path.join(directory, "model.safetensors.index.json")
        bin_index = os.path.join(directory, "pytorch_model.bin.index.json")
        if os.path.isfile(index) or os.path.isfile(bin_index):
            path = index if os.path.isfile(index) else bin_index
            try:
                with open(path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise LWMError(f"{path} is not a valid index (no weight_map); re-download the model") from None
            for name, file in weight_map.items():
                self.location[name] = os.path.join(directory, file)
            missing = sorted({f for f in self.location.values() if not os.path.isfile(f)})
            if missing:
                raise LWMError(f"{directory} is missing shard {os.path.basename(missing[0])} named in its index "
                               f"({len(missing)} missing); download the complete model")
        else:
            files = sorted(glob.glob(os.path.join(directory, "*.safetensors"))) or \
                sorted(glob.glob(os.path.join(directory, "pytorch_model*.bin")))
            if not files:
                raise LWMError(f"{directory} holds no *.safetensors or pytorch_model*.bin weights")
            for file in files:
                for name in self._keys(file):
                    self.location[name] = file
        if os.path.isfile(index):  # the index must agree with the shards it names
            for file in sorted(set(self.location.values())):
                actual = set(self._keys(file))
                claimed = {n for n, f in self.location.items() if f == file}
                if claimed - actual:
                    raise LWMError(f"index of {directory} says {sorted(claimed - actual)[0]} is in "
                                   f"{os.path.basename(file)} but it is not; the index does not match the shards")

    def _keys(self, file: str) -> list[str]:
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(file, framework="numpy") as f:
                    return list(f.keys())
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for damaged files
                raise LWMError(f"cannot read {file}: {e}; the file is damaged or not safetensors") from None
        return list(self._torch_file(file))

    def _torch_file(self, file: str) -> dict:
        if file not in self._bins:
            try:
                import torch
            except ImportError:
                raise LWMError(f"{file} is a PyTorch .bin file: reading it needs torch "
                               f"(pip install 'lwm[torch]'), or convert it to safetensors") from None
            try:
                self._bins[file] = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - torch raises many types for damaged or unsafe files
                raise LWMError(f"cannot read {file}: {type(e).__name__}: {_first_line(e)}; the file is damaged "
                               f"or holds more than tensors") from None
        return self._bins[file]

    def names(self) -> list[str]:
        return sorted(self.location)

    def get(self, name: str) -> np.ndarray:
        file = self.location[name]
        if file.endswith(".safetensors"):
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(file, framework="numpy") as f:
                    return f.get_tensor(name)
            except (OSError, SafetensorError) as e:
                raise LWMError(f"cannot read {file}: {e}; the file is damaged or not safetensors") from None
        tensor = self._torch_file(file)[name]
        import torch

        if tensor.dtype == torch.bfloat16:
            import ml_dtypes

            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()


def lwm_records_from_hf(config: ModelConfig, tensors: HFTensors, *, scanned: bool = True
                        ) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """LWM records, one parameter (all layers stacked, or one layer when not scanned) at a time."""
    by_path: dict[tuple[str, ...], dict[int | None, str]] = {}
    for name in tensors.names():
        if name.endswith("rotary_emb.inv_freq"):  # a buffer some old exports saved; recomputed from theta
            continue
        path, layer = lwm_path_of(name)
        by_path.setdefault(path, {})[layer] = name
    for path, names in sorted(by_path.items()):
        if None in names:
            yield path, from_hf(config, names[None], tensors.get(names[None]))[2]
            continue
        missing = sorted(set(range(config.num_hidden_layers)) - set(names))
        if missing:
            raise LWMError(f"Hugging Face model lacks layer {missing[0]} of {'/'.join(path[3:])}; "
                           f"the checkpoint is incomplete")
        layers = (from_hf(config, names[i], tensors.get(names[i]))[2] for i in range(config.num_hidden_layers))
        if scanned:
            yield path, np.stack(list(layers))
        else:
            for i, array in enumerate(layers):
                yield unscanned_path(i, path[3:]), array


# ------------------------------------------------------------------------------------ verification

def verify_hf_dir(directory: str, model, *, prompt_ids: list[int], seed: int = 0, n_random: int = 256,
                  greedy_tokens: int = 32) -> dict:
    """Run the exported directory with transformers and `model` (an `LWM`) on the same inputs, both in
    float32: max abs logits difference (a fixed prompt and `n_random` random ids) and how many of
    `greedy_tokens` greedy tokens agree."""
    try:
        import torch
        import transformers
    except ImportError:
        raise LWMError("--verify needs torch and transformers: pip install 'lwm[torch]'") from None
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                           local_files_only=True).eval()
    rng = np.random.default_rng(seed)
    random_ids = rng.integers(3, model.config.vocab_size, n_random).tolist()
    diff = 0.0
    for ids in (prompt_ids, random_ids):
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits[0].numpy()
        diff = max(diff, float(np.abs(model.logits(np.asarray(ids)) - theirs).max()))
    ours = model.generate(prompt_ids, greedy_tokens).tolist()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=len(ours), min_new_tokens=len(ours),
                          do_sample=False, pad_token_id=model.config.pad_token_id)
    theirs = out[0, len(prompt_ids):].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return {"max_abs_diff": diff, "greedy_agree": agree, "greedy_total": len(ours)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
