"""The run directory of `lwm train`: one run at a time (a lock), its record (`run.json`, `metrics.jsonl`),
and nothing left behind by a first try that ends before its first checkpoint.

    .lock             held (flock) by the `lwm train` process using the directory: a second one is refused
    run.json          resolved config, model config, versions, mesh (rewritten at every start)
    metrics.jsonl     one line per logged step (and per eval); a resumed run drops lines past the restore
    checkpoints/<N>/  orbax train state + data position (atomic; last k + milestones kept)
    final/            the final weights (see `loop.train`)
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import sys
import time
from typing import Any, Sequence

import jax

from lwm_core.checkpoint.atomic import write_text
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.train.config import check_run_dir

# Model fields that change parameter shapes: a run directory cannot be resumed with different ones.
_SHAPE_KEYS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vision", "vision_vocab_size"}


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


def check_same_model(run_dir: str, config: ModelConfig) -> None:
    """Refuse to resume a run directory whose run.json describes a model of other shapes."""
    info_path = os.path.join(run_dir, "run.json")
    if not os.path.exists(info_path):
        return
    with open(info_path) as f:
        before = json.load(f).get("model_config", {})
    now = dataclasses.asdict(config)
    changed = sorted(k for k in now if k in before and before[k] != now[k] and k in _SHAPE_KEYS)
    if changed:
        raise LWMError(f"run_dir {run_dir} holds a run of another model ({changed[0]} = "
                       f"{before[changed[0]]}, now {now[changed[0]]}); use a new run_dir")


def record_start(plan, resumed_from: int | None) -> None:
    """Process 0 at every start: metrics.jsonl cut back to the restored step, run.json rewritten."""
    run, mesh = plan.run, plan.mesh
    trim_metrics(os.path.join(run.run_dir, "metrics.jsonl"), resumed_from or 0)
    write_json(os.path.join(run.run_dir, "run.json"), {
        "config": run.to_dict(), "model_config": dataclasses.asdict(plan.config), "versions": _versions(),
        "mesh": dict(mesh.shape), "processes": jax.process_count(), "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind, "params": plan.params, "resumed_from": resumed_from,
        "started": time.time()})


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("lwm", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_json(path: str, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def trim_metrics(path: str, last_step: int) -> None:
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
