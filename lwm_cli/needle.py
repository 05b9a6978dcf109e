"""`lwm needle`: needle-in-a-haystack datasets (`make`), a model's scores on them (`eval`), and their plots."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lwm_cli import _plan
from lwm_cli._options import (
    CpuKernels,
    DTypeOption,
    Force,
    JsonOutput,
    MeshSpec,
    ModelSpec,
    Output,
    Preset,
    QuantizeOption,
    Seed,
    SetOptions,
    TokenizerPath,
    shown_default,
)
from lwm_cli._progress import LineView
from lwm_cli.needle_plot import Threshold

DATA_PANEL = "Dataset"
RUN_PANEL = "Run"

# A group: `lwm needle make|...`, added to the root app by lwm_cli.main as every module's app is.
app = typer.Typer(name="needle", no_args_is_help=True,
                  help="Needle-in-a-haystack retrieval: make datasets, evaluate models on them, plot scores.")


# The options that say how to make a dataset, shared by `make` and `eval` (which makes one on the fly).
TaskOption = Annotated[str, typer.Option(
    "--task", metavar="TASKS", rich_help_panel=DATA_PANEL,
    help="Comma list of: single (LWM's city -> 7-digit number), multi (--needles hidden, --retrieve "
         "asked), multikey, multivalue, multiquery, vt (variable tracking), cwe (the 10 most common words "
         "of a list), fwe (the 3 most frequent words of a coded text); all but single and multi are RULER's "
         "families. cwe and fwe have no haystack and no depth: one row per length and round, at depth 50.")]
CtxOption = Annotated[str, typer.Option(
    "--ctx", metavar="LENGTHS", rich_help_panel=DATA_PANEL,
    help="Context lengths in tokens (prompt + --max-new-tokens fit in each): 1M, 4K,32K,128K, or "
         "1K:1M:20 (20 lengths, linearly spaced, inclusive); K = 1024, M = 1024^2.")]
DepthsOption = Annotated[str, typer.Option(
    "--depths", metavar="DEPTHS", rich_help_panel=DATA_PANEL,
    help="Needle depths in percent of the haystack: a count (10: 0..100 evenly), a list (0,50,100) or one "
         "percent (50%); cwe and fwe have none (depth 50).")]
DepthSpacingOption = Annotated[str, typer.Option(
    "--depth-spacing", metavar="linear|sigmoid", rich_help_panel=DATA_PANEL,
    help="How a --depths count is spread: linear, or sigmoid (denser near 0 and 100).")]
RoundsOption = Annotated[int, typer.Option(
    "--rounds", min=1, metavar="R", rich_help_panel=DATA_PANEL,
    help="Rows per (task, length, depth), each over a different stretch of the haystack.")]
HaystackOption = Annotated[str, typer.Option(
    "--haystack", metavar="SOURCE", rich_help_panel=DATA_PANEL,
    help="A JSONL file ({\"text\": ...} per line), a .txt file, a folder of .txt files, - for stdin, or "
         "a built-in: prose (generated English-like text), noise (RULER's repeated filler), needles "
         "(distractor needles).")]
TemplateOption = Annotated[str, typer.Option(
    "--template", metavar="lwm-chat|base|raw", rich_help_panel=DATA_PANEL,
    help="lwm-chat: LWM's exact needle prompt; base: adds an answer prefix (RULER-style) for base "
         "models; raw: the context and the question only.")]
NeedlesOption = Annotated[int, typer.Option(
    "--needles", min=1, metavar="N", rich_help_panel=DATA_PANEL,
    help="Needles per row in the multi-needle tasks (distractors included; vt: the chain's length).")]
RetrieveOption = Annotated[int, typer.Option(
    "--retrieve", min=1, metavar="R", rich_help_panel=DATA_PANEL,
    help="Needles asked for in multi (at most --needles).")]
AnswerTokens = Annotated[Optional[int], typer.Option(
    "--max-new-tokens", "-n", min=1, metavar="N", rich_help_panel=DATA_PANEL, show_default="64; cwe 128",
    help="Tokens left for the answer (prompt + N fit in each --ctx; eval generates at most N).")]
EvalCtxOption = shown_default(CtxOption, "none: --data gives the dataset")
EvalDType = shown_default(DTypeOption, "float32 on CPU, bfloat16 on GPU/TPU")
EvalModel = shown_default(ModelSpec, "lwm-demo-text, the built-in demo (lwm models)")
# eval's parameters that make a dataset (`--data` gives one instead), by their Python names.
MAKE_PARAMS = ("task", "ctx", "depths", "depth_spacing", "rounds", "haystack", "template", "needles", "retrieve",
               "max_new_tokens")


def _make_config(task: str, ctx: str, depths: str, depth_spacing: str, rounds: int, haystack: str, template: str,
                 needles: int, retrieve: int, max_new_tokens: int | None, seed: int):
    from lwm_core.needle.config import MakeConfig, parse_ctx, parse_depths

    return MakeConfig(tasks=tuple(t.strip() for t in task.split(",")), ctx=parse_ctx(ctx),
                      depths=parse_depths(depths, depth_spacing), rounds=rounds, seed=seed, template=template,
                      needles=needles, retrieve=retrieve, max_new_tokens=max_new_tokens,
                      haystack="stdin" if haystack == "-" else haystack)


@app.command("make")
def make(
    output: Output,
    model: ModelSpec = None,
    tokenizer: TokenizerPath = None,
    task: TaskOption = "single",
    ctx: CtxOption = "4K",
    depths: DepthsOption = "10",
    depth_spacing: DepthSpacingOption = "linear",
    rounds: RoundsOption = 1,
    haystack: HaystackOption = "prose",
    template: TemplateOption = "lwm-chat",
    needles: NeedlesOption = 4,
    retrieve: RetrieveOption = 2,
    max_new_tokens: AnswerTokens = None,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Write a needle-in-a-haystack dataset (JSONL), counted with the model's own tokenizer.

    One row per (task, length, depth, round), and per (length, round) for cwe and fwe, which have no
    depth; the same arguments give a byte-identical file.

    [bold]lwm needle make -m LargeWorldModel/LWM-Text-Chat-1M-Jax --ctx 1K:1M:20 --depths 10 -o needle.jsonl[/]
    """
    from lwm_core.errors import LWMError
    from lwm_core.needle import make as making

    # Everything that can be checked without the tokenizer comes first.
    config = _make_config(task, ctx, depths, depth_spacing, rounds, haystack, template, needles, retrieve,
                          max_new_tokens, seed)
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


@app.command("eval")
def evaluate(
    click_ctx: typer.Context,
    output: Output,
    model: EvalModel = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", metavar="FILE", rich_help_panel=DATA_PANEL, show_default=False,
        help="A dataset that lwm needle make wrote. Without it, the dataset is made on the fly from --ctx "
             "and the other make options.")] = None,
    hf: Annotated[Optional[Path], typer.Option(
        "--hf", metavar="DIR", show_default=False,
        help="Instead of -m: a Hugging Face LlamaForCausalLM directory (as lwm convert jax2hf writes), run by "
             "transformers (needs torch) as a cross-check of lwm's own scores.")] = None,
    tokenizer: TokenizerPath = None,
    preset: Preset = None,
    set_options: SetOptions = None,
    mesh: MeshSpec = "1,-1,1,1",
    dtype: EvalDType = None,
    cpu_kernels: CpuKernels = None,
    quantize: QuantizeOption = None,
    batch_tokens: Annotated[int, typer.Option(
        "--batch-tokens", min=1, metavar="TOKENS", rich_help_panel=RUN_PANEL,
        help="Most prompt tokens per batch (rows x the batch's longest prompt); rows are sorted by length, "
             "and a longer row runs alone.")] = 32768,
    task: TaskOption = "single",
    ctx: EvalCtxOption = None,
    depths: DepthsOption = "10",
    depth_spacing: DepthSpacingOption = "linear",
    rounds: RoundsOption = 1,
    haystack: HaystackOption = "prose",
    template: TemplateOption = "lwm-chat",
    needles: NeedlesOption = 4,
    retrieve: RetrieveOption = 2,
    max_new_tokens: AnswerTokens = None,
    seed: Seed = 0,
    threshold: Threshold = 0.85,
    force: Force = False,
    json_output: JsonOutput = False,
    dry_run: _plan.DryRun = False,
    compile_: _plan.Compile = False,
    device_memory: _plan.DeviceMemory = None,
) -> None:
    """Run a model over a needle dataset (greedy), score each reply, and write RESULTS_DIR: results.jsonl,
    summary.json and heatmap.png.

    A rerun of the same command resumes: rows already in results.jsonl are skipped (--force starts
    afresh). Ctrl-C stops after the current batch and writes the summary of the rows done (exit 130).

    [bold]lwm needle eval -m LargeWorldModel/LWM-Text-Chat-1M-Jax --data needle.jsonl -o runs/lwm-1m[/]

    [bold]lwm needle eval -m random:tiny --ctx 256,512 --depths 3 -o runs/tiny[/]
    """
    from lwm_cli import _errors, _signals

    given = _given(click_ctx, MAKE_PARAMS)
    if data is not None and given:
        flag = "--" + given[0].replace("_", "-")
        raise typer.BadParameter(f"{flag} makes a dataset, and --data gives one; drop one of them",
                                 ctx=click_ctx, param_hint="'--data'")
    if data is None and ctx is None:
        raise typer.BadParameter("no dataset: pass --data FILE (from lwm needle make) or --ctx LENGTHS to "
                                 "make one", ctx=click_ctx, param_hint="'--data'")
    if model is None and hf is None:
        from lwm_core import builtin

        model = builtin.default("needle eval")
    if model is not None and hf is not None:
        raise typer.BadParameter("-m and --hf both name the model; run them one at a time, to two -o "
                                 "directories, and compare with lwm needle plot --compare",
                                 ctx=click_ctx, param_hint="'--hf'")
    if hf is not None:
        jax_only = _given(click_ctx, ("preset", "set_options", "mesh", "cpu_kernels", "quantize"))
        if jax_only:
            flag = {"set_options": "--set"}.get(jax_only[0], "--" + jax_only[0].replace("_", "-"))
            raise typer.BadParameter(f"{flag} is for lwm's own models (-m); --hf DIR runs the directory as it is",
                                     ctx=click_ctx, param_hint="'--hf'")
    if dry_run or compile_ or device_memory is not None:
        if hf is not None:
            raise typer.BadParameter("--dry-run plans lwm's own models (-m); --hf runs a directory as it is",
                                     ctx=click_ctx, param_hint="'--dry-run'")
        devices = _plan.simulate([mesh])  # before jax starts its backend
        _plan.check_options(click_ctx, dry_run, compile_, device_memory)
        _dry_run(model, data, ctx, task, max_new_tokens, batch_tokens, tokenizer=tokenizer, preset=preset,
                 set_options=set_options, mesh=mesh, dtype=dtype, quantize=quantize and quantize.value,
                 devices=devices, compile_=compile_,
                 device_memory=device_memory)
        return
    with _signals.StopRequest("the rows scored so far are in results.jsonl") as stop:
        from lwm_core.needle import eval as needle_eval
        from lwm_core.needle import make as making

        # Everything that can be refused without the weights comes first: a 7B model loads for minutes.
        if hf is not None:
            backend = _HFBackend(str(hf), tokenizer=tokenizer, dtype=dtype)
        else:
            backend = _JaxBackend(model, tokenizer=tokenizer, preset=preset, set_options=set_options, mesh=mesh,
                                  dtype=dtype, cpu_kernels=cpu_kernels, quantize=quantize and quantize.value,
                                  seed=seed)
        config, tok = backend.config, backend.tokenizer
        if data is not None:
            rows = needle_eval.read_dataset(str(data))
        else:
            make_config = _make_config(task, ctx, depths, depth_spacing, rounds, haystack, template, needles,
                                       retrieve, max_new_tokens, seed)
            making.check(make_config, tok, max_context=config.max_sequence_length, model=backend.name)
            rows = list(_progress(making.make_rows(make_config, tok, _read_haystack(haystack)),
                                  sum(1 for _ in making.row_keys(make_config))))
        tokenizer_id = making.tokenizer_digest(tok)
        backend.check_rows(rows)
        digest = needle_eval.dataset_digest(rows)
        directory = str(output)
        done = needle_eval.open_run(directory, digest, force=force)
        done_ids = {r["id"] for r in done}
        generate, facts = backend.load()
        meta = {"model": backend.name, "tokenizer": tokenizer_id, "seed": seed, "dataset": digest, **facts,
                "argv": _argv(click_ctx)}
        results_path = os.path.join(directory, needle_eval.RESULTS)
        dataset_ids = {row["id"] for row in rows}
        results = [r for r in done if r["id"] in dataset_ids]
        total, count = len(rows), len(done_ids)
        stop.stopping = "the summary is written after the current batch"
        stop.aborted = "the rows scored so far are in results.jsonl; rerun the command to resume"
        todo = [row for row in rows if row["id"] not in done_ids]
        with _EvalProgress(todo, count, total) as progress:
            stop.at_abort(progress.close)
            for scored in needle_eval.run(generate, rows, batch_tokens, done_ids):
                needle_eval.append_results(results_path, scored)
                results += scored
                count += len(scored)
                progress.update(scored)
                if stop():
                    break
        summary = _finish(directory, results, meta, threshold, backend.name)
        if json_output:
            sys.stdout.write(json.dumps(summary, sort_keys=True, ensure_ascii=False) + "\n")
        else:
            typer.echo(directory)
        if stop():
            typer.echo(f"stopped by {stop.by} after {count}/{total} rows; rerun the command to resume", err=True)
            raise typer.Exit(_errors.INTERRUPTED)


def _dry_run(model: str, data: Path | None, ctx: str | None, task: str, max_new_tokens: int | None,
             batch_tokens: int, *, devices: int | None, **options) -> None:
    """The plan of the eval's longest batch: its longest prompt (of --data, or of --ctx less the answer),
    as many rows as --batch-tokens takes."""
    from lwm_core.needle import eval as needle_eval
    from lwm_core.needle.config import ANSWER_TOKENS, DEFAULT_ANSWER_TOKENS, parse_ctx

    config = _plan.model_config(model, tokenizer=options.pop("tokenizer"), preset=options.pop("preset"),
                                set_options=options.pop("set_options"), command="needle eval")
    if data is not None:
        rows = needle_eval.read_dataset(str(data))
        longest = max(rows, key=lambda row: row["length"])
        prompt, answer = longest["length"], longest["max_new_tokens"]
    else:
        answer = max_new_tokens if max_new_tokens is not None else ANSWER_TOKENS.get(task, DEFAULT_ANSWER_TOKENS)
        prompt = max(parse_ctx(ctx)) - answer
    if prompt + answer > config.max_sequence_length:
        from lwm_core.errors import LWMError

        raise LWMError(f"a prompt of {prompt + answer:,} tokens with its answer is longer than the context of {model} "
                       f"({config.max_sequence_length:,} tokens); plan a shorter --ctx or --set "
                       f"max_sequence_length={prompt + answer}")
    _plan.inference(config=config, spec=model, mesh_spec=options.pop("mesh"), devices=devices,
                    batch=max(1, batch_tokens // prompt), prompt=prompt, max_new=answer, what="lwm needle eval",
                    **options)


def _finish(directory: str, results: list[dict], meta: dict, threshold: float, model: str) -> dict | None:
    """summary.json and heatmap.png of the rows scored so far (none yet: nothing to summarise)."""
    from lwm_core.needle import plot as needle_plot
    from lwm_core.needle import summary as needle_summary

    if not results:
        return None
    summary = needle_summary.summarize(results, threshold=threshold, meta=meta)
    needle_summary.write_summary(directory, summary)
    needle_plot.heatmap(results, os.path.join(directory, "heatmap.png"), title=f"Needle in a haystack: {model}",
                        threshold=threshold)
    return summary


class _EvalProgress(LineView):
    """rows done/total, the rows' mean score so far, the last batch's prefill tokens/s and an ETA by prompt
    tokens (rows are run shortest first, so an ETA by rows would promise too little); on a terminal a
    live bar, in a log one line per batch."""

    def __init__(self, todo: list[dict], done: int, total: int):
        from lwm_cli._progress import Eta, ProgressLine

        self.done, self.scores, self.tokens = done, [], 0
        self.eta = Eta(sum(row["length"] for row in todo))
        self.line = ProgressLine("eval", total, plain=True)

    def started(self) -> None:
        self.line.update(self.done, "compiling...")

    def update(self, scored: list[dict]) -> None:
        self.done += len(scored)
        self.tokens += sum(row["length"] for row in scored)
        self.scores += [row["score"] for row in scored]
        speed = scored[0].get("prefill_tokens_per_s")
        parts = [f"score {sum(self.scores) / len(self.scores):.2f}",
                 f"prefill {speed:,.0f} tok/s" if speed else "", self.eta(self.tokens)]
        self.line.update(self.done, "  ".join(p for p in parts if p))


def _argv(click_ctx: typer.Context) -> list[str]:
    """The `lwm` arguments this run was started with (what `lwm_cli.main.main` was given, kept by the runner in
    the root context's `_errors.State`), for the summary; none where the command ran without that runner."""
    return list(getattr(click_ctx.find_root().obj, "argv", ()))


def _given(click_ctx: typer.Context, names) -> list[str]:
    """Those of the parameters `names` (Python names) that the command line (or the environment) set."""
    # By name: typer carries its own copy of click, whose ParameterSource is not click's.
    return [name for name in names
            if getattr(click_ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")]


class _JaxBackend:
    """An lwm model spec (-m): resolved (config, tokenizer) at once, the weights by `load`."""

    def __init__(self, spec: str, *, tokenizer, preset, set_options, mesh: str, dtype, cpu_kernels, quantize,
                 seed: int):
        from lwm_cli._model import ModelOptions
        from lwm_cli._options import model_overrides
        from lwm_core.loading import resolve_spec
        from lwm_core.parallel.mesh import check_uses_all_devices

        self.name, self.seed = spec, seed
        self.options = ModelOptions(spec=spec, tokenizer=None if tokenizer is None else str(tokenizer),
                                    preset=preset, overrides=tuple(set_options or ()), mesh=mesh, dtype=dtype,
                                    cpu_kernels=cpu_kernels, quantize=quantize, command="needle eval")
        check_uses_all_devices(mesh)
        self.resolved = resolve_spec(spec, config=preset, tokenizer=self.options.tokenizer,
                                     overrides=model_overrides(self.options.overrides, self.options.command))
        _, self.config, self.tokenizer = self.resolved

    def check_rows(self, rows: list[dict]) -> None:
        from lwm_core.needle import eval as needle_eval
        from lwm_core.needle.make import tokenizer_digest

        needle_eval.check_rows(rows, max_context=self.config.max_sequence_length,
                               tokenizer_id=tokenizer_digest(self.tokenizer), model=self.name)

    def load(self):
        """(generate a batch -> result rows, what ran: mesh, dtype, device kind, versions)."""
        import numpy as np

        from lwm_cli._model import load
        from lwm_core.needle import eval as needle_eval

        lm = load(self.options, seed=self.seed, resolved=self.resolved)  # the spec is not resolved twice
        facts = {"backend": "lwm", "mesh": " ".join(f"{name}={size}" for name, size in lm.mesh.shape.items()),
                 "dtype": np.dtype(lm.dtype).name, "platform": np.ravel(lm.mesh.devices)[0].platform,
                 **_versions()}
        return (lambda batch: needle_eval.generate_batch(lm, batch)), facts


class _HFBackend:
    """A Hugging Face LlamaForCausalLM directory (--hf), run by transformers: the cross-check backend."""

    def __init__(self, directory: str, *, tokenizer, dtype):
        from lwm_core.needle import hf

        hf.require_torch()
        self.name, self.dtype = directory, dtype
        self.resolved = hf.resolve_hf(directory, tokenizer=tokenizer)
        self.config, self.tokenizer = self.resolved

    def check_rows(self, rows: list[dict]) -> None:
        from lwm_core.needle import hf

        hf.check_hf_rows(rows, self.name, self.resolved)

    def load(self):
        import torch
        import transformers

        from lwm_core.needle import hf

        backend = hf.load_hf(self.name, dtype=self.dtype, resolved=self.resolved)
        facts = {"backend": "transformers", "dtype": str(backend.dtype).removeprefix("torch."),
                 "platform": backend.device.type, "torch_version": torch.__version__,
                 "transformers_version": transformers.__version__, **_versions()}
        return backend.generate_batch, facts


def _versions() -> dict:
    """lwm's version and, in a git checkout, `git describe`."""
    import subprocess

    import lwm_core

    facts = {"lwm_version": lwm_core.__version__}
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], capture_output=True,
                                   text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(lwm_core.__file__)))
    except (OSError, subprocess.SubprocessError):
        return facts
    if described.returncode == 0 and described.stdout.strip():
        facts["git"] = described.stdout.strip()
    return facts


def _read_haystack(spec: str):
    from lwm_core.needle import haystack
    from lwm_core.text import decode_utf8

    if spec != "-":
        return haystack.read_haystack(spec)
    return haystack.from_text("stdin", [decode_utf8(sys.stdin.buffer.read(), "stdin")])


def _progress(rows, total: int):
    """The rows, with a live `make 12/40` bar on stderr when it is a terminal (never in files or pipes)."""
    from lwm_cli._progress import ProgressLine

    with ProgressLine("make", total) as line:
        for i, row in enumerate(rows, 1):
            line.update(i)
            yield row


from lwm_cli.needle_plot import plot  # noqa: E402  (its module imports nothing heavy either)

app.command("plot")(plot)
