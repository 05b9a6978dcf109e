"""`python -m lwm_cli` is the `lwm` command."""

from lwm_cli import main

main()
