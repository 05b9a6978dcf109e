"""lwm's own model directory: `config.json` + safetensors shards (+ `tokenizer.model`).

Tensor names are LWM's key paths joined with `/` (`transformer/wte/embedding`) in the scanned layout,
so a directory holds exactly what a `params` file holds, with a config and without pickle or msgpack.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterable, Iterator

import numpy as np

from lwm_core.checkpoint.atomic import atomic_dir, check_target
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def is_native_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG)) and (
        os.path.isfile(os.path.join(path, SINGLE)) or os.path.isfile(os.path.join(path, INDEX)))


def write_native(directory: str, config: ModelConfig, arrays: Iterable[tuple[tuple[str, ...], np.ndarray]],
                 *, tokenizer_path: str | None = None, max_shard_bytes: int = 5 * 2**30,
                 overwrite: bool = False, quantize: str = "none") -> None:
    """Write atomically: everything goes to a temporary sibling directory that is renamed at the end.
    `quantize`: "int8" or "int4" when the arrays are quantized weights with their scales (recorded in config.json)."""
    check_target(directory, kind="dir", overwrite=overwrite)
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        _write_files(tmp, config, arrays, tokenizer_path=tokenizer_path, max_shard_bytes=max_shard_bytes,
                     quantize=quantize)


def _write_files(tmp: str, config: ModelConfig, arrays, *, tokenizer_path: str | None, max_shard_bytes: int,
                 quantize: str) -> None:
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for path, arr in arrays:
        arr = np.ascontiguousarray(arr)
        if shards[-1] and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1]["/".join(path)] = arr
        size += arr.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = SINGLE if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(tmp, name), metadata={"format": "lwm"})
        weight_map.update(dict.fromkeys(shard, name))
    if len(shards) > 1:
        with open(os.path.join(tmp, INDEX), "w") as f:
            json.dump({"metadata": {"format": "lwm"}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(tmp, CONFIG), "w") as f:
        extra = {"quantize": quantize} if quantize != "none" else {}
        json.dump({"format": "lwm", **extra, **config.to_dict()}, f, indent=1, sort_keys=True)
    if tokenizer_path:
        shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.model"))


def iter_native(directory: str) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Stream tensors one at a time (safetensors reads each lazily from its memory-mapped file)."""
    from safetensors import SafetensorError, safe_open

    index = os.path.join(directory, INDEX)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError):
            raise LWMError(f"{index} is not a valid safetensors index; re-write the model directory") from None
    else:
        files = [SINGLE]
    for name in files:
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            raise LWMError(f"model directory {directory} is missing shard {name}; copy it again")
        try:
            with safe_open(file, framework="numpy") as f:
                for key in f.keys():
                    yield tuple(key.split("/")), f.get_tensor(key)
        except (OSError, SafetensorError) as e:
            if isinstance(e, LWMError):
                raise
            raise LWMError(f"cannot read {file}: {e}; the file is damaged or not safetensors (copy or "
                           f"write it again)") from None
