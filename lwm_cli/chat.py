"""`lwm chat`: answer one question (argument and/or piped stdin), or chat interactively in a terminal; with
--image/--video (or the REPL's /image, /video), a question about images and videos (vision chat).

stdout carries the reply text (or, with --json, one JSON object per reply) and nothing else; the REPL's
notices and the loading status go to stderr.

Vision chat. The prompt is LWM's, exactly (`lwm_core.prompts.vision_chat_prompt`): the question, then one
`<vision>` block of 257 tokens per frame. Several media go into that one block as frames, in order (the REPL
keeps the order of /image and /video; on the command line, the --image files come first, then the --video
ones: click does not keep the order between two options); each video gives at most --max-frames frames.
LWM asked one question about one image or video; the media belong to the first question of a conversation,
and follow-up questions are added after it as text chat adds turns (`USER: ... ASSISTANT: ...</s>`), so that
the first turn's prompt stays exactly LWM's. Media attached once a conversation has turns start a new
conversation about them. The system prompt is LWM's, as the models were tuned with (--system is refused).
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
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Optional

import typer

from lwm_cli import _errors, _plan
from lwm_cli._model import ModelOptions, load
from lwm_cli._options import (
    INPUT_PANEL,
    OUTPUT_PANEL,
    CpuKernels,
    DTypeOption,
    JsonOutput,
    MaxFrames,
    MaxNewTokens,
    MeshSpec,
    ModelSpec,
    ModelVqgan,
    Preset,
    QuantizeOption,
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
    media: list[Media] = field(default_factory=list)  # the images and videos in the prompt, in order

    def to_json(self) -> str:
        speed = self.completion_tokens / self.seconds if self.seconds > 0 else 0.0
        out = {"text": self.text, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "tokens_per_second": round(speed, 2), "finish_reason": self.finish_reason}
        if self.media:  # a text reply's object keeps its keys
            out["media"] = [m.to_dict() for m in self.media]
        return json.dumps(out, ensure_ascii=False)


# --------------------------------------------------------------------------------------- vision

VISION_MODEL = "LargeWorldModel/LWM-Chat-1M-Jax"


@dataclass(frozen=True)
class Media:
    """An image or a video in a question: the file as the user named it and its frames' VQGAN codes."""

    path: str
    kind: str  # image | video
    codes: Any  # int32 (F, 16, 16): F = 1 for an image, at most --max-frames evenly spaced ones for a video

    @property
    def frames(self) -> int:
        return len(self.codes)

    def describe(self) -> str:
        from lwm_core.plural import plural

        return f"{self.path} ({self.kind}, {plural(self.frames, 'frame')})"

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "frames": self.frames}


def require_vision(config, spec: str) -> None:
    """Refuse images and videos for a text-only model."""
    from lwm_core.errors import LWMError

    if not config.vision:
        raise LWMError(f"model {spec} is text-only (config vision=false); vision chat needs a vision model such as "
                       f"{VISION_MODEL} (random:tiny --set vision=true to try --image out)")


def prompt_tokens(tokenizer, question: str, n_frames: int, frame_side: int | None = None) -> int:
    """The length of a vision chat prompt of `n_frames` frames (of `frame_side`^2 codes; LWM's 16 by default)
    and the question. The codes' values do not change it: zeros stand in for frames not yet encoded."""
    import numpy as np

    from lwm_core.prompts import FRAME_SIDE, vision_chat_prompt

    side = FRAME_SIDE if frame_side is None else frame_side
    return len(vision_chat_prompt(tokenizer, question, [np.zeros(side * side, np.int32)] * n_frames)[0])


def check_fits(config, tokenizer, question: str, n_frames: int, max_new_tokens: int | None,
               frame_side: int | None = None) -> int:
    """Refuse `n_frames` frames (of `frame_side`^2 codes, the VQGAN's grid; LWM's 16 by default) that, with
    the question and the reply, would not fit in the model's context: before the frames are encoded (and, on
    the command line, before the model loads). Returns the reply's token budget: `max_new_tokens`, or when
    None MAX_NEW or what the context leaves after the frames (a small model's context, as lwm-demo-vision's
    1,024, holds 8 frames and a short reply, not 256 tokens more)."""
    from lwm_core.errors import LWMError
    from lwm_core.plural import plural
    from lwm_core.prompts import FRAME_SIDE

    codes = (FRAME_SIDE if frame_side is None else frame_side) ** 2
    length = prompt_tokens(tokenizer, question, n_frames, frame_side)
    context = config.max_sequence_length
    prompt = f"{plural(n_frames, 'frame')} of {codes + 1} tokens and the question make a prompt of " \
             f"{plural(length, 'token')}"
    if max_new_tokens is None:
        if length >= context:
            raise LWMError(f"{prompt}, which leaves no room for a reply in the model's context of "
                           f"{plural(context, 'token')}; use fewer frames (--max-frames) or media")
        return min(MAX_NEW, context - length)
    if length + max_new_tokens > context:
        raise LWMError(f"{prompt}; with {plural(max_new_tokens, 'new token')} that exceeds the model's context of "
                       f"{plural(context, 'token')}; use fewer frames (--max-frames) or media, or a lower "
                       f"--max-new-tokens")
    return max_new_tokens


class Vision:
    """Images and videos -> `Media` (VQGAN codes) for vision chat prompts.

    The VQGAN is --vqgan, else the one beside the model, found and checked as lwm gen does
    (`lwm_core.generate.vision.vqgan_beside`, `check_vqgan`; a random model gets the random 64x64-pixel VQGAN
    with 16x16 codes, a built-in demo model its own): by `check`, which the command calls before loading the
    model when its command line names media, else on the first /image or /video. The weights load on the first
    `encode`, on `mesh`.
    """

    def __init__(self, model: str, vqgan: str | None, *, max_frames: int, seed: int, source: Any = None):
        self.model, self.vqgan, self.max_frames, self.seed = model, vqgan, max_frames, seed
        self.source = source  # the model's `checkpoint.loader.Source`; looked up when first needed if None
        self.mesh: Any = None  # the model's mesh, once it is loaded
        self._found: tuple | None = None  # (VQGANSource, config overrides, VQGANConfig)
        self._codec: Any = None

    def check(self):
        """The VQGAN's config (found and checked once): its codebook is at most the model's 8192 code ids."""
        if self._found is None:
            from lwm_core.checkpoint import loader
            from lwm_core.generate import vision as gv
            from lwm_core.vision.loading import resolve_config, resolve_vqgan

            if self.vqgan is not None:
                spec, overrides = self.vqgan, None
            else:
                self.source = self.source or loader.resolve(self.model)
                spec, overrides = gv.vqgan_beside(self.model, self.source)
            source = resolve_vqgan(spec)
            config = resolve_config(source, overrides)
            gv.check_vqgan(config, spec)
            self._found = (source, overrides, config)
        return self._found[2]

    def read(self, path: str, kind: str):
        """The frames of an image (`kind` image: one; a GIF's first) or a video (at most max_frames, evenly
        spaced): float32 (F, R, R, 3) in [-1, 1] at the VQGAN's resolution. Unreadable, truncated or empty
        files and unsupported extensions raise media's one-line LWMErrors."""
        import os

        from lwm_core.errors import LWMError
        from lwm_core.vision import media

        ext = os.path.splitext(path)[1].lower()  # a .gif is both: --image reads its first frame
        if kind == "image" and ext in media.VIDEO_EXTENSIONS and ext not in media.IMAGE_EXTENSIONS:
            raise LWMError(f"{path} is a video; ask about it with --video (in the interactive chat: /video)")
        if kind == "video" and ext in media.IMAGE_EXTENSIONS and ext not in media.VIDEO_EXTENSIONS:
            raise LWMError(f"{path} is an image; ask about it with --image (in the interactive chat: /image)")
        resolution = self.check().resolution
        if kind == "image":
            pixels = media.read_image(path)[None]
        else:
            pixels = media.read_video_frames(path, max_frames=self.max_frames)
        return media.to_model_frames(pixels, resolution=resolution)

    def encode(self, items: list[tuple[str, str, Any]]) -> list[Media]:
        """(path, kind, frames) of `read` -> their `Media`, in order (encoded together: one VQGAN call for a
        few media)."""
        import numpy as np

        if not items:
            return []
        if self._codec is None:
            from lwm_core import load_vqgan

            self.check()
            source, overrides, _ = self._found
            self._codec = load_vqgan(source, config=overrides, mesh=self.mesh, seed=self.seed)
        codes = self._codec.encode(np.concatenate([frames for _, _, frames in items]))
        out, start = [], 0
        for path, kind, frames in items:
            out.append(Media(path, kind, codes[start:start + len(frames)]))
            start += len(frames)
        return out


@dataclass
class Session:
    """A conversation: the model, the system prompt, the turns so far, the sampling settings, and the images
    and videos of its first question (vision chat) or attached for the next one."""

    model: LWM
    sampling: Sampling
    system: str | None = None  # None: LWM's "You are a helpful assistant."
    history: list[tuple[str, str]] = field(default_factory=list)
    turns: int = 0  # replies generated; offsets the seed so that each reply samples afresh
    raw: bool = False  # no chat template, system prompt or history: the model continues the text
    vision: Vision | None = None  # reads and encodes media; None: this chat takes none
    media: list[Media] = field(default_factory=list)  # in the conversation's first question
    attached: list[Media] = field(default_factory=list)  # for the next question, which starts a new conversation

    def prompt_ids(self, question: str) -> list[int]:
        """The ids of a text chat's prompt for `question`, after the history."""
        from lwm_core.prompts import chat_prompt

        if self.raw:
            return self.model.tokenizer.encode(question)
        kwargs = {} if self.system is None else {"system": self.system}
        return self.model.tokenizer.encode(chat_prompt(question, history=self.history, **kwargs))

    def prompt(self, question: str) -> tuple[list[int], list[bool] | None, list[Media]]:
        """(ids, vision mask or None for text, the media in the prompt) of the prompt for `question`.

        With media: LWM's vision chat prompt (`vision_chat_prompt`) of the conversation's first question and
        all its frames, then the later turns as text chat writes them: ` {answer}</s> USER: {q} ASSISTANT:`.
        Media attached for this question start a new conversation: no history before it.
        """
        from lwm_core.prompts import chat_prompt, vision_chat_prompt

        media = self.attached or self.media
        if not media:
            return self.prompt_ids(question), None, []
        history = [] if self.attached else self.history
        tokenizer = self.model.tokenizer
        frames = [frame for m in media for frame in m.codes]
        if not history:
            ids, mask = vision_chat_prompt(tokenizer, question, frames)
            return ids, mask, media
        (first, answer), later = history[0], history[1:]
        ids, mask = vision_chat_prompt(tokenizer, first, frames)
        # chat_prompt without a system prompt: the turns after the first, then the question.
        tail = tokenizer.encode(f" {answer}</s> " + chat_prompt(question, system="", history=later))
        return ids + tail, mask + [False] * len(tail), media

    def ask(self, question: str, on_text: Callable[[str], None], *, catch_interrupt: bool) -> Reply:
        """Generate the reply to `question`, calling `on_text` with each new piece of text, and add the
        turn to the history. With catch_interrupt, Ctrl-C stops the reply (finish_reason interrupted)."""
        ids, mask, media = self.prompt(question)
        s = self.sampling
        vision = {} if mask is None else {"vision_masks": mask}
        stream = self.model.stream(ids, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                                   top_p=s.top_p, seed=s.seed + self.turns, **vision)
        reply = _collect(self.model.tokenizer, stream, len(ids), s.max_new_tokens, on_text,
                         catch_interrupt=catch_interrupt)
        reply.media = list(media)
        self.turns += 1
        if self.attached:  # the question about them starts a new conversation
            self.media, self.attached, self.history = self.attached, [], []
        if not self.raw:  # a raw completion is not a turn of a conversation
            self.history.append((question, reply.text))
        return reply

    def attach(self, path: str, kind: str) -> str:
        """Read and encode an image or video for the next question -> what to tell the user. Raises LWMError
        for media this chat cannot take (a text-only model, --raw, a custom system prompt) and for a file that
        cannot be read or whose frames, with those attached before, do not fit the context."""
        from lwm_core.errors import LWMError
        from lwm_core.plural import plural

        if self.raw:
            raise LWMError("--raw completes plain text; restart without --raw to ask about images and videos")
        if self.vision is None:
            raise LWMError("this chat takes no images or videos")
        require_vision(self.model.config, self.vision.model)
        if self.system is not None:
            raise LWMError("vision chat uses LWM's system prompt, as the models were tuned; /set system with no "
                           "text restores it")
        frames = self.vision.read(path, kind)
        n = sum(m.frames for m in self.attached) + len(frames)
        check_fits(self.model.config, self.model.tokenizer, "", n, self.sampling.max_new_tokens,
                   self.vision.check().codes_per_side)
        self.attached += self.vision.encode([(path, kind, frames)])
        said = f"attached {self.attached[-1].describe()}"
        if len(self.attached) > 1:
            said += f"; {plural(len(self.attached), 'file')}, {plural(n, 'frame')} for the next question"
        if self.history:
            said += "; asking about them starts a new conversation (media go in a conversation's first question)"
        return said


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
ChatModel = shown_default(ModelSpec, "lwm-demo-text; lwm-demo-vision with --image/--video")
MAX_NEW = 256  # a reply's tokens unless -n says otherwise, or fewer where frames leave less of the context
ChatMaxNew = shown_default(MaxNewTokens, f"{MAX_NEW}, or what the context leaves after the frames")


@app.command("chat", no_args_is_help=False)
def chat(
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Argument(
        help="The question. Text piped on stdin comes first, then a blank line, then this. Without "
             "either, on a terminal: an interactive chat.", metavar="PROMPT", show_default=False)] = None,
    images: Annotated[Optional[list[str]], typer.Option(
        "--image", metavar="FILE", rich_help_panel=INPUT_PANEL, show_default=False,
        help="Ask about an image (.png .jpg .jpeg .webp; a .gif's first frame) with a vision model (LWM-Chat-*); "
             "repeatable. Several images and videos go into the question as frames in one <vision> block: the "
             "images first, then the videos, each in the order given.")] = None,
    videos: Annotated[Optional[list[str]], typer.Option(
        "--video", metavar="FILE", rich_help_panel=INPUT_PANEL, show_default=False,
        help="Ask about a video (.mp4 .webm .mov .gif): at most --max-frames evenly spaced frames; "
             "repeatable.")] = None,
    max_frames: MaxFrames = 8,
    model: ChatModel = None,
    vqgan: ModelVqgan = None,
    tokenizer: TokenizerPath = None,
    preset: Preset = None,
    set_options: SetOptions = None,
    mesh: MeshSpec = "1,-1,1,1",
    dtype: ChatDType = None,
    cpu_kernels: CpuKernels = None,
    quantize: QuantizeOption = None,
    max_new_tokens: ChatMaxNew = None,
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
        help="Send the text exactly as given (piped text loses only its final line break), without the chat "
             "template or a system prompt: the model just continues it (to see what a base model, e.g. one "
             "from lwm train, learned). In the interactive chat each message is then completed on its own, "
             "without the earlier ones.")] = False,
    json_output: JsonOutput = False,
    dry_run: _plan.DryRun = False,
    compile_: _plan.Compile = False,
    device_memory: _plan.DeviceMemory = None,
) -> None:
    """Chat with a model: one question or an interactive chat; --image and --video ask about pictures and videos.

    [bold]lwm chat -m CHECKPOINT "What is a world model?"[/]

    [bold]cat paper.txt | lwm chat -m CHECKPOINT "Summarise this."[/]

    [bold]lwm chat -m LargeWorldModel/LWM-Chat-1M-Jax --video clip.mp4 "What happens in this video?"[/]

    [bold]lwm chat -m CHECKPOINT[/] (interactive; /help lists its commands: /set, /image, /clear, /bye, ...)

    The reply streams to stdout. Sampling defaults are LWM's vision chat's (-t 0.2, --top-k 50), for text too.

    Without -m: the built-in lwm-demo-text (it knows LWM's needle prompt only: pipe a row's prompt from lwm
    needle make to lwm chat --raw); with --image/--video the built-in lwm-demo-vision (the lwm world).
    """
    from lwm_core import builtin

    model = model or builtin.default("chat --image/--video" if images or videos else "chat")
    if dry_run or compile_ or device_memory is not None:
        devices = _plan.simulate([mesh])  # before jax starts its backend
        _plan.check_options(ctx, dry_run, compile_, device_memory)
        config = _plan.model_config(model, tokenizer=tokenizer, preset=preset, set_options=set_options,
                                    command="chat")
        # A conversation that fills the model's context: the prompt, then max_new_tokens of reply.
        max_new = max_new_tokens or MAX_NEW
        _plan.inference(config=config, spec=model, mesh_spec=mesh, devices=devices, batch=1,
                        prompt=config.max_sequence_length - max_new, max_new=max_new, dtype=dtype,
                        quantize=quantize and quantize.value, compile_=compile_, device_memory=device_memory,
                        what="lwm chat")
        return
    from lwm_core.text import check_text

    if raw and system is not None:
        raise typer.BadParameter("--raw sends no system prompt; drop --system or --raw", ctx=ctx,
                                 param_hint="'--system'")
    wanted = [(path, "image") for path in images or ()] + [(path, "video") for path in videos or ()]
    if raw and (wanted or vqgan is not None):
        raise typer.BadParameter("--raw completes plain text; drop --raw to ask about images and videos", ctx=ctx,
                                 param_hint="'--raw'")
    if wanted and system is not None:
        raise typer.BadParameter("vision chat uses LWM's system prompt, as the models were tuned; drop --system",
                                 ctx=ctx, param_hint="'--system'")
    question = _question(prompt, raw=raw)
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
                           dtype=dtype, cpu_kernels=cpu_kernels, quantize=quantize and quantize.value)
    vision = Vision(model, vqgan, max_frames=max_frames, seed=seed)
    if wanted or vqgan is not None:
        lm, attached, max_new_tokens = _load_with_media(options, vision, wanted, question, max_new_tokens, seed)
    else:
        lm, attached = load(options, seed=seed), []
        vision.mesh = lm.mesh
    max_new_tokens = max_new_tokens or MAX_NEW
    session = Session(lm, Sampling(max_new_tokens, temperature, top_k, top_p, seed), system=system, raw=raw,
                      vision=None if raw else vision, attached=attached)
    if question is not None:
        _one_shot(session, question, json_output)
    else:
        repl(session, model, json_output=json_output)


def _load_with_media(options: ModelOptions, vision: Vision, wanted: list[tuple[str, str]], question: str | None,
                     max_new_tokens: int | None, seed: int) -> tuple[LWM, list[Media], int | None]:
    """The model, the media of --image/--video, encoded, and the reply's token budget (`check_fits`; None
    without frames, when `max_new_tokens` is None). What can be refused is
    refused before the weights load: a text-only model, a VQGAN that is missing or not 16x16 codes, a file
    that cannot be read, frames that do not fit the context (with the question; in the REPL, with an empty
    one)."""
    from lwm_cli._options import model_overrides
    from lwm_core.loading import resolve_spec
    from lwm_core.parallel.mesh import check_uses_all_devices

    check_uses_all_devices(options.mesh)
    resolved = resolve_spec(options.spec, config=options.preset, tokenizer=options.tokenizer,
                            overrides=model_overrides(options.overrides, options.command))
    source, config, tokenizer = resolved
    require_vision(config, options.spec)
    vision.source = source
    side = vision.check().codes_per_side
    frames = [(path, kind, vision.read(path, kind)) for path, kind in wanted]
    if frames:
        max_new_tokens = check_fits(config, tokenizer, question or "", sum(len(f) for _, _, f in frames),
                                    max_new_tokens, side)
    lm = load(options, seed=seed, resolved=resolved)
    vision.mesh = lm.mesh
    return lm, vision.encode(frames), max_new_tokens


def _question(prompt: str | None, *, raw: bool = False) -> str | None:
    """The argument, the piped stdin, or both (stdin, a blank line, the argument); None for neither.

    Piped text loses its trailing whitespace, except with `raw`: then only the one line break that ends it
    (`echo`, `print`, a text file), since a prompt's last space is a token of its own (LWM's needle prompt
    ends in `ASSISTANT: `, and a model trained on it answers after that space)."""
    from lwm_core.text import check_text, decode_utf8

    piped = None
    if not sys.stdin.isatty():
        piped = decode_utf8(sys.stdin.buffer.read(), "stdin")
        piped = piped.removesuffix("\n").removesuffix("\r") if raw else piped.rstrip()
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
  /image PATH            attach an image to the next question (vision models); /video PATH a video
                         (at most --max-frames frames); several go in as frames, in order
  /show                  the current settings, the turns in the conversation and the attached media
  /clear                 forget the conversation so far and the attached media
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
        media = session.media or session.attached
        session.history.clear()
        session.media, session.attached = [], []
        say("cleared the conversation" + (" and its images and videos" if media else ""))
    elif name == "/show":
        from lwm_core.plural import plural

        s = session.sampling
        system = "LWM's default" if session.system is None else repr(session.system)
        if session.raw:
            system = "none (--raw)"
        shown = (f"temperature {s.temperature}, top_k {s.top_k}, top_p {s.top_p}, max_new_tokens "
                 f"{s.max_new_tokens}, seed {s.seed}; system prompt {system}; "
                 f"{plural(len(session.history), 'turn')} in the conversation")
        if session.media:
            shown += f", about {', '.join(m.describe() for m in session.media)}"
        if session.attached:
            shown += f"; attached for the next question: {', '.join(m.describe() for m in session.attached)}"
        say(shown)
    elif name in ("/image", "/video"):
        _attach(session, name[1:], rest, say)
    elif name == "/set":
        say(_set(session, rest))
    else:
        say(f"unknown command {name!r}; /help lists the commands (start a message with a space to send "
            f"text that begins with /)")
    return True


def _attach(session: Session, kind: str, args: str, say: Callable[[str], None]) -> None:
    """`/image PATH`, `/video PATH`: PATH as typed, or one shell word (quoted, or with escaped spaces, as a
    terminal pastes a dropped file); `~` is the home directory."""
    import os
    import shlex

    from lwm_core.errors import LWMError

    if not args:
        say(f"usage: /{kind} PATH: attach {'an image' if kind == 'image' else 'a video'} to the next question")
        return
    try:
        words = shlex.split(args)
    except ValueError:  # an unbalanced quote: take the text as it is
        words = []
    path = os.path.expanduser(words[0] if len(words) == 1 else args)
    try:
        say(session.attach(path, kind))
    except LWMError as e:
        _errors.print_error(str(e))
    except KeyboardInterrupt:
        say(f"(nothing attached: stopped reading {path})")


def _set(session: Session, args: str) -> str:
    key, _, value = args.partition(" ")
    key, value = key.replace("-", "_"), value.strip()
    if key == "system":
        if session.raw:
            return "--raw sends no system prompt; restart without --raw to use one"
        if value and (session.media or session.attached):
            return "vision chat uses LWM's system prompt, as the models were tuned; /clear the images and videos first"
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
    if session.attached:
        say(f"attached for the first question: {', '.join(m.describe() for m in session.attached)}")
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
            hint = ""
            if session.media or session.attached:
                hint = " (/clear forgets the conversation so far and its images and videos)"
            elif session.history:
                hint = " (/clear forgets the conversation so far)"
            _errors.print_error(f"{e}{hint}")
            continue
        _write(reply.to_json() + "\n" if json_output else "\n")
        if reply.finish_reason == "interrupted":
            say("(reply stopped)")
