"""From a spec to parameters on a mesh: spec resolution, dtype and sharding set-up.

What `lwm_core.load_model` does before it wraps the result in an `LWM`, as plain functions that the rest
of the library (training above all) uses without importing the public API module.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lwm_core.config import ModelConfig, apply_overrides, get_config
from lwm_core.dtypes import jnp_dtype
from lwm_core.errors import LWMError
from lwm_core.model.llama import Params, init_params, param_layout
from lwm_core.parallel.mesh import check_model, make_mesh, named_sharding


class Loaded(NamedTuple):
    """What `load` returns: the pieces of an `LWM`."""

    config: ModelConfig
    params: Params
    mesh: Mesh
    dtype: jnp.dtype
    tokenizer: Any
    vision_sampling: Mapping[str, Any] = {}  # kind -> VisionSampling: the directory's own defaults, if any


def resolve_dtype(dtype) -> jnp.dtype:
    """None -> float32 on CPU (exact, and CPUs have no fast bf16 matmul), bfloat16 on accelerators."""
    if dtype is None:
        return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    if isinstance(dtype, str):
        return jnp_dtype(dtype)
    return jnp.dtype(dtype)


def resolve_spec(spec: str, *, config: ModelConfig | str | None = None, tokenizer=None,
                 overrides: Mapping[str, Any] | None = None, weights: bool = True):
    """(source, config, tokenizer) of a spec, without touching the weights (see `load_model`);
    `weights=False` does not download a hub id's weights either (`loader.resolve`)."""
    from lwm_core.checkpoint import loader
    from lwm_core.tokenizer import load_tokenizer

    source = loader.resolve(spec, weights=weights)
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer or source.tokenizer)
    if source.kind == "random":
        if not isinstance(config, ModelConfig):
            config = get_config(config or source.preset, vocab_size=tokenizer.vocab_size)
    else:
        config = get_config(config) if isinstance(config, str) else config or source.config
        if config is None:
            raise LWMError(f"no config for {spec}: pass --preset/--card (e.g. 7b, LWM-Text-Chat-1M) or put a "
                           f"config.json beside the weights")
    return source, apply_overrides(config, dict(overrides or {})), tokenizer


def param_shardings(config: ModelConfig, mesh: Mesh):
    """The parameter tree's NamedShardings on `mesh` (from `llama.param_layout`'s logical axes)."""
    from flax.traverse_util import unflatten_dict

    return unflatten_dict({path: named_sharding(mesh, axes, shape)
                           for path, (shape, axes) in param_layout(config).items()})


def stored_quantization(source) -> str:
    """How a source's weights are stored: "int8" or "int4" for a native directory `lwm convert quantize` wrote
    (its config.json says so), else "none"."""
    import json
    import os

    if source.kind != "native":
        return "none"
    from lwm_core.quantize import QUANTIZE_MODES

    path = os.path.join(source.path, "config.json")
    with open(path) as f:
        stored = json.load(f).get("quantize", "none")
    if stored not in QUANTIZE_MODES:
        raise LWMError(f"{path} says the weights are stored as quantize={stored!r}, which this lwm does not read "
                       f"(it reads {', '.join(QUANTIZE_MODES)}); update lwm or write the model again")
    return stored


def load(spec: str, *, config: ModelConfig | str | None = None, mesh: Mesh | str | None = None, dtype=None,
         tokenizer=None, overrides: Mapping[str, Any] | None = None, seed: int = 0,
         quantize: str | None = None) -> Loaded:
    """The body of `lwm_core.load_model` (see there for the arguments): random weights made on their
    devices, or a checkpoint's streamed onto them one array at a time (quantized as they pass, with
    `quantize="int8"` or "int4": host memory then holds one float array at a time beside the quantized
    model)."""
    from lwm_core import quantize as q8
    from lwm_core.checkpoint import loader

    if quantize is not None and quantize not in q8.QUANTIZE_MODES:
        raise LWMError(f"quantize={quantize!r} is not one of {', '.join(q8.QUANTIZE_MODES)}")
    dtype = resolve_dtype(dtype)
    mesh = mesh if isinstance(mesh, Mesh) else make_mesh(mesh)
    source, config, tokenizer = resolve_spec(spec, config=config, tokenizer=tokenizer, overrides=overrides)
    check_model(mesh, config.num_attention_heads, config.kv_heads)
    stored = stored_quantization(source)
    want = quantize or stored
    if source.kind == "random":
        params = jax.jit(functools.partial(init_params, config, dtype=dtype),
                         out_shardings=param_shardings(config, mesh))(jax.random.key(seed))
        if want != "none":
            records = q8.quantize_records(loader.host_arrays(params), want)
            params = loader.place_params(records, config, mesh, dtype, origin=spec, quantized=want)
    else:
        records = loader.records(source)
        if stored != want:  # to float first: an int8 directory loaded as int4 is requantized from its floats
            records = records if stored == "none" else q8.dequantize_records(records)
            records = records if want == "none" else q8.quantize_records(records, want)
        params = loader.place_params(records, config, mesh, dtype, origin=source.path, quantized=want)
    sampling = {}
    if source.kind == "native" and config.vision:
        from lwm_core.generate.vision import read_sampling

        sampling = read_sampling(source.path)
    return Loaded(config, params, mesh, dtype, tokenizer, sampling)
