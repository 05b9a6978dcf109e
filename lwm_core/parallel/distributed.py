"""Multi-host start-up: `jax.distributed` with explicit coordinates, or auto-detected on clusters.

Must run before anything touches a JAX backend (the first `jax.devices()` fixes the device set).
"""

from __future__ import annotations

from lwm_core.errors import LWMError


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = False) -> None:
    """Join a multi-process run.

    Explicit: all three of coordinator ("host:port"), num_processes and process_id. `auto=True`:
    let JAX read the cluster's environment (TPU pod metadata, SLURM, Open MPI, Kubernetes JobSet).
    Neither: a single-process run, nothing to do. On CPU the collectives go over gloo. JAX's preemption
    service stays off, so that SIGTERM reaches the process's own handler (`lwm train` stops all
    processes on it itself).
    """
    import jax

    explicit = (coordinator, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise LWMError("multi-host needs all of --coordinator HOST:PORT, --num-processes N and "
                           f"--process-id I (got coordinator={coordinator}, num_processes={num_processes}, "
                           f"process_id={process_id})")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise LWMError(f"--process-id {process_id} is not in [0, {num_processes})")
        if ":" not in coordinator:
            raise LWMError(f"--coordinator {coordinator!r} is not HOST:PORT (e.g. 10.0.0.1:1234)")
        if num_processes == 1:
            return
    elif not auto:
        return
    _cpu_collectives(jax)
    _no_preemption_service(jax)
    try:
        if auto:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LWMError(f"could not join the multi-host run ({first}); check the coordinator address and "
                       f"that every process was started") from None


def _cpu_collectives(jax) -> None:
    # Cross-process collectives on the CPU backend need an implementation; gloo ships with jaxlib.
    # Harmless on GPU/TPU, where the backend brings its own.
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, KeyError, ValueError):
        pass


def _no_preemption_service(jax) -> None:
    # JAX's preemption service installs a C++ SIGTERM handler in place of Python's, so `lwm train`'s own
    # (lwm_cli/_signals.py) never ran: the signalled process logged "SIGTERM caught" and trained on. The
    # loop already does what the service is for (a stop any process asks for is agreed by all, which then
    # save the same step); orbax reads a disabled service as "no preemption".
    try:
        jax.config.update("jax_enable_preemption_service", False)
    except (AttributeError, KeyError, ValueError):
        pass
