"""The training loop: `prepare` checks everything and sizes the run without compiling anything;
`train` runs it, resuming from the run directory's latest complete checkpoint.

Run directory:
    .lock             held (flock) by the `lwm train` process using the directory: a second one is refused
    run.json          resolved config, model config, versions, mesh (rewritten at every start)
    metrics.jsonl     one line per logged step (and per eval); a resumed run drops lines past the restore
    checkpoints/<N>/  orbax train state + data position (atomic; last k + milestones kept)
    final/            the final weights (float32) as lwm's native directory (config.json, model.safetensors,
                      tokenizer.model) plus LWM's streaming msgpack `params` beside them: `lwm chat -m final`,
                      `-m params::final/params` and `lwm convert` all take it
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lwm_core.checkpoint.atomic import write_text
from lwm_core.config import ModelConfig
from lwm_core.dtypes import jnp_dtype
from lwm_core.errors import LWMError
from lwm_core.model.llama import param_layout
from lwm_core.parallel.mesh import axis_size, check_batch, check_model, logical_spec, make_mesh, named_sharding
from lwm_core.train.config import RunConfig, check_run_dir, model_config
from lwm_core.train.step import LossWeights, TrainState, eval_losses, flops_per_token, train_step

# Dense bf16 peak TFLOP/s per device, for MFU when train.peak_tflops is not given.
_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
                "TPU v5p": 459.0, "TPU v6 lite": 918.0}


# Model fields that change parameter shapes: a run directory cannot be resumed with different ones.
_SHAPE_KEYS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vision", "vision_vocab_size"}


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
    examples: int  # lines of the training data

    @property
    def micro_rows(self) -> int:
        return self.run.train.batch_size // self.run.train.accumulate


def prepare(run: RunConfig, *, base: Plan | None = None) -> Plan:
    """Resolve the model, mesh and data of `run` and refuse anything that cannot work, before any
    compilation: shapes against the mesh and context, the data file parsed line by line.

    `base`: the plan of the stage this one continues from, when its weights are not written yet
    (`--dry-run` of a staged run): the model is that stage's with this run's overrides.
    """
    from lwm_core.config import apply_overrides
    from lwm_core.data import JsonlIndex

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
    with JsonlIndex(run.data.path) as index:
        index.validate()
        examples = len(index)
    if run.data.eval_path:
        with JsonlIndex(run.data.eval_path) as index:
            index.validate()
    elif t.eval_every:
        raise LWMError(f"train.eval_every = {t.eval_every} needs data.eval_path")
    layout = param_layout(config)
    n_params = sum(math.prod(shape) for shape, _ in layout.values())
    return Plan(run, config, tokenizer, mesh, n_params, flops_per_token(config, t.seq_len),
                memory_estimate(config, run, mesh), examples)


def memory_estimate(config: ModelConfig, run: RunConfig, mesh: Mesh) -> dict[str, float]:
    """Per-device bytes: weights, gradients and Adam moments from the real shardings, plus activations
    under per-layer rematerialisation (layer inputs kept, one layer's working set, logits)."""
    sharded = 0.0
    for shape, axes in param_layout(config).values():
        spec = logical_spec(axes, mesh, shape)
        size = math.prod(shape)
        for names in spec:
            for name in ((names,) if isinstance(names, str) else (names or ())):
                size /= mesh.shape[name]
        sharded += size
    t = run.train
    act = jnp_dtype(t.dtype).itemsize
    rows = t.batch_size // t.accumulate / axis_size(mesh, "batch")
    tokens = rows * t.seq_len / mesh.shape["sp"]
    D, F, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tp = mesh.shape["tp"]
    vocab = config.vocab_size + (config.vision_vocab_size if config.vision else 0)
    chunk = min(config.mlp_chunk_size or t.seq_len, t.seq_len) / t.seq_len
    layer = tokens * (6 * D + (3 * D * config.kv_heads // config.num_attention_heads) + 3 * F * chunk / tp) * act
    return {
        "params": sharded * 4,
        "grads": sharded * 4,
        "adam": sharded * (4 + jnp_dtype(run.optimizer.moments_dtype).itemsize),
        "activations": L * tokens * D * act + 2 * layer,
        "logits": 3 * tokens * vocab / tp * 4,
    }


# ------------------------------------------------------------------------------------ run directory

_LOCK = ".lock"
_RUN_FILES = ("run.json", "metrics.jsonl", "checkpoints")  # what `train` writes before its first checkpoint


class RunDir:
    """One process's hold on a run directory for a whole `lwm train` (all its stages).

    Two runs in one directory would interleave their checkpoints and metrics: process 0 holds an
    exclusive lock (flock on `.lock`, released by the kernel however the process ends, SIGKILL
    included) and a second run is refused. A run that ends before its first checkpoint (bad data that
    only the stream finds, Ctrl-C during the compile) has nothing to resume from: `cleanup` removes
    what it created, so that a failed first try leaves the disk as it found it.

    `stage_dirs`: the run directories of the stages, inside `path` (just `path` without stages).
    """

    def __init__(self, path: str, stage_dirs: Sequence[str] = (), *, primary: bool = True):
        self.path = path
        self.stage_dirs = list(stage_dirs) or [path]
        self.primary = primary
        self._fd: int | None = None
        self._made: str | None = None  # the outermost directory this run created, if it created path
        self._before: dict[str, set[str] | None] | None = None  # entries of each directory at the start

    def __enter__(self) -> "RunDir":
        check_run_dir(self.path)
        if not self.primary:
            return self
        top = _entries(self.path)
        if top is None:  # the outermost directory that makedirs will create
            self._made = os.path.abspath(self.path)
            while not os.path.exists(os.path.dirname(self._made)):
                self._made = os.path.dirname(self._made)
        try:
            self._lock()
        except LWMError:
            self._remove_made()  # rmdir: only what is still empty
            raise
        self._before = {d: _entries(d) for d in self.stage_dirs}
        self._before[self.path] = top
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.cleanup()
        finally:
            if self._fd is not None:
                os.close(self._fd)  # releases the lock
                self._fd = None

    def _lock(self) -> None:
        path = os.path.join(self.path, _LOCK)
        while True:
            try:
                os.makedirs(self.path, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise LWMError(f"cannot create run_dir {self.path} ({e.strerror or e}); choose another "
                               f"--run-dir") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise LWMError(f"run_dir {self.path} is in use by another lwm train (pid {holder}); wait for it "
                               f"or choose another --run-dir") from None
            # The previous holder may have removed the file (cleaning up a failed first try) between our
            # open and our lock: then we hold a lock nobody else can see; take the new file's instead.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def cleanup(self, *, racing: bool = False) -> None:
        """Remove what this run created in the stage directories that hold nothing to resume from (no
        complete checkpoint), then the run directory itself (or its lock file) if the run added nothing
        else. Safe to call more than once.

        `racing`: called from another thread while the run may still be writing (an abort, just before
        `os._exit`): a stage whose first checkpoint is being written is left alone, since deleting under
        orbax could leave a checkpoint without its run.json; a half-written step is a temporary that the
        next run removes."""
        if self._before is None:
            return
        kept = False
        for d in self.stage_dirs:
            before = self._before.get(d)
            if _resumable(d) or (racing and _entries(os.path.join(d, "checkpoints"))):
                kept = True
            elif before is None and d != self.path:
                shutil.rmtree(d, ignore_errors=True)
            else:
                for name in (_entries(d) or set()) - (before or set()):
                    if name in _RUN_FILES or any(name.startswith(f".{f}.lwm-tmp-") for f in _RUN_FILES):
                        _remove(os.path.join(d, name))
        top = self._before[self.path]
        if kept or (_entries(self.path) or set()) - (top or set()) - {_LOCK}:
            return
        if top is None:
            _remove(os.path.join(self.path, _LOCK))  # we made the directory and only the lock file is left
            self._remove_made()
        elif _LOCK not in top:
            _remove(os.path.join(self.path, _LOCK))

    def _remove_made(self) -> None:
        """rmdir the run directory and the parents this run created, as long as they are empty."""
        if self._made is None:
            return
        path = os.path.abspath(self.path)
        while True:
            try:
                os.rmdir(path)
            except OSError:
                return
            if path == self._made:
                return
            path = os.path.dirname(path)


def _entries(directory: str) -> set[str] | None:
    try:
        return set(os.listdir(directory))
    except OSError:
        return None


def _resumable(run_dir: str) -> bool:
    """A complete checkpoint (orbax names a step's directory by its number only once it is whole)."""
    steps = os.path.join(run_dir, "checkpoints")
    return any(name.isdigit() for name in _entries(steps) or ())


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


# ------------------------------------------------------------------------------------------ running


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


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("lwm", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _write_json(path: str, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def _trim_metrics(path: str, last_step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old lines (and any line a kill
    cut short) so that metrics.jsonl reads as one uninterrupted run."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if line.endswith("\n") and record.get("step", 0) <= last_step:
                keep.append(line)
    write_text(path, "".join(keep))


def peak_flops(run: RunConfig) -> float | None:
    if run.train.peak_tflops > 0:
        return run.train.peak_tflops * 1e12
    kind = jax.devices()[0].device_kind
    for name, tflops in _PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return tflops * 1e12
    return None  # CPUs and unknown devices: no MFU


def train(plan: Plan, *, should_stop: Callable[[], bool] = lambda: False,
          on_metrics: Callable[[dict], None] = lambda m: None,
          on_event: Callable[[str], None] = lambda s: None) -> Result:
    """Run (or resume) `plan` to `train.steps`; save on schedule, on `should_stop()` (then return), and
    export the final weights. Callbacks get each metrics record and one-line status messages."""
    from lwm_core.checkpoint.train_state import TrainCheckpoints
    from lwm_core.data import DataStream
    from lwm_core.loading import load, param_shardings
    from lwm_core.train.optimizer import make_optimizer, schedule, state_shardings

    run, config, mesh = plan.run, plan.config, plan.mesh
    t = run.train
    primary = jax.process_index() == 0
    os.makedirs(run.run_dir, exist_ok=True)
    info_path = os.path.join(run.run_dir, "run.json")
    model_dict = dataclasses.asdict(config)
    if os.path.exists(info_path):
        with open(info_path) as f:
            before = json.load(f).get("model_config", {})
        changed = sorted(k for k in model_dict if k in before and before[k] != model_dict[k]
                         and k in _SHAPE_KEYS)
        if changed:
            raise LWMError(f"run_dir {run.run_dir} holds a run of another model ({changed[0]} = "
                           f"{before[changed[0]]}, now {model_dict[changed[0]]}); use a new run_dir")
    ckpt = TrainCheckpoints(os.path.join(run.run_dir, "checkpoints"), keep=run.checkpoint.keep,
                            keep_every=run.checkpoint.keep_every)
    latest = ckpt.latest_step()
    final_dir = os.path.join(run.run_dir, "final")
    if latest is not None and latest >= t.steps and os.path.isfile(os.path.join(final_dir, "params")):
        on_event(f"already finished: {latest} steps, final weights in {final_dir}")
        return Result(latest, False, latest, final_dir)

    dtype = jnp_dtype(t.dtype)
    tx = make_optimizer(run.optimizer, t.steps)
    lr = schedule(run.optimizer, t.steps)
    replicated = NamedSharding(mesh, P())
    p_shard = param_shardings(config, mesh)
    params_shape = _abstract_params(config)
    o_shard = state_shardings(tx, params_shape, p_shard, replicated)
    s_shard = TrainState(replicated, p_shard, o_shard, replicated)

    if latest is None:
        on_event(f"initialising from {run.model.init}")
        params = load(run.model.init, config=config, mesh=mesh, dtype=jnp.float32, tokenizer=plan.tokenizer,
                      seed=t.seed).params
        opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
        rng = jax.device_put(jax.random.key_data(jax.random.key(t.seed)), replicated)
        state = TrainState(jax.device_put(jnp.int32(0), replicated), params, opt_state, rng)
        data_state = None
        if primary:
            _trim_metrics(os.path.join(run.run_dir, "metrics.jsonl"), 0)
    else:
        on_event(f"resuming from step {latest}")
        abstract = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params_shape, jax.eval_shape(tx.init, params_shape),
                              jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, s_shard)
        state, data_state = ckpt.restore(latest, abstract)
        if primary:
            _trim_metrics(os.path.join(run.run_dir, "metrics.jsonl"), latest)
    if primary:
        _write_json(info_path, {"config": run.to_dict(), "model_config": model_dict, "versions": _versions(),
                                "mesh": dict(mesh.shape), "processes": jax.process_count(),
                                "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
                                "params": plan.params, "resumed_from": latest, "started": time.time()})

    A, R, T = t.accumulate, plan.micro_rows, t.seq_len
    rows = _Rows(mesh, A, R, T)
    stream = DataStream(run.data, plan.tokenizer, rows=A * R, seq_len=T, row_range=rows.stream_range)
    if data_state is not None:
        stream.restore(data_state)
    weights = LossWeights(text=t.text_loss_weight, vision=t.vision_loss_weight)
    step_fn = jax.jit(functools.partial(train_step, config=config, tx=tx, schedule=lr, weights=weights,
                                        mesh=mesh, dtype=dtype),
                      out_shardings=(s_shard, replicated), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_losses, config=config, weights=weights, mesh=mesh, dtype=dtype),
                      out_shardings=replicated) if run.data.eval_path else None

    metrics_path = os.path.join(run.run_dir, "metrics.jsonl")
    peak = peak_flops(run)
    step = int(latest or 0)
    first_step = step + 1
    last_save = time.monotonic()
    last_log, last_log_step = time.monotonic(), step
    tokens_per_step = A * R * T

    def log(record: dict) -> None:
        if primary:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        on_metrics(record)

    def save(at: int) -> None:
        ckpt.save(at, state, _merge_data_state(stream.state()))

    if _agree([should_stop()])[0]:  # asked during start-up: nothing new to save
        ckpt.close()
        return Result(step, True, latest, None)
    if step < t.steps:
        on_event("compiling the training step")
    while step < t.steps:
        batch = rows.to_global(stream.next_batch())
        state, metrics = step_fn(state, batch)
        step += 1
        if step == first_step:  # the first step also compiled: speed is timed from its end
            jax.block_until_ready(metrics)
            last_log, last_log_step = time.monotonic(), step
        if step % t.log_every == 0 or step == t.steps:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.monotonic()
            rate = tokens_per_step * (step - last_log_step) / (now - last_log) if step > last_log_step else None
            last_log, last_log_step = now, step
            record = {"step": step, "loss": m["loss"], "text_loss": m["text_loss"], "lr": m["lr"],
                      "grad_norm": m["grad_norm"], "tokens_per_s": rate, "tokens": int(m["tokens"]),
                      "mfu": rate * plan.flops_per_token / (peak * jax.device_count()) if peak and rate else None,
                      "time": time.time()}
            if config.vision:
                record["vision_loss"] = m["vision_loss"]
            if not math.isfinite(m["loss"]):
                raise LWMError(f"loss became {m['loss']} at step {step}; lower optimizer.lr or check the data "
                               f"(the last checkpoint is still good)")
            log(record)
        if eval_fn is not None and t.eval_every and (step % t.eval_every == 0 or step == t.steps):
            log({"step": step, **_evaluate(eval_fn, state.params, run, plan, rows), "time": time.time()})
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
    if run.checkpoint.export:
        _export(config, state.params, plan.tokenizer, final_dir, primary)
        on_event(f"final weights: {final_dir} (native) and {final_dir}/params (LWM msgpack)")
    return Result(step, False, latest, final_dir if run.checkpoint.export else None)


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
