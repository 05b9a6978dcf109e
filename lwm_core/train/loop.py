"""The training loop: `train` runs a `Plan` (see `plan.prepare`) to its last step, resuming from the run
directory's latest complete checkpoint (see `run_dir` for what the directory holds), saving on schedule
and on request, and exporting the final weights.

    final/            the final weights (float32) as lwm's native directory (config.json, model.safetensors,
                      tokenizer.model) plus LWM's streaming msgpack `params` beside them: `lwm chat -m final`,
                      `-m params::final/params` and `lwm convert` all take it
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lwm_core.config import ModelConfig
from lwm_core.dtypes import jnp_dtype
from lwm_core.errors import LWMError
from lwm_core.model.llama import param_layout
from lwm_core.parallel.mesh import named_sharding
from lwm_core.plural import plural
from lwm_core.train.config import RunConfig
from lwm_core.train.plan import Plan, peak_flops
from lwm_core.train.run_dir import check_same_model, record_start
from lwm_core.train.step import LossWeights, TrainState, eval_losses, train_step


@dataclass
class Result:
    step: int  # optimizer steps done
    stopped: bool  # interrupted (a checkpoint was saved) rather than finished
    resumed_from: int | None
    final: str | None  # exported directory, when finished


class _Rows:
    """Which rows of the global (A, R, T) batch this process holds, and how to build the global arrays.

    The data stream numbers rows g = j * A + a (row j of micro-batch a), so the rows a process needs
    (j in [lo, hi) of every micro-batch) are one contiguous range of the stream: [lo * A, hi * A).
    """

    def __init__(self, mesh: Mesh, A: int, R: int, T: int):
        self.A, self.R, self.T = A, R, T
        self.sharding = named_sharding(mesh, (None, "batch", "seq"), (A, R, T))
        spans = [(idx[1].start or 0, R if idx[1].stop is None else idx[1].stop)
                 for idx in self.sharding.addressable_devices_indices_map((A, R, T)).values()]
        self.lo, self.hi = min(s for s, _ in spans), max(e for _, e in spans)

    @property
    def stream_range(self) -> tuple[int, int]:
        return self.lo * self.A, self.hi * self.A

    def to_global(self, local):
        """The stream's local Batch (rows [lo*A, hi*A), T) -> a Batch of global (A, R, T) arrays."""

        def place(arr: np.ndarray) -> jax.Array:
            # (n*A, T) -> (n, A, T) -> (A, n, T): stream row j*A + a is row j of micro-batch a
            grid = np.ascontiguousarray(arr.reshape(self.hi - self.lo, self.A, self.T).transpose(1, 0, 2))

            def shard(index):
                a, rows, t = index
                start = (rows.start or 0) - self.lo
                stop = (self.R if rows.stop is None else rows.stop) - self.lo
                return grid[a, start:stop, t]

            return jax.make_array_from_callback((self.A, self.R, self.T), self.sharding, shard)

        return type(local)(*(place(np.asarray(x)) for x in local))


def _merge_data_state(state: dict) -> dict:
    """Every process advanced only its own rows' cursors; the checkpoint holds all of them."""
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils

    from lwm_core.data import DataStream

    cursors = np.asarray(multihost_utils.process_allgather(np.asarray(state["cursors"], np.int64)))
    ranges = np.asarray(multihost_utils.process_allgather(np.asarray(state["row_range"], np.int64)))
    return DataStream.merge_states([{**state, "cursors": c.tolist(), "row_range": r.tolist()}
                                    for c, r in zip(cursors, ranges)])


def _agree(flags: list[bool]) -> list[bool]:
    """Decisions every process must take together (stop, save by time): any process saying yes wins."""
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(np.asarray(flags, np.int32)))
    return [bool(x) for x in every.max(axis=0)]


def train(plan: Plan, *, should_stop: Callable[[], bool] = lambda: False,
          on_metrics: Callable[[dict], None] = lambda m: None,
          on_event: Callable[[str], None] = lambda s: None) -> Result:
    """Run (or resume) `plan` to `train.steps`; save on schedule, on `should_stop()` (then return), and
    export the final weights. Callbacks get each metrics record and one-line status messages."""
    from lwm_core.checkpoint.train_state import TrainCheckpoints
    from lwm_core.data import DataStream

    run, t = plan.run, plan.run.train
    primary = jax.process_index() == 0
    os.makedirs(run.run_dir, exist_ok=True)
    check_same_model(run.run_dir, plan.config)
    ckpt = TrainCheckpoints(os.path.join(run.run_dir, "checkpoints"), keep=run.checkpoint.keep,
                            keep_every=run.checkpoint.keep_every)
    latest = ckpt.latest_step()
    final_dir = os.path.join(run.run_dir, "final")
    if latest is not None and latest >= t.steps and os.path.isfile(os.path.join(final_dir, "params")):
        on_event(f"already finished: {plural(latest, 'step')}, final weights in {final_dir}")
        return Result(latest, False, latest, final_dir)

    fns = _Compiled.of(plan)
    state, data_state = _start_state(plan, fns, ckpt, latest, on_event)
    if primary:
        record_start(plan, latest)
    rows = _Rows(plan.mesh, t.accumulate, plan.micro_rows, t.seq_len)
    stream = DataStream(run.data, plan.tokenizer, rows=rows.A * rows.R, seq_len=rows.T, row_range=rows.stream_range)
    if data_state is not None:
        stream.restore(data_state)
    log = _MetricsLog(plan, on_metrics, step=int(latest or 0), primary=primary)

    def save(at: int) -> None:
        ckpt.save(at, state, _merge_data_state(stream.state()))

    step = int(latest or 0)
    if _agree([should_stop()])[0]:  # asked during start-up: nothing new to save
        ckpt.close()
        return Result(step, True, latest, None)
    if step < t.steps:
        on_event("compiling the training step")
    last_save = time.monotonic()
    while step < t.steps:
        state, metrics = fns.step(state, rows.to_global(stream.next_batch()))
        step += 1
        log.step(step, metrics)
        if fns.eval is not None and t.eval_every and (step % t.eval_every == 0 or step == t.steps):
            log.write({"step": step, **_evaluate(fns.eval, state.params, run, plan, rows), "time": time.time()})
        stop, timed = _agree([should_stop(), bool(run.checkpoint.every_minutes) and
                              time.monotonic() - last_save >= run.checkpoint.every_minutes * 60])
        every = run.checkpoint.every_steps
        if stop or timed or (every and step % every == 0) or step == t.steps:
            save(step)
            last_save = time.monotonic()
            on_event(f"checkpoint saved at step {step}")
        if stop:
            ckpt.close()
            return Result(step, True, latest, None)
    if ckpt.latest_step() != step:
        save(step)
    ckpt.close()
    if not run.checkpoint.export:
        return Result(step, False, latest, None)
    _export(plan.config, state.params, plan.tokenizer, final_dir, primary)
    on_event(f"final weights: {final_dir} (native) and {final_dir}/params (LWM msgpack)")
    return Result(step, False, latest, final_dir)


@dataclass(frozen=True)
class _Compiled:
    """The optimizer and the jitted step/eval functions of a plan, with the shardings of the state."""

    tx: object
    step: Callable
    eval: Callable | None
    state_shardings: TrainState
    replicated: NamedSharding

    @classmethod
    def of(cls, plan: Plan) -> _Compiled:
        from lwm_core.loading import param_shardings
        from lwm_core.train.optimizer import make_optimizer, schedule, state_shardings

        run, mesh, t = plan.run, plan.mesh, plan.run.train
        config = plan.config.replace(remat=plan.remat)  # `auto` as the plan chose it (exports keep `auto`)
        dtype = jnp_dtype(t.dtype)
        tx = make_optimizer(run.optimizer, t.steps)
        replicated = NamedSharding(mesh, P())
        p_shard = param_shardings(config, mesh)
        o_shard = state_shardings(tx, _abstract_params(config), p_shard, replicated)
        s_shard = TrainState(replicated, p_shard, o_shard, replicated)
        weights = LossWeights(text=t.text_loss_weight, vision=t.vision_loss_weight)
        step = jax.jit(functools.partial(train_step, config=config, tx=tx, schedule=schedule(run.optimizer, t.steps),
                                         weights=weights, mesh=mesh, dtype=dtype),
                       out_shardings=(s_shard, replicated), donate_argnums=0)
        evaluate = jax.jit(functools.partial(eval_losses, config=config, weights=weights, mesh=mesh, dtype=dtype),
                           out_shardings=replicated) if run.data.eval_path else None
        return cls(tx, step, evaluate, s_shard, replicated)


def _start_state(plan: Plan, fns: _Compiled, ckpt, latest: int | None, on_event) -> tuple[TrainState, dict | None]:
    """(train state, data position): fresh from `model.init` (and the seed), or restored from checkpoint
    `latest` straight into the state's shardings."""
    from lwm_core.loading import load

    run, t = plan.run, plan.run.train
    if latest is None:
        on_event(f"initialising from {run.model.init}")
        params = load(run.model.init, config=plan.config, mesh=plan.mesh, dtype=jnp.float32,
                      tokenizer=plan.tokenizer, seed=t.seed).params
        opt_state = jax.jit(fns.tx.init, out_shardings=fns.state_shardings.opt_state)(params)
        rng = jax.device_put(jax.random.key_data(jax.random.key(t.seed)), fns.replicated)
        return TrainState(jax.device_put(jnp.int32(0), fns.replicated), params, opt_state, rng), None
    on_event(f"resuming from step {latest}")
    return ckpt.restore(latest, abstract_state(plan, fns))


def abstract_state(plan: Plan, fns: _Compiled) -> TrainState:
    """The train state's shapes, dtypes and shardings, without any array: what a restore fills in and a
    dry run compiles the step for."""
    params_shape = _abstract_params(plan.config)
    shapes = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params_shape, jax.eval_shape(fns.tx.init, params_shape),
                        jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, fns.state_shardings)


class _MetricsLog:
    """Every `log_every` steps (and the last): loss, lr, grad norm, tokens/s and MFU, appended to
    metrics.jsonl by process 0 and handed to `on_metrics`. Speed is timed from the end of the first step
    (which also compiled)."""

    def __init__(self, plan: Plan, on_metrics: Callable[[dict], None], *, step: int, primary: bool):
        self.plan, self.on_metrics, self.primary = plan, on_metrics, primary
        self.path = os.path.join(plan.run.run_dir, "metrics.jsonl")
        self.peak = peak_flops(plan.run)
        self.first_step = step + 1
        self.last_time, self.last_step = time.monotonic(), step
        t = plan.run.train
        self.tokens_per_step = t.accumulate * plan.micro_rows * t.seq_len

    def step(self, step: int, metrics) -> None:
        t = self.plan.run.train
        if step == self.first_step:
            jax.block_until_ready(metrics)
            self.last_time, self.last_step = time.monotonic(), step
        if step % t.log_every and step != t.steps:
            return
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.monotonic()
        rate = (self.tokens_per_step * (step - self.last_step) / (now - self.last_time)
                if step > self.last_step else None)
        self.last_time, self.last_step = now, step
        mfu = (rate * self.plan.flops_per_token / (self.peak * jax.device_count())
               if self.peak and rate else None)
        record = {"step": step, "loss": m["loss"], "text_loss": m["text_loss"], "lr": m["lr"],
                  "grad_norm": m["grad_norm"], "tokens_per_s": rate, "tokens": int(m["tokens"]), "mfu": mfu,
                  "time": time.time()}
        if self.plan.config.vision:
            record["vision_loss"] = m["vision_loss"]
        if not math.isfinite(m["loss"]):
            raise LWMError(f"loss became {m['loss']} at step {step}; lower optimizer.lr or check the data "
                           f"(the last checkpoint is still good)")
        self.write(record)

    def write(self, record: dict) -> None:
        if self.primary:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.on_metrics(record)


def _abstract_params(config: ModelConfig) -> dict:
    from flax.traverse_util import unflatten_dict

    return unflatten_dict({path: jax.ShapeDtypeStruct(shape, jnp.float32)
                           for path, (shape, _) in param_layout(config).items()})


def _evaluate(eval_fn, params, run: RunConfig, plan: Plan, rows: _Rows) -> dict:
    from lwm_core.data import DataStream

    data = dataclasses.replace(run.data, shuffle=False)
    stream = DataStream(data, plan.tokenizer, rows=rows.A * rows.R, seq_len=rows.T, row_range=rows.stream_range,
                        path=run.data.eval_path)
    totals = {"eval_loss": 0.0, "eval_text_loss": 0.0, "eval_vision_loss": 0.0}
    for _ in range(run.train.eval_batches):
        out = jax.device_get(eval_fn(params, rows.to_global(stream.next_batch())))
        for key in ("loss", "text_loss", "vision_loss"):
            totals[f"eval_{key}"] += float(out[key]) / run.train.eval_batches
    if not plan.config.vision:
        del totals["eval_vision_loss"]
    return totals


def _export(config: ModelConfig, params, tokenizer, final_dir: str, primary: bool) -> None:
    """The native directory at final/ (published atomically), then `params` written into it (atomically:
    its presence marks a finished export). Every process takes part in gathering the shards; the first
    writes."""
    from lwm_core.checkpoint.loader import host_arrays
    from lwm_core.checkpoint.save import save_native, save_params

    if primary:
        save_native(final_dir, config, params, tokenizer, overwrite=True)
        save_params(os.path.join(final_dir, "params"), config, params)
    else:
        for _ in range(2):
            for _ in host_arrays(params):
                pass
