"""Loading the model a command names: the options every model command shares -> `lwm_core.load_model`.

jax and lwm_core are imported inside the functions, never at module level (`lwm --help` stays instant).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lwm_core import LWM


@dataclass(frozen=True)
class ModelOptions:
    """What `--model/--tokenizer/--preset/--set/--mesh/--dtype/--cpu-kernels/--quantize` said."""

    spec: str
    tokenizer: str | None = None
    preset: str | None = None
    overrides: tuple[str, ...] = field(default=())
    mesh: str = "1,-1,1,1"
    dtype: str | None = None
    cpu_kernels: bool | None = None  # None: lwm_core decides
    quantize: str | None = None  # "int8", "none", or None: as the checkpoint stores them
    command: str = "chat"  # for the messages: `lwm chat sets model config fields only ...`


def enable_compile_cache() -> None:
    """Keep compiled programs in ~/.cache/lwm/jax so that the second run of a command starts in
    seconds instead of recompiling (minutes for the 7B models).

    JAX_COMPILATION_CACHE_DIR, when set (even empty, which turns caching off), wins.
    """
    import jax

    if "JAX_COMPILATION_CACHE_DIR" in os.environ or jax.config.jax_compilation_cache_dir:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(base, "lwm", "jax"))


def load(options: ModelOptions, *, seed: int = 0, resolved: tuple | None = None) -> LWM:
    """Load the model; on a terminal, show a spinner and then one status line on stderr.

    `resolved`: the (source, config, tokenizer) that `lwm_core.loading.resolve_spec` already gave for
    these options (a command that checks its input against the config before loading the weights), so
    that the spec is not resolved again (for a hub id: downloaded files looked up a second time)."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    start = time.perf_counter()
    spinner = err.status(f"loading {options.spec} ...") if err.is_terminal else contextlib.nullcontext()
    with spinner:
        model = _load(options, seed, resolved)
    if err.is_terminal:
        err.print(f"[dim]{describe(options.spec, model)} in {time.perf_counter() - start:.1f}s[/]")
    return model


def _load(options: ModelOptions, seed: int, resolved: tuple | None = None) -> LWM:
    enable_compile_cache()
    from lwm_cli._options import model_overrides
    from lwm_core import load_model
    from lwm_core.parallel.mesh import check_uses_all_devices

    check_uses_all_devices(options.mesh)
    if resolved is not None:  # overrides are already in its config
        source, config, tokenizer = resolved
        return load_model(source, config=config, mesh=options.mesh, dtype=options.dtype, tokenizer=tokenizer,
                          seed=seed, cpu_kernels=options.cpu_kernels, quantize=options.quantize)
    return load_model(options.spec, config=options.preset, mesh=options.mesh, dtype=options.dtype,
                      tokenizer=options.tokenizer, overrides=model_overrides(options.overrides, options.command),
                      seed=seed, cpu_kernels=options.cpu_kernels, quantize=options.quantize)


def describe(spec: str, model: Any) -> str:
    """`loaded random:tiny (606.5K params, float32) on mesh dp=1 fsdp=1 tp=1 sp=1 (1 cpu device)`."""
    import numpy as np

    from lwm_core.plural import plural

    mesh = model.mesh
    axes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
    n = mesh.devices.size
    platform = np.ravel(mesh.devices)[0].platform
    return (f"loaded {spec} ({human_count(model.config.num_params())} params, {np.dtype(model.dtype).name}) "
            f"on mesh {axes} ({plural(n, platform + ' device')})")


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
