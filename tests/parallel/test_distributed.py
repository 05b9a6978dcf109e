"""Joining a multi-process run (`lwm_core.parallel.distributed.initialize`)."""

import subprocess
import sys

import pytest

from helpers import ROOT, free_port

# A SIGTERM handler set before `initialize` (as lwm_cli/_signals.py sets it), then SIGTERM to itself.
_SIGTERM_AFTER_INITIALIZE = """
import os, signal, sys
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(True))
from lwm_core.parallel.distributed import initialize
initialize(sys.argv[1], 2, int(sys.argv[2]))
os.kill(os.getpid(), signal.SIGTERM)
print("handled" if got else "swallowed")
"""


@pytest.mark.multiprocess
def test_sigterm_still_reaches_python_after_initialize(cli_env):
    # JAX's preemption service (on by default) replaced Python's SIGTERM handler with its own: the
    # signalled process of a multi-process `lwm train` logged "SIGTERM caught" and trained on.
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", _SIGTERM_AFTER_INITIALIZE, coordinator, str(i)], env=cli_env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == ["handled", "handled"], outs
