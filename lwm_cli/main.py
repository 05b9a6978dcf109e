"""The `lwm` command: the root Typer app, with one module per command group registered below.

Each command module exposes `app`, a Typer holding its commands (`chat`, `train`) or its group
(`convert`); all are added the same way, so a new module (`gen`, `needle`) is one more name in COMMANDS.

Importing this module must stay cheap (no jax, no lwm_core): `lwm --help` and shell completion run it.
Commands import what they need inside their bodies.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional, Sequence

import typer

from lwm_cli import _errors, chat, convert, gen, models, needle, train, vqgan, world
from lwm_cli._completion import SHELLS
from lwm_cli._help import install as install_help_layout

install_help_layout()  # option tables that stay readable at 80 columns: see lwm_cli/_help.py
app = typer.Typer(
    name="lwm",
    epilog="Exit status: 0 ok, 1 error, 2 usage error, 130 interrupted. Run [bold]lwm COMMAND --help[/] "
           "for a command's options.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,  # the shipped static scripts (completions/, `lwm --completion`) replace it
    pretty_exceptions_enable=False,  # errors are handled by lwm_cli._errors
)

COMMANDS = (chat, gen, train, convert, needle, vqgan, world, models)  # in the order `lwm --help` lists them
for module in COMMANDS:
    app.add_typer(module.app)


def _debug(ctx: typer.Context, value: bool) -> bool:
    # Eager, so that it is set before the other eager options (--completion) run.
    if value and isinstance(ctx.obj, _errors.State):
        ctx.obj.debug = True
    return value


def _version(value: bool) -> None:
    if not value:
        return
    from importlib import metadata

    try:
        version = metadata.version("lwm")
    except metadata.PackageNotFoundError:  # a source checkout; lwm_core imports jax, so only here
        import lwm_core

        version = lwm_core.__version__
    import jax

    typer.echo(f"lwm {version} (jax {jax.__version__}, python {sys.version.split()[0]})")
    raise typer.Exit()


def _completion(shell: Optional[str]) -> None:
    if shell is None:
        return
    from lwm_cli._completion import script

    if shell not in SHELLS:
        raise typer.BadParameter(f"{shell!r} is not one of {', '.join(SHELLS)}", param_hint="'--completion'")
    typer.echo(script(typer.main.get_command(app), shell), nl=False)
    raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="LWM_DEBUG", is_eager=True, callback=_debug,
        help="Show full tracebacks instead of one-line errors (also after the command: lwm chat ... "
             "--debug).")] = False,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_version,
        help="Print the version and exit.")] = False,
    completion: Annotated[Optional[str], typer.Option(
        "--completion", metavar="SHELL", is_eager=True, callback=_completion, autocompletion=lambda: list(SHELLS),
        help="Print the completion script for bash, zsh or fish and exit, e.g. "
             "[bold]eval \"$(lwm --completion bash)\"[/].")] = None,
) -> None:
    """Large World Model in JAX: chat with, generate images and videos with, train and convert LWM checkpoints,
    make needle-in-a-haystack datasets and evaluate models on them, encode images and videos into VQGAN codes
    and decode them, and make a synthetic video world of captioned clips to train on; small built-in demo models
    trained by lwm itself make every command work offline."""


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `lwm` console script and `python -m lwm_cli`."""
    args = sys.argv[1:] if argv is None else list(argv)
    sys.exit(_errors.run(typer.main.get_command(app), args, prog_name="lwm"))


if __name__ == "__main__":
    main()
