"""The run config of `lwm train`: one frozen tree, the same object from a TOML file, `--set` or a test.

    [model]            init spec, config preset/card, tokenizer; any other key overrides ModelConfig
    [data]             lwm_core.data.DataConfig (path, fields, packing, ...)
    [train]            sequence length, batch, steps, accumulation, loss weights, eval
    [optimizer]        AdamW, warmup + cosine decay, clipping, moment dtype
    [checkpoint]       every N steps / M minutes, keep last k + milestones, final export
    mesh, run_dir      top-level keys
    [[stages]]         optional: a list of override tables run one after another (context extension)

Every key is checked before anything starts; a typo gets the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

import tomllib

from lwm_core.config import ModelConfig, _f, apply_overrides, coerce, did_you_mean, split_key_value
from lwm_core.data.config import DataConfig, split_paths
from lwm_core.dtypes import ALIASES
from lwm_core.errors import LWMError
from lwm_core.parallel.mesh import parse_mesh
from lwm_core.text import decode_utf8


def _compute_dtype(key: str, value: str) -> str:
    """A training dtype in any spelling of `lwm_core.dtypes` -> its canonical name; training computes in
    float32 or bfloat16 only (float16 would need loss scaling, which the step does not do)."""
    name = ALIASES.get(str(value).lower())
    if name not in ("float32", "bfloat16"):
        raise LWMError(f"{key} = {value!r} is not float32 or bfloat16 (bf16 and fp32 work too)")
    return name


@dataclass(frozen=True)
class ModelSection:
    """Which model to train and where its weights start."""

    init: str = _f("starting weights: random:<preset>, params::<file>, a native directory or a hub id",
                   default="random:tiny")
    config: str = _f("preset or card for the architecture (empty: the one beside the weights / of random:)",
                     default="")
    tokenizer: str = _f("tokenizer file or directory (empty: the one beside the weights, or the shipped one)",
                        default="")
    overrides: tuple[tuple[str, Any], ...] = _f("ModelConfig overrides (any other key of [model])", default=())

    def override_dict(self) -> dict[str, Any]:
        return dict(self.overrides)


@dataclass(frozen=True)
class TrainConfig:
    """Shapes and schedule of the optimisation."""

    seq_len: int = _f("tokens per row (packed examples + padding); a multiple of sp", default=256)
    batch_size: int = _f("rows per optimizer step (global, all processes)", default=8)
    accumulate: int = _f("micro-batches per step (gradient accumulation); divides batch_size", default=1)
    steps: int = _f("optimizer steps to run", default=100)
    seed: int = _f("seed of the initial weights and the run's RNG", default=0)
    dtype: str = _f("compute dtype (float32 | bfloat16); weights and optimizer math stay float32",
                    default="float32")
    vision_loss_weight: float = _f("weight of the vision-token loss (LWM: 0.5)", default=0.5)
    text_loss_weight: float = _f("weight of the text-token loss for vision models (LWM: 0.5)", default=0.5)
    log_every: int = _f("steps between metrics lines", default=1)
    eval_every: int = _f("steps between eval losses (0: never; needs data.eval_path)", default=0)
    eval_batches: int = _f("batches of the eval set per eval", default=4)
    peak_tflops: float = _f("peak TFLOP/s per device for MFU (0: from the device kind when known)", default=0.0)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "accumulate", "steps", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise LWMError(f"train.{name} = {getattr(self, name)} must be at least 1")
        if self.batch_size % self.accumulate:
            raise LWMError(f"train.batch_size = {self.batch_size} is not divisible by train.accumulate = "
                           f"{self.accumulate}; each micro-batch must have the same number of rows")
        object.__setattr__(self, "dtype", _compute_dtype("train.dtype", self.dtype))
        if self.eval_every < 0:
            raise LWMError(f"train.eval_every = {self.eval_every} must be 0 (never) or positive")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay (LWM's schedule), global-norm clipping."""

    lr: float = _f("peak learning rate", default=3e-4)
    init_lr: float = _f("learning rate at step 0 (warmup starts here)", default=0.0)
    end_lr: float = _f("learning rate at the end of the cosine decay", default=3e-5)
    warmup_steps: int = _f("linear warmup steps", default=100)
    decay_steps: int = _f("steps of warmup + cosine decay (0: train.steps)", default=0)
    weight_decay: float = _f("decoupled weight decay (not applied to norms and embeddings)", default=0.1)
    b1: float = _f("Adam beta1", default=0.9)
    b2: float = _f("Adam beta2", default=0.95)
    eps: float = _f("Adam epsilon", default=1e-8)
    clip_norm: float = _f("clip gradients to this global norm (0: no clipping)", default=1.0)
    moments_dtype: str = _f("dtype of Adam's first moment: float32 | bfloat16 (halves its memory)",
                            default="float32")

    def __post_init__(self) -> None:
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise LWMError(f"optimizer.lr = {self.lr} must be a positive number")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise LWMError("optimizer.warmup_steps and optimizer.decay_steps must be >= 0")
        object.__setattr__(self, "moments_dtype", _compute_dtype("optimizer.moments_dtype", self.moments_dtype))
        if self.clip_norm < 0:
            raise LWMError(f"optimizer.clip_norm = {self.clip_norm} must be >= 0")


@dataclass(frozen=True)
class CheckpointConfig:
    """When train state is saved and what is kept."""

    every_steps: int = _f("save every N steps (0: only by time, at the end and on SIGTERM)", default=500)
    every_minutes: float = _f("also save when this many minutes passed since the last save (0: off)",
                              default=30.0)
    keep: int = _f("keep the last k checkpoints", default=3)
    keep_every: int = _f("milestones: also keep every checkpoint whose step is a multiple of this (0: none)",
                         default=0)
    export: bool = _f("at the end, write final/ (native directory) with final/params (LWM msgpack) inside",
                      default=True)

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.every_minutes < 0 or self.keep_every < 0:
            raise LWMError("checkpoint.every_steps, every_minutes and keep_every must be >= 0")
        if self.keep < 1:
            raise LWMError(f"checkpoint.keep = {self.keep} must be at least 1")


@dataclass(frozen=True)
class RunConfig:
    """Everything one `lwm train` run (or stage) needs."""

    run_dir: str = _f("directory of checkpoints, metrics.jsonl, run.json and the final export",
                      default="runs/lwm")
    mesh: str = _f("device mesh dp,fsdp,tp,sp (e.g. 1,-1,1,1 or 1,2,2,2)", default="1,-1,1,1")
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    stages: tuple[tuple[str, Mapping[str, Any]], ...] = _f("named override tables run in order", default=())
    stage: str = _f("name of the stage this config is (empty: no stages)", default="")

    def __post_init__(self) -> None:
        parse_mesh(self.mesh)
        if not self.run_dir:
            raise LWMError("run_dir is empty; set run_dir = \"runs/<name>\" in the config or --set run_dir=...")

    def stage_configs(self) -> list[RunConfig]:
        """The run as its stages: each stage's overrides on top of this config, in its own run directory."""
        if not self.stages:
            return [self]
        out = []
        for name, table in self.stages:
            base = dataclasses.replace(self, stages=(), stage=name, run_dir=f"{self.run_dir}/{name}")
            out.append(_apply_table(base, table, where=f"stage {name!r}"))
        return out

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = {k: v for k, v in out["model"].items() if k != "overrides"} | dict(self.model.overrides)
        out["stages"] = [{"name": n, **dict(t)} for n, t in self.stages]
        return out


_SECTIONS = {"model": ModelSection, "data": DataConfig, "train": TrainConfig, "optimizer": OptimizerConfig,
             "checkpoint": CheckpointConfig}
_TOP = ("run_dir", "mesh")


def _all_keys() -> list[str]:
    keys = list(_TOP)
    for section, cls in _SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if f.name != "overrides"]
    keys += [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)]
    return keys


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _apply_table(config: RunConfig, flat: Mapping[str, Any], *, where: str) -> RunConfig:
    """Apply dotted `section.key = value` settings (values typed by field), refusing unknown keys."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    model_overrides = dict(config.model.overrides)
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if not dot and key in _TOP:
            top[key] = str(value)
        elif section == "model" and name in model_fields:
            model_overrides[name] = value
        elif dot and section in _SECTIONS and "." not in name:
            fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])}
            if name not in fields or name == "overrides":
                raise LWMError(f"unknown key {key!r} in {where}{did_you_mean(key, _all_keys())}")
            sections[section][name] = coerce(key, fields[name].type, value)
        else:
            raise LWMError(f"unknown key {key!r} in {where}{did_you_mean(key, _all_keys())}")
    try:
        changes: dict[str, Any] = dict(top)
        for name, values in sections.items():
            current = getattr(config, name)
            if name == "model":
                values["overrides"] = tuple(sorted(model_overrides.items()))
            if values:
                changes[name] = dataclasses.replace(current, **values)
        if model_overrides and "model" not in changes:
            changes["model"] = dataclasses.replace(config.model, overrides=tuple(sorted(model_overrides.items())))
        return dataclasses.replace(config, **changes)
    except LWMError as e:
        raise LWMError(f"{where}: {e}") from None


def load_run_config(path: str | None = None, sets: typing.Iterable[str] = ()) -> RunConfig:
    """Read a TOML run config (or start from defaults when `path` is None) and apply `--set` items."""
    config = RunConfig()
    if path is not None:
        table = _read_toml(path)
        stages = table.pop("stages", [])
        config = _apply_table(config, _relative_to(_flatten(table), path), where=path)
        config = dataclasses.replace(config, stages=_parse_stages(stages, path))
    overrides: dict[str, Any] = {}
    for item in sets:
        name, value = split_key_value(item, what="--set", example="train.steps=200")
        overrides[name] = value
    if overrides:
        config = _apply_table(config, overrides, where="--set")
    for stage in config.stage_configs():  # every stage's model overrides are typed-checked now
        apply_overrides(ModelConfig(), stage.model.override_dict())
    return config


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise LWMError(f"config file {path} does not exist; see configs/ for examples") from None
    except IsADirectoryError:
        raise LWMError(f"config file {path} is a directory; pass a TOML file (see configs/ for examples)") from None
    except OSError as e:
        raise LWMError(f"cannot read config file {path} ({e.strerror or e}); check the path and its "
                       f"permissions") from None
    # Bytes, then the one UTF-8 policy of every text input: tomllib.load raised a bare UnicodeDecodeError.
    text = decode_utf8(data, f"config file {path}")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LWMError(f"config file {path} is not valid TOML: {e}") from None


def check_run_dir(path: str) -> None:
    """Refuse a run directory that cannot be one (an existing file, a path under a file, a place that
    is not writable) before anything is computed or written."""
    target = os.path.abspath(path)
    existing = target  # the run directory, or its nearest existing ancestor
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file, not a directory" if existing == target else f"cannot be created: {existing} is a file"
        raise LWMError(f"run_dir {path} {where}; choose another --run-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LWMError(f"run_dir {path} is not writable ({existing}); choose another --run-dir")


# Input files named in a config file are found relative to that file (so a config and its data travel
# together and work from any directory); run_dir, an output, stays relative to where `lwm train` runs.
_INPUT_PATHS = ("data.path", "data.eval_path", "model.tokenizer")


_DATA_PATHS = ("data.path", "data.eval_path")  # one file, or several: a TOML list or commas


def _relative_to(flat: dict[str, Any], config_path: str) -> dict[str, Any]:
    base = os.path.dirname(os.path.abspath(config_path))

    def resolve(value: str) -> str:
        return value if os.path.isabs(os.path.expanduser(value)) else os.path.normpath(os.path.join(base, value))

    out = dict(flat)
    for key in _INPUT_PATHS:
        value = out.get(key)
        if key in _DATA_PATHS and isinstance(value, list):
            if not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise LWMError(f"{config_path}: {key} = {value!r} must list one or more file paths")
            value = ",".join(value)
        if key in _DATA_PATHS and isinstance(value, str):
            out[key] = ",".join(resolve(part) for part in split_paths(value))
        elif isinstance(value, str) and value:
            out[key] = resolve(value)
    return out


def _parse_stages(stages: Any, path: str) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    if not isinstance(stages, list):
        raise LWMError(f"{path}: `stages` must be an array of tables ([[stages]])")
    out = []
    for i, stage in enumerate(stages):
        table = dict(stage)
        name = str(table.pop("name", f"stage{i + 1}"))
        flat = _relative_to(_flatten(table), path)
        _apply_table(RunConfig(), flat, where=f"{path} stage {name!r}")  # validate keys now
        out.append((name, flat))
    if len({n for n, _ in out}) != len(out):
        raise LWMError(f"{path}: stage names must be unique, got {[n for n, _ in out]}")
    return tuple(out)


def model_config(run: RunConfig):
    """(ModelConfig, tokenizer) of a run: from its init spec/preset, with [model] overrides applied.
    Reads config files and the tokenizer, never the weights."""
    from lwm_core.loading import resolve_spec

    section = run.model
    _, config, tokenizer = resolve_spec(section.init, config=section.config or None,
                                        tokenizer=section.tokenizer or None, overrides=section.override_dict())
    return config, tokenizer


def to_toml(run: RunConfig) -> str:
    """The resolved config as TOML that `load_run_config` reads back (what `--dry-run` prints and what
    the run directory keeps)."""
    lines = [f"run_dir = {_toml_value(run.run_dir)}", f"mesh = {_toml_value(run.mesh)}"]
    table = run.to_dict()
    for section in _SECTIONS:
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table[section].items()]
    for name, flat in run.stages:
        lines += ["", "[[stages]]", f"name = {_toml_value(name)}"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in flat.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
