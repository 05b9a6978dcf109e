"""Static shell completion scripts (bash, zsh, fish) generated from the click command tree.

Static, because completing then costs no Python start-up: the scripts know every command, option and
fixed value list (dtypes, presets, `random:<preset>` specs) and fall back to file names where an
option takes a path. The value lists come from each option's completion callback (or choices),
called once here. scripts/make_completions.py writes completions/; `lwm --completion SHELL` prints
the same text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SHELLS = ("bash", "zsh", "fish")
PROG = "lwm"
# Options whose metavar is one of these take file names (a SPEC may be a checkpoint path).
PATH_METAVARS = frozenset({"PATH", "FILE", "DIR", "HF_DIR", "SPEC", "VQGAN"})


@dataclass
class Opt:
    names: list[str]  # "--model", "-m"
    help: str
    takes_value: bool
    metavar: str = ""
    words: list[str] = field(default_factory=list)  # fixed values to offer
    files: bool = False  # also complete file names
    multiple: bool = False


@dataclass
class Cmd:
    path: tuple[str, ...]  # () for the root, ("chat",), later ("gen", "image")
    help: str
    options: list[Opt]
    commands: dict[str, "Cmd"]
    args_files: bool = False  # positional arguments are paths


def _plain(text: str | None) -> str:
    """First sentence of a help text, without rich markup, on one line."""
    from rich.text import Text

    text = Text.from_markup(text or "").plain.strip().split("\n\n")[0]
    text = " ".join(text.split())
    first = re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
    if len(first) > 90:
        first = first[:first.rfind(" ", 0, 88)].rstrip(",;:") + " ..."
    return first


def _values(param: Any, ctx: Any) -> tuple[list[str], bool]:
    """(words, files): what the shell should offer for this parameter's value."""
    items = param.shell_complete(ctx, "")
    words = [item.value for item in items if item.type == "plain" and item.value]
    # Typer's completion callbacks can only return words, so a metavar says "a path goes here".
    files = any(item.type in ("file", "dir") for item in items) or param.metavar in PATH_METAVARS
    return words, files


def tree(command: Any, path: tuple[str, ...] = (), parent: Any = None) -> Cmd:
    """Walk a click command (from `typer.main.get_command`) into plain data."""
    import typer

    ctx = typer.Context(command, info_name=path[-1] if path else PROG, parent=parent,
                        resilient_parsing=True, **(command.context_settings or {}))
    options, args_files = [], False
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "option":
            words, files = ([], False) if param.is_flag or param.count else _values(param, ctx)
            names = [*param.opts, *param.secondary_opts]
            names.sort(key=lambda n: (not n.startswith("--"), n))
            options.append(Opt(names, _plain(param.help), not (param.is_flag or param.count),
                               param.metavar or param.name.upper(), words, files, bool(param.multiple)))
        elif param.param_type_name == "argument":
            args_files = args_files or _values(param, ctx)[1]
    commands = {}
    if hasattr(command, "list_commands"):  # a group
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                commands[name] = tree(sub, (*path, name), ctx)
    return Cmd(path, _plain(command.help or command.short_help), options, commands, args_files)


def _walk(cmd: Cmd):
    yield cmd
    for sub in cmd.commands.values():
        yield from _walk(sub)


def script(command: Any, shell: str) -> str:
    root = tree(command)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](root)


_HEADER = "{c} {shell} completion for `lwm`, generated from the CLI by scripts/make_completions.py: do not edit.\n"


# ---------------------------------------------------------------------------------------------- bash

def _sq(text: str) -> str:
    """Single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _bash(root: Cmd) -> str:
    cmds = list(_walk(root))
    key = lambda c: " ".join(c.path)  # noqa: E731
    subcommand_cases = [f"            {_sq(key(c) + ' ' + name)}) path={_sq(key(sub))} ;;"
                        for c in cmds for name, sub in c.commands.items()]
    value_opts = [f"{key(c)} {n}" for c in cmds for o in c.options if o.takes_value for n in o.names]
    value_cases = []
    for c in cmds:
        for o in c.options:
            if not o.takes_value:
                continue
            pattern = "|".join(_sq(f"{key(c)} {n}") for n in o.names)
            action = []
            if o.words:
                action.append(f"_lwm_words {_sq(' '.join(o.words))}")
            if o.files:
                action.append("_lwm_files")
            value_cases.append(f"            {pattern}) {'; '.join(action) or ':'} ;;")
    option_cases = [f"        {_sq(key(c))}) opts={_sq(' '.join(n for o in c.options for n in o.names))} ;;"
                    for c in cmds]
    word_cases = []
    for c in cmds:
        if c.commands:
            word_cases.append(f"        {_sq(key(c))}) _lwm_words {_sq(' '.join(c.commands))} ;;")
        elif c.args_files:
            word_cases.append(f"        {_sq(key(c))}) _lwm_files ;;")
    nl = "\n"
    return f"""\
{_HEADER.format(c="#", shell="bash")}
_lwm_words() {{
    local IFS=$' \\t\\n'
    COMPREPLY+=($(compgen -W "$1" -- "$cur"))
}}

_lwm_files() {{
    local IFS=$'\\n'
    compopt -o filenames 2>/dev/null
    COMPREPLY+=($(compgen -f -- "$cur"))
}}

_lwm_complete() {{
    COMPREPLY=()
    # Split the line ourselves, on whitespace only: COMP_WORDS also splits at ':' and '='.
    local line="${{COMP_LINE:0:COMP_POINT}}" cur="" w path="" pending=""
    local -a words
    read -ra words <<< "$line"
    if [[ -n "$line" && "$line" != *[[:space:]] ]]; then
        cur="${{words[${{#words[@]}}-1]}}"
        unset "words[${{#words[@]}}-1]"
    fi
    for w in "${{words[@]:1}}"; do
        if [[ -n "$pending" ]]; then pending=""; continue; fi
        case "$path $w" in
{nl.join(subcommand_cases) or "            '') ;;"}
            *) case " $path $w " in
                   {"|".join(_sq(f" {v} ") for v in value_opts) or "''"}) pending="$w" ;;
               esac ;;
        esac
    done
    if [[ -n "$pending" ]]; then
        case "$path $pending" in
{nl.join(value_cases)}
        esac
    elif [[ "$cur" == -* ]]; then
        local opts=""
        case "$path" in
{nl.join(option_cases)}
        esac
        _lwm_words "$opts"
    else
        case "$path" in
{nl.join(word_cases)}
        esac
    fi
    # Bash replaces only the text after the last ':' of the word (COMP_WORDBREAKS); trim the
    # completions to match, as bash-completion's __ltrim_colon_completions does.
    if [[ "$cur" == *:* && "$COMP_WORDBREAKS" == *:* ]]; then
        local prefix="${{cur%"${{cur##*:}}"}}" i
        for i in "${{!COMPREPLY[@]}}"; do COMPREPLY[$i]="${{COMPREPLY[$i]#"$prefix"}}"; done
    fi
}}

complete -F _lwm_complete lwm
"""


# ----------------------------------------------------------------------------------------------- zsh

def _zq(text: str) -> str:
    """Text for a zsh `_arguments` spec's [description] or message, inside single quotes."""
    return text.replace("[", "(").replace("]", ")").replace(":", ";").replace("'", "'\\''")


def _zfunc(cmd: Cmd) -> str:
    return "_lwm" + "".join("_" + re.sub(r"\W", "_", p) for p in cmd.path)


def _zsh(root: Cmd) -> str:
    functions = []
    for cmd in _walk(root):
        fname = _zfunc(cmd)
        specs, helpers = [], []
        for o in cmd.options:
            exclusive = f"({' '.join(o.names)})" if len(o.names) > 1 and not o.multiple else ""
            star = "*" if o.multiple else ""
            names = o.names[0] if len(o.names) == 1 else "{" + ",".join(o.names) + "}"
            desc = f"[{_zq(o.help)}]"
            action = ""
            if o.takes_value:
                if o.words or o.files:
                    helper = f"{fname}__{re.sub(r'[^A-Za-z0-9]', '_', o.names[0].lstrip('-'))}"
                    values = " ".join(_sq(w.replace(":", "\\:")) for w in o.words)
                    body = [f"    local -a values=({values})" if o.words else "",
                            f"    _describe -t values {_sq(o.metavar.lower())} values" if o.words else "",
                            "    _files" if o.files else ""]
                    helpers.append(f"{helper}() {{\n" + "\n".join(b for b in body if b) + "\n}")
                    action = f":{_zq(o.metavar)}:{helper}"
                else:
                    action = f":{_zq(o.metavar)}: "
            spec = f"'{exclusive}{star}'{names}'{desc}{action}'" if names.startswith("{") else \
                f"'{exclusive}{star}{names}{desc}{action}'"
            specs.append(spec)
        if cmd.commands:
            items = " ".join(_sq(f"{name}:{sub.help}") for name, sub in cmd.commands.items())
            specs += ["'1: :->command'", "'*:: :->args'"]
            cases = "\n".join(f"                {name}) {_zfunc(sub)} ;;" for name, sub in cmd.commands.items())
            spec_lines = " \\\n        ".join(specs)
            body = f"""\
    local curcontext="$curcontext" state line
    typeset -A opt_args
    _arguments -C -s \\
        {spec_lines} && return
    case $state in
        command)
            local -a commands=({items})
            _describe -t commands 'lwm command' commands ;;
        args)
            case $line[1] in
{cases}
            esac ;;
    esac"""
        else:
            specs.append("'*:file:_files'" if cmd.args_files else "'*: :'")
            body = "    _arguments -s \\\n        " + " \\\n        ".join(specs)
        functions += helpers
        functions.append(f"{fname}() {{\n{body}\n}}")
    return f"#compdef lwm\n{_HEADER.format(c='#', shell='zsh')}\n" + "\n\n".join(functions) + \
        '\n\nif [ "$funcstack[1]" = "_lwm" ]; then\n    _lwm "$@"\nelse\n    compdef _lwm lwm\nfi\n'


# ---------------------------------------------------------------------------------------------- fish

def _fish(root: Cmd) -> str:
    lines = [_HEADER.format(c="#", shell="fish").rstrip(), "complete -c lwm -f"]
    for cmd in _walk(root):
        if cmd.path:
            cond = "; and ".join(f"__fish_seen_subcommand_from {p}" for p in cmd.path)
            if cmd.commands:
                cond += "; and not __fish_seen_subcommand_from " + " ".join(cmd.commands)
        else:
            cond = "__fish_use_subcommand"
        for name, sub in cmd.commands.items():
            lines.append(f"complete -c lwm -n {_sq(cond)} -a {name} -d {_sq(sub.help)}")
        for o in cmd.options:
            flags = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in o.names)
            value = ""
            if o.takes_value:
                value = " -r" + (" -F" if o.files else " -f")
                if o.words:
                    value += f" -a {_sq(' '.join(o.words))}"
            lines.append(f"complete -c lwm -n {_sq(cond)} {flags}{value} -d {_sq(o.help)}")
        if cmd.args_files and not cmd.commands:
            lines.append(f"complete -c lwm -n {_sq(cond)} -F")
    return "\n".join(lines) + "\n"
