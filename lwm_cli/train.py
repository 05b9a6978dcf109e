"""`lwm train`: text and vision-text training from a TOML run config, resumable and multi-host."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lwm_cli import _errors, _plan, _signals
from lwm_cli._options import MeshSpec, ModelSpec, SetOptions, run_sets, shown_default

app = typer.Typer()  # the module's commands, added to the root app by lwm_cli.main as every group's are

# None: the run config's own (model.init, mesh), which these options override as --set would.
TrainModel = shown_default(ModelSpec, "the config's model.init")
TrainMesh = shown_default(MeshSpec, "the config's mesh")


@app.command("train", no_args_is_help=False)
def train(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Argument(
        metavar="CONFIG", help="TOML run config (see configs/); omit to start from defaults + --set.")] = None,
    model: TrainModel = None,
    set_options: SetOptions = None,
    mesh: TrainMesh = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", rich_help_panel=_plan.PLAN_PANEL,
        help="Print the resolved config, parameter count, FLOPs and per-device memory of each stage, then exit. "
             "A mesh with fixed sizes is simulated on as many CPU devices (plan a pod on a laptop); a missing "
             "data file is a warning.")] = False,
    compile_: _plan.Compile = False,
    device_memory: _plan.DeviceMemory = None,
    run_dir: Annotated[Optional[str], typer.Option(
        "--run-dir", metavar="DIR", help="Run directory (overrides run_dir of the config).")] = None,
    coordinator: Annotated[Optional[str], typer.Option(
        "--coordinator", metavar="HOST:PORT", help="Multi-host: address of process 0's coordinator.",
        rich_help_panel="Multi-host")] = None,
    num_processes: Annotated[Optional[int], typer.Option(
        "--num-processes", metavar="N", help="Multi-host: number of processes.",
        rich_help_panel="Multi-host")] = None,
    process_id: Annotated[Optional[int], typer.Option(
        "--process-id", metavar="I", help="Multi-host: this process's index.", rich_help_panel="Multi-host")] = None,
) -> None:
    """Train or fine-tune: masked sequence packing, AdamW, sharded over the mesh, checkpointed.

    Re-running the same command resumes from the latest complete checkpoint (one run per run directory).

    SIGTERM or Ctrl-C saves a checkpoint and exits (130); a second Ctrl-C exits at once.

    Without --coordinator, SLURM and TPU-pod environments are detected.

    -m, --mesh and --run-dir stand for --set model.init=..., --set mesh=... and --set run_dir=....

    [bold]lwm train configs/cpu-tiny.toml --set train.steps=50[/]
    """
    # Signals first, jax after: a Ctrl-C during jaxlib's import used to crash the interpreter.
    with _signals.StopRequest("nothing was written") as stop:
        from lwm_core.parallel.distributed import initialize
        from lwm_core.train.config import check_run_dir, load_run_config

        sets = run_sets(set_options)
        for key, value in (("model.init", model), ("mesh", mesh), ("run_dir", run_dir)):
            if value is not None:
                sets.append(f"{key}={value}")
        run = load_run_config(None if config is None else str(config), sets)  # checked before jax starts
        stages = run.stage_configs()
        if dry_run:
            devices = _plan.simulate([stage.mesh for stage in stages])  # before jax starts its backend
            _plan.check_options(ctx, dry_run, compile_, device_memory)
            _dry_run(run, _plans(stages, dry_run=True, device_memory=device_memory), compile_=compile_,
                     devices=devices, device_memory=device_memory)
            return
        _plan.check_options(ctx, dry_run, compile_, device_memory)
        check_run_dir(run.run_dir)
        initialize(coordinator, num_processes, process_id, auto=coordinator is None and _cluster_detected())
        _train_stages(run, stages, _plans(stages), stop)  # every stage checked before anything is written


def _cluster_detected() -> bool:
    """A multi-process launch by a scheduler JAX knows how to read (jax.distributed.initialize())."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        return True
    return bool(env.get("TPU_WORKER_HOSTNAMES") and "," in env["TPU_WORKER_HOSTNAMES"]) or \
        bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


# ------------------------------------------------------------------------------------------- dry run


def _plans(stages, *, dry_run: bool = False, device_memory: str | None = None):
    """Plan every stage; a stage that starts from the previous one's export (not written yet) is sized
    from the previous stage's model config with its own overrides. A dry run's --device-memory is what
    `remat = auto` is chosen against (else this machine's devices)."""
    from lwm_core.scale.hardware import device_memory as parse_memory
    from lwm_core.train.plan import prepare

    memory = parse_memory(device_memory)[0] if device_memory is not None else None
    plans = []
    for i, stage in enumerate(stages):
        base = plans[-1] if plans and _chained(stage, stages[i - 1]) else None
        plans.append(prepare(_chain(stage, stages[i - 1]) if base else stage, base=base, dry_run=dry_run,
                             memory=memory))
    return plans


def _chained(stage, previous) -> bool:
    # A stage without its own model.init continues from the previous stage's final weights.
    return previous is not None and stage.model.init == previous.model.init


def _chain(stage, previous):
    init = os.path.join(previous.run_dir, "final")
    return dataclasses.replace(stage, model=dataclasses.replace(stage.model, init=init))


def _dry_run(run, plans, *, compile_: bool, devices: int | None, device_memory: str | None) -> None:
    """The resolved config and each stage's sizes; `plans` were all made first, so that a bad stage is
    one error line rather than the end of a page of TOML. With `compile_`, each stage's train step is
    compiled for its mesh and XLA's figures printed beside the estimate."""
    from rich.console import Console
    from rich.table import Table

    from lwm_core.data.config import split_paths
    from lwm_core.plural import plural
    from lwm_core.train.config import to_toml

    out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    out.print(to_toml(run), end="", markup=False)
    needs = []
    for plan in plans:
        t = plan.run.train
        table = Table(title=f"stage {plan.run.stage}" if plan.run.stage else None, show_header=False,
                      box=None, pad_edge=False)
        table.add_row("parameters", f"{plan.params:,} ({plan.params / 1e6:.1f}M)")
        table.add_row("mesh", ", ".join(f"{k}={v}" for k, v in plan.mesh.shape.items()) +
                      f" ({plural(plan.mesh.size, 'device')}{', simulated' if devices else ''})")
        table.add_row("tokens per step", f"{t.batch_size * t.seq_len:,} ({t.batch_size} x {t.seq_len}, "
                                         f"{t.accumulate} micro-batch{'es' if t.accumulate > 1 else ''})")
        table.add_row("FLOPs per token", f"{plan.flops_per_token:.3e} (forward + backward)")
        table.add_row("remat", _remat_line(plan))
        table.add_row("FLOPs per step", f"{plan.flops_per_token * t.batch_size * t.seq_len:.3e} "
                                        f"({plan.flops_per_token * t.batch_size * t.seq_len / plan.mesh.size:.3e} "
                                        f"per device)")
        total = sum(plan.memory.values())
        parts = ", ".join(f"{k} {_plan.gib(v)}" for k, v in plan.memory.items())
        table.add_row("memory per device", f"~{_plan.gib(total)} ({parts}; estimate)")
        where = f"stage {plan.run.stage}: " if plan.run.stage else ""
        if compile_:
            from lwm_core.scale.programs import train_step

            step = train_step(plan)
            _plan.programs(table, [step], devices)
            needs.append((f"{where}the train step (compiled peak)", step.peak))
        else:
            needs.append((f"{where}the train step (estimate)", total))
        if plan.examples is not None:
            files = " + ".join(split_paths(plan.run.data.path))
            table.add_row("training data", f"{plural(plan.examples, 'example')} in {files}")
        for warning in plan.warnings:
            table.add_row("[yellow]warning[/]", warning)
        out.print()
        out.print(table)
    _plan.check_fit(device_memory, needs)


def _remat_line(plan) -> str:
    """What the step recomputes: the configured policy, or what `auto` chose and against what memory."""
    from lwm_core.train.plan import AUTO_BUDGET

    if plan.config.remat != "auto":
        return plan.remat
    if plan.memory_per_device is None:
        return f"auto: {plan.remat} (a device's memory is not known; --device-memory gives it)"
    budget = f"{AUTO_BUDGET:.0%} of a device's {_plan.gib(plan.memory_per_device)}"
    if plan.remat == "nothing_saveable":
        return f"auto: {plan.remat} (keeping more would not fit in {budget})"
    return f"auto: {plan.remat} (the step fits in {budget})"


# ------------------------------------------------------------------------------------------- training


_STOPPING = "a checkpoint is saved after the current step (or after the compile)"
_ABORTED = "the last complete checkpoint (if any) is intact; run the same command to resume"


def _train_stages(run, stages, plans, stop) -> None:
    import jax

    from lwm_core.train.loop import train
    from lwm_core.train.plan import prepare
    from lwm_core.train.run_dir import RunDir

    primary = jax.process_index() == 0
    views: list[_Progress] = []  # the live one, for an abort to stop

    claim = RunDir(run.run_dir, [s.run_dir for s in stages], primary=primary)
    stop.at_abort(lambda: [view.close() for view in views])
    stop.at_abort(lambda: claim.cleanup(racing=True))  # an abort before the first checkpoint leaves nothing
    with claim:
        stop.stopping, stop.aborted = _STOPPING, _ABORTED  # from here the first Ctrl-C asks, the second ends
        for i, (stage, plan) in enumerate(zip(stages, plans)):
            if i and _chained(stage, stages[i - 1]):
                plan = prepare(plan.run)  # the previous stage's weights are on disk now: read, not derived
            view = _Progress(plan, enabled=primary)
            views[:] = [view]
            with view:
                result = train(plan, should_stop=stop, on_metrics=view.metrics, on_event=view.event)
            if result.stopped:
                if primary:
                    # by nobody here: another process of a multi-host run was signalled (the loop agrees)
                    by = stop.by or "a signal to another process"
                    typer.echo(_stopped_line(by, result, stage), err=True)
                raise typer.Exit(_errors.INTERRUPTED)
            if primary and result.final:
                typer.echo(result.final)


def _stopped_line(by: str, result, stage) -> str:
    # Not an `error:`: the user asked for it.
    where = f" of stage {stage.stage}" if stage.stage else ""
    if result.step == 0:
        return f"stopped by {by} before the first step{where}; nothing was saved"
    return (f"stopped by {by} at step {result.step}{where}; checkpoint saved in {stage.run_dir}/checkpoints; "
            f"run the same command to resume")


class _Progress:
    """The live line on stderr: step, loss, lr, tokens/s, MFU, ETA. On a terminal a Rich progress bar;
    otherwise (logs, CI) one plain line per logged step."""

    def __init__(self, plan, *, enabled: bool):
        from rich.console import Console

        self.plan, self.enabled = plan, enabled
        self.console = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.live = enabled and self.console.is_terminal
        self.progress = None
        self.task = None
        self.start = time.monotonic()
        self.first_step: int | None = None

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[line]}"), console=self.console)
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.plan.run.train.steps, line="compiling...")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (also from the signal thread, before an abort), once."""
        progress, self.progress = self.progress, None
        if progress is not None:
            progress.stop()

    def event(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[dim]{text}[/]", markup=True)

    def metrics(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if "eval_loss" in record:
            self.console.print(f"step {record['step']}: eval loss {record['eval_loss']:.4f}")
            return
        step, steps = record["step"], self.plan.run.train.steps
        if self.first_step is None:
            self.first_step, self.start = step, time.monotonic()
        done = step - self.first_step
        eta = (time.monotonic() - self.start) / done * (steps - step) if done else None
        mfu = f"{100 * record['mfu']:.1f}%" if record.get("mfu") is not None else "-"
        speed = f"{record['tokens_per_s']:,.0f}" if record.get("tokens_per_s") else "-"
        line = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {speed} tok/s  MFU {mfu}  ETA {_clock(eta)}"
        progress = self.progress  # read once: the signal thread may close it meanwhile
        if self.live:
            if progress is not None:
                progress.update(self.task, completed=step, line=line)
        else:
            self.console.print(f"step {step}/{steps}  {line}", markup=False)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
