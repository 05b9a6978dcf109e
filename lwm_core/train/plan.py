"""Planning a training run: `prepare` resolves the model, mesh and data of a run config and refuses
anything that cannot work, without compiling anything; the `Plan` it returns is what `--dry-run` prints
(parameters, FLOPs, a per-device memory estimate) and what `loop.train` runs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from lwm_core.config import ModelConfig
from lwm_core.dtypes import jnp_dtype
from lwm_core.errors import LWMError
from lwm_core.model.llama import param_layout
from lwm_core.parallel.mesh import axis_size, check_batch, check_model, logical_spec, make_mesh, shard_count
from lwm_core.train.config import RunConfig, model_config
from lwm_core.train.step import flops_per_token


@dataclass(frozen=True)
class Plan:
    """A run checked and sized: everything `--dry-run` prints and `train` needs, nothing compiled."""

    run: RunConfig
    config: ModelConfig
    tokenizer: Any
    mesh: Mesh
    params: int  # parameter count
    flops_per_token: float  # training FLOPs per token at train.seq_len
    memory: dict[str, float]  # per-device bytes, by kind (an estimate)
    examples: int | None  # lines of the training data (None: a dry run without the data file)
    warnings: tuple[str, ...] = ()  # what a dry run let pass that a real run refuses (a missing data file)
    remat: str = "nothing_saveable"  # config.remat, `auto` made concrete for this step and device (choose_remat)
    memory_per_device: float | None = None  # what `auto` was chosen against (bytes; None: not known)

    @property
    def micro_rows(self) -> int:
        return self.run.train.batch_size // self.run.train.accumulate


def prepare(run: RunConfig, *, base: Plan | None = None, dry_run: bool = False,
            memory: float | None = None) -> Plan:
    """Resolve the model, mesh and data of `run` and refuse anything that cannot work, before any
    compilation: shapes against the mesh and context, the data file parsed line by line.

    `base`: the plan of the stage this one continues from, when its weights are not written yet
    (`--dry-run` of a staged run): the model is that stage's with this run's overrides. `dry_run`: a
    data file that does not exist (yet: planned on a laptop, it lives on the cluster) is a warning.
    `memory`: the bytes of one device the run will have (a dry run's --device-memory; default: this
    machine's devices'), against which `remat = auto` is chosen.
    """
    from lwm_core.config import apply_overrides
    from lwm_core.data import JsonlIndex
    from lwm_core.data.config import split_paths

    if base is not None:
        config, tokenizer = apply_overrides(base.config, run.model.override_dict()), base.tokenizer
    else:
        config, tokenizer = model_config(run)
    t = run.train
    if t.seq_len > config.max_sequence_length:
        raise LWMError(f"train.seq_len = {t.seq_len} is over the model's context (max_sequence_length = "
                       f"{config.max_sequence_length}); lower train.seq_len or raise model.max_sequence_length")
    if tokenizer.vocab_size > config.vocab_size:
        raise LWMError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}; "
                       f"set model.vocab_size or use the model's tokenizer")
    if run.data.kind == "vision_text" and not config.vision:
        raise LWMError("data.kind = vision_text needs a vision model: set model.vision = true or start from an "
                       "LWM-Chat card/checkpoint")
    if not run.data.path:
        raise LWMError("data.path is empty; set it in the config or --set data.path=train.jsonl")
    mesh = make_mesh(run.mesh)
    check_model(mesh, config.num_attention_heads, config.kv_heads)
    micro = t.batch_size // t.accumulate
    try:
        check_batch(mesh, micro, t.seq_len)
    except LWMError as e:
        raise LWMError(f"{e} (micro-batch = train.batch_size / train.accumulate = {micro})") from None
    warnings, examples = [], None
    for spec in (run.data.path, run.data.eval_path):
        paths = split_paths(spec)
        missing = [path for path in paths if not os.path.exists(path)]
        if dry_run and missing:
            warnings.extend(f"data file {path} does not exist here; a real run needs it" for path in missing)
        elif paths:
            with JsonlIndex(paths) as index:
                index.validate()
                examples = len(index) if spec == run.data.path else examples
    if t.eval_every and not run.data.eval_path:
        raise LWMError(f"train.eval_every = {t.eval_every} needs data.eval_path")
    layout = param_layout(config)
    n_params = sum(math.prod(shape) for shape, _ in layout.values())
    if memory is None:
        memory = device_memory(mesh)
        if memory is not None and jax.process_count() > 1:
            # Every process must compile the same step: the smallest device's memory decides.
            from jax.experimental import multihost_utils

            memory = float(np.min(multihost_utils.process_allgather(np.float32(memory))))
    remat = choose_remat(config, mesh, micro, t.seq_len, t.dtype, run.optimizer.moments_dtype, memory)
    return Plan(run, config, tokenizer, mesh, n_params, flops_per_token(config, t.seq_len),
                memory_estimate(config.replace(remat=remat), run, mesh), examples, tuple(warnings), remat, memory)


def memory_estimate(config: ModelConfig, run: RunConfig, mesh: Mesh) -> dict[str, float]:
    """Per-device bytes of `run`'s train step: weights, gradients and Adam moments from the real shardings,
    plus activations under per-layer rematerialisation with `config.remat`'s policy (layer inputs kept,
    what the policy saves, one layer's working set, logits) and what FSDP gathers."""
    t = run.train
    return step_memory(config, mesh, t.batch_size // t.accumulate, t.seq_len, t.dtype, run.optimizer.moments_dtype)


def step_memory(config: ModelConfig, mesh: Mesh, rows: int, seq_len: int, dtype: str = "float32",
                moments_dtype: str = "float32") -> dict[str, float]:
    """Per-device bytes of a train step on micro-batches of `rows` x `seq_len` tokens (see `memory_estimate`)."""
    sharded = sum(math.prod(shape) / shard_count(logical_spec(axes, mesh, shape), mesh)
                  for shape, axes in param_layout(config).values())
    act = jnp_dtype(dtype).itemsize
    tokens = rows / axis_size(mesh, "batch") * seq_len / mesh.shape["sp"]
    D, F, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tp = mesh.shape["tp"]
    vocab = config.vocab_size + (config.vision_vocab_size if config.vision else 0)
    chunk = min(config.mlp_chunk_size or seq_len, seq_len) / seq_len
    # Hidden states and every projection's output are split over tp (act_embed, heads and mlp are tp axes).
    layer = tokens * (6 * D + (3 * D * config.kv_heads // config.num_attention_heads) + 3 * F * chunk) / tp * act
    # FSDP's gathers (mesh.RULES "embed" splits weights over fsdp x sp): the embedding tables and output
    # heads whole in float32 (the lookup and the logits), and one layer's weights whole in the compute dtype
    gathered = 0.0
    if mesh.shape["fsdp"] * mesh.shape["sp"] > 1:
        layer_weights = sum(math.prod(shape[1:]) for shape, axes in param_layout(config).values()
                            if axes[0] == "layers")
        gathered = 2 * vocab * D / tp * 4 + 2 * layer_weights / tp * act
    return {
        "params": sharded * 4,
        "grads": sharded * 4,
        "adam": sharded * (4 + jnp_dtype(moments_dtype).itemsize),
        "activations": L * tokens * D / tp * act + 2 * layer,
        f"saved by remat {config.remat}": L * tokens * saved_bytes(config, config.remat, act) / tp,
        "logits": 2 * tokens * vocab / tp * 4,  # float32 logits and their gradient
        "gathered weights": gathered,
    }


# `remat = auto`'s candidates, the most kept (the least recomputed) first: the first whose step fits in
# AUTO_BUDGET of a device's memory is taken.
AUTO_REMAT = ("dots_attention", "dots_with_no_batch_dims_saveable", "nothing_saveable")
AUTO_BUDGET = 0.5


def saved_bytes(config: ModelConfig, policy: str, itemsize: int) -> float:
    """Bytes per token and layer (before tp splits them) that a rematerialisation policy keeps for the
    backward pass besides the layer's input. The weight products' outputs (q, k, v, the attention's
    output projection, the FFN's w1, w3 and w2) are in the compute dtype; the fused attention's output and
    log-sum-exp in float32. `dots_saveable` and `checkpoint_dots` keep batched products too (scores, with
    attention in plain JAX), `none` and `everything_saveable` every value: for those this is a floor."""
    if policy in ("nothing_saveable", "auto"):
        return 0.0
    D, F, N, H = config.hidden_size, config.intermediate_size, config.num_attention_heads, config.head_dim
    dots = (N * H + 2 * config.kv_heads * H + D + 2 * F + D) * itemsize
    if policy == "dots_with_no_batch_dims_saveable":
        return dots
    return dots + (N * H + N) * 4


def device_memory(mesh: Mesh | None = None) -> float | None:
    """Bytes of memory one device of `mesh` (default: jax's first device) has: a GPU or TPU's as the runtime
    reports it (else the hardware catalog's figure for its kind); on CPU the host's RAM (or its cgroup's
    limit, if lower) shared by the host's CPU devices. None when unknown."""
    from lwm_core.scale.hardware import find

    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    if device.platform == "cpu":
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        try:
            with open("/sys/fs/cgroup/memory.max") as f:
                limit = f.read().strip()
            total = min(total, int(limit)) if limit.isdigit() else total
        except OSError:
            pass
        return total / len(jax.local_devices(backend="cpu"))
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    known = find(device.device_kind)
    return float(known.hbm_bytes) if known else None


def choose_remat(config: ModelConfig, mesh: Mesh, rows: int, seq_len: int, dtype: str = "float32",
                 moments_dtype: str = "float32", memory: float | None = None) -> str:
    """`remat = auto` made concrete for a step of `rows` x `seq_len` tokens per micro-batch on `mesh`: the
    first policy of AUTO_REMAT whose `step_memory` fits in AUTO_BUDGET of `memory` (default: the device's,
    `device_memory`); nothing_saveable when none does or the memory is unknown. Keeping the products
    and the attention's output skips the forward's recompute in the backward pass (bench-50m's CPU step
    ~10% faster: benchmarks/README.md) at the cost of their memory, which at long context is far more than
    a device has."""
    if config.remat != "auto":
        return config.remat
    memory = device_memory(mesh) if memory is None else memory
    for policy in AUTO_REMAT if memory else ():
        need = sum(step_memory(config.replace(remat=policy), mesh, rows, seq_len, dtype, moments_dtype).values())
        if need <= AUTO_BUDGET * memory:
            return policy
    return "nothing_saveable"


def peak_flops(run: RunConfig) -> float | None:
    """Peak bf16 FLOP/s of one device, for MFU: train.peak_tflops, else the catalog's figure for this
    device kind (lwm_core.scale.hardware); None for CPUs and unknown devices (no MFU)."""
    from lwm_core.scale.hardware import find

    if run.train.peak_tflops > 0:
        return run.train.peak_tflops * 1e12
    known = find(jax.devices()[0].device_kind)
    return known.peak_flops if known else None
