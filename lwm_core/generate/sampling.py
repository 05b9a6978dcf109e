"""Token sampling: greedy, temperature, top-k, top-p. Pure functions of (logits, key, settings)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lwm_core import cpu_decode


class Sampling(NamedTuple):
    """Sampling settings. temperature and top_p are traced (changing them never recompiles); top_k is
    static because `lax.top_k` needs a fixed k."""

    temperature: jax.Array | float = 0.0  # 0 = greedy
    top_p: jax.Array | float = 1.0  # nucleus mass kept; 1 = off


def argmax(logits: jax.Array) -> jax.Array:
    """(B, V) -> (B,) int32: `jnp.argmax` (first maximum; first NaN if any) as two plain reductions.
    XLA's CPU backend runs argmax's (value, index) reduction several times slower
    (benchmarks/README.md#design-measurements)."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    hit = (logits == top) | jnp.isnan(logits)
    V = logits.shape[-1]
    return jnp.min(jnp.where(hit, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def sample(logits: jax.Array, key: jax.Array, sampling: Sampling, top_k: int = 0, *,
           cpu_kernels: bool = False) -> jax.Array:
    """logits (B, V) -> token ids (B,) int32. `cpu_kernels`: on one CPU device with lwm's CPU kernels
    (decode's packed weights), greedy choices come from the kernel's one-pass argmax."""
    logits = logits.astype(jnp.float32)
    temperature = jnp.asarray(sampling.temperature, jnp.float32)
    top_p = jnp.asarray(sampling.top_p, jnp.float32)

    def greedy(logits):
        return cpu_decode.argmax(logits) if cpu_kernels else argmax(logits)

    def nucleus(x):
        # Keep the smallest set of tokens whose probability mass reaches top_p (the top token always).
        sorted_x = jnp.sort(x, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_x, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(x < cutoff, -jnp.inf, x)

    def draw(logits):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        if 0 < top_k < logits.shape[-1]:
            kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
            scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
        scaled = jax.lax.cond(top_p < 1.0, nucleus, lambda x: x, scaled)
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

    # Branches, not both computed and one selected: greedy decoding then skips the random draw over the
    # whole vocabulary (and the top-k / top-p work) at every token.
    return jax.lax.cond(temperature > 0.0, draw, greedy, logits)
