"""Option types shared by the commands, as `Annotated` aliases: a command's signature is its CLI.

Defaults live in the command signatures (`model: ModelSpec = "random:debug"`), so that one command can
pick a different default without a second copy of the option. Nothing here imports jax or lwm_core at
module level: `lwm --help` and shell completion must stay instant. The completion callbacks import
lwm_core.config lazily; scripts/make_completions.py calls them once to bake their lists into the
completion scripts.
"""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

MODEL_PANEL = "Model"
SAMPLING_PANEL = "Sampling"
OUTPUT_PANEL = "Output"


def _preset_names() -> list[str]:
    from lwm_core.config import CARDS, PRESETS

    return [*PRESETS, *CARDS]


def complete_preset(incomplete: str) -> list[str]:
    return [name for name in _preset_names() if name.startswith(incomplete)]


def complete_model(incomplete: str) -> list[str]:
    # `random:<preset>` specs; the SPEC metavar makes the completion scripts offer paths as well.
    return [spec for spec in (f"random:{name}" for name in _preset_names()) if spec.startswith(incomplete)]


class DType(str, enum.Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


# Limits of the sampling settings, checked both when parsing options and by the chat REPL's `/set`.
def check_max_new_tokens(value: int) -> int:
    if value < 1:
        raise typer.BadParameter(f"max_new_tokens must be at least 1, got {value}")
    return value


def check_temperature(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"temperature must be >= 0 and finite (0 is greedy), got {value}")
    return value


def check_top_k(value: int) -> int:
    if value < 0:
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

ModelSpec = Annotated[str, typer.Option(
    "--model", "-m", metavar="SPEC", autocompletion=complete_model, rich_help_panel=MODEL_PANEL,
    help="The model: a checkpoint directory or file, [bold]KIND::PATH[/] (params::, trainstate::, ...), "
         "a hub id such as [bold]LargeWorldModel/LWM-Text-Chat-1M-Jax[/], or [bold]random:<preset>[/] "
         "(random weights, for trying the CLI out; real use passes a checkpoint).")]
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
    help="Override a config field, e.g. [bold]--set max_sequence_length=32768[/]; repeatable. LWM's "
         "[bold]dict(theta=50000000,max_sequence_length=32768)[/] strings work too.")]
MeshSpec = Annotated[str, typer.Option(
    "--mesh", metavar="DP,FSDP,TP,SP", rich_help_panel=MODEL_PANEL,
    help="Device mesh in LWM's mesh_dim syntax: sizes of the data, fully-sharded, tensor and "
         "sequence parallel axes; one -1 takes the remaining devices.")]
DTypeOption = Annotated[Optional[DType], typer.Option(
    "--dtype", metavar="DTYPE", case_sensitive=False, show_default="float32 on CPU, bfloat16 on GPU/TPU",
    rich_help_panel=MODEL_PANEL, help="Dtype of the weights and the computation: float32, bfloat16 or float16.")]

CpuKernels = Annotated[Optional[bool], typer.Option(
    "--cpu-kernels/--no-cpu-kernels", rich_help_panel=MODEL_PANEL,
    show_default="on one float32 CPU device, when they build",
    help="lwm's C++ decode kernels (built with the machine's compiler on first use): ~1.3x decode speed "
         "on CPU. --no-cpu-kernels decodes with XLA's dots; --cpu-kernels fails if they cannot be used.")]

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
    "--seed", callback=check_seed, rich_help_panel=SAMPLING_PANEL, help="Random seed of the sampler (and of random weights).")]

# --------------------------------------------------------------------------------------- output

JsonOutput = Annotated[bool, typer.Option(
    "--json", rich_help_panel=OUTPUT_PANEL,
    help="Print one JSON object per reply (text, token counts, speed, finish_reason) instead of the "
         "streamed text.")]
