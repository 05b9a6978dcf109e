"""`lwm` re-runs itself with glibc's allocator tuned (lwm_cli/_malloc.py): the settings it picks, that under
them a freed 256 MB block is reused without faulting its pages again, and the console entry point's re-run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lwm_cli import _malloc

GLIBC = _malloc.libc_name() == "glibc"


def test_tuned_environment_adds_the_tunables_and_keeps_the_rest():
    env = _malloc.tuned_environment({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, libc="glibc")
    assert env["PATH"] == "/bin"
    assert env["GLIBC_TUNABLES"].split(":") == ["glibc.cpu.hwcaps=-AVX512F",
                                                *_malloc.chosen_tunables({}, os.cpu_count() or 1)]
    assert _malloc.tuned_environment(env, libc="glibc") is None  # the re-run process does not run again


def test_one_device_on_few_cores_keeps_freed_memory_and_many_devices_do_not():
    keep = _malloc.HUGE_PAGES + _malloc.KEEP
    assert _malloc.chosen_tunables({}, cores=2) == keep
    assert _malloc.chosen_tunables({"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}, cores=2) == keep
    # one arena shared by many threads: 8 simulated devices ran compile-heavy work 1.33x slower under it
    assert _malloc.chosen_tunables({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, 2) == _malloc.HUGE_PAGES
    assert _malloc.chosen_tunables({}, cores=_malloc.KEEP_MAX_CORES + 1) == _malloc.HUGE_PAGES
    # a dry run only compiles, from several threads: the one arena made it 1.4x slower
    assert _malloc.chosen_tunables({}, 2, ["train", "run.toml", "--dry-run", "--compile"]) == _malloc.HUGE_PAGES
    assert _malloc.chosen_tunables({}, 2, ["train", "run.toml"]) == keep
    env = _malloc.tuned_environment({}, libc="glibc", argv=["chat", "--dry-run"])
    assert env["GLIBC_TUNABLES"] == ":".join(_malloc.HUGE_PAGES)
    assert _malloc.describe({"GLIBC_TUNABLES": ":".join(keep)}).startswith("glibc malloc keeps freed memory")
    assert _malloc.describe({"GLIBC_TUNABLES": ":".join(_malloc.HUGE_PAGES)}).startswith("glibc malloc on huge pages")
    assert _malloc.describe({}).startswith("glibc malloc as configured")


@pytest.mark.parametrize("environ, libc", [
    ({}, ""),  # musl, macOS, Windows
    ({"LWM_SYSTEM_MALLOC": "1"}, "glibc"),  # asked for glibc's defaults
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, "glibc"),  # the user's own malloc settings
    ({"_LWM_COMPLETE": "complete_bash"}, "glibc"),  # shell completion answers at once
])
def test_tuned_environment_leaves_the_process_alone(environ, libc):
    assert _malloc.tuned_environment(environ, libc=libc) is None


# Allocates (with glibc's malloc, as XLA's CPU runtime does), fills and frees a 256 MB block twice, counting
# the minor page faults of each fill. (Not numpy: it asks the kernel for huge pages on blocks this large.)
PROBE = textwrap.dedent("""
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(256 << 20)
        ctypes.memset(block, 1, 256 << 20)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        libc.free(block)
    print(faults[0], faults[1])
""")


def _environ(**env) -> dict[str, str]:
    """This process's environment without lwm's allocator settings or the suite's simulated devices."""
    drop = ("GLIBC_TUNABLES", "LWM_MALLOC_TUNED", "XLA_FLAGS")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **env}


def _probe(**env) -> tuple[int, int]:
    """The faults of PROBE's first and second fill, run under this environment plus `env`."""
    out = subprocess.run([sys.executable, "-c", PROBE], env=_environ(**env), capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's tunables: Linux with glibc only")
def test_kept_memory_is_reused_without_faulting_its_pages_again():
    # As glibc runs by default, the second 256 MB block is mmap'd afresh: 65,536 pages fault again.
    first, second = _probe()
    assert second > 60_000, (first, second)
    # Under KEEP the block freed is the block reused.
    first, second = _probe(GLIBC_TUNABLES=":".join(_malloc.KEEP))
    assert first > 60_000 and second < 1_000, (first, second)


@pytest.mark.skipif(not GLIBC, reason="glibc's tunables: Linux with glibc only")
def test_the_console_entry_point_reruns_itself():
    # `lwm_cli.main()` without arguments is the console script; the line before it runs twice, once in the
    # original process and once in the re-run one, which then answers --version.
    code = ("import os, sys; print(os.environ.get('GLIBC_TUNABLES', '-'), flush=True); sys.argv = ['lwm', "
            "'--version']; import lwm_cli; lwm_cli.main()")
    lines = subprocess.run([sys.executable, "-c", code], env=_environ(), capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert lines[0] == "-", lines
    assert lines[1].split(":") == list(_malloc.chosen_tunables({}, os.cpu_count() or 1)), lines
    assert lines[2].startswith("lwm "), lines
