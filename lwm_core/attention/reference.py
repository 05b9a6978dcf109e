"""Dense attention: the reference every faster path (blockwise, causal-block, ring, kernels) is tested
against, and its one-new-token form against a KV cache (`cached_attention`), the reference of decode.

Masks are described by *slots* and *segments* rather than a materialised (T, S) matrix, so every
implementation can build the part of the mask it needs:

- `q_slot` (T,), `k_slot` (S,): integer time indices used for causality (key visible iff
  k_slot <= q_slot). They are cache slots during generation and global positions under ring attention;
  RoPE positions are separate (left padding makes them differ).
- `q_seg` (B, T), `k_seg` (B, S): optional segment ids; a key is visible iff its segment equals the
  query's. Packed sequences use 1, 2, 3...; the KV cache marks empty or padded slots with a segment
  that no query has.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Large but finite: a fully masked block must not turn the online-softmax state into NaN
# (exp(-inf - -inf)); any valid key later outweighs it by exp(1e30) = inf.
MASK_VALUE = -1e30


def attention_mask(q_slot, k_slot, q_seg, k_seg, causal: bool) -> jax.Array | None:
    """(B or 1, 1, 1, T, S) boolean mask broadcastable against scores (B, K, G, T, S)."""
    mask = None
    if causal:
        mask = (k_slot[None, :] <= q_slot[:, None])[None, None, None]
    if q_seg is not None:
        seg = (q_seg[:, :, None] == k_seg[:, None, :])[:, None, None]
        mask = seg if mask is None else mask & seg
    return mask


def dense_attention(q, k, v, *, q_slot=None, k_slot=None, q_seg=None, k_seg=None, causal: bool = True,
                    return_lse: bool = False):
    """q (B, T, N, H), k/v (B, S, K, H) with K dividing N (GQA) -> (B, T, N, H).

    Logits and softmax in float32 (docs/compatibility.md#model); the probabilities are cast back to the value
    dtype for the second product, as the original does (see `softmax_values`).
    """
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    if q_slot is None:
        q_slot = jnp.arange(T) + (S - T)
    if k_slot is None:
        k_slot = jnp.arange(S)
    # The original scales q in the compute dtype before the product.
    q = q / jnp.sqrt(jnp.asarray(H, jnp.float32)).astype(q.dtype)
    qg = q.reshape(B, T, K, G, H)  # query heads grouped by the kv head they share
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32)
    mask = attention_mask(q_slot, k_slot, q_seg, k_seg, causal)
    if mask is not None:
        scores = jnp.where(mask, scores, MASK_VALUE)
    out, lse = softmax_values(scores, v, "bkgts,bskh->bkgth")
    # (B, K, G, T, H) -> (B, T, K, G, H) -> (B, T, N, H)
    out = jnp.einsum("bkgth->btkgh", out).reshape(B, T, N, H).astype(q.dtype)
    if return_lse:
        return out, lse.reshape(B, N, T)
    return out


def softmax_values(scores, v, spec: str):
    """softmax(scores) @ v for masked float32 scores (..., T, S): (out (..., T, H) float32, lse (..., T)).

    The probabilities go to the value dtype for the product, as the original does; they are
    normalised after it, on the (T, H) output rather than the (T, S) probabilities: one exp pass over
    the scores instead of two (logsumexp, then exp(scores - lse)): faster dense attention on CPU
    (benchmarks/README.md#design-measurements).
    """
    top = jnp.max(scores, axis=-1, keepdims=True)  # finite: masked scores are MASK_VALUE
    unnormalised = jnp.exp(scores - top)
    total = jnp.sum(unnormalised, axis=-1)  # >= 1
    out = jnp.einsum(spec, unnormalised.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out / total[..., None], top[..., 0] + jnp.log(total)


def cached_attention(q, k_cache, v_cache, *, q_slot, k_seg):
    """One new position per row against a KV cache in generation's layout: `dense_attention` with T = 1.

    q (B, K, G, H): the new position's query heads grouped by kv head; k_cache/v_cache (B*K, S, H):
    batch and kv heads on one axis (`llama.KVCache`), the new key already written at `q_slot`;
    q_slot (): the query's cache slot; k_seg (B, S): 1 where a slot holds a token the query may see.
    -> (B, K, G, H). One batch axis in both products keeps the cache update in place (see KVCache).
    """
    B, K, G, H = q.shape
    S = k_cache.shape[1]
    q = q / jnp.sqrt(jnp.asarray(H, jnp.float32)).astype(q.dtype)
    scores = jnp.einsum("xgh,xsh->xgs", q.reshape(B * K, G, H), k_cache, preferred_element_type=jnp.float32)
    visible = (k_seg == 1) & (jnp.arange(S) <= q_slot)  # (B, S): causal, and only real tokens
    scores = jnp.where(jnp.repeat(visible, K, axis=0)[:, None, :], scores, MASK_VALUE)
    out, _ = softmax_values(scores, v_cache, "xgs,xsh->xgh")  # (B*K, G, H)
    return out.reshape(B, K, G, H).astype(q.dtype)
