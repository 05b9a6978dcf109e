"""`lwm convert`: LWM checkpoints to Hugging Face `LlamaForCausalLM` directories and back, verified; the
released VQGAN pickle to safetensors."""

from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from lwm_cli._options import (
    OUTPUT_PANEL,
    DTypeOption,
    Force,
    HfModelDir,
    ModelSpec,
    Output,
    Preset,
    SetOptions,
    TokenizerPath,
    VqganSpec,
    model_overrides,
)

VERIFY_PANEL = "Verify"

# A group: `lwm convert jax2hf|hf2jax`, added to the root app by lwm_cli.main as every module's app is.
app = typer.Typer(name="convert", help="Convert between LWM checkpoints and Hugging Face PyTorch (LlamaForCausalLM); "
                                       "a model to int8 or int4; the VQGAN pickle to safetensors.",
                 no_args_is_help=True)


class Bits(str, Enum):
    int8 = "int8"
    int4 = "int4"


class Layout(str, Enum):
    params = "params"  # LWM streaming msgpack, scanned layers (as the released *-Jax repos)
    params_unscanned = "params-unscanned"  # LWM streaming msgpack, transformer/h/{i}/...
    native = "native"  # lwm's directory: config.json + safetensors + tokenizer.model


def _check_tolerance(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"tolerance must be a finite number >= 0, got {value}")
    return value


def _say(text: str) -> None:
    print(text, file=sys.stderr)


@app.command("jax2hf")
def jax2hf(
    output: Output,
    model: ModelSpec = "random:debug",
    tokenizer: TokenizerPath = None,
    preset: Preset = None,
    set_options: SetOptions = None,
    dtype: DTypeOption = "bfloat16",
    max_shard_size: Annotated[str, typer.Option(
        "--max-shard-size", metavar="SIZE", rich_help_panel=OUTPUT_PANEL,
        help="Largest safetensors shard (5GB, 500MB, 2GiB).")] = "5GB",
    text_only: Annotated[bool, typer.Option(
        "--text-only", rich_help_panel=OUTPUT_PANEL,
        help="Export a vision-language model's text model, dropping vte and vision_head.")] = False,
    force: Force = False,
    verify: Annotated[bool, typer.Option(
        "--verify", rich_help_panel=VERIFY_PANEL,
        help="Run both sides in float32 and compare logits and greedy tokens (needs torch).")] = False,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", callback=_check_tolerance, rich_help_panel=VERIFY_PANEL,
        help="Largest max-abs logits difference --verify accepts.")] = 1e-3,
) -> None:
    """Write a Hugging Face directory (config, generation config, safetensors shards + index, tokenizer)
    that transformers' AutoModelForCausalLM / AutoTokenizer load offline.

    [bold]lwm convert jax2hf -m LargeWorldModel/LWM-Text-Chat-1M-Jax -o LWM-Text-Chat-1M-hf --verify[/]
    """
    from lwm_core.api import resolve_spec
    from lwm_core.checkpoint import hf, loader
    from lwm_core.checkpoint.atomic import atomic_dir, check_target

    max_bytes = hf.parse_size(max_shard_size)
    overrides = model_overrides(set_options, "convert jax2hf")
    check_target(str(output), kind="dir", overwrite=force)
    source, config, tok = resolve_spec(model, config=preset, tokenizer=None if tokenizer is None else str(tokenizer),
                                       overrides=overrides)
    hf.check_hf_export(config, dtype, text_only)
    if source.kind == "random":  # no file to stream from: make the weights, then write them
        import lwm_core

        records = loader.host_arrays(lwm_core.load_model(model, config=config, tokenizer=tok, mesh="1,1,1,1").params)
    else:  # checked against the config as they stream: a mismatched pair is refused, never written
        records = loader.checked(loader.records(source), config, origin=source.path)
    # Verification runs on the temporary directory: a model that fails it is never published.
    with atomic_dir(str(output), overwrite=force) as tmp:
        files = hf.write_hf_files(tmp, config, records, dtype=dtype, max_shard_bytes=max_bytes,
                                  tokenizer_path=getattr(tok, "path", None), text_only=text_only)
        if verify:
            _verify(tmp, model, config, tok, dtype, tolerance, text_only)
    from lwm_core.plural import plural

    _say(f"wrote {output} ({plural(len(files), 'safetensors file')}, {dtype})")
    print(output)


def _verify(directory: str, spec: str, config, tokenizer, dtype: str, tolerance: float, text_only: bool) -> None:
    import jax.numpy as jnp

    import lwm_core
    from lwm_core.checkpoint import hf
    from lwm_core.prompts import chat_prompt

    if text_only and config.vision:
        config = config.replace(vision=False)
    # Our side with the weights rounded to what was written, computed in float32 like transformers.
    model = lwm_core.load_model(spec, config=config if not text_only else None, tokenizer=tokenizer,
                                mesh="1,1,1,1", dtype=dtype)
    model = model.astype(jnp.float32)
    # A tokenizer larger than the model's vocabulary (random models, test fixtures) still gives a fixed
    # prompt: its ids are folded into the vocabulary.
    prompt = [t % config.vocab_size for t in tokenizer.encode(chat_prompt("What is a world model?"))]
    result = hf.verify_hf_dir(directory, model, prompt_ids=prompt)
    ok = result["max_abs_diff"] <= tolerance and result["greedy_agree"] == result["greedy_total"]
    print(f"verify: max abs logits diff {result['max_abs_diff']:.3g} (tolerance {tolerance:g}), greedy "
          f"tokens agree {result['greedy_agree']}/{result['greedy_total']}: {'ok' if ok else 'MISMATCH'}")
    if not ok:
        raise _error(f"verification failed: logits differ by {result['max_abs_diff']:.3g} (tolerance "
                     f"{tolerance:g}) and greedy tokens agree {result['greedy_agree']}/{result['greedy_total']}")


@app.command("hf2jax")
def hf2jax(
    ctx: typer.Context,
    output: Output,
    model: HfModelDir = None,
    layout: Annotated[Layout, typer.Option(
        "--format", help="params: LWM streaming msgpack (scanned, as released); params-unscanned; native: "
                         "lwm's directory.", rich_help_panel=OUTPUT_PANEL)] = Layout.params,
    force: Force = False,
    old_source: Annotated[Optional[Path], typer.Argument(
        metavar="HF_DIR", hidden=True, show_default=False,
        help="The form before -m (lwm convert hf2jax HF_DIR -o OUT): still read, not shown.")] = None,
) -> None:
    """Bring a Hugging Face Llama checkpoint (safetensors, or .bin via torch, GQA included) into lwm.

    [bold]lwm convert hf2jax -m ./Llama-hf -o ./llama/params[/]
    """
    if model is not None and old_source is not None:
        ctx.fail(f"two models: -m {model} and {old_source}; name the Hugging Face directory once, with -m")
    source = model if model is not None else old_source
    if source is None:
        ctx.fail("Missing option '--model' / '-m': the Hugging Face directory to read, e.g. "
                 "lwm convert hf2jax -m ./Llama-hf -o ./llama/params")
    import os
    import shutil

    from lwm_core.checkpoint import hf
    from lwm_core.checkpoint.atomic import atomic_dir, atomic_file, check_target, write_text
    from lwm_core.checkpoint.native import write_native
    from lwm_core.checkpoint.streaming import write_records

    native = layout is Layout.native
    # A params file goes into a model folder (created when its parent exists) with config.json and
    # tokenizer.model beside it; a native output is that folder itself.
    check_target(str(output), kind="dir" if native else "file", overwrite=force, create_parent=not native)
    config, tensors = hf.read_hf_dir(str(source))
    tokenizer = source / "tokenizer.model"
    if native:
        write_native(str(output), config, hf.lwm_records_from_hf(config, tensors),
                     tokenizer_path=str(tokenizer) if tokenizer.is_file() else None, overwrite=force)
    else:
        beside = output.parent
        config_text = config.replace(scan_layers=layout is Layout.params).to_json()
        existing = beside / "config.json"
        if existing.is_file() and existing.read_bytes() != config_text.encode() and not force:
            raise _error(f"{existing} already exists and describes another model; pass --force to replace "
                         f"it, or write into an empty folder")
        records = hf.lwm_records_from_hf(config, tensors, scanned=layout is Layout.params)
        if beside.is_dir():  # each file atomically, beside what the folder holds
            write_records(str(output), records)
            write_text(str(existing), config_text)
            if tokenizer.is_file():
                with atomic_file(str(beside / "tokenizer.model")) as f:
                    f.write(tokenizer.read_bytes())
        else:  # a new folder: filled as a whole and published at once
            with atomic_dir(str(beside)) as tmp:
                write_records(os.path.join(tmp, output.name), records)
                with open(os.path.join(tmp, "config.json"), "w") as f:
                    f.write(config_text)
                if tokenizer.is_file():
                    shutil.copyfile(tokenizer, os.path.join(tmp, "tokenizer.model"))
    from lwm_core.plural import plural

    _say(f"wrote {output} ({plural(config.num_hidden_layers, 'layer')}, "
         f"{plural(config.num_attention_heads, 'head')}, {plural(config.kv_heads, 'kv head')})")
    print(output)


# `lwm convert vqgan` reads a VQGAN, so its -m has its own type and help (the names are the shared ones).


@app.command("quantize")
def quantize(
    output: Output,
    model: ModelSpec = "random:debug",
    tokenizer: TokenizerPath = None,
    preset: Preset = None,
    set_options: SetOptions = None,
    bits: Annotated[Bits, typer.Option(
        "--to", rich_help_panel=OUTPUT_PANEL,
        help="int8: one scale per output channel, about a quarter of float32's size; int4: 4 bits with a scale "
             "per 32 inputs, about 5/32 of it, coarser.")] = Bits.int8,
    force: Force = False,
) -> None:
    """Write a quantized copy of a model: lwm's directory with the projections and output heads as int8 (one
    float32 scale per output channel) or int4 (a float32 scale per 32 inputs and output channel), which every
    command loads as it is.

    [bold]lwm convert quantize -m LargeWorldModel/LWM-Text-Chat-1M-Jax -o LWM-Text-Chat-1M-int8[/]

    The checkpoint streams in and is quantized one array at a time: memory holds the quantized model and one
    float array, so a model too large for float32 in memory converts.
    """
    import lwm_core
    from lwm_core.checkpoint.atomic import check_target

    overrides = model_overrides(set_options, "convert quantize")
    check_target(str(output), kind="dir", overwrite=force)
    loaded = lwm_core.load_model(model, config=preset, tokenizer=None if tokenizer is None else str(tokenizer),
                                 overrides=overrides, mesh="1,1,1,1", dtype="float32", quantize=bits.value)
    loaded.save(str(output), overwrite=force)
    import jax

    stored = sum(a.nbytes for a in jax.tree.leaves(loaded.params))
    floats = 4 * loaded.config.num_params()
    _say(f"wrote {output} ({bits.value} weights: {stored / 2**20:.1f} MiB, {stored / floats:.2f} of float32's "
         f"{floats / 2**20:.1f} MiB)")
    print(output)


@app.command("vqgan")
def vqgan(
    ctx: typer.Context,
    output: Output,
    source: Annotated[Optional[str], typer.Argument(
        metavar="VQGAN", show_default=False,
        help="The released vqgan pickle (or a model directory holding it, or a hub id).")] = None,
    model: VqganSpec = None,
    set_options: SetOptions = None,
    force: Force = False,
) -> None:
    """Convert LWM's VQGAN pickle (`vqgan` in the LWM-Chat-*-Jax repos) into a directory of safetensors and
    config.json, read without running pickle code (a file that would is refused). Load the result with
    lwm_core.load_vqgan(DIR). The released architecture is assumed; --set its fields (channel_mult=1,2,2,4,6,
    hidden_channels=128, ...) for another.

    [bold]lwm convert vqgan LWM-Chat-1M-Jax/vqgan -o vqgan-safetensors[/]
    """
    if model is not None and source is not None:
        ctx.fail(f"two VQGANs: {source} and -m {model}; name it once")
    spec = source if source is not None else model
    if spec is None:
        ctx.fail("Missing argument 'VQGAN': the VQGAN to convert, e.g. lwm convert vqgan ./vqgan -o ./vqgan-st")
    from lwm_core.checkpoint.atomic import check_target
    from lwm_core.vision.loading import read_vqgan, write_vqgan_dir

    overrides = model_overrides(set_options, "convert vqgan")
    check_target(str(output), kind="dir", overwrite=force)
    config, params = read_vqgan(spec, config=overrides or None)
    write_vqgan_dir(str(output), config, params, overwrite=force)
    size = sum(a.nbytes for a in params.values())
    side, codes = config.codes_per_side, config.num_embeddings
    _say(f"wrote {output} ({len(params)} float32 arrays, {size / 2**20:.1f} MiB; {config.resolution}x"
         f"{config.resolution} frames -> {side}x{side} codes of {codes})")
    print(output)


def _error(message: str) -> Exception:
    from lwm_core.errors import LWMError

    return LWMError(message)
