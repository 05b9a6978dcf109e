"""The `lwm` command line: parses arguments, resolves configs, calls lwm_core and prints.

Entry point: `lwm_cli.main:main`. Nothing here imports jax at module level (`lwm --help` and shell
completion must answer instantly).
"""
