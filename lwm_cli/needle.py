"""`lwm needle`: needle-in-a-haystack datasets (`make`), and the plots of their scores."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from lwm_cli._options import Force, MaxNewTokens, ModelSpec, Output, Seed, TokenizerPath

DATA_PANEL = "Dataset"

# A group: `lwm needle make|...`, added to the root app by lwm_cli.main as every module's app is.
app = typer.Typer(name="needle", help="Needle-in-a-haystack retrieval: make datasets, plot scores.",
                  no_args_is_help=True)


@app.command("make")
def make(
    output: Output,
    model: ModelSpec = None,
    tokenizer: TokenizerPath = None,
    task: Annotated[str, typer.Option(
        "--task", metavar="TASKS", rich_help_panel=DATA_PANEL,
        help="Comma list of: single (LWM's city -> 7-digit number), multi (--needles hidden, --retrieve "
             "asked), multikey, multivalue, multiquery, vt (variable tracking; RULER's families).")] = "single",
    ctx: Annotated[str, typer.Option(
        "--ctx", metavar="LENGTHS", rich_help_panel=DATA_PANEL,
        help="Context lengths in tokens (prompt + --max-new-tokens fit in each): 1M, 4K,32K,128K, or "
             "1K:1M:20 (20 lengths, linearly spaced, inclusive); K = 1024, M = 1024^2.")] = "4K",
    depths: Annotated[str, typer.Option(
        "--depths", metavar="DEPTHS", rich_help_panel=DATA_PANEL,
        help="Needle depths in percent of the haystack: a count (10: 0..100 evenly) or a list (0,50,100).")] = "10",
    depth_spacing: Annotated[str, typer.Option(
        "--depth-spacing", metavar="linear|sigmoid", rich_help_panel=DATA_PANEL,
        help="How a --depths count is spread: linear, or sigmoid (denser near 0 and 100).")] = "linear",
    rounds: Annotated[int, typer.Option(
        "--rounds", min=1, metavar="R", rich_help_panel=DATA_PANEL,
        help="Rows per (task, length, depth), each over a different stretch of the haystack.")] = 1,
    haystack: Annotated[str, typer.Option(
        "--haystack", metavar="SOURCE", rich_help_panel=DATA_PANEL,
        help="A JSONL file ({\"text\": ...} per line), a .txt file, a folder of .txt files, - for stdin, or "
             "a built-in: prose (generated English-like text), noise (RULER's repeated filler), needles "
             "(distractor needles).")] = "prose",
    template: Annotated[str, typer.Option(
        "--template", metavar="lwm-chat|base|raw", rich_help_panel=DATA_PANEL,
        help="lwm-chat: LWM's exact needle prompt; base: adds an answer prefix (RULER-style) for base "
             "models; raw: the context and the question only.")] = "lwm-chat",
    needles: Annotated[int, typer.Option(
        "--needles", min=1, metavar="N", rich_help_panel=DATA_PANEL,
        help="Needles per row in the multi-needle tasks (distractors included; vt: the chain's length).")] = 4,
    retrieve: Annotated[int, typer.Option(
        "--retrieve", min=1, metavar="R", rich_help_panel=DATA_PANEL,
        help="Needles asked for in multi (at most --needles).")] = 2,
    max_new_tokens: MaxNewTokens = 64,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Write a needle-in-a-haystack dataset (JSONL), counted with the model's own tokenizer.

    One row per (task, length, depth, round); the same arguments give a byte-identical file.

    [bold]lwm needle make -m LargeWorldModel/LWM-Text-Chat-1M-Jax --ctx 1K:1M:20 --depths 10 -o needle.jsonl[/]
    """
    from lwm_core.errors import LWMError
    from lwm_core.needle import make as making
    from lwm_core.needle.config import MakeConfig, parse_ctx, parse_depths

    # Everything that can be checked without the tokenizer comes first.
    config = MakeConfig(tasks=tuple(t.strip() for t in task.split(",")), ctx=parse_ctx(ctx),
                        depths=parse_depths(depths, depth_spacing), rounds=rounds, seed=seed, template=template,
                        needles=needles, retrieve=retrieve, max_new_tokens=max_new_tokens,
                        haystack="stdin" if haystack == "-" else haystack)
    if model is None and tokenizer is None:
        raise LWMError("lwm needle make counts tokens with the model's tokenizer: pass -m SPEC (e.g. "
                       "LargeWorldModel/LWM-Text-Chat-1M-Jax) or --tokenizer PATH")
    to_stdout = str(output) == "-"
    if not to_stdout:
        from lwm_core.checkpoint.atomic import check_target

        check_target(str(output), kind="file", overwrite=force)
    hay = _read_haystack(haystack)
    if model is not None:
        from lwm_core.loading import resolve_spec

        _, model_config, tok = resolve_spec(model, tokenizer=None if tokenizer is None else str(tokenizer))
        max_context = model_config.max_sequence_length
    else:
        from lwm_core.tokenizer import load_tokenizer

        tok, max_context = load_tokenizer(tokenizer), None
    making.check(config, tok, max_context=max_context, model=model or "the model")

    total = sum(1 for _ in making.row_keys(config))
    rows = _progress(making.make_rows(config, tok, hay), total)
    if to_stdout:
        for row in rows:
            sys.stdout.write(making.row_line(row))
        sys.stdout.flush()
        return
    from lwm_core.checkpoint.atomic import atomic_file
    from lwm_core.plural import plural

    with atomic_file(str(output)) as f:
        for row in rows:
            f.write(making.row_line(row).encode("utf-8"))
    print(f"wrote {output} ({plural(total, 'row')})", file=sys.stderr)
    print(output)


def _read_haystack(spec: str):
    from lwm_core.needle import haystack
    from lwm_core.text import decode_utf8

    if spec != "-":
        return haystack.read_haystack(spec)
    return haystack.from_text("stdin", [decode_utf8(sys.stdin.buffer.read(), "stdin")])


def _progress(rows, total: int):
    """The rows, with a `rows i/n` counter on stderr when it is a terminal (never in files or pipes)."""
    show = sys.stderr.isatty()
    for i, row in enumerate(rows, 1):
        if show:
            sys.stderr.write(f"\rrows {i}/{total}")
            sys.stderr.flush()
        yield row
    if show:
        sys.stderr.write("\n")


from lwm_cli.needle_plot import plot  # noqa: E402  (its module imports nothing heavy either)

app.command("plot")(plot)
