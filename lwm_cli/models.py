"""`lwm models`: the built-in demo models (lwm_core.builtin), what they are, and which commands use them
when no -m is given."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer()


@app.command("models")
def models(
    name: Annotated[Optional[str], typer.Argument(
        metavar="[NAME]", show_default=False,
        help="A built-in model: print its card (recipe, seeds, final losses, measured quality).")] = None,
) -> None:
    """List the built-in models: small LWM models trained by lwm itself on its synthetic worlds and shipped
    in the package. Commands use them when no -m is given; -m NAME picks one.

    [bold]lwm models[/]

    [bold]lwm models lwm-demo-vision[/]
    """
    from rich.console import Console
    from rich.table import Table

    from lwm_core import builtin

    if name is not None:
        builtin.resolve(name)  # an unknown name, or a model without weights: one line
        typer.echo(builtin.MODELS[name].card() or f"{name}: no card")
        return
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("name", "default of", "what it is", "weights"):
        table.add_column(column, overflow="fold")
    for model in builtin.MODELS.values():
        weights = model.path if model.installed else "not in this install"
        table.add_row(model.name, ", ".join(f"lwm {c}" for c in model.defaults), model.summary, weights)
    Console(soft_wrap=False, width=160 if not Console().is_terminal else None).print(table)
