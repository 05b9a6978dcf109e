"""`lwm chat`: answer one question (argument and/or piped stdin), or chat interactively in a terminal.

stdout carries the reply text (or, with --json, one JSON object per reply) and nothing else; the REPL's
notices and the loading status go to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Callable, Iterator, Optional

import typer

from lwm_cli import _errors
from lwm_cli._model import ModelOptions, load
from lwm_cli._options import (
    OUTPUT_PANEL,
    CpuKernels,
    DTypeOption,
    JsonOutput,
    MaxNewTokens,
    MeshSpec,
    ModelSpec,
    Preset,
    Seed,
    SetOptions,
    Temperature,
    TokenizerPath,
    TopK,
    TopP,
    check_max_new_tokens,
    check_seed,
    check_temperature,
    check_top_k,
    check_top_p,
    shown_default,
)

if TYPE_CHECKING:
    from lwm_core import LWM

PROMPT = ">>> "
CONTINUATION = "... "
BLOCK = '"""'


@dataclass
class Sampling:
    """The sampling settings; `/set` changes them during a chat."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int


# `/set NAME VALUE`: type and check of each sampling setting (the checks are the options' own).
SETTINGS: dict[str, tuple[type, Callable]] = {
    "temperature": (float, check_temperature),
    "top_k": (int, check_top_k),
    "top_p": (float, check_top_p),
    "max_new_tokens": (int, check_max_new_tokens),
    "seed": (int, check_seed),
}


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str  # stop (EOS) | length (max_new_tokens) | interrupted (Ctrl-C)

    def to_json(self) -> str:
        speed = self.completion_tokens / self.seconds if self.seconds > 0 else 0.0
        return json.dumps({"text": self.text, "prompt_tokens": self.prompt_tokens,
                           "completion_tokens": self.completion_tokens,
                           "tokens_per_second": round(speed, 2), "finish_reason": self.finish_reason},
                          ensure_ascii=False)


@dataclass
class Session:
    """A conversation: the model, the system prompt, the turns so far and the sampling settings."""

    model: LWM
    sampling: Sampling
    system: str | None = None  # None: LWM's "You are a helpful assistant."
    history: list[tuple[str, str]] = field(default_factory=list)
    turns: int = 0  # replies generated; offsets the seed so that each reply samples afresh
    raw: bool = False  # no chat template, system prompt or history: the model continues the text

    def prompt_ids(self, question: str) -> list[int]:
        from lwm_core.prompts import chat_prompt

        if self.raw:
            return self.model.tokenizer.encode(question)
        kwargs = {} if self.system is None else {"system": self.system}
        return self.model.tokenizer.encode(chat_prompt(question, history=self.history, **kwargs))

    def ask(self, question: str, on_text: Callable[[str], None], *, catch_interrupt: bool) -> Reply:
        """Generate the reply to `question`, calling `on_text` with each new piece of text, and add the
        turn to the history. With catch_interrupt, Ctrl-C stops the reply (finish_reason interrupted)."""
        ids = self.prompt_ids(question)
        s = self.sampling
        stream = self.model.stream(ids, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                                   top_p=s.top_p, seed=s.seed + self.turns)
        reply = _collect(self.model.tokenizer, stream, len(ids), s.max_new_tokens, on_text,
                         catch_interrupt=catch_interrupt)
        self.turns += 1
        if not self.raw:  # a raw completion is not a turn of a conversation
            self.history.append((question, reply.text))
        return reply


def _collect(tokenizer, stream: Iterator[int], prompt_tokens: int, max_new_tokens: int,
             on_text: Callable[[str], None], *, catch_interrupt: bool) -> Reply:
    from lwm_core.tokenizer import StreamDecoder

    decoder = StreamDecoder(tokenizer)
    pieces: list[str] = []
    count, finish = 0, "stop"
    start = time.perf_counter()
    with (_ctrl_c_stops() if catch_interrupt else contextlib.nullcontext(threading.Event())) as stop:
        try:
            for token in stream:
                count += 1
                text = decoder.push(token)
                if text:
                    pieces.append(text)
                    on_text(text)
                if stop.is_set():
                    finish = "interrupted"
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, while the first had not yet been seen
            if not catch_interrupt:
                raise
            finish = "interrupted"
        finally:
            stream.close()  # stops decoding (a no-op when the stream already ended)
    seconds = time.perf_counter() - start
    tail = decoder.flush()
    if tail:
        pieces.append(tail)
        on_text(tail)
    if finish == "stop" and count >= max_new_tokens:  # the stream stops before EOS: none came
        finish = "length"
    return Reply("".join(pieces), prompt_tokens, count, seconds, finish)


@contextlib.contextmanager
def _ctrl_c_stops() -> Iterator[threading.Event]:
    """While a reply streams, the first Ctrl-C sets the event (the reply stops after the tokens being
    decoded); a second one raises KeyboardInterrupt at once (e.g. during a long prefill).

    A flag rather than KeyboardInterrupt for the first press, because a KeyboardInterrupt raised at
    an arbitrary point can land in a jax finalizer or callback, where Python prints and drops it.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


app = typer.Typer()  # the module's commands, added to the root app by lwm_cli.main as every group's are

# None: lwm_core picks by backend.
ChatDType = shown_default(DTypeOption, "float32 on CPU, bfloat16 on GPU/TPU")


@app.command("chat", no_args_is_help=False)
def chat(
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Argument(
        help="The question. Text piped on stdin comes first, then a blank line, then this. Without "
             "either, on a terminal: an interactive chat.", metavar="PROMPT", show_default=False)] = None,
    model: ModelSpec = "random:debug",
    tokenizer: TokenizerPath = None,
    preset: Preset = None,
    set_options: SetOptions = None,
    mesh: MeshSpec = "1,-1,1,1",
    dtype: ChatDType = None,
    cpu_kernels: CpuKernels = None,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.2,
    top_k: TopK = 50,
    top_p: TopP = 1.0,
    seed: Seed = 0,
    system: Annotated[Optional[str], typer.Option(
        "--system", metavar="TEXT", rich_help_panel=OUTPUT_PANEL, show_default=False,
        help="System prompt put before the conversation. Default: LWM's \"You are a helpful "
             "assistant.\"; --system '' drops it.")] = None,
    raw: Annotated[bool, typer.Option(
        "--raw", rich_help_panel=OUTPUT_PANEL,
        help="Send the text exactly as given, without the chat template or a system prompt: the model "
             "just continues it (to see what a base model, e.g. one from lwm train, learned). In the "
             "interactive chat each message is then completed on its own, without the earlier ones.")] = False,
    json_output: JsonOutput = False,
) -> None:
    """Chat with a model: one question, or an interactive chat on a terminal.

    [bold]lwm chat -m CHECKPOINT "What is a world model?"[/]

    [bold]cat paper.txt | lwm chat -m CHECKPOINT "Summarise this."[/]

    [bold]lwm chat -m CHECKPOINT[/] (interactive; /help lists its commands: /set, /clear, /bye, ...)

    The reply streams to stdout as it is generated.

    The default model, random:debug, has random weights: it answers gibberish, but it shows the CLI works.
    """
    from lwm_core.text import check_text

    if raw and system is not None:
        raise typer.BadParameter("--raw sends no system prompt; drop --system or --raw", ctx=ctx,
                                 param_hint="'--system'")
    question = _question(prompt)
    if system:
        check_text(system, "--system")
    for item in set_options or ():
        check_text(item, "--set")
    if question is not None and not question.strip():
        raise typer.BadParameter("the question is empty; pass some text or pipe it on stdin",
                                 ctx=ctx, param_hint="PROMPT")
    if question is None and not sys.stdin.isatty():
        raise typer.BadParameter("no question: pass PROMPT, pipe text on stdin, or run on a terminal "
                                 "for an interactive chat", ctx=ctx, param_hint="PROMPT")
    options = ModelOptions(spec=model, tokenizer=None if tokenizer is None else str(tokenizer), preset=preset,
                           overrides=tuple(set_options or ()), mesh=mesh,
                           dtype=dtype, cpu_kernels=cpu_kernels)
    session = Session(load(options, seed=seed), Sampling(max_new_tokens, temperature, top_k, top_p, seed),
                      system=system, raw=raw)
    if question is not None:
        _one_shot(session, question, json_output)
    else:
        repl(session, model, json_output=json_output)


def _question(prompt: str | None) -> str | None:
    """The argument, the piped stdin, or both (stdin, a blank line, the argument); None for neither."""
    from lwm_core.text import check_text, decode_utf8

    piped = None
    if not sys.stdin.isatty():
        piped = decode_utf8(sys.stdin.buffer.read(), "stdin").rstrip()
    if prompt:
        check_text(prompt, "the PROMPT argument")
    parts = [p for p in (piped, prompt) if p]
    if not parts:
        return None if prompt is None else ""
    return "\n\n".join(parts)


def _one_shot(session: Session, question: str, json_output: bool) -> None:
    reply = session.ask(question, (lambda text: None) if json_output else _write, catch_interrupt=True)
    _write(reply.to_json() + "\n" if json_output else "\n")
    if reply.finish_reason == "interrupted":
        raise typer.Exit(_errors.INTERRUPTED)


# --------------------------------------------------------------------------------------------- REPL

HELP = """\
Type a message and press Enter; the reply streams back. Commands:
  /set temperature 0.7   change a sampling setting: temperature, top_k, top_p, max_new_tokens, seed
  /set system TEXT       change the system prompt (/set system with no text restores the default)
  /show                  the current settings and the number of turns in the conversation
  /clear                 forget the conversation so far
  /bye                   exit (also Ctrl-D)
  /help                  this text
Multi-line messages: start with \"\"\" and end with \"\"\", or end a line with \\ to continue it.
Ctrl-C stops a reply that is streaming."""


def read_message(read: Callable[[str], str]) -> str:
    """One message from the user: a line, a \"\"\" ... \"\"\" block, or lines joined by a trailing \\.

    `read(prompt)` is `input`; it raises EOFError on Ctrl-D and KeyboardInterrupt on Ctrl-C.
    """
    line = read(PROMPT)
    if line.lstrip().startswith(BLOCK):
        body = line.lstrip()[len(BLOCK):]
        if body.rstrip().endswith(BLOCK):  # """one line"""
            return body.rstrip()[:-len(BLOCK)]
        lines = [body] if body else []
        while True:
            line = read(CONTINUATION)
            if line.rstrip().endswith(BLOCK):
                lines.append(line.rstrip()[:-len(BLOCK)])
                return "\n".join(lines).strip("\n")
            lines.append(line)
    parts = []
    while line.endswith("\\"):
        parts.append(line[:-1])
        line = read(CONTINUATION)
    parts.append(line)
    return "\n".join(parts)


def run_command(session: Session, line: str, say: Callable[[str], None]) -> bool:
    """Carry out a `/command`; returns False when the chat should end."""
    name, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if name in ("/bye", "/exit", "/quit"):
        return False
    if name in ("/help", "/?"):
        say(HELP)
    elif name == "/clear":
        session.history.clear()
        say("cleared the conversation")
    elif name == "/show":
        from lwm_core.plural import plural

        s = session.sampling
        system = "LWM's default" if session.system is None else repr(session.system)
        if session.raw:
            system = "none (--raw)"
        say(f"temperature {s.temperature}, top_k {s.top_k}, top_p {s.top_p}, max_new_tokens "
            f"{s.max_new_tokens}, seed {s.seed}; system prompt {system}; "
            f"{plural(len(session.history), 'turn')} in the conversation")
    elif name == "/set":
        say(_set(session, rest))
    else:
        say(f"unknown command {name!r}; /help lists the commands (start a message with a space to send "
            f"text that begins with /)")
    return True


def _set(session: Session, args: str) -> str:
    key, _, value = args.partition(" ")
    key, value = key.replace("-", "_"), value.strip()
    if key == "system":
        if session.raw:
            return "--raw sends no system prompt; restart without --raw to use one"
        session.system = value or None
        return "system prompt restored to the default" if not value else "system prompt set"
    if key not in SETTINGS:
        return f"usage: /set NAME VALUE with NAME one of system, {', '.join(SETTINGS)}"
    kind, check = SETTINGS[key]
    try:
        number = kind(value)
    except ValueError:
        return f"{key} needs {'an integer' if kind is int else 'a number'}, got {value!r}"
    try:
        check(number)
    except typer.BadParameter as e:
        return str(e.message)
    session.sampling = dataclasses.replace(session.sampling, **{key: number})
    return f"{key} = {number}"


def repl(session: Session, name: str, *, json_output: bool) -> None:
    """The interactive chat: read a message, stream the reply, until /bye or Ctrl-D."""
    from rich.console import Console

    from lwm_core.errors import LWMError

    try:  # line editing and history for input()
        import readline  # noqa: F401
    except ImportError:
        pass
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def say(text: str) -> None:
        err.print(text, style="dim", markup=False)

    mode = " (--raw: each message is completed on its own, without a template)" if session.raw else ""
    say(f"chatting with {name}{mode}; /help for commands, /bye or Ctrl-D to exit")
    while True:
        try:
            message = read_message(input)
        except KeyboardInterrupt:
            _write("\n")
            say("(Ctrl-D or /bye exits)")
            continue
        except EOFError:
            _write("\n")
            return
        except UnicodeDecodeError as e:  # the terminal sent bytes that are not UTF-8
            _errors.print_error(f"that message is not UTF-8 text (byte 0x{e.object[e.start]:02X} at offset "
                                f"{e.start}); type it again")
            continue
        if not message.strip():
            continue
        if message.startswith("/"):
            if not run_command(session, message, say):
                return
            continue
        try:
            reply = session.ask(message, (lambda text: None) if json_output else _write, catch_interrupt=True)
        except LWMError as e:
            hint = " (/clear forgets the conversation so far)" if session.history else ""
            _errors.print_error(f"{e}{hint}")
            continue
        _write(reply.to_json() + "\n" if json_output else "\n")
        if reply.finish_reason == "interrupted":
            say("(reply stopped)")
