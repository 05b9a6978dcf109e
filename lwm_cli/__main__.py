"""`python -m lwm_cli` is the `lwm` command."""

from lwm_cli.main import main

main()
