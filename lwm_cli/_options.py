"""Option types shared by the commands, as `Annotated` aliases: a command's signature is its CLI.

One grammar: an option that two commands share is declared here once, so that it has the same names,
type and help in every command (tests/cli/test_cli_grammar.py walks the commands to hold them to it):
`-m/--model` for every model a command reads, `-o/--output` and `--force` for what it writes, `--dtype`
(float32|bfloat16|float16, or fp32/f32, bf16, fp16/f16), `--mesh`, `--set KEY=VALUE` (model fields bare
or as model.KEY in every command; see `model_overrides` and `run_sets`).

Defaults live in the command signatures (`model: ModelSpec = "random:debug"`), so that one command can
pick a different default without a second copy of the option; `shown_default` words a default that the
command resolves later. Nothing here imports jax or lwm_core at module level: `lwm --help` and shell
completion must stay instant. The completion callbacks import lwm_core lazily;
scripts/make_completions.py calls them once to bake their lists into the completion scripts.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Iterable, Optional

import typer

MODEL_PANEL = "Model"
SAMPLING_PANEL = "Sampling"
OUTPUT_PANEL = "Output"
INPUT_PANEL = "Inputs"


def _preset_names() -> list[str]:
    from lwm_core.config import CARDS, PRESETS

    return [*PRESETS, *CARDS]


def complete_preset(incomplete: str) -> list[str]:
    return [name for name in _preset_names() if name.startswith(incomplete)]


def complete_model(incomplete: str) -> list[str]:
    # The built-in models and `random:<preset>` specs; the SPEC metavar makes the completion scripts offer
    # paths as well.
    from lwm_core.builtin import MODELS

    specs = [*MODELS, *(f"random:{name}" for name in _preset_names())]
    return [spec for spec in specs if spec.startswith(incomplete)]


# Limits of the sampling settings, checked both when parsing options and by the chat REPL's `/set`.
def check_max_new_tokens(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise typer.BadParameter(f"max_new_tokens must be at least 1, got {value}")
    return value


def check_fps(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"fps must be a positive number, got {value}")
    return value


def check_temperature(value: float | None) -> float | None:
    if value is None:  # a command that resolves its default later
        return value
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"temperature must be >= 0 and finite (0 is greedy), got {value}")
    return value


def check_top_k(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise typer.BadParameter(f"top_k must be >= 0 (0 turns it off), got {value}")
    return value


SEED_LIMIT = 2**32  # seeds are 32-bit, as in most tools; the chat adds the turn number to it


def check_seed(value: int) -> int:
    if not 0 <= value < SEED_LIMIT:
        raise typer.BadParameter(f"seed must be an integer from 0 to {SEED_LIMIT - 1}, got {value}")
    return value


def check_top_p(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"top_p must be in 0 < top_p <= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------- model

MODEL_NAMES = ("--model", "-m")  # every model a command reads, whatever its kind (see HfModelDir)

ModelSpec = Annotated[Optional[str], typer.Option(
    *MODEL_NAMES, metavar="SPEC", autocompletion=complete_model, rich_help_panel=MODEL_PANEL,
    help="The model: a built-in demo model ([bold]lwm-demo-vision[/], [bold]lwm-demo-text[/]: lwm models), a "
         "checkpoint directory or file, [bold]KIND::PATH[/] (params::, trainstate::, ...), "
         "a hub id such as [bold]LargeWorldModel/LWM-Text-Chat-1M-Jax[/], or [bold]random:<preset>[/] "
         "(random weights, for trying the CLI out; real use passes a checkpoint).")]
# `lwm convert hf2jax` reads another kind of model, so its -m has its own type and help; the names are
# the same (tests/cli/test_cli_grammar.py holds it to that).
HfModelDir = Annotated[Optional[Path], typer.Option(
    *MODEL_NAMES, metavar="HF_DIR", rich_help_panel=MODEL_PANEL, show_default=False,
    help="The model: a Hugging Face Llama directory (config.json and safetensors or .bin weights), "
         "e.g. one that transformers' save_pretrained wrote.")]
VqganSpec = Annotated[Optional[str], typer.Option(
    *MODEL_NAMES, metavar="VQGAN", rich_help_panel=MODEL_PANEL, show_default=False,
    help="The VQGAN: the released [bold]vqgan[/] pickle, a directory written by lwm convert vqgan, a model "
         "directory holding one, a hub id such as [bold]LargeWorldModel/LWM-Chat-1M-Jax[/], or "
         "[bold]random:<preset>[/] (tiny, default).")]
# The VQGAN that goes with a vision model (lwm gen, lwm chat --image): --vqgan, as -m names the model itself.
ModelVqgan = Annotated[Optional[str], typer.Option(
    "--vqgan", metavar="VQGAN", rich_help_panel=MODEL_PANEL, show_default="the one beside the model",
    help="The VQGAN between pixels and the model's codes: the released [bold]vqgan[/] file, a directory written by "
         "lwm convert vqgan, a model directory holding one, a hub id, or [bold]random:<preset>[/]: the one the model "
         "was trained with (its grid, 16x16 codes for LWM's, is the model's frame).")]
TokenizerPath = Annotated[Optional[Path], typer.Option(
    "--tokenizer", metavar="PATH", rich_help_panel=MODEL_PANEL,
    help="A sentencepiece tokenizer.model (or a directory holding one). Default: the one beside the "
         "weights; the small shipped tokenizer for random models.")]
Preset = Annotated[Optional[str], typer.Option(
    "--preset", "--card", metavar="NAME", autocompletion=complete_preset, rich_help_panel=MODEL_PANEL,
    help="Model config: a preset (tiny, debug, 7b, ...) or a release card (LWM-Text-Chat-1M, ...). "
         "Default: the config beside the weights, or the card of a released repo.")]
SetOptions = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", rich_help_panel=MODEL_PANEL,
    help="Override a config field; repeatable. Model fields as [bold]--set theta=5e7[/] or [bold]--set "
         "model.theta=5e7[/], or in LWM's [bold]dict(theta=5e7,max_sequence_length=32768)[/] strings; lwm "
         "train and lwm vqgan train also set their training keys, e.g. [bold]--set train.steps=200[/].")]
MeshSpec = Annotated[Optional[str], typer.Option(
    "--mesh", metavar="DP,FSDP,TP,SP", rich_help_panel=MODEL_PANEL,
    help="Device mesh in LWM's mesh_dim syntax: sizes of the data, fully-sharded, tensor and "
         "sequence parallel axes; one -1 takes the remaining devices.")]

def parse_dtype(value: str) -> str:
    """`--dtype`: a dtype name or a short spelling (bf16, fp32, ...; any case) -> its full name, from
    lwm_core.dtypes, the one table of dtype spellings (imported here, when an option is parsed, so that
    `lwm --help` and completion never import lwm_core)."""
    from lwm_core import dtypes

    name = dtypes.ALIASES.get(value.strip().lower())
    if name is None:
        short = [alias for alias in dtypes.ALIASES if alias not in dtypes.NAMES]
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(dtypes.NAMES)} (or {', '.join(short)})")
    return name


def complete_dtype() -> list[str]:
    # The full names only: offering bf16 beside bfloat16 would double every choice.
    from lwm_core.dtypes import NAMES

    return list(NAMES)


# The help spells the names out (it must not import lwm_core); test_cli_grammar.py checks them against
# lwm_core.dtypes.
DTypeOption = Annotated[Optional[str], typer.Option(
    "--dtype", metavar="DTYPE", parser=parse_dtype, autocompletion=complete_dtype, rich_help_panel=MODEL_PANEL,
    help="Dtype of the weights: float32, bfloat16 or float16 (or fp32, bf16, fp16).")]

CpuKernels = Annotated[Optional[bool], typer.Option(
    "--cpu-kernels/--no-cpu-kernels", rich_help_panel=MODEL_PANEL,
    show_default="on one float32 CPU device, when they build",
    help="lwm's C++ decode kernels (built with the machine's compiler on first use): faster decode "
         "on CPU. --no-cpu-kernels decodes with XLA's dots; --cpu-kernels fails if they cannot be used.")]


class QuantizeMode(str, Enum):
    """How the weights are held in memory (lwm_core.quantize)."""

    none = "none"
    int8 = "int8"
    int4 = "int4"


QuantizeOption = Annotated[Optional[QuantizeMode], typer.Option(
    "--quantize", rich_help_panel=MODEL_PANEL, show_default="as the checkpoint stores them",
    help="int8: the weights as int8 with a scale per output channel, a quarter of float32's memory, quantized "
         "as they load; int4: 4 bits with a scale per 32 inputs, 5/32 of float32's memory, coarser; decode on "
         "CPU reads either with lwm's kernels. none: float weights.")]


def shown_default(option: Any, text: str) -> Any:
    """`option` (one of the aliases above) with `text` as the default its help shows: for a None default
    that the command resolves later (chat's --dtype: float32 on CPU, bfloat16 on GPU/TPU). The names,
    type and help stay the shared ones."""
    import copy
    import typing

    kind, info = typing.get_args(option)
    info = copy.copy(info)
    info.show_default = text
    return Annotated[kind, info]


# ------------------------------------------------------------------------------------------ --set
# One grammar in every command: KEY=VALUE sets a config field, typed by the field (never evaluated).
# A model field may be written bare (theta=5e7, as LWM's flags and dict(...) strings name it) or as
# model.theta, its name in lwm train's run config: a --set copied between commands means the same.


def model_overrides(items: Iterable[str] | None, command: str) -> dict[str, Any]:
    """--set items of a command that loads one model (`lwm chat`, `lwm convert jax2hf`) -> the model
    config overrides (`lwm_core.load_model(overrides=...)`), checked there field by field."""
    from lwm_core.config import parse_set_options
    from lwm_core.errors import LWMError

    out: dict[str, Any] = {}
    for key, value in parse_set_options(items or ()).items():
        section, dot, name = key.partition(".")
        if dot and section != "model":
            raise LWMError(f"--set {key}=...: lwm {command} sets model config fields only (--set theta=5e7 "
                           f"or --set model.theta=5e7); {key} is not one of them")
        out[name if dot else key] = value
    return out


def run_sets(items: Iterable[str] | None) -> list[str]:
    """`lwm train`'s --set items -> the run config's `section.key=value` items: a bare model field
    (theta=1e6) and the fields of LWM's dict(...) strings become model.<field>; LWM's names become ours
    (rope_theta -> theta) and the LWM keys that `lwm chat` ignores are ignored here too. Anything else is
    passed on as given, for `load_run_config` to check (or refuse with the nearest key)."""
    import dataclasses

    from lwm_core.config import LWM_ALIASES, LWM_IGNORED, ModelConfig, parse_lwm_override

    lwm_names = {f.name for f in dataclasses.fields(ModelConfig)} | set(LWM_ALIASES) | set(LWM_IGNORED)
    out = []
    for item in items or ():
        text = item.strip()
        if text.startswith(("dict(", "{")):
            pairs = [(f"model.{k}", _config_text(v)) for k, v in parse_lwm_override(text).items()]
        else:
            key, sep, value = text.partition("=")
            if not sep:
                out.append(item)
                continue
            pairs = [(key.strip(), value.strip())]
        for key, value in pairs:
            section, dot, name = key.partition(".")
            if not dot and key in lwm_names:
                section, name = "model", key
            if section == "model":
                if name in LWM_IGNORED:
                    continue
                key = f"model.{LWM_ALIASES.get(name, name)}"
            out.append(f"{key}={value}")
    return out


def _config_text(value: Any) -> str:
    # A value of a dict(...) string as --set would spell it (True -> true), to be typed by its field.
    return str(value).lower() if isinstance(value, bool) else str(value)


# ------------------------------------------------------------------------------------- sampling

MaxNewTokens = Annotated[int, typer.Option(
    "--max-new-tokens", "-n", callback=check_max_new_tokens, rich_help_panel=SAMPLING_PANEL,
    help="Most tokens to generate per reply.")]
Temperature = Annotated[float, typer.Option(
    "--temperature", "-t", callback=check_temperature, rich_help_panel=SAMPLING_PANEL,
    help="Sampling temperature; 0 is greedy (deterministic).")]
TopK = Annotated[int, typer.Option(
    "--top-k", callback=check_top_k, rich_help_panel=SAMPLING_PANEL,
    help="Sample from the k most likely tokens only; 0 turns the filter off.")]
TopP = Annotated[float, typer.Option(
    "--top-p", callback=check_top_p, rich_help_panel=SAMPLING_PANEL,
    help="Nucleus sampling: the smallest set of tokens whose probability reaches p (0 < p <= 1).")]
Seed = Annotated[int, typer.Option(
    "--seed", callback=check_seed, rich_help_panel=SAMPLING_PANEL,
    help="Random seed: of the sampler and random weights (chat), of the generated rows (needle make), of the "
         "clips (world), of the initial weights, batch order and held-out files (vqgan train).")]

# ---------------------------------------------------------------------------------------- input

MaxFrames = Annotated[int, typer.Option(
    "--max-frames", metavar="N", min=1, rich_help_panel=INPUT_PANEL,
    help="Frames per video, evenly spaced from the first to the last (LWM's sampling); an image is one.")]

# --------------------------------------------------------------------------------------- output

Fps = Annotated[float, typer.Option(
    "--fps", metavar="FPS", callback=check_fps, rich_help_panel=OUTPUT_PANEL,
    help="Frames per second of a video output.")]
Output = Annotated[Path, typer.Option(
    "--output", "-o", metavar="PATH", rich_help_panel=OUTPUT_PANEL, show_default=False,
    help="Where to write. An existing output is refused unless --force.")]
Force = Annotated[bool, typer.Option(
    "--force", rich_help_panel=OUTPUT_PANEL,
    help="Replace the output if it exists (the old one stays whole until the new one is complete).")]
JsonOutput = Annotated[bool, typer.Option(
    "--json", rich_help_panel=OUTPUT_PANEL,
    help="Print JSON on stdout instead of text: in chat one object per reply (text, token counts, speed, "
         "finish_reason, the images and videos asked about), in needle eval the run's summary.")]
