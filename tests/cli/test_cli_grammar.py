"""One CLI grammar: an option shared by several commands has the same names, type and help in each
(lwm_cli/_options.py declares it once); `-m/--model` names every model input, `--dtype` takes the full
names and the short spellings everywhere, the old `hf2jax HF_DIR` form still works, and the help and the
package metadata promise only commands that exist.

The walk over the command tree is cheap (no jax); the end-to-end checks run tiny models in-process.
"""

from __future__ import annotations

import io
import json
import re

import pytest
import typer

from helpers import ROOT
from helpers import run_cli as _run

# The shared options, and where each must be: a command that reads a model takes -m/--model, one that
# writes an output takes -o/--output and --force, and so on.
SHARED = {
    "--model": {"chat", "train", "convert jax2hf", "convert hf2jax", "convert quantize", "convert vqgan", "needle make",
                "needle eval", "vqgan encode", "vqgan decode", "gen image", "gen video"},
    "--output": {"convert jax2hf", "convert hf2jax", "convert quantize", "convert vqgan", "needle make", "needle plot",
                 "needle eval", "vqgan encode", "vqgan decode", "vqgan train", "gen image", "gen video", "world make",
                 "world show"},
    "--force": {"convert jax2hf", "convert hf2jax", "convert quantize", "convert vqgan", "needle make", "needle plot",
                "needle eval", "vqgan encode", "vqgan decode", "vqgan train", "gen image", "gen video", "world make",
                "world show"},
    "--dtype": {"chat", "convert jax2hf", "needle eval", "gen image", "gen video"},
    "--mesh": {"chat", "train", "needle eval", "vqgan encode", "vqgan decode", "gen image", "gen video"},
    "--set": {"chat", "train", "convert jax2hf", "convert quantize", "convert vqgan", "needle eval", "vqgan encode",
              "vqgan decode", "vqgan train", "gen image", "gen video"},
    "--tokenizer": {"chat", "convert jax2hf", "convert quantize", "needle make", "needle eval", "gen image",
                    "gen video"},
    "--preset": {"chat", "convert jax2hf", "convert quantize", "needle eval", "gen image", "gen video", "vqgan train"},
    "--vqgan": {"chat", "gen image", "gen video"},
    "--max-frames": {"chat", "vqgan encode"},
    "--dry-run": {"chat", "train", "needle eval"},
    "--compile": {"chat", "train", "needle eval"},
    "--device-memory": {"chat", "train", "needle eval"},
    "--seed": {"chat", "needle make", "needle eval", "gen image", "gen video", "world make", "world show",
               "vqgan train"},
    "--fps": {"gen video", "vqgan decode", "world make", "world show"},
    "--quantize": {"chat", "needle eval", "gen image", "gen video"},
    "--cpu-kernels": {"chat", "needle eval"},
}
# hf2jax reads a Hugging Face directory, convert vqgan and vqgan encode/decode a VQGAN, not an lwm model spec;
# a needle dataset's --max-new-tokens is the answer budget each row keeps free (per task when not given), not a
# reply limit; lwm gen's --batch-size counts prompts, vqgan's frames; lwm train's --dry-run also prints the
# resolved config of every stage; vqgan train's --preset names VQGAN presets and its --batch-size counts the
# frames of a training step: the same names, their own type and help.
OTHER_KIND = {("convert hf2jax", "--model"), ("convert vqgan", "--model"), ("needle make", "--max-new-tokens"),
              ("needle eval", "--max-new-tokens"), ("vqgan encode", "--model"), ("vqgan decode", "--model"),
              ("gen image", "--batch-size"), ("gen video", "--batch-size"), ("train", "--dry-run"),
              ("vqgan train", "--preset"), ("vqgan train", "--batch-size")}


def _commands():
    """{"chat": click command, "convert jax2hf": ..., ...}: every command that runs (no groups)."""
    import lwm_cli.main

    out = {}

    def walk(command, path):
        if hasattr(command, "list_commands"):
            for name in command.list_commands(None):
                walk(command.get_command(None, name), (*path, name))
        else:
            out[" ".join(path)] = command

    walk(typer.main.get_command(lwm_cli.main.app), ())
    return out


def _options(command) -> dict[str, object]:
    """The visible options of a command by their first long name."""
    return {next(o for o in p.opts if o.startswith("--")): p for p in command.params
            if p.param_type_name == "option" and not p.hidden}


def _names(param) -> tuple:
    return tuple(sorted(param.opts)), tuple(sorted(param.secondary_opts))


def _kind(param) -> tuple:
    """What the option takes: annotation, choices, parser, metavar, whether repeatable or a flag."""
    info = param.type_descriptor.parameter_info
    return (param.type_descriptor.annotation, param.type_descriptor.choices, info.parser, param.metavar,
            param.multiple, param.is_flag, param.count)


def test_shared_options_have_the_same_names_type_and_help_everywhere():
    commands = _commands()
    assert set(commands) == {"chat", "train", "convert jax2hf", "convert hf2jax", "convert quantize", "convert vqgan",
                             "needle make",
                             "needle eval", "needle plot", "vqgan encode", "vqgan decode", "vqgan train", "gen image",
                             "gen video", "world make", "world show", "models"}
    by_name: dict[str, list[tuple[str, object]]] = {}
    for path, command in commands.items():
        for name, param in _options(command).items():
            by_name.setdefault(name, []).append((path, param))
    for name, where in SHARED.items():
        assert {path for path, _ in by_name.get(name, [])} == where, name
    for name, uses in by_name.items():
        if name == "--help":
            continue
        first_path, first = uses[0]
        for path, param in uses[1:]:
            assert _names(param) == _names(first), f"{name}: {path} vs {first_path}"
            if (path, name) in OTHER_KIND or (first_path, name) in OTHER_KIND:
                continue
            assert _kind(param) == _kind(first), f"{name}: the type in {path} differs from {first_path}'s"
            assert param.help == first.help, f"{name}: the help in {path} differs from {first_path}'s"
    # A short name means one long option in every command (-m is --model, -o --output, ...).
    short: dict[str, set] = {}
    for uses in by_name.values():
        for _, param in uses:
            for opt in param.opts:
                if not opt.startswith("--"):
                    short.setdefault(opt, set()).add(tuple(sorted(param.opts)))
    assert all(len(longs) == 1 for longs in short.values()), short


def test_model_options_are_dash_m_everywhere_and_hf2jax_takes_no_visible_positional():
    for path, command in _commands().items():
        # read results, draw clips, train a VQGAN from scratch or list the built-in models: read no model
        if path in ("needle plot", "world make", "world show", "vqgan train", "models"):
            assert "--model" not in _options(command)
            continue
        assert "-m" in _options(command).get("--model").opts, path
        visible_args = [p for p in command.params if p.param_type_name == "argument" and not p.hidden]
        assert path != "convert hf2jax" or visible_args == []


def test_commands_are_registered_one_way():
    """Every command module exposes `app` (a Typer), and the root's commands are theirs, in order."""
    import lwm_cli.main

    root = typer.main.get_command(lwm_cli.main.app)
    names = []
    for module in lwm_cli.main.COMMANDS:
        assert isinstance(module.app, typer.Typer), module.__name__
        group = module.app.info.name  # a group (`convert`) is named; a module of commands is not
        names += [group] if isinstance(group, str) else [c.name for c in module.app.registered_commands]
    assert root.list_commands(None) == names == ["chat", "gen", "train", "convert", "needle", "vqgan", "world",
                                                        "models"]


def test_dtype_spellings_come_from_lwm_core():
    from lwm_cli._options import complete_dtype, parse_dtype
    from lwm_core import dtypes

    for alias, name in dtypes.ALIASES.items():
        assert parse_dtype(alias) == parse_dtype(alias.upper()) == name
    with pytest.raises(typer.BadParameter, match="'float8' is not one of float32, bfloat16, float16 \\(or fp32"):
        parse_dtype("float8")
    assert complete_dtype() == list(dtypes.NAMES)
    help_text = _options(_commands()["chat"])["--dtype"].help
    assert all(name in help_text for name in [*dtypes.NAMES, *dtypes.SHORT.values()])


def test_help_and_metadata_promise_only_commands_that_exist():
    import lwm_cli.main

    commands = set(typer.main.get_command(lwm_cli.main.app).list_commands(None))
    # Evaluating is `lwm needle eval`: a promise of evals is kept by the `needle` group.
    promises = {"chat": r"\bchat", "train": r"\btrain", "convert": r"\bconvert|export",
                "gen": r"\bgenerat", "needle": r"\bneedle|\beval", "vqgan": r"\bvqgan",
                "world": r"synthetic video world",  # not "world": every text says Large World Model
                "models": r"built-in (demo )?models"}
    root_help = lwm_cli.main.root.__doc__
    description = re.search(r'^description = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for text in (root_help, description):
        said = {command for command, pattern in promises.items() if re.search(pattern, text, re.I)}
        assert said == commands, text


# ----------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny Hugging Face directory, written by jax2hf (no torch needed)."""
    import lwm_core
    from lwm_core.checkpoint import hf, loader

    out = tmp_path_factory.mktemp("hf") / "tiny-hf"
    model = lwm_core.load_model("random:tiny", mesh="1,1,1,1")
    out.mkdir()
    hf.write_hf_files(str(out), model.config, loader.host_arrays(model.params), dtype="float32")
    return out


def test_hf2jax_takes_dash_m_and_still_reads_the_old_positional_form(capsys, tmp_path, hf_dir):
    new, old = tmp_path / "new" / "params", tmp_path / "old" / "params"
    assert _run(capsys, "convert", "hf2jax", "-m", str(hf_dir), "-o", str(new))[:2] == (0, f"{new}\n")
    assert _run(capsys, "convert", "hf2jax", str(hf_dir), "-o", str(old))[:2] == (0, f"{old}\n")
    assert new.read_bytes() == old.read_bytes()
    assert (new.parent / "config.json").read_bytes() == (old.parent / "config.json").read_bytes()
    # neither, or both: a usage error that says what to type
    code, out, err = _run(capsys, "convert", "hf2jax", "-o", str(tmp_path / "x"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "Missing option '--model' / '-m'" in err and "lwm convert hf2jax -m ./Llama-hf -o" in err
    code, _, err = _run(capsys, "convert", "hf2jax", "-m", str(hf_dir), str(hf_dir), "-o", str(tmp_path / "x"))
    assert code == 2 and "name the Hugging Face directory once, with -m" in err
    assert not (tmp_path / "x").exists()


def test_jax2hf_dtype_short_and_full_spellings_write_the_same_files(capsys, tmp_path):
    from safetensors import safe_open

    written = {}
    for spelling in ("bf16", "bfloat16", "BF16"):
        out = tmp_path / spelling
        code, stdout, err = _run(capsys, "convert", "jax2hf", "-m", "random:tiny", "-o", str(out), "--dtype", spelling)
        assert (code, stdout) == (0, f"{out}\n"), err
        assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
        with safe_open(str(out / "model.safetensors"), "np") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
        written[spelling] = (out / "model.safetensors").read_bytes()
    assert written["bf16"] == written["bfloat16"] == written["BF16"]


def test_chat_dtype_short_and_full_spellings_load_the_same_model(capsys, monkeypatch):
    import numpy as np

    import lwm_cli.chat

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # no persistent cache from an in-process run
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    loaded = []
    real_load = lwm_cli.chat.load

    def load(options, *, seed=0):
        model = real_load(options, seed=seed)
        loaded.append((options.dtype, np.dtype(model.dtype).name))
        return model

    monkeypatch.setattr(lwm_cli.chat, "load", load)
    replies = []
    for spelling in ("bf16", "bfloat16"):
        code, out, err = _run(capsys, "chat", "-m", "random:tiny", "--dtype", spelling, "-t", "0", "-n", "4",
                              "--json", "hi")
        assert code == 0, err
        replies.append(json.loads(out))
    assert loaded == [("bfloat16", "bfloat16")] * 2
    assert replies[0]["text"] == replies[1]["text"] and replies[0]["completion_tokens"] == 4


def test_set_means_the_same_in_every_command():
    """Model fields bare or as model.KEY (and in LWM's dict strings) everywhere; lwm train also takes its
    run config's sections; chat and convert refuse those with a line that says what --set takes."""
    from lwm_cli._options import model_overrides, run_sets
    from lwm_core.errors import LWMError
    from lwm_core.train.config import load_run_config

    assert model_overrides(["theta=5e7", "model.max_sequence_length=64"], "chat") == \
        {"theta": "5e7", "max_sequence_length": "64"}
    assert model_overrides(["dict(theta=5e7,vision=True)"], "chat") == {"theta": 5e7, "vision": True}
    with pytest.raises(LWMError, match=r"^--set train.steps=...: lwm chat sets model config fields only"):
        model_overrides(["train.steps=5"], "chat")
    sets = ["theta=1e6", "model.rope_theta=2e6", "dict(max_sequence_length=512,vision=False,scan_mlp=True)",
            "train.steps=7", "mesh=1,-1,1,1"]
    assert run_sets(sets) == ["model.theta=1e6", "model.theta=2e6", "model.max_sequence_length=512",
                              "model.vision=false", "train.steps=7", "mesh=1,-1,1,1"]
    run = load_run_config(str(ROOT / "configs" / "cpu-tiny.toml"), run_sets(sets))
    assert dict(run.model.overrides) == {"theta": "2e6", "max_sequence_length": "512", "vision": "false"}
    assert run.train.steps == 7
