"""Dry runs: plans for a mesh this machine does not have. `simulate` starts jax with as many (CPU) devices
as the mesh names; `inference` prints the per-device memory of a generation (prefill, the sp-sharded KV
cache, a decode step) for `lwm chat` and `lwm needle eval`; `programs` prints what XLA compiled (the
train step's too, for `lwm train`); `check_fit` refuses a plan that does not fit the device."""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated, Optional

import typer

PLAN_PANEL = "Dry run"

DryRun = Annotated[bool, typer.Option(
    "--dry-run", rich_help_panel=PLAN_PANEL,
    help="Plan instead of running: the per-device memory for the model, context and mesh (a mesh with fixed "
         "sizes is simulated on CPU devices: plan a pod on a laptop), then exit.")]
Compile = Annotated[bool, typer.Option(
    "--compile", rich_help_panel=PLAN_PANEL,
    help="With --dry-run: compile the real programs for the mesh and print XLA's memory per device, FLOPs and "
         "collectives per step, and any replication the partitioner had to add.")]
DeviceMemory = Annotated[Optional[str], typer.Option(
    "--device-memory", metavar="SIZE|KIND", rich_help_panel=PLAN_PANEL, show_default=False,
    help="With --dry-run: the memory of one device (80GB, 95GiB) or a known kind (h100, h200, a100, tpu-v4, "
         "tpu-v5p, tpu-v5e); a plan that does not fit exits 1.")]


def check_options(ctx: typer.Context, dry_run: bool, compile_: bool, device_memory: str | None) -> None:
    """--compile and --device-memory only mean something in a dry run; the size is checked at once."""
    from lwm_core.errors import LWMError
    from lwm_core.scale.hardware import device_memory as parse_memory

    for given, flag in ((compile_, "--compile"), (device_memory is not None, "--device-memory")):
        if given and not dry_run:
            raise typer.BadParameter(f"{flag} plans a run; add --dry-run", ctx=ctx, param_hint=f"'{flag}'")
    if device_memory is not None:
        try:
            parse_memory(device_memory)
        except LWMError as e:
            raise typer.BadParameter(str(e), ctx=ctx, param_hint="'--device-memory'") from None


def simulate(meshes: list[str]) -> int | None:
    """Start jax with the devices the meshes name (their product; every mesh must name the same count),
    as CPU devices: the plan then compiles for that mesh on any machine. A mesh with -1 takes the devices
    there are (none simulated). Must run before jax starts; returns the simulated count."""
    import math

    from lwm_core.errors import LWMError
    from lwm_core.parallel.mesh import parse_mesh

    counts = set()
    for spec in meshes:
        dims = parse_mesh(spec).dims
        if -1 in dims:
            return None
        counts.add(math.prod(dims))
    if len(counts) != 1:
        raise LWMError(f"the stages' meshes name different device counts ({', '.join(map(str, sorted(counts)))}); "
                       f"a run uses one set of devices: give every stage the same number")
    count = counts.pop()
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            import jax

            if jax.device_count() != count:
                raise LWMError(f"jax already started with {jax.device_count()} devices; a plan for {count} "
                               f"needs a fresh process")
            return count
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)
    return count


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def programs(table, compiled, devices: int | None) -> None:
    """Rows of `table` for each compiled program: XLA's memory per device, FLOPs and collectives per step."""
    where = f"XLA:CPU, {devices} simulated devices" if devices else "XLA, this machine's devices"
    for p in compiled:
        table.add_row(f"{p.name} (compiled)",
                      f"peak {gib(p.peak)} per device: arguments {gib(p.arguments)}, outputs {gib(p.outputs)} "
                      f"({gib(p.aliased)} in place of inputs), temporaries {gib(p.temporaries)} "
                      f"[{where}; {p.seconds:.1f} s]")
        per = "per step" if not p.profile.unknown_loops else "per iteration of its loop"
        table.add_row("", f"FLOPs {per}: {p.profile.flops:.3e} per device (matmuls, from the optimised HLO)")
        if p.profile.collectives:
            parts = ", ".join(f"{c.kind} x{c.count:,.0f} {_bytes(c.bytes)}"
                              for c in sorted(p.profile.collectives.values(), key=lambda c: -c.bytes))
            table.add_row("", f"collectives {per}, sent per device: {parts}")
            top = "; ".join(f"{kind} {_bytes(sent)} at {where_}" for kind, where_, sent in p.profile.largest(3)
                            if sent > 0)
            if top:
                table.add_row("", f"largest: {top}")
        else:
            table.add_row("", "collectives: none")
        if p.warnings:
            table.add_row("", f"[bold red]replication by the partitioner ({len(p.warnings)}):[/] {p.warnings[0]}")
        else:
            table.add_row("", "replication by the partitioner: none")


def check_fit(device_memory: str | None, needs: list[tuple[str, float]]) -> None:
    """Refuse (exit 1) the first of `needs` (what, bytes per device) over the device's memory."""
    if device_memory is None:
        return
    from lwm_core.errors import LWMError
    from lwm_core.scale.hardware import device_memory as parse_memory

    limit, described = parse_memory(device_memory)
    for what, need in needs:
        if need > limit:
            raise LWMError(f"the plan does not fit: {what} needs {gib(need)} per device and a device has "
                           f"{gib(limit)} ({described}); use more devices (a larger fsdp or sp), a shorter "
                           f"sequence, or a smaller batch")


def model_config(spec: str, *, tokenizer, preset, set_options, command: str):
    """The config of a model spec with its --preset and --set overrides, without its weights (a hub id's
    are not downloaded: its config.json and tokenizer, or its release card, are all a plan needs)."""
    from lwm_cli._options import model_overrides
    from lwm_core.loading import resolve_spec

    return resolve_spec(spec, config=preset, tokenizer=None if tokenizer is None else str(tokenizer),
                        overrides=model_overrides(set_options, command), weights=False)[1]


def inference(*, config, spec: str, mesh_spec: str, devices: int | None, batch: int, prompt: int, max_new: int,
              dtype: str | None, quantize: str | None, compile_: bool, device_memory: str | None,
              what: str) -> None:
    """Print the plan of a generation: `batch` rows of `prompt` tokens and `max_new` new ones, on the mesh,
    the weights quantized as `quantize` says (None: as they are)."""
    from rich.console import Console
    from rich.table import Table

    from lwm_core.errors import LWMError
    from lwm_core.parallel.mesh import check_model, make_mesh
    from lwm_core.plural import plural
    from lwm_core.scale.programs import Inference, inference_estimate, inference_programs

    if prompt < 1:
        raise LWMError(f"{max_new:,} new tokens leave no room for a prompt in the context of "
                       f"{config.max_sequence_length:,}; lower --max-new-tokens")
    mesh = make_mesh(mesh_spec)
    check_model(mesh, config.num_attention_heads, config.kv_heads)
    request = Inference(batch, prompt, max_new, dtype or "bfloat16", quantize or "none")
    length, _, slots = request.shapes
    estimate = inference_estimate(config, mesh, request)
    out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    table = Table(title=f"{what}: a plan", show_header=False, box=None, pad_edge=False, title_justify="left")
    table.add_row("model", f"{spec} ({config.num_params() / 1e9:.2f}B parameters, {config.num_hidden_layers} layers)")
    table.add_row("mesh", ", ".join(f"{k}={v}" for k, v in mesh.shape.items()) +
                  f" ({plural(mesh.size, 'device')}{', simulated' if devices else ''})")
    table.add_row("request", f"{plural(batch, 'row')} of {prompt:,} prompt tokens (padded to {length:,}) + "
                             f"{max_new:,} new; KV cache of {slots:,} slots; {request.dtype}"
                             + (f", weights {quantize}" if quantize else ""))
    parts = ", ".join(f"{k} {gib(v)}" for k, v in estimate.items())
    total = sum(estimate.values())
    table.add_row("memory per device", f"~{gib(total)} ({parts}; estimate)")
    needs = [("the generation (estimate)", total)]
    if compile_:
        compiled = inference_programs(config, mesh, request)
        programs(table, compiled, devices)
        needs = [(p.name + " (compiled peak)", p.peak) for p in compiled]
    out.print(table)
    check_fit(device_memory, needs)
