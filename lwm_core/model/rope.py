"""Rotary position embeddings in LWM's interleaved layout.

LWM (like the original LLaMA code) treats each head's features as complex numbers: feature pairs
(2i, 2i+1) are rotated together. Hugging Face Llama instead rotates halves (i, i + H/2); the export
path permutes q/k weights to convert (docs/compatibility.md#hugging-face-export).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """(H/2,) float32, computed like the original: theta ** (2i / H) in float32."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape (B, T, H/2) in float32.

    Always float32, even when computing in bf16: at 1M positions a bf16 angle would be off by whole
    turns. The product pos * freq of two float32 numbers is correctly rounded, which is what the
    original's float64 outer product rounded to float32 gives, so no table of 1M x H/2 entries is needed.
    """
    freqs = jnp.asarray(inverse_frequencies(head_dim, theta))
    angles = positions.astype(jnp.float32)[..., None] * freqs  # (B, T, H/2)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x (B, T, N, H) by the angles (B, T, H/2); computed in float32, returned in x.dtype."""
    B, T, N, H = x.shape
    # (B, T, N, H) -> (B, T, N, H/2, 2): the interleaved (real, imaginary) pairs
    pairs = x.astype(jnp.float32).reshape(B, T, N, H // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.stack([re * c - im * s, re * s + im * c], axis=-1)
    return out.reshape(B, T, N, H).astype(x.dtype)
