"""AdamW as LWM trains with it: linear warmup, cosine decay, global-norm clipping, decoupled weight decay
that skips norms and embeddings."""

from __future__ import annotations

import jax
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from lwm_core.dtypes import jnp_dtype
from lwm_core.train.config import OptimizerConfig


def schedule(config: OptimizerConfig, steps: int) -> optax.Schedule:
    """Learning rate by step: init_lr -> lr over warmup_steps, then cosine down to end_lr at decay_steps."""
    decay = config.decay_steps or steps
    warmup = min(config.warmup_steps, max(decay - 1, 0))
    return optax.warmup_cosine_decay_schedule(init_value=config.init_lr, peak_value=config.lr,
                                              warmup_steps=warmup, decay_steps=max(decay, warmup + 1),
                                              end_value=config.end_lr)


def decay_mask(params) -> dict:
    """Weight decay on matrices only: RMSNorm scales and embedding tables are not decayed (as LWM/EasyLM,
    whose mask excludes `norm`, `bias` and `embedding` leaves)."""
    flat = flatten_dict(params)
    return unflatten_dict({path: not any(("norm" in p) or p in ("embedding", "bias") for p in path)
                           for path in flat})


def make_optimizer(config: OptimizerConfig, steps: int) -> optax.GradientTransformation:
    moments = None if config.moments_dtype == "float32" else jnp_dtype(config.moments_dtype)  # float32: optax default
    parts = []
    if config.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    parts.append(optax.adamw(schedule(config, steps), b1=config.b1, b2=config.b2, eps=config.eps,
                             mu_dtype=moments, weight_decay=config.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def state_shardings(tx: optax.GradientTransformation, params_shape, param_shardings, replicated):
    """Shardings of the optimizer state: moments like their parameters, scalars (counts) replicated."""
    state_shape = jax.eval_shape(tx.init, params_shape)
    return optax.tree_map_params(tx, lambda _, s: s, state_shape, param_shardings,
                                 transform_non_params=lambda _: replicated)
