"""The train step as pure functions: batch -> per-token losses -> weighted loss -> AdamW update.

A batch is `lwm_core.data.Batch` with arrays (A, R, T): A micro-batches of R rows of T tokens. Gradient
accumulation scans over A; the loss of a step is defined over the whole batch (not a mean of
micro-batch means), so an accumulated step computes exactly the gradient of the unaccumulated one:

    loss = w_text * sum_text(ce) / n_text + w_vision * sum_vision(ce) / n_vision

where the sums run over targets with a loss weight, split by whether the target is a vision token, and
n_* are those weights' totals over the whole batch (LWM's masked means; a model without vision has the
text term alone with weight 1).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lwm_core.config import ModelConfig
from lwm_core.model.llama import forward, sequence_order
from lwm_core.parallel.mesh import constrain


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: dict
    opt_state: optax.OptState
    rng: jax.Array  # uint32 key data; split per step for anything stochastic (nothing yet: no dropout)


class LossWeights(NamedTuple):
    text: float
    vision: float


def _ce(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """Cross entropy (B, T) in float32; invalid positions give 0 (their target may be out of this
    head's range: a vision code on the text head or the reverse)."""
    logits = logits.astype(jnp.float32)
    safe = jnp.where(valid, targets, 0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return jnp.where(valid, lse - picked, 0.0)


def token_losses(config: ModelConfig, params, batch, *, mesh=None, dtype=jnp.float32, in_order: bool = False):
    """Per-token cross entropy (R, T) of one micro-batch, each target scored by its head (text or vision),
    and the boolean (R, T) says which targets are vision tokens. `in_order`: the batch's positions are
    in the model's `sequence_order` already (see `in_sequence_order`), and so are the outputs."""
    vision = config.vision
    out = forward(config, params, batch.inputs, positions=batch.positions, segment_ids=batch.segment_ids,
                  vision_masks=batch.input_vision_masks if vision else None, mode="all" if vision else "text",
                  mesh=mesh, dtype=dtype, remat=True, in_order=in_order)
    scored = batch.loss_weights > 0
    if vision:
        vision_logits, text_logits = out
        is_vision = batch.target_vision_masks
        ce = _ce(text_logits, batch.targets, scored & ~is_vision) + \
            _ce(vision_logits, batch.targets, scored & is_vision)
    else:
        is_vision = jnp.zeros_like(scored)
        ce = _ce(out, batch.targets, scored)
    return constrain(ce, mesh, ("batch", "seq")), is_vision


def loss_totals(batch) -> tuple[jax.Array, jax.Array]:
    """(text weight total, vision weight total) over the whole (A, R, T) batch, floored so that a batch
    without vision tokens gives a vision term of 0 rather than 0/0 (as LWM's masked mean)."""
    w = batch.loss_weights.astype(jnp.float32)
    vision = jnp.sum(w * batch.target_vision_masks)
    return jnp.maximum(jnp.sum(w) - vision, 1e-10), jnp.maximum(vision, 1e-10)


def in_sequence_order(config: ModelConfig, batch, mesh):
    """The batch with every (R, T) array in the order the model lays the sequence out (zigzag over sp),
    and whether it was reordered. The losses are sums over positions, so they are computed in that
    order; the model then never permutes its hidden states back (`forward(in_order=True)`)."""
    perm = sequence_order(config, mesh, batch.inputs.shape[-1])
    if perm is None:
        return batch, False
    return jax.tree.map(lambda a: jnp.take(a, perm, axis=-1), batch), True


def micro_loss(config: ModelConfig, params, batch, totals, weights: LossWeights, *, mesh, dtype):
    """This micro-batch's share of the step loss, and its (text, vision) shares for logging."""
    batch, in_order = in_sequence_order(config, batch, mesh)
    ce, is_vision = token_losses(config, params, batch, mesh=mesh, dtype=dtype, in_order=in_order)
    w = batch.loss_weights.astype(jnp.float32)
    text = jnp.sum(ce * w * ~is_vision) / totals[0]
    vision = jnp.sum(ce * w * is_vision) / totals[1]
    if not config.vision:
        return text, (text, vision)
    return weights.text * text + weights.vision * vision, (text, vision)


def _micro(batch, a):
    return jax.tree.map(lambda x: x[a], batch)


def train_step(state: TrainState, batch, *, config: ModelConfig, tx: optax.GradientTransformation,
               schedule, weights: LossWeights, mesh=None, dtype=jnp.float32):
    """One optimizer step over an (A, R, T) batch; returns the new state and metrics (scalars)."""
    totals = loss_totals(batch)
    grad_fn = jax.value_and_grad(functools.partial(micro_loss, config, weights=weights, mesh=mesh, dtype=dtype),
                                 has_aux=True)

    def accumulate(carry, a):
        grads, loss, text, vision = carry
        (l, (t, v)), g = grad_fn(state.params, _micro(batch, a), totals)
        grads = jax.tree.map(jnp.add, grads, g)
        return (grads, loss + l, text + t, vision + v), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    A = batch.inputs.shape[0]
    (grads, loss, text, vision), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0, 0.0), jnp.arange(A))
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
    new = TrainState(state.step + 1, params, opt_state, jax.random.key_data(rng))
    metrics = {"loss": loss, "text_loss": text, "vision_loss": vision, "grad_norm": grad_norm,
               "lr": schedule(state.step), "tokens": jnp.sum(batch.segment_ids > 0)}
    return new, metrics


def eval_losses(params, batch, *, config: ModelConfig, weights: LossWeights, mesh=None, dtype=jnp.float32):
    """Loss of an (A, R, T) batch without updating anything (the eval set)."""
    totals = loss_totals(batch)

    def one(carry, a):
        l, (t, v) = micro_loss(config, params, _micro(batch, a), totals, weights, mesh=mesh, dtype=dtype)
        return (carry[0] + l, carry[1] + t, carry[2] + v), None

    (loss, text, vision), _ = jax.lax.scan(one, (0.0, 0.0, 0.0), jnp.arange(batch.inputs.shape[0]))
    return {"loss": loss, "text_loss": text, "vision_loss": vision}


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 x the matmul parameters (all weights
    but the embedding tables, which are gathered, not multiplied) plus causal attention, whose score and
    value products cost 2 x 2 x D x (T/2) per layer per token forward on average."""
    D, F, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = config.kv_heads * config.head_dim
    matmul = L * (D * D * 2 + 2 * D * kv + 3 * D * F) + D * V
    if config.vision:
        matmul += D * config.vision_vocab_size
    attention = L * 2 * 2 * D * seq_len / 2
    return 3 * (2 * matmul + attention)
