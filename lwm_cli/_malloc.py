"""Run `lwm` with glibc's allocator set so that a step's large temporaries do not cost fresh pages every step.

Why: XLA's CPU runtime allocates an executable's temporaries afresh at every call (one buffer of ~2 GB for
bench-50m's train step, 4 x 1024 tokens) and frees them after it. glibc hands an allocation that large to
its own `mmap` and gives it back with `munmap`, so every step the kernel maps and zeroes ~600K fresh 4 KB
pages: ~0.5-1 us a page on bare hardware, 1-10 us on the virtual machines these benchmarks ran on (the host
backs guest memory lazily). `M_MMAP_THRESHOLD` cannot stop it: glibc caps it at 32 MB, and a thread's own
arena sends anything past its 64 MB heaps to `mmap` whatever the threshold. Two settings, measured on a
2-core Intel Xeon (benchmarks/README.md#design-measurements):

- `HUGE_PAGES`, always: blocks glibc maps come on 2 MB transparent huge pages (`glibc.malloc.hugetlb=1`),
  a 512th of the faults; the train step 6.5 -> 6.0 s.
- `KEEP`, when the process is one CPU device on at most `KEEP_MAX_CORES` cores: one arena
  (`arena_max=1`), no `mmap` (`mmap_max=0`) and no trimming of the heap's top (`trim_threshold`) keep
  freed blocks in the heap, where the next step finds them: 0 faults a step, 6.5 -> 5.2-5.7 s. The cost: the
  process keeps its peak heap until it exits, and every thread allocates from one arena. With 8 simulated
  CPU devices (`--xla_force_host_platform_device_count=8`) that one arena's lock made compile-heavy work
  1.33x slower (tests/model: 41.7 -> 55.4 s, system time 1.5 -> 7.7 s), so many devices, or more cores
  (more threads) than measured, get `HUGE_PAGES` alone. So do `--dry-run`s, which compile and run nothing:
  XLA's compiler allocates from several threads, and `lwm train configs/context-extension.toml --dry-run
  --compile` took 42.7 s with `KEEP` against 29.8 s without (`arena_max=1` alone: 45.1 s).

glibc reads its tunables once, at start-up, from `GLIBC_TUNABLES`: so the command re-runs itself (`exec`,
the same process id, arguments and open files) with them set, before importing anything heavy. Skipped
when the platform is not Linux with glibc, when the user's `GLIBC_TUNABLES` already sets a malloc tunable,
under shell completion (which must answer at once), and when `LWM_SYSTEM_MALLOC=1` asks for glibc's
defaults.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence

HUGE_PAGES = ("glibc.malloc.hugetlb=1",)
# 64 GiB: larger than any heap this tool's processes reach on the machines it targets; glibc trims the top
# of the heap only past it.
KEEP = ("glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0", f"glibc.malloc.trim_threshold={64 << 30}")
KEEP_MAX_CORES = 8  # measured on 2; past this many threads share the one arena untested
OPT_OUT = "LWM_SYSTEM_MALLOC"  # =1: glibc's default allocator settings
_DONE = "LWM_MALLOC_TUNED"  # set in the re-run process, so that it never re-runs again


def libc_name() -> str:
    """"glibc" where the C library is glibc (asked of the library itself, no file read), else ""."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").split()[0]
    except (AttributeError, ValueError, OSError, IndexError):  # no confstr (Windows), or not glibc
        return ""


def tuned_environment(environ: Mapping[str, str], libc: str | None = None,
                      argv: Sequence[str] = ()) -> dict[str, str] | None:
    """The environment to re-run the command `argv` (its arguments) in, or None where it runs as it is (see
    the module doc). `libc` defaults to `libc_name()`."""
    if environ.get(_DONE) or environ.get(OPT_OUT, "0") not in ("", "0"):
        return None
    if any(key.startswith("_LWM_COMPLETE") for key in environ):
        return None
    user = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in user:  # the user's own allocator settings win
        return None
    if (libc_name() if libc is None else libc) != "glibc":
        return None
    tunables = chosen_tunables(environ, os.cpu_count() or 1, argv)
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (user, *tunables))), _DONE: "1"}


def chosen_tunables(environ: Mapping[str, str], cores: int, argv: Sequence[str] = ()) -> tuple[str, ...]:
    """`HUGE_PAGES`, plus `KEEP` for one CPU device on at most `KEEP_MAX_CORES` cores, unless the command
    (`argv`) is a dry run (the module doc)."""
    forced = re.search(r"xla_force_host_platform_device_count=(\d+)", environ.get("XLA_FLAGS", ""))
    if (forced and int(forced.group(1)) > 1) or cores > KEEP_MAX_CORES or "--dry-run" in argv:
        return HUGE_PAGES
    return HUGE_PAGES + KEEP


def reexec() -> None:
    """Replace this process by the same command under `tuned_environment`, when that is not None. Call it
    first thing in the process's entry point (the console script, `python -m lwm_cli`, a benchmark):
    nothing written so far is lost, since nothing has been."""
    env = tuned_environment(os.environ, argv=sys.orig_argv[1:])
    if env is None:
        return
    sys.stdout.flush(), sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # no usable interpreter path: run as we are
        return


def describe(environ: Mapping[str, str]) -> str:
    """One line for a benchmark's header: which allocator settings this process runs with."""
    tunables = environ.get("GLIBC_TUNABLES", "").split(":")
    if all(t in tunables for t in HUGE_PAGES + KEEP):
        return "glibc malloc keeps freed memory, on huge pages (lwm's setting for one CPU device)"
    if all(t in tunables for t in HUGE_PAGES):
        return "glibc malloc on huge pages (lwm's setting for several devices, many cores or a dry run)"
    return f"glibc malloc as configured (GLIBC_TUNABLES={environ.get('GLIBC_TUNABLES', '')!r})"
