"""Model specs -> (config, parameters on devices, tokenizer path).

A spec is one of:
  `random:<preset or card>`                 random weights (smoke tests, benchmarks)
  `params::PATH`, `trainstate::PATH`, `trainstate_params::PATH`, `flax_params::PATH`  (LWM formats)
  a directory: lwm's native directory, or a downloaded `*-Jax` repo holding `params` (+ tokenizer.model)
  a file: a streaming `params` file
  `owner/name[@revision]`: a Hugging Face hub repo (the released `LargeWorldModel/*-Jax` ones)

Arrays are placed on their devices one at a time as they are read, so host memory stays near the
largest single array; scanned and unscanned (`transformer/h/{i}/...`) layouts both load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lwm_core.checkpoint.layers import split_unscanned
from lwm_core.config import ModelConfig, find_card, get_config, load_config_file
from lwm_core.errors import LWMError
from lwm_core.model.llama import param_layout
from lwm_core.parallel.mesh import named_sharding, put
from lwm_core.plural import plural


@dataclass(frozen=True)
class Source:
    kind: str  # random | params | trainstate | trainstate_params | flax_params | native
    path: str  # file or directory ('' for random)
    config: ModelConfig | None  # what the source itself says (config.json, card), if anything
    tokenizer: str | None  # a tokenizer.model found beside the weights
    preset: str = ""  # for random:


def resolve(spec: str | Source, *, weights: bool = True) -> Source:
    """Where a spec's weights, config and tokenizer are (a hub id is downloaded here); a `Source` that an
    earlier call returned passes through as it is. `weights=False`: a hub id's config and tokenizer only
    (a dry run plans a release's model without its gigabytes; the Source then has no path)."""
    if isinstance(spec, Source):
        return spec
    from lwm_core import builtin, hub
    from lwm_core.checkpoint import native, specs

    spec = spec.strip()
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1].strip()
        if not preset:
            raise LWMError(f"model {spec!r} names no preset; write random:<preset>, e.g. random:debug or "
                           f"random:7b")
        return Source("random", "", None, None, preset=preset)
    if builtin.is_builtin_name(spec):
        spec = builtin.resolve(spec)  # its native directory, inside the package
    parsed = specs.parse_load_spec(spec)
    if parsed is not None:
        kind, path = parsed
        return Source(kind, path, _beside_config(path), _beside(path, "tokenizer.model"))
    if os.path.isdir(spec):
        kind = _foreign_dir(spec)
        if kind == "vqgan":
            raise LWMError(f"{spec} is a VQGAN (lwm convert vqgan wrote it), not a language model; give it to "
                           f"the vision commands as --vqgan {spec}")
        if kind:
            raise LWMError(f"{spec} is a Hugging Face (transformers) directory; make it an lwm model with lwm "
                           f"convert hf2jax {spec} -o DIR (lwm needle eval also runs it as it is: --hf {spec})")
        if native.is_native_dir(spec):
            return Source("native", spec, load_config_file(os.path.join(spec, native.CONFIG)),
                          _beside(os.path.join(spec, "x"), "tokenizer.model"))
        params = os.path.join(spec, "params")
        if os.path.isfile(params):
            return Source("params", params, _beside_config(params), _beside(params, "tokenizer.model"))
        raise LWMError(f"directory {spec} holds neither an lwm model (config.json + model.safetensors) nor an "
                       f"LWM `params` file; point --model at the checkpoint")
    if os.path.isfile(spec):
        return Source("params", spec, _beside_config(spec), _beside(spec, "tokenizer.model"))
    if hub.looks_like_hub_id(spec):
        repo, revision = hub.parse_hub_id(spec)
        files = hub.hub_download(repo, ["params"] if weights else [], revision=revision,
                                 optional=["tokenizer.model", "config.json"])
        config = load_config_file(files["config.json"]) if "config.json" in files else None
        card = find_card(repo)
        if config is None and card is not None:
            config = get_config(card.name)
        return Source("params", files.get("params", ""), config, files.get("tokenizer.model"))
    if builtin.looks_like_name(spec):
        builtin.resolve(spec)  # raises: no such built-in model, here are the names
    raise LWMError(f"model {spec!r} is not a file, a directory, a KIND::PATH spec, random:<preset>, a hub id "
                   f"(owner/name) or a built-in model ({', '.join(builtin.MODELS)}); check the path")


def _foreign_dir(directory: str) -> str | None:
    """What a directory whose config.json is not an lwm model config holds: "vqgan" (lwm convert vqgan's
    output), "transformers" (a `model_type` or `architectures`, which an lwm config never holds), or None."""
    import json

    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get("model_type") == "vqgan":
        return "vqgan"
    return "transformers" if "model_type" in config or "architectures" in config else None


def _beside(path: str, name: str) -> str | None:
    candidate = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    return candidate if os.path.isfile(candidate) else None


def _beside_config(path: str) -> ModelConfig | None:
    config = _beside(path, "config.json")
    if config is not None:
        return load_config_file(config)
    card = find_card(os.path.basename(os.path.dirname(os.path.abspath(path))))
    return get_config(card.name) if card else None


def records(source: Source) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    from lwm_core.checkpoint import native, streaming

    if source.kind == "native":
        return native.iter_native(source.path)
    return streaming.iter_checkpoint(source.kind, source.path)


def layout_of(config: ModelConfig, quantized: str = "none") -> dict:
    """The parameters a checkpoint of `config` holds: `param_layout`, or with `quantized` ("int8", "int4") its
    quantized weights and their scales (`lwm_core.quantize.quantized_layout`)."""
    from lwm_core.quantize import quantized_layout

    return param_layout(config) if quantized == "none" else quantized_layout(param_layout(config), quantized)


def checked(arrays: Iterable[tuple[tuple[str, ...], np.ndarray]], config: ModelConfig, *, origin: str,
            quantized: str = "none") -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """The records of a checkpoint, each checked against `config` (name, shape, layer index) as it passes,
    and at the end checked for completeness: every reader (loading, export) refuses a checkpoint that does
    not match its config with the same one-line error. `quantized`: "int8" or "int4" records
    (`lwm_core.quantize`)."""
    layout = layout_of(config, quantized)
    L = config.num_hidden_layers
    whole: set[tuple[str, ...]] = set()
    layers: dict[tuple[str, ...], set[int]] = {}
    for path, arr in arrays:
        path = tuple(path)
        key, layer, shape, _ = _locate(path, layout, L, origin)
        if tuple(arr.shape) != shape:
            raise LWMError(f"checkpoint {origin}: {'/'.join(path)} has shape {tuple(arr.shape)} but the config "
                           f"expects {shape}; pass the matching --preset/--card or --set overrides")
        if layer is None:
            whole.add(key)
        else:
            layers.setdefault(key, set()).add(layer)
        yield path, arr
    for key, seen in layers.items():
        missing = sorted(set(range(L)) - seen)
        if missing:
            raise LWMError(f"checkpoint {origin} is missing layer(s) {missing[:5]} of {'/'.join(key[3:])}; "
                           f"it is incomplete or made for fewer layers")
    missing = [k for k in layout if k not in whole and k not in layers]
    if missing:
        raise LWMError(f"checkpoint {origin} is missing {len(missing)} weight(s), e.g. {'/'.join(missing[0])}; "
                       f"it is truncated or made for another model (vision={config.vision})")


def _locate(path: tuple[str, ...], layout: dict, L: int, origin: str):
    """(scanned key, layer index or None, expected shape, logical axes) of a record's path."""
    key, layer = split_unscanned(path) or (path, None)
    if key not in layout:
        hint = ("; it holds vision weights: use a vision card (LWM-Chat-*) or --set vision=true"
                if key[-2] in ("vte", "vision_head") else "")
        raise LWMError(f"checkpoint {origin} has an unexpected weight {'/'.join(path)}{hint}")
    shape, axes = layout[key]
    if layer is not None:
        shape, axes = shape[1:], axes[1:]
        if layer >= L:
            raise LWMError(f"checkpoint {origin} has layer {layer} but the config has {plural(L, 'layer')}; "
                           f"pass the matching --preset or --set num_hidden_layers=...")
    return key, layer, shape, axes


def place_params(arrays: Iterable[tuple[tuple[str, ...], np.ndarray]], config: ModelConfig, mesh: Mesh,
                 dtype, *, origin: str, quantized: str = "none") -> dict:
    """Put each array on its devices as it arrives, checked against the config (`checked`). With
    `quantized` ("int8", "int4"), the records are quantized weights with their float32 scales
    (`lwm_core.quantize`), kept so.

    Unscanned per-layer arrays are placed layer by layer and stacked on device at the end.
    """
    from flax.traverse_util import unflatten_dict

    layout = layout_of(config, quantized)
    placed: dict[tuple[str, ...], jax.Array] = {}
    layers: dict[tuple[str, ...], dict[int, jax.Array]] = {}
    L = config.num_hidden_layers
    for path, arr in checked(arrays, config, origin=origin, quantized=quantized):
        key, layer, _, axes = _locate(path, layout, L, origin)
        arr = np.asarray(arr)
        keep = arr.dtype in (np.int8, np.uint8) or path[-1] == "scale"  # quantized weights and scales as they are
        value = put(arr if keep else arr.astype(dtype, copy=False), mesh, axes)
        if layer is None:
            placed[key] = value
        else:
            layers.setdefault(key, {})[layer] = value
        del arr
    for key, per_layer in layers.items():
        shape, axes = layout[key]
        stack = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=named_sharding(mesh, axes, shape))
        placed[key] = stack(*(per_layer[i] for i in range(L)))
    return unflatten_dict(placed)


def host_arrays(params: dict) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Parameters back on the host, one at a time, in LWM's scanned key paths (for writing)."""
    from flax.traverse_util import flatten_dict
    from jax.experimental import multihost_utils

    for path, value in sorted(flatten_dict(params).items()):
        if jax.process_count() > 1 and not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        yield path, np.asarray(jax.device_get(value))
