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

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lwm_core import cpu_decode
from lwm_core.attention import dispatch, layout
from lwm_core.attention.blockwise import blockwise_attention
from lwm_core.attention.causal_block import causal_block_attention
from lwm_core.attention.cpu_flash import flash_attention
from lwm_core.attention.dispatch import AttentionPlan
from lwm_core.attention.reference import cached_attention, dense_attention
from lwm_core.attention.ring import ring_attention, sharded_cached_attention, write_sharded_cache
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.model.rope import apply_rope, rope_angles
from lwm_core.parallel.mesh import CACHE_AXES, constrain
from lwm_core.quantize import dequantize

Params = dict[str, Any]
SCAN = ("transformer", "h", "scan_decoder")


def scanned_layers(params: Params) -> Params:
    """The stacked per-layer weights (leading axis L) of a params tree: the subtree at `SCAN`."""
    tree = params
    for key in SCAN:
        tree = tree[key]
    return tree


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


def _one_device(mesh: Mesh | None) -> bool:
    return mesh is None or mesh.devices.size == 1


def _dense(x: jax.Array, kernel: jax.Array, flat: bool = False) -> jax.Array:
    """x (B, T, D) times kernel (D, F). `flat` (one device): as one (B*T, D) x (D, F) product, whose
    gradient XLA's CPU backend takes without transposing the (B*T, F) output gradient first (the
    (B, T)-batched einsum's weight gradient copied it transposed: a bench-50m train step spent ~10% of
    its time in those copies). On a mesh the einsum keeps B and T on their own axes (dp/fsdp, sp)."""
    if flat:
        B, T, D = x.shape
        return (x.reshape(B * T, D) @ kernel.astype(x.dtype)).reshape(B, T, kernel.shape[-1])
    return jnp.einsum("btd,df->btf", x, kernel.astype(x.dtype))


def _project(x: jax.Array, w, spec: str) -> jax.Array:
    """x times a cached-path weight: an array by the einsum `spec`, or a packed CPU weight by the matvec
    kernel (its output flat over the weight's columns: callers reshape)."""
    if isinstance(w, cpu_decode.Packed):
        return cpu_decode.matvec(x, w).astype(x.dtype)
    return jnp.einsum(spec, x, w.astype(x.dtype))


class KVCache(NamedTuple):
    """Keys/values of every layer for `S` slots; `seg` is 1 where a slot holds a real token, else 0.

    One array per layer rather than one (L, ...) array: a decode step updates each layer's cache in
    place, and XLA copies a stacked cache carried through the layer loop (a dynamic slice per layer).
    Batch and kv heads share the leading axis (B-major) so that attention against the cache is a dot
    with a single batch dimension: with two (B, K) XLA's CPU backend fuses the in-place update into a
    reshape and copies the whole cache of every layer at every step (cost: benchmarks/README.md#design-measurements).
    """

    k: tuple[jax.Array, ...]  # L x (B*K, S, H)
    v: tuple[jax.Array, ...]  # L x (B*K, S, H)
    seg: jax.Array  # (B, S) int32


def init_cache(config: ModelConfig, batch: int, slots: int, dtype) -> KVCache:
    shape = (batch * config.kv_heads, slots, config.head_dim)
    L = config.num_hidden_layers
    return KVCache(tuple(jnp.zeros(shape, dtype) for _ in range(L)), tuple(jnp.zeros(shape, dtype) for _ in range(L)),
                   jnp.zeros((batch, slots), jnp.int32))


def _plan(config: ModelConfig, mesh: Mesh | None, phase: str, T: int, S: int, packed: bool = False):
    """The attention of this call (`dispatch.choose`, on the backend being traced for)."""
    backend = jax.default_backend()
    return dispatch.choose(config, mesh=mesh, backend=backend, phase=phase, q_len=T, k_len=S, packed=packed,
                           cpu_kernels=backend == "cpu" and cpu_decode.available())


def _attend(plan: AttentionPlan, q, k, v, *, q_slot, k_slot, q_seg, k_seg, mesh: Mesh | None = None):
    """Run `plan` over whole sequences: q (B, T, N, H), k/v (B, S, K, H) -> (B, T, N, H). A ring or
    causal-block plan means q and k/v are the same positions (a causal self-attention)."""
    if plan.kind == "ring":
        return ring_attention(q, k, v, mesh=mesh, positions=q_slot, segment_ids=q_seg, causal=True,
                              q_chunk=plan.q_chunk, k_chunk=plan.k_chunk, impl=plan.block_impl)
    if plan.kind == "causal_block":
        return causal_block_attention(q, k, v, q_seg=q_seg, k_seg=k_seg, block=plan.block)
    if plan.kind == "blockwise":
        return blockwise_attention(q, k, v, q_slot=q_slot, k_slot=k_slot, q_seg=q_seg, k_seg=k_seg,
                                   q_chunk=plan.q_chunk, k_chunk=plan.k_chunk)
    if plan.kind == "cpu_flash":
        return flash_attention(q, k, v, q_slot=q_slot, k_slot=k_slot, q_seg=q_seg, k_seg=k_seg)
    if plan.kind == "dense":
        return dense_attention(q, k, v, q_slot=q_slot, k_slot=k_slot, q_seg=q_seg, k_seg=k_seg)
    raise ValueError(f"attention plan {plan.kind!r} does not attend whole sequences")


def _attend_cache(plan: AttentionPlan, q, k_cache, v_cache, *, q_slot, k_seg, mesh: Mesh | None):
    """Run a decode `plan`: q (B, K, G, H) of one new position per row against the caches (B*K, S, H),
    its key already written at `q_slot` -> (B, K, G, H)."""
    if plan.kind == "sharded_cached":
        return sharded_cached_attention(q, k_cache, v_cache, mesh=mesh, q_slot=q_slot, k_seg=k_seg)
    if plan.kind == "cpu_kernel":
        return cpu_decode.decode_attention(q, k_cache, v_cache, q_slot=q_slot, k_seg=k_seg)
    if plan.kind == "cached":
        return cached_attention(q, k_cache, v_cache, q_slot=q_slot, k_seg=k_seg)
    raise ValueError(f"attention plan {plan.kind!r} does not attend to a cache")


def _blockwise(config: ModelConfig, fn, h: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """fn over chunks of at most `mlp_chunk_size` positions, so the (B, T, F) activations never all exist.

    The chunks are taken inside each device's share of the sequence (sp shards it): chunking the global
    sequence instead makes a loop over all T / c chunks on every device, each computing (masked) a chunk
    it does not own: sp times the FFN's work (the compiled train step of configs/text-long-sp.toml did
    8x its FFN FLOPs that way)."""
    B, T, D = h.shape
    c = config.mlp_chunk_size
    sp = mesh.shape["sp"] if mesh is not None and T % mesh.shape["sp"] == 0 else 1
    local = T // sp
    if c <= 0 or local <= c:
        return fn(h)
    n = -(-local // c)  # chunks per device; equal chunks of <= c positions, padded at each shard's end
    size = -(-local // n)
    pad = n * size - local
    hp = jnp.pad(h.reshape(B, sp, local, D), ((0, 0), (0, 0), (0, pad), (0, 0)))
    # (B, sp, n*size, D) -> (n, B, sp*size, D): map over each device's chunks, rematerialised in the backward pass
    chunks = jnp.moveaxis(hp.reshape(B, sp, n, size, D), 2, 0).reshape(n, B, sp * size, D)
    chunks = constrain(chunks, mesh, (None, "batch", "seq", "act_embed"))
    out = jax.lax.map(jax.checkpoint(fn), chunks)
    out = jnp.moveaxis(out.reshape(n, B, sp, size, D), 0, 2).reshape(B, sp, n * size, D)
    return out[:, :, :local].reshape(B, T, D)


def _ffn(config: ModelConfig, p: Params, h: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """w2(silu(w1 h) * w3 h), blockwise over positions."""
    def ffn(x):
        x = rms_norm(x, p["ffn_norm"]["kernel"], config.rms_norm_eps)
        ff, flat = p["feed_forward"], _one_device(mesh)
        gate, up = _dense(x, ff["w1"]["kernel"], flat), _dense(x, ff["w3"]["kernel"], flat)
        return _dense(jax.nn.silu(gate) * up, ff["w2"]["kernel"], flat)

    return _blockwise(config, ffn, h, mesh)


def _qkv(config: ModelConfig, p: Params, x: jax.Array, cos, sin, mesh):
    B, T, _ = x.shape
    N, K, H = config.num_attention_heads, config.kv_heads, config.head_dim
    a = p["attention"]
    xn, flat = rms_norm(x, p["attention_norm"]["kernel"], config.rms_norm_eps), _one_device(mesh)
    q = _dense(xn, a["wq"]["kernel"], flat).reshape(B, T, N, H)
    k = _dense(xn, a["wk"]["kernel"], flat).reshape(B, T, K, H)
    v = _dense(xn, a["wv"]["kernel"], flat).reshape(B, T, K, H)
    q = constrain(apply_rope(q, cos, sin), mesh, ("batch", "seq", "act_heads", None))
    k = constrain(apply_rope(k, cos, sin), mesh, ("batch", "seq", "act_heads", None))
    v = constrain(v, mesh, ("batch", "seq", "act_heads", None))
    return q, k, v


def _block(config: ModelConfig, p: Params, x, cos, sin, mesh, *, q_slot, q_seg, plan: AttentionPlan):
    """One decoder block without a cache (training, scoring): h = x + attn(norm(x)); h + ffn(norm(h))."""
    B, T, D = x.shape
    p = _gather(dequantize(p, x.dtype), x.dtype, mesh, {(*k, "kernel"): v for k, v in _LAYER_AXES.items()})
    q, k, v = _qkv(config, p, x, cos, sin, mesh)
    attn = _attend(plan, q, k, v, q_slot=q_slot, k_slot=q_slot, q_seg=q_seg, k_seg=q_seg, mesh=mesh)
    h = x + _dense(attn.reshape(B, T, D), p["attention"]["wo"]["kernel"], _one_device(mesh))
    h = constrain(h, mesh, ("batch", "seq", "act_embed"))
    return constrain(h + _ffn(config, p, h, mesh), mesh, ("batch", "seq", "act_embed"))


# The logical axes of each layer weight (scanned layout, without the layer axis); FSDP shards the
# model-width axis ("embed") over (fsdp, sp).
_LAYER_AXES = {("attention", "wq"): ("embed", "heads"), ("attention", "wk"): ("embed", "heads"),
               ("attention", "wv"): ("embed", "heads"), ("attention", "wo"): ("heads", "embed"),
               ("feed_forward", "w1"): ("embed", "mlp"), ("feed_forward", "w2"): ("mlp", "embed"),
               ("feed_forward", "w3"): ("embed", "mlp")}


def _gather(p: Params, dtype, mesh: Mesh | None, axes: dict) -> Params:
    """The weights of `axes` (key path -> logical axes) whole along D (still split over tp), in the
    compute dtype: FSDP's all-gather, made once per layer, of half the bytes in bfloat16. Left to the
    partitioner, the gathers land where the weights are used: inside the FFN's chunk loop, once per
    chunk (or, in a prefill, as all-reduces of every token's partial products)."""
    if mesh is None or mesh.size == 1:
        return p
    out = jax.tree.map(lambda x: x, p)  # a copy of the dict tree to write into
    for path, names in axes.items():
        node = out
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = _fsdp_gather(node[path[-1]], jnp.dtype(dtype), mesh, tuple(names))
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _fsdp_gather(w: jax.Array, dtype, mesh: Mesh, axes: tuple) -> jax.Array:
    """w (sharded by logical `axes`) whole along its "embed" axis, in `dtype`. Its gradient is put
    straight back on w's own sharding: a reduce-scatter of the layer's weight gradients. Through a plain
    constraint the gradient would be made whole on every device first (an all-reduce, twice the bytes,
    and inside the FFN's chunk loop once per chunk)."""
    return constrain(w.astype(dtype), mesh, tuple(None if name == "embed" else name for name in axes))


def _fsdp_gather_fwd(w, dtype, mesh, axes):
    return _fsdp_gather(w, dtype, mesh, axes), jnp.zeros((), w.dtype)


def _fsdp_gather_bwd(dtype, mesh, axes, like, g):
    return (constrain(g.astype(like.dtype), mesh, axes),)


_fsdp_gather.defvjp(_fsdp_gather_fwd, _fsdp_gather_bwd)


_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # keeps the weight matmuls' outputs (q/k/v/o, FFN), recomputes attention: less recompute than
    # nothing_saveable for ~(4D + 3F) activations per token and layer
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "checkpoint_dots": jax.checkpoint_policies.checkpoint_dots,
    # keeps those and the fused attention's output and log-sum-exp (named "attention" where each attention
    # kernel's forward returns them): the backward recomputes only elementwise work
    "dots_attention": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names("attention")),
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def _remat_policy(config: ModelConfig, mesh: Mesh | None, rows: int, seq_len: int, dtype) -> str:
    """config.remat, `auto` made concrete for this step's shapes on this device (`train.plan.choose_remat`;
    `lwm train` chooses it once in its plan, and a forward traced by other callers chooses it here)."""
    if config.remat != "auto":
        return config.remat
    from lwm_core.parallel.mesh import make_mesh
    from lwm_core.train.plan import choose_remat

    one = make_mesh("1,1,1,1", devices=jax.local_devices()[:1]) if mesh is None else mesh
    return choose_remat(config, one, rows, seq_len, jnp.dtype(dtype).name)


def embed(config: ModelConfig, params: Params, ids: jax.Array, vision_masks: jax.Array | None, dtype,
          mesh: Mesh | None = None) -> jax.Array:
    """Token embeddings; vision positions take rows of `vte` (docs/compatibility.md#vision-language-models)."""
    def table(name):
        # The table's width is sharded over (fsdp, sp) like every weight's D axis, while the ids are
        # split over (batch, seq): gathering rows from the sharded table leaves the partitioner no way
        # to the activations' layout but replicating them whole and re-splitting them ("involuntary
        # full rematerialization": at 1M tokens the whole activation on every device). Gathering the
        # table first (an FSDP all-gather, as for every layer's weights) makes the lookup local. Whole:
        # a table left split over tp (its vocab) gives wrong rows on meshes with fsdp or dp, tp and sp
        # all > 1 (XLA's partitioned gather, jax 0.10; tests/scale/test_partitioning.py).
        return constrain(params["transformer"][name]["embedding"], mesh, (None, None))

    lookup = jnp.take
    if ids.shape[1] == 1:
        # Decode reads a row per sequence: the few ids go to every device instead of the whole table to
        # them (per token), and the rows come back whole (B x D numbers).
        ids = constrain(ids, mesh, (None, None))
        vision_masks = None if vision_masks is None else constrain(vision_masks, mesh, (None, None))
        table = lambda name: params["transformer"][name]["embedding"]  # noqa: E731
        lookup = lambda t, i, axis: constrain(jnp.take(t, i, axis=axis), mesh, (None, None, None))  # noqa: E731
    wte = table("wte")
    if not config.vision or vision_masks is None:
        return lookup(wte, ids, axis=0).astype(dtype)
    vte = table("vte")
    text = lookup(wte, jnp.where(vision_masks, 0, ids), axis=0)
    vision = lookup(vte, jnp.where(vision_masks, ids, 0), axis=0)
    return jnp.where(vision_masks[..., None], vision, text).astype(dtype)


def heads(config: ModelConfig, params: Params, x: jax.Array, mode: str, kernels: Params | None = None,
          flat: bool = False):
    """Final norm and output head(s): `text` -> text logits, `vision` -> vision logits,
    `all` -> (vision logits, text logits) as LWM's training mode returns them. `kernels` may replace
    the head weights ({"lm_head": w, "vision_head": w}; arrays or packed CPU weights, see CachedWeights);
    `flat`: on one device, each head as one flat product (see `_dense`)."""
    x = rms_norm(x, params["transformer"]["ln_f"]["kernel"], config.rms_norm_eps)
    kernels = kernels or {}
    head = lambda name: kernels[name] if name in kernels else dequantize(params[name], x.dtype)["kernel"]  # noqa: E731
    def project(w):  # a packed CPU weight by its kernel, an array as the layers' dense products
        return _project(x, w, "btd,dv->btv") if isinstance(w, cpu_decode.Packed) else _dense(x, w, flat)

    text = (lambda: project(head("lm_head")))
    vision = (lambda: project(head("vision_head")))
    if mode == "text":
        return text()
    if not config.vision:
        raise ValueError(f"mode {mode!r} needs a vision model")
    return vision() if mode == "vision" else (vision(), text())


def sequence_order(config: ModelConfig, mesh: Mesh | None, T: int):
    """The order `forward` lays a sequence of T positions out in over sp (numpy indices), or None where it
    is the given order: the zigzag layout of ring attention (attention/layout.py)."""
    plan = _plan(config, mesh, "forward", T, T)
    if plan.kind != "ring":
        return None
    sp = mesh.shape["sp"]
    if T % sp:
        raise LWMError(f"sequence length {T} is not divisible by sp = {sp}; pad it to a multiple of {sp}")
    return layout.order(plan.layout, T, sp)


def forward(config: ModelConfig, params: Params, ids: jax.Array, *, positions=None, segment_ids=None,
            vision_masks=None, mode: str = "text", mesh: Mesh | None = None, dtype=jnp.float32,
            remat: bool = False, last_only: bool = False, in_order: bool = False):
    """Full-sequence forward (scoring and training): ids (B, T) -> logits (B, T, V) per `mode`
    (with `last_only`, the last position's logits (B, V) only).

    `positions` (B, T) are RoPE positions (default 0..T-1; packed rows restart per example);
    `segment_ids` (B, T) keep packed examples from attending to each other. On a mesh with sp > 1 the
    attention is ring attention; with the zigzag layout the sequence is permuted here on the way in and
    back on the way out, positions and segments with it, so callers never see the permutation.
    `in_order`: the inputs are already in `sequence_order` and the outputs stay in it (training: a loss
    summed over positions does not care about their order, and permuting the hidden states back gathers
    the whole sequence: LWM-7B at 1M tokens on 64 devices, 23 GB more per device).
    """
    B, T = ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    slots = jnp.arange(T, dtype=jnp.int32)
    plan = _plan(config, mesh, "forward", T, T)
    perm = sequence_order(config, mesh, T)
    if plan.kind == "ring" and segment_ids is None:
        segment_ids = jnp.zeros((B, T), jnp.int32)
    if perm is not None and in_order:
        slots = jnp.asarray(perm)
    elif perm is not None:
        take = lambda a: None if a is None else jnp.take(a, perm, axis=1)  # noqa: E731
        ids, positions, segment_ids, vision_masks = map(take, (ids, positions, segment_ids, vision_masks))
        slots = jnp.asarray(perm)
    cos, sin = rope_angles(positions, config.head_dim, config.theta)
    x = constrain(embed(config, params, ids, vision_masks, dtype, mesh), mesh, ("batch", "seq", "act_embed"))

    def layer(x, p):
        return _block(config, p, x, cos, sin, mesh, q_slot=slots, q_seg=segment_ids, plan=plan), None

    policy = _remat_policy(config, mesh, B, T, dtype) if remat else "none"
    if policy != "none":
        layer = jax.checkpoint(layer, policy=_POLICIES[policy], prevent_cse=False)
    x, _ = jax.lax.scan(layer, x, scanned_layers(params))
    if perm is not None and not in_order:
        x = jnp.take(x, layout.inverse(perm), axis=1)
    if last_only:
        return jax.tree.map(lambda a: a[:, 0], heads(config, params, x[:, -1:], mode))
    out = heads(config, params, x, mode, flat=_one_device(mesh))
    return constrain(out, mesh, ("batch", "seq", "act_vocab")) if mode != "all" else out


# ------------------------------------------------------------------------ cached path (generation)

class CachedWeights(NamedTuple):
    """The weights the cached path (prefill, decode) reads in place of the params' stacked layers."""

    layers: tuple[Params, ...]  # one tree per layer, as `cached_layer` makes it
    heads: Params  # output head kernels that replace the params' ({"lm_head": w}); {}: the params' own


def packed_layers(layers: CachedWeights | None) -> bool:
    """Whether `layers` are lwm's CPU kernels' packed weights (`packed_weights`: one CPU device, the kernels
    built), which come with the kernels' attention and argmax."""
    return layers is not None and isinstance(layers.layers[0]["wqkv"], cpu_decode.Packed)


def cached_layers(config: ModelConfig, params: Params, mesh: Mesh | None = None) -> CachedWeights:
    """The layer weights as the cached path (prefill, decode) reads them: one tree per layer, with
    q/k/v fused into `wqkv` (D, K, G+2, H), gate/up into `w13` (D, 2, F), and the two projections back
    to the model width stored (out, in): `wo` (D, N*H), `w2` (D, F).

    Why a copy: batch-1 decode reads every weight once per token, so it runs at memory speed only if
    each matmul reads its weight from a buffer of its own. Taking layer i out of the stacked (L, ...)
    arrays inside the decode loop makes XLA copy it first, every token (a scan's dynamic slice; static
    slices alike): each weight is then read twice per token. So the generation entry points make this
    copy once per generation, and it holds a second copy of the layer weights meanwhile; where that
    does not fit, `forward_cached` without `layers` makes one layer at a time instead (slower decode; the
    figures of this docstring are in benchmarks/README.md#design-measurements).
    Why fused: one matvec instead of three (two) is faster at decode sizes on CPU. The fused q/k/v
    axis is grouped per kv head (its G query heads, then its key, then its value), so a tp shard over
    K holds whole heads and nothing moves between devices. Why (out, in) for wo and w2: a matvec with
    a narrow output (the model width) reads its weight faster as contiguous rows of the contracted
    dimension; wide outputs (wqkv, w13, the LM head) are faster as (in, out).
    """
    # Built layer by layer: XLA's CPU backend copies (D, ...) slices faster than it unstacks (L, ...) arrays
    # (3x on bench-50m, benchmarks/README.md#design-measurements).
    return CachedWeights(tuple(cached_layer(config, params, i, mesh) for i in range(config.num_hidden_layers)), {})


def packed_weights(config: ModelConfig, params: Params, *, quant: str = "none") -> CachedWeights:
    """`cached_layers` for the CPU decode kernels (lwm_core.cpu_decode): every layer's four projections and
    the output head(s) packed into one float32 buffer on huge pages, the norms as they are. Built on the
    host, once per model (not jit-able); for decode (a few rows per call), not prefill. Single device.
    With `quant="int8"`, the projections and heads are quantized per output channel (`lwm_core.quantize`)
    into an int8 buffer: decode reads a quarter of the bytes; with "int4", in groups of 32 inputs (an int4
    model's weights pack back to their own values).

    Why: batch-1 decode on a CPU is bound by reading the weights, and XLA's matvec over layer-sized
    row-major weights streams them at ~4/5 of the speed the kernel reaches on this layout (cpu_decode.py).
    """
    D = config.hidden_size

    @jax.jit
    def layer(params, i):  # (in, out) matrices of cached_layer's weights
        p = cached_layer(config, params, i)
        return {"wqkv": p["wqkv"].reshape(D, -1), "wo": p["wo"].T, "w13": p["w13"].reshape(D, -1), "w2": p["w2"].T,
                "attention_norm": p["attention_norm"], "ffn_norm": p["ffn_norm"]}

    names = ("wqkv", "wo", "w13", "w2")
    L = config.num_hidden_layers
    head_names = ("lm_head", "vision_head") if config.vision else ("lm_head",)
    shapes = jax.eval_shape(layer, params, jnp.int32(0))
    norms = []

    def weights():  # one layer's arranged copy at a time: peak memory is the buffer plus one layer
        for i in range(L):
            w = layer(params, jnp.int32(i))
            norms.append({"attention_norm": w["attention_norm"], "ffn_norm": w["ffn_norm"]})
            yield from (w[name] for name in names)
        yield from (dequantize(params[name], jnp.float32)["kernel"] for name in head_names)

    packed = iter(cpu_decode.pack_all(weights(), [shapes[name].shape for name in names] * L
                                      + [_float_shape(params[name]["kernel"]) for name in head_names], quant=quant))
    out = tuple({**{name: next(packed) for name in names}, **norms[i]} for i in range(L))
    return CachedWeights(out, {name: next(packed) for name in head_names})


def _float_shape(kernel) -> tuple[int, ...]:
    """A stored kernel's (in, out) shape as float weights: an int4 kernel holds two input rows a byte."""
    *lead, k, n = kernel.shape
    return (*lead, 2 * k if kernel.dtype == jnp.uint8 else k, n)


# The logical axes of `cached_layer`'s weights.
_CACHED_AXES = {("wqkv",): ("embed", "heads", None, None), ("wo",): ("embed", "heads"),
                ("w13",): ("embed", None, "mlp"), ("w2",): ("embed", "mlp")}


def cached_layer(config: ModelConfig, params: Params, i, mesh: Mesh | None = None) -> Params:
    """Layer `i` (a Python int, or a traced int32) of `cached_layers` (quantized weights dequantized to the
    norms' dtype, the model's)."""
    st = jax.tree.map(lambda w: w[i], scanned_layers(params))
    st = dequantize(st, st["attention_norm"]["kernel"].dtype)
    a, ff = st["attention"], st["feed_forward"]
    D, K, H = config.hidden_size, config.kv_heads, config.head_dim
    G = config.num_attention_heads // K
    w = {"attention_norm": st["attention_norm"]["kernel"],
         # (D, N*H) -> (D, K, G, H) and (D, K*H) -> (D, K, 1, H): query head n = k*G + g
         "wqkv": jnp.concatenate([a["wq"]["kernel"].reshape(D, K, G, H), a["wk"]["kernel"].reshape(D, K, 1, H),
                                  a["wv"]["kernel"].reshape(D, K, 1, H)], axis=2),
         "wo": a["wo"]["kernel"].T,  # (N*H, D) -> (D, N*H)
         "ffn_norm": st["ffn_norm"]["kernel"],
         "w13": jnp.stack([ff["w1"]["kernel"], ff["w3"]["kernel"]], axis=1),  # (D, 2, F)
         "w2": ff["w2"]["kernel"].T}  # (F, D) -> (D, F)
    axes = {"attention_norm": ("norm",), "ffn_norm": ("norm",), **{k: v for (k,), v in _CACHED_AXES.items()}}
    return {name: constrain(x, mesh, axes[name]) for name, x in w.items()}


def _cached_block(config: ModelConfig, p: Params, x, cos, sin, k_cache, v_cache, cache_seg, start, mesh, *,
                  new_seg, fresh: bool, plan: AttentionPlan):
    """One decoder block for T new tokens at cache slots [start, start + T), updating this layer's
    cache (B*K, S, H) in place. The same arithmetic as `_block`, on `cached_layers` weights."""
    B, T, D = x.shape
    K, H = config.kv_heads, config.head_dim
    G = config.num_attention_heads // K
    if T > 1:  # prefill: FSDP's gather of the layer, once (decode's one row keeps the weights in place)
        p = _gather(p, x.dtype, mesh, _CACHED_AXES)
    xn = rms_norm(x, p["attention_norm"], config.rms_norm_eps)
    qkv = _project(xn, p["wqkv"], "btd,dkjh->btkjh").reshape(B, T, K, G + 2, H)
    qkv = constrain(qkv, mesh, ("batch", "seq", "act_heads", None, None))
    # RoPE on queries and keys in one pass: (B, T, K, G+1, H) -> (B, T, K*(G+1), H) and back
    qk = apply_rope(qkv[:, :, :, :G + 1].reshape(B, T, K * (G + 1), H), cos, sin).reshape(B, T, K, G + 1, H)
    q, k, v = qk[:, :, :, :G], qk[:, :, :, G], qkv[:, :, :, G + 1]

    def write(cache, new):  # new (B, T, K, H) -> (B, K, T, H) -> (B*K, T, H)
        new = jnp.swapaxes(new, 1, 2).reshape(B * K, T, H).astype(cache.dtype)
        # The cache's slots are sharded over sp when the mesh has one: decode steps then write on the
        # owning device and combine per-device partial attention with all-reduces (ring.py).
        if plan.kind == "sharded_cached":
            return write_sharded_cache(cache, new, start, mesh=mesh)
        if fresh and mesh is not None and mesh.size > 1:
            # An empty cache is the new keys then zeros (start is 0): padding the new keys, which are
            # split over sp as the cache is, moves only them; an update of the sharded cache in place
            # gathered the whole cache of every layer first.
            cache = jnp.pad(new, ((0, 0), (0, cache.shape[1] - T), (0, 0)))
        else:
            cache = jax.lax.dynamic_update_slice(cache, new, (0, start, 0))
        return constrain(cache, mesh, CACHE_AXES)

    # Written before attending, so a query sees its own key; the update stays in place (the attention
    # below reads the updated buffer, which orders it after the write).
    k_cache, v_cache = write(k_cache, k), write(v_cache, v)
    if T == 1:  # decode: (B, K, G, H) against the cache
        attn = _attend_cache(plan, q[:, 0], k_cache, v_cache, q_slot=start, k_seg=cache_seg, mesh=mesh)
    elif fresh:  # prefill of an empty cache: causal self-attention among the new tokens, no cache read
        # Padding keys are hidden from real queries by their segment (0); a ring compares one set of
        # segments for queries and keys, so there padded queries attend among themselves (never read).
        q_seg = new_seg.astype(jnp.int32) if plan.kind == "ring" else jnp.ones((B, T), jnp.int32)
        attn = _attend(plan, q.reshape(B, T, K * G, H), k, v, q_slot=jnp.arange(T, dtype=jnp.int32),
                       k_slot=jnp.arange(T, dtype=jnp.int32), q_seg=q_seg, k_seg=new_seg.astype(jnp.int32),
                       mesh=mesh)
    else:  # T tokens after others: view the cache as (B*K, S, H) -> (B, S, K, H), dense or blockwise
        S = k_cache.shape[1]
        view = lambda c: jnp.swapaxes(c.reshape(B, K, S, H), 1, 2)  # noqa: E731
        attn = _attend(plan, q.reshape(B, T, K * G, H), view(k_cache), view(v_cache),
                       q_slot=start + jnp.arange(T, dtype=jnp.int32), k_slot=jnp.arange(S, dtype=jnp.int32),
                       q_seg=jnp.ones((B, T), jnp.int32), k_seg=cache_seg)
    h = x + _project(attn.reshape(B, T, D), p["wo"], "btn,dn->btd")
    h = constrain(h, mesh, ("batch", "seq", "act_embed"))

    def ffn(h):
        hn = rms_norm(h, p["ffn_norm"], config.rms_norm_eps)
        gate_up = _project(hn, p["w13"], "btd,dcf->btcf").reshape(*h.shape[:2], 2, -1)  # (B, T, 2, F)
        act = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]  # (B, T, F)
        return _project(act, p["w2"], "btf,df->btd")

    return constrain(h + _blockwise(config, ffn, h, mesh), mesh, ("batch", "seq", "act_embed")), k_cache, v_cache


def forward_cached(config: ModelConfig, params: Params, ids: jax.Array, positions: jax.Array, seg: jax.Array,
                   cache: KVCache, start: jax.Array, *, mesh: Mesh | None = None, vision_masks=None,
                   mode: str = "text", last_only: bool = True, layers: CachedWeights | None = None,
                   fresh: bool = False):
    """Run T new tokens written at cache slots [start, start + T) against everything cached so far.

    ids/positions/seg are (B, T); seg is 1 for real tokens and 0 for left padding. Used for prefill
    (start 0, T = padded prompt) and for each decode step (T = 1). Returns (logits, cache); with
    `last_only` the logits are those of the last position only (B, V), which is all sampling needs.
    `layers` are `cached_layers(config, params)`, made once per generation by the caller (or
    `packed_weights`, for decode on one CPU device, made once per model). Without
    them (when a second copy of the layer weights does not fit in memory) each layer's weights are
    made right before the layer runs: one layer's worth of extra memory, each weight read twice per
    call (slower decode, see `cached_layers`). `fresh` (static) says the cache is empty and start
    is 0, as in a prefill: the new tokens then attend among themselves (the forward's causal attention,
    over T keys rather than all S slots).

    The layer loop is a Python loop, not a scan: each layer's cache is its own array, updated in place.
    """
    B, T = ids.shape
    dtype = cache.k[0].dtype
    fresh = fresh and T > 1  # one new token reads the cache whether or not it is the first
    S = cache.k[0].shape[1]
    phase = "decode" if T == 1 else "prefill" if fresh else "extend"
    # The CPU kernels' packed weights come with their attention (the plan's cpu_kernel).
    packed = packed_layers(layers)
    plan = _plan(config, mesh, phase, T, T if fresh else S, packed)
    cos, sin = rope_angles(positions, config.head_dim, config.theta)
    x = constrain(embed(config, params, ids, vision_masks, dtype, mesh), mesh, ("batch", "seq", "act_embed"))
    # A query sees cached slots with segment 1 only; padded queries (segment 0) see nothing useful, and
    # their outputs are never read.
    cache_seg = jax.lax.dynamic_update_slice(cache.seg, seg.astype(jnp.int32), (0, start))
    ks, vs = [], []
    for i, (k_cache, v_cache) in enumerate(zip(cache.k, cache.v)):
        if layers is not None:
            p = layers.layers[i]
        else:
            # The index is made to depend on this layer's input (isnan is 0 for any real activation; a
            # NaN row is lost anyway), so XLA makes the copy only once the previous layer has finished
            # and can reuse its buffer: one layer's copy at a time. With a constant index its scheduler makes
            # all layers' copies up front, the whole second copy again (temporaries of both:
            # benchmarks/README.md#design-measurements); an optimization barrier does not help (XLA's CPU pipeline
            # removes them before scheduling). On a mesh the scalar costs a small broadcast per layer.
            index = i + jnp.isnan(x[0, 0, 0]).astype(jnp.int32)
            p = cached_layer(config, params, index, mesh)
        x, k_cache, v_cache = _cached_block(config, p, x, cos, sin, k_cache, v_cache, cache_seg, start, mesh,
                                            new_seg=seg, fresh=fresh, plan=plan)
        ks.append(k_cache)
        vs.append(v_cache)
    if last_only:
        x = x[:, -1:]
    logits = heads(config, params, x, mode, kernels=layers.heads if layers is not None else None)
    if last_only:
        logits = jax.tree.map(lambda a: a[:, 0], logits)
    return logits, KVCache(tuple(ks), tuple(vs), cache_seg)
