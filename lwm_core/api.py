"""The public Python API: `get_config`, `load_model` and the `LWM` model object.

    model = lwm_core.load_model("LargeWorldModel/LWM-Text-Chat-1M-Jax", mesh="1,-1,1,1")
    ids = model.tokenizer.encode(lwm_core.chat_prompt("What is a world model?"))
    reply = model.tokenizer.decode(model.generate(ids, 64))

A thin facade: loading lives in lwm_core.loading, generation in lwm_core.generate (which weights decode
reads: generate/weights.py), saving in lwm_core.checkpoint.save. Library modules import those, never this.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lwm_core.checkpoint import save as checkpoint_save
from lwm_core.config import ModelConfig, get_config  # noqa: F401  (get_config: re-exported, as before)
from lwm_core.errors import LWMError
from lwm_core.generate import decode, vision
from lwm_core.generate.decode import DecodeState, GenerationStats
from lwm_core.generate.sampling import Sampling
from lwm_core.generate.vision import CODEBOOK, VisionSampling
from lwm_core.generate.weights import DecodeWeights
from lwm_core.loading import load, resolve_dtype, resolve_spec  # noqa: F401  (resolve_*: re-exported, as before)
from lwm_core.model.llama import CachedWeights, Params, forward
from lwm_core.parallel.mesh import put
from lwm_core.quantize import is_quantized

_forward = jax.jit(forward, static_argnames=("config", "mode", "mesh", "dtype", "remat"))


class LWM:
    """A loaded model: config, parameters on a mesh, and its tokenizer (may be None).

    `copy_layers`: whether generation holds a second, decode-friendly copy of the layer weights while
    it runs (see `llama.cached_layers`; faster decode). None (default): when that
    copy takes at most half the free memory of the devices holding it; otherwise each layer's weights
    are rearranged as decode reaches them, at one layer's worth of extra memory.

    `cpu_kernels`: whether decode on a single CPU device runs lwm's kernels (lwm_core.cpu_decode: the
    matvec and the cache attention; faster decode, see benchmarks/README.md). They read a packed copy of the
    weights that the model keeps from its first generation on (the size of the layers and head in
    float32). None (default): on one CPU device with float32 weights, when the kernels build (a C++
    compiler is needed, once) and the copy takes at most half the free host memory. True: required (an
    error says why they cannot be used). False: never.

    The policy behind both is lwm_core.generate.weights. For the model in another dtype, `astype` makes a
    new one.
    """

    def __init__(self, config: ModelConfig, params: Params, *, mesh: Mesh, dtype, tokenizer=None,
                 copy_layers: bool | None = None, cpu_kernels: bool | None = None,
                 vision_sampling: Mapping[str, VisionSampling] | None = None):
        self.config, self.params, self.mesh, self.dtype, self.tokenizer = config, params, mesh, dtype, tokenizer
        self.copy_layers = copy_layers
        self.cpu_kernels = cpu_kernels
        # kind -> the model's own sampling defaults for generate_vision (vision.SAMPLING_FILE); {}: LWM's
        self.vision_sampling = dict(vision_sampling or {})
        self._decode_weights = DecodeWeights()  # holds the CPU kernels' packed weights between generations

    def astype(self, dtype) -> LWM:
        """The same model (config, mesh, tokenizer, settings) with its parameters cast to `dtype` (a dtype or
        a spelling such as "float32"), computing in it: `model.astype("float32")` runs rounded weights in
        float32. This model is left as it is."""
        dtype = resolve_dtype(dtype)
        # quantized weights and their scales stay as they are (lwm_core.quantize); the rest is cast
        params = jax.tree_util.tree_map_with_path(
            lambda path, x: x if x.dtype in (jnp.int8, jnp.uint8) or path[-1].key == "scale" else x.astype(dtype),
            self.params)
        return LWM(self.config, params, mesh=self.mesh, dtype=dtype, tokenizer=self.tokenizer,
                   copy_layers=self.copy_layers, cpu_kernels=self.cpu_kernels, vision_sampling=self.vision_sampling)

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
            masks = put(vision_masks, self.mesh, ("batch", "seq"))
        decode.check_ids(self.config, ids2, vision_masks)
        out = _forward(self.config, self.params, put(ids2, self.mesh, ("batch", "seq")), vision_masks=masks,
                       mode=mode, mesh=self.mesh, dtype=self.dtype)
        out = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), out)
        return jax.tree.map(lambda a: a[0], out) if squeeze else out

    # --------------------------------------------------------------------------------- generation

    def generate(self, ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, stats: GenerationStats | None = None,
                 vision_masks=None) -> np.ndarray:
        """New token ids for one prompt (T,) -> (n,), or a batch (B, T) / list of prompts -> (B, n).

        Temperature 0 is greedy. Generation stops at EOS (which is included) or after max_new_tokens;
        in a batch, rows that finished early are padded with pad_token_id.

        `vision_masks` (vision models): booleans shaped as `ids` (one list per prompt for a ragged batch),
        True where the id is a vision id (a VQGAN code or delimiter, embedded by `vte`), so that a prompt
        mixes text and frames, as `lwm_core.prompts.vision_chat_prompt` builds them. The new tokens are
        text either way.

        `stats`: a `GenerationStats` (lwm_core.generate.decode) to fill in with this call's counts and
        the seconds of its setup, prefill and decode; the same tokens come out:

            stats = GenerationStats()
            model.generate(ids, 64, stats=stats)
            stats.prefill_tokens_per_s
        """
        prompts, single = decode.as_prompts(ids)
        masks = decode.as_masks(vision_masks, prompts, single, self.config)
        state, sampling, layers = self._start(prompts, max_new_tokens, temperature, top_k, top_p, seed, stats=stats,
                                              vision_masks=masks)
        clock = time.perf_counter()
        tokens = decode.finish(self.config, self.params, layers, state, sampling, max_new_tokens, top_k=top_k,
                               mesh=self.mesh)
        if stats is not None:
            stats.decode_seconds = time.perf_counter() - clock
            stats.new_tokens = tokens.shape[1]
        return tokens[0] if single else tokens

    def stream(self, ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0, chunk: int = 4, vision_masks=None) -> Iterator[int]:
        """Yield the new tokens of one prompt as they are generated; stops before EOS.

        Decoding runs compiled `chunk` tokens at a time; between chunks the caller can print, or stop
        by closing the generator (Ctrl-C in the chat REPL). `vision_masks` (T,): as in `generate`.
        """
        prompts, single = decode.as_prompts(ids)
        if not single:
            raise LWMError("stream() takes one prompt; use generate() for batches")
        masks = decode.as_masks(vision_masks, prompts, single, self.config)
        state, sampling, layers = self._start(prompts, max_new_tokens, temperature, top_k, top_p, seed,
                                              vision_masks=masks)
        yield from decode.stream(self.config, self.params, layers, state, sampling, max_new_tokens, top_k=top_k,
                                 chunk=chunk, mesh=self.mesh)

    def _start(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int,
               top_p: float, seed: int, *, stats: GenerationStats | None = None,
               vision_masks: list[list[bool]] | None = None) -> tuple[DecodeState, Sampling, CachedWeights | None]:
        """Check the request, choose the weights, prefill -> (state, sampling, the layers decode reads);
        with `stats`, wait for the prefill and record its counts and seconds (see GenerationStats)."""
        clock = time.perf_counter()
        settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        decode.check_request(self.config, prompts, max_new_tokens, vision_masks=vision_masks, **settings)
        prefill_layers, decode_layers = self._decode_weights.for_generation(
            self.config, self.params, self.mesh, self.dtype, copy_layers=self.copy_layers,
            cpu_kernels=self.cpu_kernels)
        prefill_clock = time.perf_counter()
        state, sampling = decode.start(self.config, self.params, prefill_layers, prompts, max_new_tokens,
                                       mesh=self.mesh, vision_masks=vision_masks, **settings)
        if stats is not None:
            jax.block_until_ready(state)  # the first token, which decode waits for anyway
            done = time.perf_counter()
            lengths = [len(p) for p in prompts]
            stats.rows, stats.prompt_tokens = len(prompts), sum(lengths)
            stats.padded_tokens = len(prompts) * decode.bucket(max(lengths))
            stats.setup_seconds, stats.prefill_seconds = prefill_clock - clock, done - prefill_clock
            stats.new_tokens, stats.decode_seconds = 0, 0.0  # generate fills these in once decode is done
        return state, sampling, decode_layers

    def generate_vision(self, prompts: str | Sequence[str], *, kind: str = "image", n_frames: int = 1,
                        cfg_scale: float | None = None, top_k: int | None = None, temperature: float | None = None,
                        beams: int | None = None, first_frame: VisionSampling | None = None,
                        seed: int | Sequence[int] = 0,
                        codebook_size: int = CODEBOOK, frame_side: int = vision.FRAME_SIDE,
                        on_frame: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """Images or videos of captions -> VQGAN codes (B, n_frames, side, side) int32, for
        `lwm_core.load_vqgan(...).decode`. A vision model; lwm_core.generate.vision has the procedure.

            codes = model.generate_vision(["fireworks over the city"], kind="video", n_frames=8)
            frames = lwm_core.load_vqgan("LargeWorldModel/LWM-Chat-1M-Jax").decode(codes[0])

        kind "image" (one frame) or "video" (its first frame drawn as an image, then the rest conditioned on
        it). cfg_scale, top_k, temperature, beams: the kind's frames (default: the model's `vision_sampling`,
        read from its directory's vision_sampling.json, else LWM's: image 5, 8192, 1; video 1, 100, 1; one
        beam, i.e. sampling; beams > 1 is beam search, deterministic, where top_k and temperature play no part);
        `first_frame`: a video's first frame (default: the image's). codebook_size: the VQGAN's codes,
        all that is sampled inside a frame (at most 8192); frame_side: its codes per side (16 for LWM's
        VQGAN, `vqgan.config.codes_per_side`).

        seed: one for every prompt, or one per prompt. A prompt's codes depend on its prompt, seed and the
        settings only: not on the rest of its batch, nor on the mesh (up to floating-point rounding, which
        almost never changes a sampled code).

        on_frame(index, tokens): called after each frame (index over the whole video) with its tokens
        (B, side^2 + 1), the codes then END_OF_FRAME; what it raises stops the generation.
        """
        if not self.config.vision:
            raise LWMError("generate_vision needs a vision model (config vision=true); this one is text-only")
        if self.tokenizer is None:
            raise LWMError("generate_vision needs the model's tokenizer; load the model with one")
        sampling = vision.settings(kind, cfg_scale=cfg_scale, top_k=top_k, temperature=temperature, beams=beams,
                                   defaults=self.vision_sampling)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seed] * len(prompts) if isinstance(seed, int) else [int(s) for s in seed]
        layers = self._decode_weights.for_generation(self.config, self.params, self.mesh, self.dtype,
                                                     copy_layers=self.copy_layers, cpu_kernels=self.cpu_kernels)
        tokens = vision.generate(self.config, self.params, layers, self.tokenizer, prompts, kind=kind,
                                 n_frames=n_frames, sampling=sampling,
                                 first_frame=first_frame or vision.default_sampling("image", self.vision_sampling),
                                 codebook=codebook_size, frame_side=frame_side, seeds=seeds, mesh=self.mesh,
                                 on_frame=on_frame)
        return vision.codes(tokens)

    # The packed weights, by the names tests/test_cpu_decode.py inspects.
    @property
    def _packed(self) -> tuple[Params, CachedWeights] | None:
        return self._decode_weights.packed

    def _packed_weights(self) -> CachedWeights | None:
        return self._decode_weights.packed_weights(self.config, self.params, self.mesh, self.dtype,
                                                   cpu_kernels=self.cpu_kernels)

    # ------------------------------------------------------------------------------------ saving

    def save(self, directory: str, *, overwrite: bool = False) -> None:
        """Write lwm's native directory (config.json + safetensors + tokenizer.model)."""
        checkpoint_save.save_native(directory, self.config, self.params, self.tokenizer, overwrite=overwrite)
        vision.write_sampling(directory, self.vision_sampling)

    @property
    def quantized(self) -> bool:
        """Whether the weights are quantized, int8 or int4 (`load_model(..., quantize=)`, lwm_core.quantize)."""
        return is_quantized(self.params)

    def save_params(self, path: str, *, scanned: bool | None = None) -> None:
        """Write LWM's streaming `params` file (scanned layout, or one entry per layer)."""
        if self.quantized:
            raise LWMError("a quantized model is saved as lwm's native directory (LWM.save, lwm convert quantize), "
                           "not as LWM's params file, which holds float weights")
        checkpoint_save.save_params(path, self.config, self.params, scanned=scanned)


def load_model(spec: str, *, config: ModelConfig | str | None = None, mesh: Mesh | str | None = None,
               dtype=None, tokenizer=None, overrides: Mapping[str, Any] | None = None, seed: int = 0,
               cpu_kernels: bool | None = None, quantize: str | None = None) -> LWM:
    """Load a model from any spec (see `lwm_core.checkpoint.loader`; also the `Source` that
    `lwm_core.loading.resolve_spec` returned for one, which is then not resolved again) onto a mesh.

    config: a ModelConfig, a preset/card name, or None (use config.json beside the weights, the card of
    a released repo, or the preset of `random:<preset>`). mesh: a Mesh or LWM `mesh_dim` string
    (default: all devices on fsdp). dtype: compute and storage dtype (default float32 on CPU, bf16 on
    accelerators). tokenizer: a path, a loaded tokenizer, or None (the one beside the weights; the
    project's small shipped tokenizer for random models). overrides: typed config overrides
    (`{"theta": "5e7"}`, as from `--set`) applied on top of whichever config was chosen. cpu_kernels:
    see `LWM`. quantize: "int8" stores the projections and output heads as int8 with a float32 scale per
    output channel, "int4" as 4-bit weights with a float32 scale per 32 input rows and output channel
    (lwm_core.quantize; quantized layer by layer as the checkpoint streams in, so a model too large for
    float32 in memory loads), "none" float weights; None (default): as the checkpoint stores them
    (`lwm convert quantize` writes int8 and int4 directories).

    Random weights have no vocabulary of their own: unless `config` is a ModelConfig object or the
    overrides set `vocab_size`, a random model takes its vocabulary size from the tokenizer.
    """
    loaded = load(spec, config=config, mesh=mesh, dtype=dtype, tokenizer=tokenizer, overrides=overrides, seed=seed,
                  quantize=quantize)
    return LWM(loaded.config, loaded.params, mesh=loaded.mesh, dtype=loaded.dtype, tokenizer=loaded.tokenizer,
               cpu_kernels=cpu_kernels, vision_sampling=loaded.vision_sampling)
