"""How a run ends: exit codes and one-line error messages.

0 ok, 1 error, 2 usage, 130 interrupted. A user error (`LWMError`, a bad option) is one line on stderr,
`error: <message>`; an unexpected exception is one line naming its type, and `lwm --debug` (or
LWM_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

import typer

OK, ERROR, USAGE, INTERRUPTED = 0, 1, 2, 130


@dataclass
class State:
    """Root options that matter after the command has ended; travels as the click context's `obj`."""

    debug: bool = False
    argv: tuple[str, ...] = ()  # the command's arguments as given (after the program name)


def _is_lwm_error(exc: BaseException) -> bool:
    # Imported lazily: importing lwm_core imports jax. If lwm_core.errors was never imported, nothing
    # could have raised an LWMError.
    errors = sys.modules.get("lwm_core.errors")
    return errors is not None and isinstance(exc, errors.LWMError)


def _is_click_error(exc: BaseException) -> bool:
    # click's ClickException (usage errors and friends); typer >= 0.29 vendors click, earlier ones use
    # the click package, so recognise it by its interface.
    return hasattr(exc, "exit_code") and hasattr(exc, "format_message") and hasattr(exc, "show")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def print_error(message: str) -> None:
    """`error: <message>` on stderr, as one line (red on a colour terminal)."""
    label = "error:"
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb":
        label = "\x1b[1;31merror:\x1b[0m"
    try:
        sys.stderr.write(f"{label} {_one_line(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: nothing left to tell
        pass


def take_debug(args: Sequence[str]) -> tuple[list[str], bool]:
    """`--debug` is accepted anywhere before a `--` (`lwm chat ... --debug` as well as `lwm --debug
    chat`), because that is where users add it when an error tells them to: remove it and say whether
    it was there. After `--`, it is an argument like any other."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    found = "--debug" in args[:end]
    return [a for a in args[:end] if a != "--debug"] + args[end:], found


def run(command: Any, args: Sequence[str], *, prog_name: str = "lwm") -> int:
    """Run a click command (from `typer.main.get_command`) and return the process exit code."""
    given = tuple(args)
    args, debug = take_debug(args)
    state = State(debug=debug or os.environ.get("LWM_DEBUG", "").lower() in ("1", "true", "yes", "on"), argv=given)
    try:
        # standalone_mode=False: exceptions come back here instead of being printed by click/typer
        # as multi-line boxes; `obj` carries the root --debug flag out of the context.
        rv = command.main(args=list(args), prog_name=prog_name, complete_var="_LWM_COMPLETE",
                          standalone_mode=False, obj=state)
        code = rv if isinstance(rv, int) else OK  # an Exit(code) inside the command returns code
        _flush_stdout()
        return code
    except typer.Exit as e:
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        # Typer turns Ctrl-C inside a command into Exit(130); this catches the rest (during parsing).
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`lwm chat ... | head`): stop quietly; point stdout at /dev/null so the
        # interpreter's final flush does not raise again.
        _silence_stdout()
        return ERROR
    except Exception as e:  # noqa: BLE001 - the one place every error ends up
        if _is_click_error(e):
            return _usage_error(e)
        if state.debug:
            traceback.print_exc()
        if _is_lwm_error(e):
            if not state.debug:
                print_error(str(e))
            return ERROR
        if not state.debug:
            print_error(describe(e))
        return ERROR


def describe(e: BaseException) -> str:
    """The one line for an exception that no layer turned into an `LWMError`: what the operating system
    or a decoder said, with the file it concerns, else the exception itself."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror}; check the path and its permissions (rerun with --debug for the traceback)"
    if isinstance(e, UnicodeError):
        return f"text is not UTF-8 ({e}); convert it to UTF-8 first (rerun with --debug for the traceback)"
    detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return f"{detail} (rerun with --debug for the traceback)"


def _usage_error(e: Exception) -> int:
    ctx = getattr(e, "ctx", None)
    if type(e).__name__ == "NoArgsIsHelpError":  # bare `lwm` / `lwm gen`: the help is the answer
        # Its message is the help text; typer's rich help already printed itself and left it empty.
        if e.format_message():
            sys.stdout.write(e.format_message() + "\n")
        return USAGE
    message = e.format_message()
    if ctx is not None and ctx.command is not None:
        help_option = (ctx.help_option_names or ["--help"])[-1]
        message = f"{_one_line(message)} (see '{ctx.command_path} {help_option}')"
    print_error(message)
    return getattr(e, "exit_code", USAGE)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
