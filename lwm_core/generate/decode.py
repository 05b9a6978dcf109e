"""Generation as a ladder of small pure functions: prefill -> decode one -> decode n -> finish / stream.

One prefill writes the (left-padded) prompt into the KV cache and samples the first token; then a
compiled `while_loop` decodes up to `n` tokens per call with no Python in between. `finish` calls it once
for the whole answer; `stream` calls it with small n and yields what came out (the chat CLI prints it).
Both take `layers`, the per-layer weights of `generation_layers`, made once per generation (or None
where that copy does not fit in memory: see `llama.forward_cached`); on one CPU device decode takes the
packed weights of `llama.packed_weights` instead, made once per model (the choice: generate/weights.py).
The host-side rungs (`as_prompts`, `check_request`, `start`) turn what a caller passes into the arrays
prefill takes, refusing what cannot work with a message that names the value. `GenerationStats` is what
a caller learns of one generation when it asks (`LWM.generate(..., stats=)`): counts and the seconds of
setup, prefill and decode.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.generate.sampling import Sampling, sample
from lwm_core.model.llama import (
    CachedWeights,
    KVCache,
    Params,
    cached_layers,
    forward_cached,
    init_cache,
    packed_layers,
)
from lwm_core.parallel.mesh import CACHE_AXES, constrain, put
from lwm_core.plural import plural


class DecodeState(NamedTuple):
    cache: KVCache
    tokens: jax.Array  # (B, max_new) generated ids; pad after a row's EOS
    last: jax.Array  # (B,) the most recent token, fed to the next step
    position: jax.Array  # (B,) RoPE position of the next token
    step: jax.Array  # () tokens generated so far
    done: jax.Array  # (B,) row has produced EOS
    key: jax.Array


@dataclass
class GenerationStats:
    """What one `LWM.generate` call did, and the wall seconds of each part; generate fills in the one it is
    given (`stats=GenerationStats()`), replacing every field.

    The prefill is timed until its first token is ready: one wait, which decode would make anyway, so a
    timed generation runs as fast as an untimed one, but for the dispatch of decode (a fraction of a
    millisecond) and, on a call that compiles decode, that compilation, which no longer overlaps the
    prefill. A call with a new prompt shape (`bucket`: a handful of shapes) compiles prefill inside
    prefill_seconds; one with a new batch size or max_new_tokens bucket compiles decode inside
    decode_seconds.
    """

    rows: int = 0  # prompts in the batch (B)
    prompt_tokens: int = 0  # the prompts' tokens over all rows, without padding
    padded_tokens: int = 0  # rows x the padded length prefill ran over (`bucket` of the longest prompt)
    new_tokens: int = 0  # per row: n of the returned (B, n); the first came from prefill, n - 1 from decode
    setup_seconds: float = 0.0  # the request's checks and the weights generation reads (generate/weights.py)
    prefill_seconds: float = 0.0  # the padded prompts through the model into the cache, first token sampled
    decode_seconds: float = 0.0  # the other n - 1 tokens, and copying all n to the host

    @property
    def prefill_tokens_per_s(self) -> float | None:
        """Prompt tokens (unpadded) per second of prefill; None before a generation filled these in."""
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens decoded (rows x (n - 1), rows that ended early included: decode computed them) per
        second of decode; None when nothing was decoded."""
        steps = self.rows * (self.new_tokens - 1)
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else None


def bucket(n: int) -> int:
    """Round lengths up so a chat session compiles a handful of shapes, not one per prompt."""
    if n <= 64:
        return 64
    if n <= 2048:
        return 1 << (n - 1).bit_length()
    return -(-n // 1024) * 1024


def left_pad(prompts: list[list[int]], pad_id: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of different lengths -> ids (B, length) and segments (B, length), padding on the left so
    every row's last prompt token sits in the same slot and decode writes one slot for all rows."""
    ids = np.full((len(prompts), length), pad_id, np.int32)
    seg = np.zeros((len(prompts), length), np.int32)
    for b, p in enumerate(prompts):
        if p:
            ids[b, length - len(p):] = p
            seg[b, length - len(p):] = 1
    return ids, seg


def left_pad_masks(masks: list[list[bool]], length: int) -> np.ndarray:
    """Vision masks (one per prompt, as long as it) -> (B, length) bool, left-padded as `left_pad` pads the
    ids (padding is text: False)."""
    out = np.zeros((len(masks), length), bool)
    for b, m in enumerate(masks):
        if m:
            out[b, length - len(m):] = m
    return out


def check_lengths(config: ModelConfig, prompt_lengths: list[int], max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise LWMError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if not prompt_lengths or min(prompt_lengths) == 0:
        raise LWMError("empty prompt: give at least one token")
    longest = max(prompt_lengths)
    if longest + max_new_tokens > config.max_sequence_length:
        raise LWMError(
            f"prompt of {plural(longest, 'token')} + {plural(max_new_tokens, 'new token')} exceeds the model's "
            f"context of {plural(config.max_sequence_length, 'token')}; shorten the prompt or lower max_new_tokens")


def check_ids(config: ModelConfig, ids: np.ndarray, vision_masks: np.ndarray | None = None) -> None:
    """Ids (..., T) within the vocabulary (the vision one where `vision_masks` says so) and the context."""
    limit = np.full(ids.shape, config.vocab_size)
    if vision_masks is not None:
        limit = np.where(vision_masks, config.vision_vocab_size, limit)
    bad = (ids < 0) | (ids >= limit)
    if bad.any():
        raise LWMError(f"token id {int(ids[bad][0])} is outside the vocabulary of {int(limit[bad][0])}; "
                       f"use the model's tokenizer")
    if ids.ndim == 2 and ids.shape[1] > config.max_sequence_length:
        raise LWMError(f"sequence of {ids.shape[1]} tokens exceeds the model's context of "
                       f"{config.max_sequence_length}")


def as_prompts(ids) -> tuple[list[list[int]], bool]:
    """One prompt (T,) or a batch ((B, T) array, or a list of lists of any lengths) -> (prompts, single)."""
    flat = isinstance(ids, Sequence) and ids and not isinstance(ids[0], (Sequence, np.ndarray))  # one list of ids
    if isinstance(ids, np.ndarray) or flat:
        arr = np.asarray(ids)
        if arr.ndim == 1:
            return [arr.astype(np.int64).tolist()], True
        if arr.ndim == 2:
            return [row.astype(np.int64).tolist() for row in arr], False
        raise LWMError(f"ids must be 1-D or 2-D, got shape {arr.shape}")
    if isinstance(ids, Sequence) and ids:
        return [list(map(int, p)) for p in ids], False
    raise LWMError("empty prompt: give at least one token")


def as_masks(vision_masks, prompts: list[list[int]], single: bool, config: ModelConfig) -> list[list[bool]] | None:
    """Vision masks shaped as the ids that `as_prompts` read (`single`: one prompt's (T,); else (B, T) or a
    list of per-prompt lists) -> one list of bools per prompt; None stays None. Refuses masks on a
    text-only model and masks whose lengths are not the prompts'."""
    if vision_masks is None:
        return None
    if not config.vision:
        raise LWMError("vision_masks need a vision model (config vision=true); this one is text-only")
    rows = [vision_masks] if single else list(vision_masks)
    masks = [np.asarray(m).astype(bool).reshape(-1).tolist() for m in rows]
    if [len(m) for m in masks] != [len(p) for p in prompts]:
        raise LWMError(f"vision_masks have lengths {[len(m) for m in masks][:8]} but the prompts "
                       f"{[len(p) for p in prompts][:8]}; give one entry per token (True where it is a vision id)")
    return masks


def check_request(config: ModelConfig, prompts: list[list[int]], max_new_tokens: int, *, temperature: float,
                  top_k: int, top_p: float, seed: int, vision_masks: list[list[bool]] | None = None) -> None:
    """Everything about a generation request that can be wrong, before any weights are touched."""
    check_lengths(config, [len(p) for p in prompts], max_new_tokens)
    flat_masks = None if vision_masks is None else np.asarray([v for m in vision_masks for v in m], bool)
    check_ids(config, np.asarray([t for p in prompts for t in p], np.int32), flat_masks)
    if not 0 <= temperature < float("inf") or not 0 < top_p <= 1 or top_k < 0:  # (nan fails too)
        raise LWMError(f"sampling settings temperature={temperature}, top_k={top_k}, top_p={top_p} are out of "
                       f"range; need a finite temperature >= 0, top_k >= 0, 0 < top_p <= 1")
    if not 0 <= seed < 2**63:
        raise LWMError(f"seed {seed} is out of range; use an integer from 0 to 2**63 - 1")


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def generation_layers(config: ModelConfig, params: Params, *, mesh: Mesh | None) -> CachedWeights:
    """`cached_layers`, compiled: the weights prefill and decode read (a copy; see cached_layers)."""
    return cached_layers(config, params, mesh)


def empty_cache(config: ModelConfig, params: Params, batch: int, slots: int, mesh: Mesh | None) -> KVCache:
    """A zeroed KV cache of `slots` slots per row, in the model's dtype, laid out on the mesh."""
    cache = init_cache(config, batch, slots, params["transformer"]["wte"]["embedding"].dtype)
    return KVCache(*(tuple(constrain(c, mesh, CACHE_AXES) for c in kv) for kv in cache[:2]),
                   cache.seg)


def prompt_positions(seg: jax.Array) -> jax.Array:
    """RoPE positions (B, T) of left-padded prompts: they count real tokens only, so a padded row starts
    at position 0 (as the original's `cumsum(attention_mask) - 1`)."""
    return jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_new", "slots", "top_k", "mesh"))
def prefill(config: ModelConfig, params: Params, layers: CachedWeights | None, ids: jax.Array, seg: jax.Array,
            key: jax.Array, sampling: Sampling, *, max_new: int, slots: int, top_k: int,
            mesh: Mesh | None, vision_masks: jax.Array | None = None) -> DecodeState:
    """Run the padded prompt (B, T) once, fill the cache, sample the first new token. `vision_masks`
    (B, T): which prompt positions are vision ids (embedded by `vte`); the new tokens are text."""
    B, T = ids.shape
    cache = empty_cache(config, params, B, slots, mesh)
    positions = prompt_positions(seg)
    logits, cache = forward_cached(config, params, ids, positions, seg, cache, jnp.int32(0), mesh=mesh,
                                   vision_masks=vision_masks, layers=layers, fresh=True)
    key, sub = jax.random.split(key)
    first = sample(logits, sub, sampling, top_k, cpu_kernels=packed_layers(layers))
    tokens = jnp.full((B, max_new), config.pad_token_id, jnp.int32).at[:, 0].set(first)
    return DecodeState(cache, tokens, first, positions[:, -1] + 1, jnp.int32(1),
                       first == config.eos_token_id, key)


@functools.partial(jax.jit, static_argnames=("config", "top_k", "mesh"), donate_argnames=("state",))
def decode_n(config: ModelConfig, params: Params, layers: CachedWeights | None, state: DecodeState,
             limit: jax.Array, sampling: Sampling, *, top_k: int, mesh: Mesh | None) -> DecodeState:
    """Decode until `state.step == limit` or every row is done; `limit` is traced (no recompiles).

    The state (its KV cache above all) is donated: each step updates it in place.
    """
    prompt_slots = state.cache.k[0].shape[1] - state.tokens.shape[1]

    def cond(s: DecodeState):
        return (s.step < limit) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        slot = prompt_slots + s.step - 1  # where the last token goes
        logits, cache = forward_cached(config, params, s.last[:, None], s.position[:, None],
                                       jnp.ones_like(s.last)[:, None], s.cache, slot, mesh=mesh, layers=layers)
        key, sub = jax.random.split(s.key)
        token = sample(logits, sub, sampling, top_k, cpu_kernels=packed_layers(layers))
        token = jnp.where(s.done, config.pad_token_id, token)
        tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step))
        return DecodeState(cache, tokens, token, s.position + 1, s.step + 1,
                           s.done | (token == config.eos_token_id), key)

    return jax.lax.while_loop(cond, body, state)


def start(config: ModelConfig, params: Params, layers: CachedWeights | None, prompts: list[list[int]],
          max_new_tokens: int, *, temperature: float, top_k: int, top_p: float, seed: int,
          mesh: Mesh, vision_masks: list[list[bool]] | None = None) -> tuple[DecodeState, Sampling]:
    """Checked prompts (and their vision masks, from `as_masks`) -> the state after prefill (bucketed
    shapes: a chat session compiles a handful)."""
    length = bucket(max(len(p) for p in prompts))
    max_new = bucket(max_new_tokens)
    ids, seg = left_pad(prompts, config.pad_token_id, length)
    masks = None if vision_masks is None else put(left_pad_masks(vision_masks, length), mesh, ("batch", None))
    sampling = Sampling(jnp.float32(temperature), jnp.float32(top_p))
    state = prefill(config, params, layers, put(ids, mesh, ("batch", None)), put(seg, mesh, ("batch", None)),
                    jax.random.key(seed), sampling, max_new=max_new, slots=length + max_new, top_k=int(top_k),
                    mesh=mesh, vision_masks=masks)
    return state, sampling


def finish(config: ModelConfig, params: Params, layers: CachedWeights | None, state: DecodeState,
           sampling: Sampling, max_new_tokens: int, *, top_k: int, mesh: Mesh) -> np.ndarray:
    """Decode to EOS or max_new_tokens in one compiled call -> the new ids (B, n), rows that finished early
    padded with pad_token_id."""
    state = decode_n(config, params, layers, state, jnp.int32(max_new_tokens), sampling, top_k=int(top_k), mesh=mesh)
    steps = int(state.step)
    return np.asarray(jax.device_get(state.tokens))[:, :steps]


def stream(config: ModelConfig, params: Params, layers: CachedWeights | None, state: DecodeState,
           sampling: Sampling, max_new_tokens: int, *, top_k: int, chunk: int, mesh: Mesh) -> Iterator[int]:
    """Yield row 0's new tokens, decoding `chunk` at a time; stops before EOS. Between chunks the caller
    can print, or stop by closing the generator."""
    emitted = 0
    eos = config.eos_token_id
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
        state = decode_n(config, params, layers, state, jnp.int32(limit), sampling, top_k=int(top_k), mesh=mesh)
