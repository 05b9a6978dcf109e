"""The public Python API: `get_config`, `load_model` and the `LWM` model object.

    model = lwm_core.load_model("LargeWorldModel/LWM-Text-Chat-1M-Jax", mesh="1,-1,1,1")
    ids = model.tokenizer.encode(lwm_core.chat_prompt("What is a world model?"))
    reply = model.tokenizer.decode(model.generate(ids, 64))
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lwm_core.config import ModelConfig, apply_overrides, get_config
from lwm_core.errors import LWMError
from lwm_core.generate.decode import (DecodeState, bucket, check_lengths, decode_n, generation_layers, left_pad,
                                     prefill)
from lwm_core.generate.sampling import Sampling
from lwm_core.kernels import cpu as cpu_kernel
from lwm_core.model.llama import CachedWeights, Params, forward, init_params, packed_weights
from lwm_core.parallel.mesh import check_model, make_mesh, named_sharding, put

_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "f32": jnp.float32, "bfloat16": jnp.bfloat16,
           "bf16": jnp.bfloat16, "float16": jnp.float16, "fp16": jnp.float16, "f16": jnp.float16}


def resolve_dtype(dtype) -> jnp.dtype:
    """None -> float32 on CPU (exact, and CPUs have no fast bf16 matmul), bfloat16 on accelerators."""
    if dtype is None:
        return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise LWMError(f"dtype {dtype!r} is not one of float32, bfloat16, float16")
        return jnp.dtype(_DTYPES[dtype.lower()])
    return jnp.dtype(dtype)


_forward = jax.jit(forward, static_argnames=("config", "mode", "mesh", "dtype", "remat"))


class LWM:
    """A loaded model: config, parameters on a mesh, and its tokenizer (may be None).

    `copy_layers`: whether generation holds a second, decode-friendly copy of the layer weights while
    it runs (see `llama.cached_layers`; ~1.3x decode tokens/s on bench-50m). None (default): when that
    copy takes at most half the free memory of the devices holding it; otherwise each layer's weights
    are rearranged as decode reaches them, at one layer's worth of extra memory.

    `cpu_kernels`: whether decode on a single CPU device runs lwm's kernels (lwm_core.kernels.cpu: the
    matvec and the cache attention; ~1.3x decode tokens/s on bench-50m). They read a packed copy of the
    weights that the model keeps from its first generation on (the size of the layers and head in
    float32). None (default): on one CPU device with float32 weights, when the kernels build (a C++
    compiler is needed, once) and the copy takes at most half the free host memory. True: required (an
    error says why they cannot be used). False: never.
    """

    def __init__(self, config: ModelConfig, params: Params, *, mesh: Mesh, dtype, tokenizer=None,
                 copy_layers: bool | None = None, cpu_kernels: bool | None = None):
        self.config, self.params, self.mesh, self.dtype, self.tokenizer = config, params, mesh, dtype, tokenizer
        self.copy_layers = copy_layers
        self.cpu_kernels = cpu_kernels
        self._packed: tuple[Params, CachedWeights] | None = None  # (the params they were made from, weights)

    def _put(self, arr: np.ndarray, axes) -> jax.Array:
        return put(arr, self.mesh, axes)

    def logits(self, ids, vision_masks=None, *, mode: str | None = None):
        """ids (B, T) or (T,) -> float32 logits as numpy: text (…, V), or for a vision model in `all`
        mode the pair (vision (…, 8448), text (…, V))."""
        ids = np.asarray(ids, np.int32)
        squeeze = ids.ndim == 1
        ids2 = ids[None] if squeeze else ids
        mode = mode or ("all" if self.config.vision else "text")
        if mode not in ("text", "vision", "all"):
            raise LWMError(f"mode {mode!r} is not one of text, vision, all")
        if mode != "text" and not self.config.vision:
            raise LWMError(f"mode {mode!r} needs a vision model; this one is text-only")
        masks = None
        if vision_masks is not None:
            vision_masks = np.asarray(vision_masks, bool).reshape(ids2.shape)
            masks = self._put(vision_masks, ("batch", "seq"))
        self._check_ids(ids2, vision_masks)
        out = _forward(self.config, self.params, self._put(ids2, ("batch", "seq")), vision_masks=masks,
                       mode=mode, mesh=self.mesh, dtype=self.dtype)
        out = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), out)
        return jax.tree.map(lambda a: a[0], out) if squeeze else out

    def _check_ids(self, ids: np.ndarray, vision_masks: np.ndarray | None = None) -> None:
        limit = np.full(ids.shape, self.config.vocab_size)
        if vision_masks is not None:
            limit = np.where(vision_masks, self.config.vision_vocab_size, limit)
        bad = (ids < 0) | (ids >= limit)
        if bad.any():
            raise LWMError(f"token id {int(ids[bad][0])} is outside the vocabulary of {int(limit[bad][0])}; "
                           f"use the model's tokenizer")
        if ids.ndim == 2 and ids.shape[1] > self.config.max_sequence_length:
            raise LWMError(f"sequence of {ids.shape[1]} tokens exceeds the model's context of "
                           f"{self.config.max_sequence_length}")

    # --------------------------------------------------------------------------------- generation

    def _start(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int,
               top_p: float, seed: int) -> tuple[DecodeState, Sampling, tuple]:
        check_lengths(self.config, [len(p) for p in prompts], max_new_tokens)
        self._check_ids(np.asarray([t for p in prompts for t in p], np.int32))
        if not 0 <= temperature < float("inf") or not 0 < top_p <= 1 or top_k < 0:  # (nan fails too)
            raise LWMError(f"sampling settings temperature={temperature}, top_k={top_k}, top_p={top_p} are out of "
                           f"range; need a finite temperature >= 0, top_k >= 0, 0 < top_p <= 1")
        if not 0 <= seed < 2**63:
            raise LWMError(f"seed {seed} is out of range; use an integer from 0 to 2**63 - 1")
        length = bucket(max(len(p) for p in prompts))
        max_new = bucket(max_new_tokens)
        ids, seg = left_pad(prompts, self.config.pad_token_id, length)
        sampling = Sampling(jnp.float32(temperature), jnp.float32(top_p))
        packed = self._packed_weights()
        if packed is not None:  # decode reads the packed weights; prefill (many rows) XLA's matmuls
            layers, decode_layers = None, packed
        else:
            # Per-layer weights for this generation (a copy, freed with it; see llama.cached_layers), or None:
            # prefill and decode then rearrange one layer at a time.
            copy = self.copy_layers if self.copy_layers is not None else _layer_copy_fits(self.params)
            layers = generation_layers(self.config, self.params, mesh=self.mesh) if copy else None
            decode_layers = layers
        state = prefill(self.config, self.params, layers, self._put(ids, ("batch", None)),
                        self._put(seg, ("batch", None)), jax.random.key(seed), sampling, max_new=max_new,
                        slots=length + max_new, top_k=int(top_k), mesh=self.mesh)
        return state, sampling, decode_layers

    def _packed_weights(self) -> CachedWeights | None:
        """The CPU kernel's packed weights (made on first use, remade if `params` was replaced), or None
        where decode uses XLA's dots (see `cpu_kernels`)."""
        if self.cpu_kernels is False:
            return None
        if self._packed is not None and self._packed[0] is self.params:
            return self._packed[1]  # (not re-judged: the copy itself now takes some of the free memory)
        self._packed = None  # free a copy of replaced params before judging and making the new one
        why = self._cpu_kernel_unusable()
        if why is not None:
            if self.cpu_kernels:
                raise LWMError(f"the CPU decode kernels were required (cpu_kernels=True, --cpu-kernels) but cannot be "
                               f"used: {why}; leave the default to decode with XLA where they cannot")
            return None
        self._packed = (self.params, packed_weights(self.config, self.params))
        return self._packed[1]

    def _cpu_kernel_unusable(self) -> str | None:
        devices = self.mesh.devices
        if devices.size != 1 or devices.flat[0].platform != "cpu":
            return f"the model is on {devices.size} {devices.flat[0].platform} device(s), not one CPU"
        if any(a.dtype != jnp.float32 for a in jax.tree.leaves(self.params)) or self.dtype != jnp.float32:
            return "the weights are not float32"
        nbytes = 4 * (self.config.num_params() - self.config.vocab_size * self.config.hidden_size)
        if self.cpu_kernels is None and nbytes > _free_host_bytes() // 2:
            return f"a packed copy of {nbytes / 2**30:.1f} GiB takes more than half the free memory"
        if not cpu_kernel.available():
            return cpu_kernel.unavailable_reason()
        return None

    def generate(self, ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0) -> np.ndarray:
        """New token ids for one prompt (T,) -> (n,), or a batch (B, T) / list of prompts -> (B, n).

        Temperature 0 is greedy. Generation stops at EOS (which is included) or after max_new_tokens;
        in a batch, rows that finished early are padded with pad_token_id.
        """
        prompts, single = _as_prompts(ids)
        state, sampling, layers = self._start(prompts, max_new_tokens, temperature, top_k, top_p, seed)
        state = decode_n(self.config, self.params, layers, state, jnp.int32(max_new_tokens), sampling,
                         top_k=int(top_k), mesh=self.mesh)
        steps = int(state.step)
        tokens = np.asarray(jax.device_get(state.tokens))[:, :steps]
        return tokens[0] if single else tokens

    def stream(self, ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0, chunk: int = 4) -> Iterator[int]:
        """Yield the new tokens of one prompt as they are generated; stops before EOS.

        Decoding runs compiled `chunk` tokens at a time; between chunks the caller can print, or stop
        by closing the generator (Ctrl-C in the chat REPL).
        """
        prompts, single = _as_prompts(ids)
        if not single:
            raise LWMError("stream() takes one prompt; use generate() for batches")
        state, sampling, layers = self._start(prompts, max_new_tokens, temperature, top_k, top_p, seed)
        emitted = 0
        eos = self.config.eos_token_id
        while True:
            steps = int(state.step)
            tokens = np.asarray(jax.device_get(state.tokens[0, emitted:steps])) if steps > emitted else []
            for t in tokens:
                if int(t) == eos:
                    return
                yield int(t)
            emitted = steps
            if steps >= max_new_tokens or bool(state.done[0]):
                return
            limit = min(steps + chunk, max_new_tokens)
            state = decode_n(self.config, self.params, layers, state, jnp.int32(limit), sampling,
                             top_k=int(top_k), mesh=self.mesh)

    # ------------------------------------------------------------------------------------ saving

    def save(self, directory: str, *, overwrite: bool = False) -> None:
        """Write lwm's native directory (config.json + safetensors + tokenizer.model)."""
        from lwm_core.checkpoint.loader import host_arrays
        from lwm_core.checkpoint.native import write_native

        tok = getattr(self.tokenizer, "path", None)
        write_native(directory, self.config, host_arrays(self.params),
                     tokenizer_path=tok if tok and tok.endswith(".model") else None, overwrite=overwrite)

    def save_params(self, path: str, *, scanned: bool | None = None) -> None:
        """Write LWM's streaming `params` file (scanned layout, or one entry per layer)."""
        from lwm_core.checkpoint.loader import host_arrays
        from lwm_core.checkpoint.streaming import write_records

        scanned = self.config.scan_layers if scanned is None else scanned
        write_records(path, host_arrays(self.params) if scanned else _unscan(host_arrays(self.params)))


def _free_host_bytes() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _layer_copy_fits(params: Params) -> bool:
    """Whether a second copy of the layer weights takes at most half the free memory where they live:
    accelerator memory from the device's own statistics, host memory (shared by all CPU devices) from the
    operating system. Devices that report nothing are assumed to have room."""
    need: dict = {}
    for array in jax.tree.leaves(params["transformer"]["h"]["scan_decoder"]):
        for shard in array.addressable_shards:
            where = "host" if shard.device.platform == "cpu" else shard.device
            need[where] = need.get(where, 0) + shard.data.nbytes
    for where, nbytes in need.items():
        if where == "host":
            free = _free_host_bytes()
        else:
            stats = where.memory_stats() or {}
            if "bytes_limit" not in stats:
                continue
            free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        if nbytes > free // 2:
            return False
    return True


def _unscan(arrays):
    for path, arr in arrays:
        if path[:3] == ("transformer", "h", "scan_decoder"):
            for i in range(arr.shape[0]):
                yield ("transformer", "h", str(i), *path[3:]), arr[i]
        else:
            yield path, arr


def _as_prompts(ids) -> tuple[list[list[int]], bool]:
    if isinstance(ids, np.ndarray) or (isinstance(ids, Sequence) and ids and not isinstance(ids[0], (Sequence, np.ndarray))):
        arr = np.asarray(ids)
        if arr.ndim == 1:
            return [arr.astype(np.int64).tolist()], True
        if arr.ndim == 2:
            return [row.astype(np.int64).tolist() for row in arr], False
        raise LWMError(f"ids must be 1-D or 2-D, got shape {arr.shape}")
    if isinstance(ids, Sequence) and ids:
        return [list(map(int, p)) for p in ids], False
    raise LWMError("empty prompt: give at least one token")


def load_model(spec: str, *, config: ModelConfig | str | None = None, mesh: Mesh | str | None = None,
               dtype=None, tokenizer=None, overrides: Mapping[str, Any] | None = None, seed: int = 0,
               cpu_kernels: bool | None = None) -> LWM:
    """Load a model from any spec (see `lwm_core.checkpoint.loader`) onto a mesh.

    config: a ModelConfig, a preset/card name, or None (use config.json beside the weights, the card of
    a released repo, or the preset of `random:<preset>`). mesh: a Mesh or LWM `mesh_dim` string
    (default: all devices on fsdp). dtype: compute and storage dtype (default float32 on CPU, bf16 on
    accelerators). tokenizer: a path, a loaded tokenizer, or None (the one beside the weights; the
    project's small shipped tokenizer for random models). overrides: typed config overrides
    (`{"theta": "5e7"}`, as from `--set`) applied on top of whichever config was chosen. cpu_kernels:
    see `LWM`.

    Random weights have no vocabulary of their own: unless `config` is a ModelConfig object or the
    overrides set `vocab_size`, a random model takes its vocabulary size from the tokenizer.
    """
    from lwm_core.checkpoint import loader

    dtype = resolve_dtype(dtype)
    mesh = mesh if isinstance(mesh, Mesh) else make_mesh(mesh)
    source, config, tokenizer = resolve_spec(spec, config=config, tokenizer=tokenizer, overrides=overrides)
    check_model(mesh, config.num_attention_heads, config.kv_heads)
    if source.kind == "random":
        params = jax.jit(functools.partial(init_params, config, dtype=dtype),
                         out_shardings=_param_shardings(config, mesh))(jax.random.key(seed))
    else:
        params = loader.place_params(loader.records(source), config, mesh, dtype, origin=source.path)
    return LWM(config, params, mesh=mesh, dtype=dtype, tokenizer=tokenizer, cpu_kernels=cpu_kernels)


def resolve_spec(spec: str, *, config: ModelConfig | str | None = None, tokenizer=None,
                 overrides: Mapping[str, Any] | None = None):
    """(source, config, tokenizer) of a spec, without touching the weights (see `load_model`)."""
    from lwm_core.checkpoint import loader
    from lwm_core.tokenizer import load_tokenizer

    source = loader.resolve(spec)
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


def _param_shardings(config: ModelConfig, mesh: Mesh):
    from flax.traverse_util import unflatten_dict

    from lwm_core.model.llama import param_layout

    return unflatten_dict({path: named_sharding(mesh, axes, shape)
                           for path, (shape, axes) in param_layout(config).items()})
