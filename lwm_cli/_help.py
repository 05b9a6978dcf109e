"""The option tables of `--help`, laid out to stay readable in an 80-column terminal.

Typer's rich help puts each option in a five-column table (long names, short names, `--no-x` names,
their short forms, type) and gives the help text what is left: with `--cpu-kernels/--no-cpu-kernels`
and `--preset,--card` in one panel that is ~20 columns at 80, and rich then cuts words that do not
fit (`LargeWorldModel/LWM…`). It also shows `<bool>` after flags, which take no value. Here each
option's names and value go in one column (`--model, -m SPEC`, `--cpu-kernels / --no-cpu-kernels`),
flags show no type (as click's plain help does), and an option whose names are wider than 40% of the
panel gets its own line with the help indented below it, so the help column keeps most of the width.

`install()` swaps this in for typer's `_print_options_panel` the first time a help is formatted, so
that `import lwm_cli.main` does not import rich. Checked against typer 0.29; should a typer release
drop the function, typer's own layout is used and the 80-column test in tests/cli/test_cli_chat.py says so.
"""

from __future__ import annotations

from typing import Any

# Names wider than this share of the panel go on their own line (80 columns: 30 of 76).
NAME_SHARE = 0.4
GAP = 2  # spaces between the names and the help


def install() -> None:
    """Make typer's command and group help use `options_panel` (idempotent)."""
    from typer import core

    for cls in (core.TyperCommand, core.TyperGroup):
        original = cls.format_help
        if getattr(original, "_lwm_layout", False):
            continue

        def format_help(self, ctx, formatter, _original=original):
            from typer import rich_utils

            if hasattr(rich_utils, "_print_options_panel"):
                rich_utils._print_options_panel = options_panel
            return _original(self, ctx, formatter)

        format_help._lwm_layout = True
        cls.format_help = format_help


def label(param: Any, ctx: Any) -> Any:
    """The rich Text of `--model, -m SPEC`, `--cpu-kernels / --no-cpu-kernels`, `--json`, or an
    argument's `PROMPT`, highlighted as typer highlights them."""
    from rich.text import Text
    from typer import rich_utils
    from typer.core import TyperArgument

    if isinstance(param, TyperArgument):
        name = param.display_name_raw
        return Text(name + "..." if param.metavar is None and param.nargs != 1 else name)
    opts = sorted(param.opts, key=lambda o: not o.startswith("--"))  # long names first, as typer does
    parts = [rich_utils.highlighter(", ".join(opts))]
    if param.secondary_opts:
        parts += [" / ", rich_utils.negative_highlighter(", ".join(param.secondary_opts))]
    if not (param.is_flag or param.count):  # flags take no value: no type to show
        kind = param.display_type_rich(ctx=ctx)
        number_range = param._get_number_range_help_str()
        kind = " ".join(filter(None, [kind, number_range and f"[{number_range}]"]))
        if kind:
            parts += [" ", rich_utils.types_highlighter(kind)]
    return Text.assemble(*parts)


def options_panel(*, name: str, params: list, ctx: Any, markup_mode: Any, console: Any) -> None:
    """Print one panel of options or arguments (the signature of typer's `_print_options_panel`)."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from typer import rich_utils

    if not params:
        return
    rows = [(label(p, ctx), rich_utils._get_parameter_help(param=p, ctx=ctx, markup_mode=markup_mode))
            for p in params]
    inner = console.width - 4  # the panel's border and padding
    limit = max(16, int(inner * NAME_SHARE))
    width = max((len(names) for names, _ in rows if len(names) <= limit), default=0)

    parts: list = []
    grid = None
    for names, help_text in rows:
        if len(names) <= limit:
            if grid is None:  # consecutive rows share a grid; all grids share the column width
                grid = Table.grid(padding=(0, GAP), expand=True)
                grid.add_column(width=width, no_wrap=True)
                grid.add_column(ratio=1)
                parts.append(grid)
            grid.add_row(names, help_text)
        else:  # too wide for the column: names on their own line, the help indented below
            grid = None
            parts += [names, Padding(help_text, (0, 0, 0, width + GAP))]
    console.print(Panel(Group(*parts), border_style=rich_utils.STYLE_OPTIONS_PANEL_BORDER, title=name,
                        title_align=rich_utils.ALIGN_OPTIONS_PANEL))
