"""The LWM / LLaMA-2 model as pure functions over a parameter tree with LWM's own names.

Why functions over a dict rather than Flax modules: the released checkpoints are flat key paths
(`transformer/h/scan_decoder/attention/wq/kernel`), and generation, ring attention and training each
need a different view of the same weights (cached decode, sequence-sharded prefill, rematerialised
blocks). Keeping the tree exactly as LWM stores it makes loading a straight copy, and keeping the model
as functions lets the caller choose scan, remat, cache and sharding from outside. Flax's serialization
and traversal utilities handle the tree.

Shapes use one set of letters: B batch, T query positions, S key positions, N query heads, K kv heads,
G = N/K query heads per kv head, H head dim, D model dim, F mlp width, V vocab, L layers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lwm_core.attention.blockwise import blockwise_attention
from lwm_core.attention.reference import dense_attention
from lwm_core.config import ModelConfig
from lwm_core.model.rope import apply_rope, rope_angles
from lwm_core.parallel.mesh import constrain

Params = dict[str, Any]
SCAN = ("transformer", "h", "scan_decoder")


# ----------------------------------------------------------------------------------------- parameters

def param_layout(config: ModelConfig) -> dict[tuple[str, ...], tuple[tuple[int, ...], tuple[str | None, ...]]]:
    """Every parameter (scanned layout): flat key path -> (shape, logical axes)."""
    D, F, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    NH, KH = config.num_attention_heads * config.head_dim, config.kv_heads * config.head_dim
    layout = {
        ("transformer", "wte", "embedding"): ((V, D), ("vocab", "embed")),
        (*SCAN, "attention", "wq", "kernel"): ((L, D, NH), ("layers", "embed", "heads")),
        (*SCAN, "attention", "wk", "kernel"): ((L, D, KH), ("layers", "embed", "heads")),
        (*SCAN, "attention", "wv", "kernel"): ((L, D, KH), ("layers", "embed", "heads")),
        (*SCAN, "attention", "wo", "kernel"): ((L, NH, D), ("layers", "heads", "embed")),
        (*SCAN, "feed_forward", "w1", "kernel"): ((L, D, F), ("layers", "embed", "mlp")),  # gate
        (*SCAN, "feed_forward", "w2", "kernel"): ((L, F, D), ("layers", "mlp", "embed")),  # down
        (*SCAN, "feed_forward", "w3", "kernel"): ((L, D, F), ("layers", "embed", "mlp")),  # up
        (*SCAN, "attention_norm", "kernel"): ((L, D), ("layers", "norm")),
        (*SCAN, "ffn_norm", "kernel"): ((L, D), ("layers", "norm")),
        ("transformer", "ln_f", "kernel"): ((D,), ("norm",)),
        ("lm_head", "kernel"): ((D, V), ("embed", "vocab")),
    }
    if config.vision:
        Vv = config.vision_vocab_size
        layout[("transformer", "vte", "embedding")] = ((Vv, D), ("vocab", "embed"))
        layout[("vision_head", "kernel")] = ((D, Vv), ("embed", "vocab"))
    return layout


def init_params(config: ModelConfig, key: jax.Array, dtype=jnp.float32) -> Params:
    """Random weights: normal(initializer_range) kernels and embeddings, ones for norms (as LWM)."""
    from flax.traverse_util import unflatten_dict

    layout = param_layout(config)
    keys = jax.random.split(key, len(layout))
    flat = {}
    for k, (path, (shape, _)) in zip(keys, sorted(layout.items())):
        if path[-2].endswith("norm") or path[-2] == "ln_f":
            flat[path] = jnp.ones(shape, dtype)
        else:
            flat[path] = (config.initializer_range * jax.random.normal(k, shape, jnp.float32)).astype(dtype)
    return unflatten_dict(flat)


# ------------------------------------------------------------------------------------------- layers

def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x * rsqrt(mean(x^2) + eps) in float32, cast back, times the weight (as LWM's RMSNorm)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * weight.astype(x.dtype)


def _dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jnp.einsum("btd,df->btf", x, kernel.astype(x.dtype))


class KVCache(NamedTuple):
    """Keys/values of every layer for `S` slots; `seg` is 1 where a slot holds a real token, else 0."""

    k: jax.Array  # (L, B, S, K, H)
    v: jax.Array  # (L, B, S, K, H)
    seg: jax.Array  # (B, S) int32


def init_cache(config: ModelConfig, batch: int, slots: int, dtype) -> KVCache:
    shape = (config.num_hidden_layers, batch, slots, config.kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, slots), jnp.int32))


def _attend(config: ModelConfig, q, k, v, *, q_slot, k_slot, q_seg, k_seg):
    T, S = q.shape[1], k.shape[1]
    kind = config.attention
    if kind == "auto":  # blockwise once the dense score matrix stops being small
        kind = "blockwise" if T > config.query_chunk_size or S > config.key_chunk_size else "dense"
    if kind == "dense" or T == 1:
        return dense_attention(q, k, v, q_slot=q_slot, k_slot=k_slot, q_seg=q_seg, k_seg=k_seg)
    return blockwise_attention(q, k, v, q_slot=q_slot, k_slot=k_slot, q_seg=q_seg, k_seg=k_seg,
                               q_chunk=config.query_chunk_size, k_chunk=config.key_chunk_size)


def _ffn(config: ModelConfig, p: Params, h: jax.Array) -> jax.Array:
    """w2(silu(w1 h) * w3 h), blockwise over positions so the (B, T, F) activations never all exist."""
    def ffn(x):
        x = rms_norm(x, p["ffn_norm"]["kernel"], config.rms_norm_eps)
        ff = p["feed_forward"]
        return _dense(jax.nn.silu(_dense(x, ff["w1"]["kernel"])) * _dense(x, ff["w3"]["kernel"]), ff["w2"]["kernel"])

    B, T, D = h.shape
    c = config.mlp_chunk_size
    if c <= 0 or T <= c:
        return ffn(h)
    pad = -T % c
    hp = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    # (B, nT*c, D) -> (nT, B, c, D): map over position chunks, each rematerialised in the backward pass
    chunks = jnp.moveaxis(hp.reshape(B, -1, c, D), 1, 0)
    out = jax.lax.map(jax.checkpoint(ffn), chunks)
    return jnp.moveaxis(out, 0, 1).reshape(B, T + pad, D)[:, :T]


def _qkv(config: ModelConfig, p: Params, x: jax.Array, cos, sin, mesh):
    B, T, _ = x.shape
    N, K, H = config.num_attention_heads, config.kv_heads, config.head_dim
    a = p["attention"]
    xn = rms_norm(x, p["attention_norm"]["kernel"], config.rms_norm_eps)
    q = _dense(xn, a["wq"]["kernel"]).reshape(B, T, N, H)
    k = _dense(xn, a["wk"]["kernel"]).reshape(B, T, K, H)
    v = _dense(xn, a["wv"]["kernel"]).reshape(B, T, K, H)
    q = constrain(apply_rope(q, cos, sin), mesh, ("batch", "seq", "act_heads", None))
    k = constrain(apply_rope(k, cos, sin), mesh, ("batch", "seq", "act_heads", None))
    v = constrain(v, mesh, ("batch", "seq", "act_heads", None))
    return q, k, v


def _block(config: ModelConfig, p: Params, x, cos, sin, mesh, *, q_slot, q_seg):
    """One decoder block without a cache (training, scoring): h = x + attn(norm(x)); h + ffn(norm(h))."""
    B, T, D = x.shape
    q, k, v = _qkv(config, p, x, cos, sin, mesh)
    attn = _attend(config, q, k, v, q_slot=q_slot, k_slot=q_slot, q_seg=q_seg, k_seg=q_seg)
    h = x + _dense(attn.reshape(B, T, D), p["attention"]["wo"]["kernel"])
    h = constrain(h, mesh, ("batch", "seq", "act_embed"))
    return constrain(h + _ffn(config, p, h), mesh, ("batch", "seq", "act_embed"))


_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "checkpoint_dots": jax.checkpoint_policies.checkpoint_dots,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def embed(config: ModelConfig, params: Params, ids: jax.Array, vision_masks: jax.Array | None, dtype) -> jax.Array:
    """Token embeddings; vision positions take rows of `vte` (LWM_REFERENCE 2)."""
    wte = params["transformer"]["wte"]["embedding"]
    if not config.vision or vision_masks is None:
        return jnp.take(wte, ids, axis=0).astype(dtype)
    vte = params["transformer"]["vte"]["embedding"]
    text = jnp.take(wte, jnp.where(vision_masks, 0, ids), axis=0)
    vision = jnp.take(vte, jnp.where(vision_masks, ids, 0), axis=0)
    return jnp.where(vision_masks[..., None], vision, text).astype(dtype)


def heads(config: ModelConfig, params: Params, x: jax.Array, mode: str):
    """Final norm and output head(s): `text` -> text logits, `vision` -> vision logits,
    `all` -> (vision logits, text logits) as LWM's training mode returns them."""
    x = rms_norm(x, params["transformer"]["ln_f"]["kernel"], config.rms_norm_eps)
    text = (lambda: _dense(x, params["lm_head"]["kernel"]))
    vision = (lambda: _dense(x, params["vision_head"]["kernel"]))
    if mode == "text":
        return text()
    if not config.vision:
        raise ValueError(f"mode {mode!r} needs a vision model")
    return vision() if mode == "vision" else (vision(), text())


def forward(config: ModelConfig, params: Params, ids: jax.Array, *, positions=None, segment_ids=None,
            vision_masks=None, mode: str = "text", mesh: Mesh | None = None, dtype=jnp.float32,
            remat: bool = False):
    """Full-sequence forward (scoring and training): ids (B, T) -> logits (B, T, V) per `mode`.

    `positions` (B, T) are RoPE positions (default 0..T-1; packed rows restart per example);
    `segment_ids` (B, T) keep packed examples from attending to each other.
    """
    B, T = ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cos, sin = rope_angles(positions, config.head_dim, config.theta)
    x = constrain(embed(config, params, ids, vision_masks, dtype), mesh, ("batch", "seq", "act_embed"))
    slots = jnp.arange(T, dtype=jnp.int32)

    def layer(x, p):
        return _block(config, p, x, cos, sin, mesh, q_slot=slots, q_seg=segment_ids), None

    if remat and config.remat != "none":
        layer = jax.checkpoint(layer, policy=_POLICIES[config.remat], prevent_cse=False)
    x, _ = jax.lax.scan(layer, x, params["transformer"]["h"]["scan_decoder"])
    out = heads(config, params, x, mode)
    return constrain(out, mesh, ("batch", "seq", "act_vocab")) if mode != "all" else out


def forward_cached(config: ModelConfig, params: Params, ids: jax.Array, positions: jax.Array, seg: jax.Array,
                   cache: KVCache, start: jax.Array, *, mesh: Mesh | None = None, vision_masks=None,
                   mode: str = "text", last_only: bool = True):
    """Run T new tokens written at cache slots [start, start + T) against everything cached so far.

    ids/positions/seg are (B, T); seg is 1 for real tokens and 0 for left padding. Used for prefill
    (start 0, T = padded prompt) and for each decode step (T = 1). Returns (logits, cache); with
    `last_only` the logits are those of the last position only (B, V), which is all sampling needs.
    """
    B, T = ids.shape
    dtype = cache.k.dtype
    cos, sin = rope_angles(positions, config.head_dim, config.theta)
    x = constrain(embed(config, params, ids, vision_masks, dtype), mesh, ("batch", "seq", "act_embed"))
    cache_seg = jax.lax.dynamic_update_slice(cache.seg, seg.astype(jnp.int32), (0, start))
    S = cache.k.shape[2]
    q_slot = start + jnp.arange(T, dtype=jnp.int32)
    k_slot = jnp.arange(S, dtype=jnp.int32)
    # A query sees cached slots with segment 1 only; padded queries (segment 0) see nothing useful, and
    # their outputs are never read.
    q_seg = jnp.ones((B, T), jnp.int32)

    def layer(carry, p):
        x, ks, vs, i = carry
        q, k, v = _qkv(config, p, x, cos, sin, mesh)
        ks = jax.lax.dynamic_update_slice(ks, k[None].astype(ks.dtype), (i, 0, start, 0, 0))
        vs = jax.lax.dynamic_update_slice(vs, v[None].astype(vs.dtype), (i, 0, start, 0, 0))
        layer_k = jax.lax.dynamic_index_in_dim(ks, i, 0, keepdims=False)
        layer_v = jax.lax.dynamic_index_in_dim(vs, i, 0, keepdims=False)
        attn = _attend(config, q, layer_k, layer_v, q_slot=q_slot, k_slot=k_slot, q_seg=q_seg, k_seg=cache_seg)
        h = x + _dense(attn.reshape(B, T, -1), p["attention"]["wo"]["kernel"])
        h = constrain(h + _ffn(config, p, h), mesh, ("batch", "seq", "act_embed"))
        return (h, ks, vs, i + 1), None

    (x, ks, vs, _), _ = jax.lax.scan(layer, (x, cache.k, cache.v, jnp.int32(0)),
                                     params["transformer"]["h"]["scan_decoder"])
    if last_only:
        x = x[:, -1:]
    logits = heads(config, params, x, mode)
    if last_only:
        logits = jax.tree.map(lambda a: a[:, 0], logits)
    return logits, KVCache(ks, vs, cache_seg)
