"""The `lwm` command line: parses arguments, resolves configs, calls lwm_core and prints.

Entry point: `lwm_cli:main` (the console script and `python -m lwm_cli`). Nothing here imports jax at
module level (`lwm --help` and shell completion must answer instantly).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Run `lwm`. Importing the command tree takes a moment (typer, rich): a Ctrl-C that lands there,
    before any command's own handling is in place, ends the process like one anywhere else (exit 130,
    no traceback). As a process's entry point (no `argv`), it first re-runs itself with glibc's allocator tuned
    for XLA's per-step temporaries (`lwm_cli._malloc`)."""
    if argv is None:
        from lwm_cli import _malloc

        _malloc.reexec()
    try:
        from lwm_cli.main import main as run

        run(argv)
    except KeyboardInterrupt:
        sys.exit(130)
