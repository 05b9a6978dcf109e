"""Generation as a ladder of small pure functions: prefill -> decode one -> decode n.

One prefill writes the (left-padded) prompt into the KV cache and samples the first token; then a
compiled `while_loop` decodes up to `n` tokens per call with no Python in between. Callers that
stream (the chat CLI) call `decode_n` with small n and print what came out; `generate` calls it once.
Both take `layers`, the per-layer weights of `generation_layers`, made once per generation (or None
where that copy does not fit in memory: see `llama.forward_cached`); on one CPU device decode takes the
packed weights of `llama.packed_weights` instead, made once per model.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.generate.sampling import Sampling, sample
from lwm_core.model.llama import CachedWeights, KVCache, Params, cached_layers, forward_cached, init_cache
from lwm_core.parallel.mesh import constrain
from lwm_core.plural import plural


class DecodeState(NamedTuple):
    cache: KVCache
    tokens: jax.Array  # (B, max_new) generated ids; pad after a row's EOS
    last: jax.Array  # (B,) the most recent token, fed to the next step
    position: jax.Array  # (B,) RoPE position of the next token
    step: jax.Array  # () tokens generated so far
    done: jax.Array  # (B,) row has produced EOS
    key: jax.Array


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


def check_lengths(config: ModelConfig, prompt_lengths: list[int], max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise LWMError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if not prompt_lengths or min(prompt_lengths) == 0:
        raise LWMError("empty prompt: give at least one token")
    longest = max(prompt_lengths)
    if longest + max_new_tokens > config.max_sequence_length:
        raise LWMError(
            f"prompt of {plural(longest, 'token')} + {plural(max_new_tokens, 'new token')} exceeds the model's context of "
            f"{plural(config.max_sequence_length, 'token')}; shorten the prompt or lower max_new_tokens")


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def generation_layers(config: ModelConfig, params: Params, *, mesh: Mesh | None) -> CachedWeights:
    """`cached_layers`, compiled: the weights prefill and decode read (a copy; see cached_layers)."""
    return cached_layers(config, params, mesh)


@functools.partial(jax.jit, static_argnames=("config", "max_new", "slots", "top_k", "mesh"))
def prefill(config: ModelConfig, params: Params, layers: CachedWeights | None, ids: jax.Array, seg: jax.Array,
            key: jax.Array, sampling: Sampling, *, max_new: int, slots: int, top_k: int,
            mesh: Mesh | None) -> DecodeState:
    """Run the padded prompt (B, T) once, fill the cache, sample the first new token."""
    B, T = ids.shape
    cache = init_cache(config, B, slots, params["transformer"]["wte"]["embedding"].dtype)  # the model's dtype
    cache = KVCache(*(tuple(constrain(c, mesh, ("batch", "cache_seq", None)) for c in kv) for kv in cache[:2]),
                    cache.seg)
    # RoPE positions count real tokens only, so a left-padded row starts at position 0.
    positions = jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0).astype(jnp.int32)
    logits, cache = forward_cached(config, params, ids, positions, seg, cache, jnp.int32(0), mesh=mesh,
                                   layers=layers, fresh=True)
    key, sub = jax.random.split(key)
    first = sample(logits, sub, sampling, top_k)
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
        token = sample(logits, sub, sampling, top_k)
        token = jnp.where(s.done, config.pad_token_id, token)
        tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step))
        return DecodeState(cache, tokens, token, s.position + 1, s.step + 1,
                           s.done | (token == config.eos_token_id), key)

    return jax.lax.while_loop(cond, body, state)
