"""VQGAN specs -> (config, parameters), checked against the config, and the safetensors directory that
`lwm convert vqgan` writes.

A spec is one of:
  the released `vqgan` pickle                  read by the restricted unpickler (checkpoint/safe_pickle.py)
  a directory written by `lwm convert vqgan`   model.safetensors + config.json (model_type "vqgan")
  a model directory holding `vqgan`            as the LWM-Chat-*-Jax repos do (`vqgan` beside `params`;
                                               a file, or a directory that `lwm convert vqgan` wrote)
  `owner/name[@revision]`                      a hub repo: its `vqgan` file (LargeWorldModel/LWM-Chat-1M-Jax)
  `random:<preset>`                            random weights: `random:tiny` (tests), `random:default`

The config is, in order: the one passed in (a `VQGANConfig`, a preset name, or a dict of fields applied
over the next), the config.json of a converted directory, the released architecture.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np

from lwm_core.errors import LWMError
from lwm_core.vision.config import MODEL_TYPE, VQGANConfig, apply_vqgan_overrides, get_vqgan_config

PICKLE = "vqgan"  # its name in the released repos
ConfigLike = VQGANConfig | str | Mapping[str, Any] | None
Flat = dict[tuple[str, ...], np.ndarray]


@dataclass(frozen=True)
class VQGANSource:
    kind: str  # random | pickle | native
    path: str  # file or directory ('' for random)
    config: VQGANConfig | None  # what the source says (a converted directory's config.json), if anything


def resolve_vqgan(spec: str) -> VQGANSource:
    """Where a spec's weights and config are (a hub id is downloaded here)."""
    from lwm_core import hub
    from lwm_core.checkpoint import native

    spec = str(spec).strip()
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1].strip()
        if not preset:
            raise LWMError(f"VQGAN {spec!r} names no preset; write random:tiny or random:default")
        return VQGANSource("random", "", get_vqgan_config(preset))
    if os.path.isdir(spec):
        model_dir = native.is_native_dir(spec)
        if model_dir:
            config = read_config_file(os.path.join(spec, native.CONFIG))
            if config is not None:
                return VQGANSource("native", spec, config)
        inside = os.path.join(spec, PICKLE)  # beside a model's weights, as in the LWM-Chat-*-Jax repos
        if os.path.isfile(inside):
            return VQGANSource("pickle", inside, None)
        if os.path.isdir(inside):
            return resolve_vqgan(inside)
        if model_dir:
            raise LWMError(f"directory {spec} holds a language model and no `vqgan` (its config.json has no "
                           f"model_type \"vqgan\"); pass the `vqgan` file or a directory written by "
                           f"`lwm convert vqgan`")
        raise LWMError(f"directory {spec} holds no VQGAN (neither a `vqgan` file nor model.safetensors + "
                       f"config.json written by `lwm convert vqgan`); point at the VQGAN weights")
    if os.path.isfile(spec):
        if spec.endswith(".safetensors") or os.path.basename(spec) == native.CONFIG:
            return resolve_vqgan(os.path.dirname(os.path.abspath(spec)))
        return VQGANSource("pickle", spec, None)
    if hub.looks_like_hub_id(spec):
        repo, revision = hub.parse_hub_id(spec)
        return VQGANSource("pickle", hub.hub_download(repo, [PICKLE], revision=revision)[PICKLE], None)
    raise LWMError(f"VQGAN {spec!r} is not a file, a directory, random:<preset> or a hub id (owner/name); "
                   f"check the path")


def read_config_file(path: str) -> VQGANConfig | None:
    """The VQGAN config in a config.json, or None when the file describes another model."""
    from lwm_core.text import decode_utf8

    try:
        with open(path, "rb") as f:
            data = json.loads(decode_utf8(f.read(), f"config file {path}"))
    except OSError as e:
        raise LWMError(f"cannot read config file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise LWMError(f"config file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("model_type") != MODEL_TYPE:
        return None
    return VQGANConfig.from_dict(data)


def resolve_config(source: VQGANSource, config: ConfigLike) -> VQGANConfig:
    """The config to build: `config` itself, a preset, or a dict of fields over the source's config."""
    if isinstance(config, VQGANConfig):
        return config
    if isinstance(config, str):
        return get_vqgan_config(config)
    base = source.config or VQGANConfig()
    if config is None:
        return base
    if not isinstance(config, Mapping):
        raise LWMError(f"VQGAN config must be a VQGANConfig, a preset name or a dict of fields, not "
                       f"{type(config).__name__}")
    return apply_vqgan_overrides(base, config)


def read_vqgan(spec: str | VQGANSource, *, config: ConfigLike = None, seed: int = 0) -> tuple[VQGANConfig, Flat]:
    """The config and host (numpy float32) parameters of a spec, by key path, checked against the config."""
    source = spec if isinstance(spec, VQGANSource) else resolve_vqgan(spec)
    config = resolve_config(source, config)
    if source.kind == "random":
        from lwm_core.vision.vqgan import random_params

        return config, random_params(config, seed)
    if source.kind == "native":
        from lwm_core.checkpoint.native import iter_native

        arrays: Iterable = iter_native(source.path)
    else:
        from lwm_core.checkpoint.safe_pickle import load_pickle

        arrays = _flatten(load_pickle(source.path), source.path)
    return config, check_params(arrays, config, origin=source.path)


def _flatten(tree: Any, origin: str) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, leaf) of an unpickled params tree. The original pickled the bare tree (it called
    `apply({'params': params})` on it); a tree still wrapped as {'params': ...} is read too."""
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    if not isinstance(tree, dict):
        raise LWMError(f"VQGAN file {origin} holds a {type(tree).__name__}, not a params dict; pass the "
                       f"released `vqgan` file")

    def walk(node: dict, path: tuple[str, ...]):
        for key, value in node.items():
            if not isinstance(key, str):
                raise LWMError(f"VQGAN file {origin} has a non-string key {key!r} under "
                               f"{'/'.join(path) or 'the top'}; it is not a params tree")
            if isinstance(value, dict):
                yield from walk(value, (*path, key))
            else:
                yield (*path, key), value

    return walk(tree, ())


def check_params(arrays: Iterable[tuple[tuple[str, ...], Any]], config: VQGANConfig, *, origin: str) -> Flat:
    """Every array of a checkpoint checked against the parameters that `config` makes (names, shapes,
    floating dtype: float16/32/64 or bfloat16), as float32. One-line errors name the first weight that does not fit."""
    from lwm_core.vision.vqgan import param_shapes

    expected = param_shapes(config)
    out: Flat = {}
    for path, arr in arrays:
        path = tuple(path)
        name = "/".join(path)
        if path not in expected:
            raise LWMError(f"VQGAN checkpoint {origin} has an unexpected weight {name}; it was made for another "
                           f"architecture: pass its config (e.g. --set channel_mult=... or config=...)")
        if not isinstance(arr, np.ndarray) or not (arr.dtype.kind == "f" or arr.dtype == ml_dtypes.bfloat16):
            kind = f"a {arr.dtype} array" if isinstance(arr, np.ndarray) else f"a {type(arr).__name__}"
            raise LWMError(f"VQGAN checkpoint {origin}: {name} is {kind}, not a floating-point array")
        if tuple(arr.shape) != expected[path]:
            raise LWMError(f"VQGAN checkpoint {origin}: {name} has shape {tuple(arr.shape)} but the config "
                           f"expects {expected[path]}; pass the config it was made with (e.g. --set "
                           f"hidden_channels=... or config=...)")
        out[path] = np.asarray(arr, np.float32)
    missing = [p for p in expected if p not in out]
    if missing:
        raise LWMError(f"VQGAN checkpoint {origin} is missing {len(missing)} of {len(expected)} weights, e.g. "
                       f"{'/'.join(missing[0])}; it is truncated or made for another architecture")
    return out


def write_vqgan_dir(directory: str, config: VQGANConfig, params: Flat, *, overwrite: bool = False) -> None:
    """model.safetensors (names: key paths joined by '/') + config.json, published atomically (lwm's
    native directory layout, so the same reader streams it back)."""
    from lwm_core.checkpoint.native import write_native

    write_native(directory, config, sorted(params.items()), overwrite=overwrite)  # type: ignore[arg-type]


def load_vqgan(spec: str, *, config: ConfigLike = None, mesh=None, batch_size: int | None = None,
               seed: int = 0):
    """A VQGAN ready to encode frames to codes and decode codes to frames.

    Args:
        spec: the released `vqgan` pickle, a directory written by `lwm convert vqgan`, a model directory
            holding `vqgan`, a hub repo id (LargeWorldModel/LWM-Chat-1M-Jax), or `random:<preset>`
            (`tiny`, `default`); see the module docstring.
        config: a `VQGANConfig`, a preset name, or a dict of fields applied over the source's config
            (default: config.json beside the weights, else the released architecture).
        mesh: a Mesh or a mesh spec ("1,-1,1,1"; default: all devices). Parameters are replicated;
            frames are split over all its devices.
        batch_size: frames per compiled call (default 8 per device of the mesh); longer inputs run in
            chunks of it, so memory and compilation do not grow with the number of frames.
        seed: for random weights.

    Returns:
        a `lwm_core.vision.codec.VQGAN`: `.config`, `.encode(pixels)`, `.decode(codes)`.
    """
    import jax
    from flax.traverse_util import unflatten_dict
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from lwm_core.parallel.mesh import make_mesh
    from lwm_core.vision.codec import VQGAN

    mesh = mesh if isinstance(mesh, Mesh) else make_mesh(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    config, flat = read_vqgan(spec, config=config, seed=seed)
    # Every process holds the whole host array and fills its own devices (multi-host safe).
    params = unflatten_dict({path: jax.make_array_from_callback(arr.shape, replicated, lambda i, a=arr: a[i])
                             for path, arr in flat.items()})
    return VQGAN(config, params, mesh, batch_size=batch_size)
