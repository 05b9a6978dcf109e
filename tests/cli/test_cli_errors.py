"""Bad input to `lwm chat` ends in exactly one line on stderr, no traceback, and the right exit status:
2 for usage errors, 1 for errors found by the library (`LWMError`), 130 for Ctrl-C. `--debug` shows the
traceback. The exit-code mapping itself (`lwm_cli._errors.run`) is also tested in-process.
"""

from __future__ import annotations

import pytest
import typer

from helpers import lwm

TINY = ("chat", "-m", "random:tiny")


def one_error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in out.stderr
    assert out.stdout == ""
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    ((*TINY, "--max-new-tokens", "-5", "hi"), "max_new_tokens must be at least 1, got -5"),
    ((*TINY, "--top-p", "0", "hi"), "top_p must be in 0 < top_p <= 1"),
    ((*TINY, "--temperature", "-1", "hi"), "temperature must be >= 0"),
    ((*TINY, "--dtype", "float8", "hi"), "'float8' is not one of"),
    ((*TINY, "--no-such-option", "hi"), "No such option: --no-such-option"),
    (TINY, "no question: pass PROMPT"),  # stdin is empty and not a terminal
    ((*TINY, "  "), "the question is empty"),
])
def test_usage_errors_exit_2(cli_env, args, expected):
    out = lwm(cli_env, *args)
    assert out.returncode == 2
    line = one_error_line(out)
    assert expected in line and "lwm chat --help" in line


@pytest.mark.parametrize("args, expected", [
    ((*TINY, "--preset", "7bb", "hi"), "unknown preset or card '7bb'; did you mean '7b'?"),
    ((*TINY, "--set", "max_seq_len=64", "hi"), "unknown config key 'max_seq_len'; did you mean"),
    ((*TINY, "--set", "dict(theta=1e6,rms_norm_epss=1e-5)", "hi"), "did you mean 'rms_norm_eps'?"),
    ((*TINY, "--mesh", "1,2,3", "hi"), "mesh '1,2,3' is not four integers"),
    ((*TINY, "--mesh", "3,1,1,1", "hi"), "mesh 3,1,1,1 needs 3 devices but 1"),
    (("chat", "-m", "/nonexistent/checkpoint", "hi"), "/nonexistent/checkpoint"),
    ((*TINY, "--set", "max_sequence_length=64", "word " * 80), "exceeds the model's context of 64 tokens"),
])
def test_library_errors_exit_1(cli_env, args, expected):
    out = lwm(cli_env, *args)
    assert out.returncode == 1
    assert expected in one_error_line(out)


def test_a_tokenizer_that_is_not_sentencepiece(cli_env, tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(bytes(range(256)) * 4)
    out = lwm(cli_env, *TINY, "--tokenizer", str(bad), "hi")
    assert out.returncode == 1
    assert f"{bad} is not a sentencepiece tokenizer.model" in one_error_line(out)


def test_debug_shows_the_traceback(cli_env):
    out = lwm(cli_env, "--debug", *TINY, "--preset", "7bb", "hi")
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr and "LWMError: unknown preset" in out.stderr
    env = dict(cli_env, LWM_DEBUG="1")
    assert "Traceback" in lwm(env, *TINY, "--mesh", "1,2,3", "hi").stderr


# ---------------------------------------------------------------------------- exit codes, in-process


def _command(body):
    app = typer.Typer()
    app.command("body")(body)
    app.callback()(lambda: None)  # a group, like lwm's root
    return typer.main.get_command(app)


def _run(capsys, body, *args):
    from lwm_cli._errors import run

    code = run(_command(body), ["body", *args])
    return code, capsys.readouterr()


def test_exit_codes(capsys):
    from lwm_core.errors import LWMError

    def fails(kind: str):
        if kind == "lwm":
            raise LWMError("checkpoint /x is missing; pass --model")
        if kind == "bug":
            raise RuntimeError("index 3 is out of range\nsecond line")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "exit":
            raise typer.Exit(3)
        print("ok")

    assert _run(capsys, fails, "fine") == (0, ("ok\n", ""))
    code, out = _run(capsys, fails, "lwm")
    assert code == 1 and out.err == "error: checkpoint /x is missing; pass --model\n"
    code, out = _run(capsys, fails, "bug")
    assert code == 1 and out.err == ("error: RuntimeError: index 3 is out of range second line "
                                     "(rerun with --debug for the traceback)\n")
    assert _run(capsys, fails, "interrupt")[0] == 130
    assert _run(capsys, fails, "exit")[0] == 3
    code, out = _run(capsys, fails)  # missing argument: usage
    assert code == 2 and out.err.count("\n") == 1 and "Missing argument 'kind'" in out.err


def test_ctrl_c_while_the_cli_is_still_importing_is_exit_130_without_a_traceback(cli_env):
    """The command tree's imports (typer, rich) take a moment; Ctrl-C there is as quiet as anywhere."""
    import subprocess
    import sys

    script = ("import sys\n"
              "class Interrupt:\n"  # a Ctrl-C that arrives just as typer is being imported
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'typer':\n"
              "            raise KeyboardInterrupt\n"
              "sys.meta_path.insert(0, Interrupt())\n"
              "from lwm_cli import main\n"
              "main(['--help'])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (130, "", "")
