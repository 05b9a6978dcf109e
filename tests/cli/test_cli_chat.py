"""`lwm chat` run for real: subprocesses (one-shot, stdin, --json), a pseudo-terminal for the REPL, and
the shell completion scripts. The REPL's line reading and /commands are also tested in-process.

Every subprocess pays the jax import and compiles; a session-wide JAX compilation cache makes each
shape compile once for the whole file (first run ~7 s, then ~1 s).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import LOADED, ROOT, lwm

COMPLETIONS = ROOT / "completions"
QUESTION = "What is a world model?"
JSON_KEYS = {"text", "prompt_tokens", "completion_tokens", "tokens_per_second", "finish_reason"}


@pytest.fixture(scope="session")
def tiny_reference():
    """The tokenizer and, for greedy decoding, the reply the library itself gives for random:tiny on
    one device (the CLI's subprocesses see one device)."""
    import lwm_core
    from lwm_core.parallel.mesh import single_device_mesh

    model = lwm_core.load_model("random:tiny", mesh=single_device_mesh())
    ids = model.tokenizer.encode(lwm_core.chat_prompt(QUESTION))
    reply = model.tokenizer.decode(model.generate(ids, 24, temperature=0.0))
    return model.tokenizer, reply


def test_importing_the_cli_does_not_import_jax(cli_env):
    code = "import sys, lwm_cli.main; print(sorted(m for m in ('jax', 'lwm_core', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_chat_and_its_options(cli_env):
    root = lwm(cli_env, "--help")
    assert root.returncode == 0 and "chat" in root.stdout and "--debug" in root.stdout
    chat = lwm(cli_env, "chat", "--help")
    assert chat.returncode == 0 and chat.stderr == ""
    for option in ("--model", "--tokenizer", "--preset", "--set", "--mesh", "--dtype", "--cpu-kernels",
                   "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed", "--system", "--json",
                   "--image", "--video", "--max-frames", "--vqgan"):
        assert option in chat.stdout
    bare = lwm(cli_env)  # no command: the help, as a usage error
    assert bare.returncode == 2 and "chat" in bare.stdout and "error" not in bare.stderr


def _command_paths(command, path=()):
    yield path
    if hasattr(command, "list_commands"):  # a group
        for name in command.list_commands(None):
            yield from _command_paths(command.get_command(None, name), (*path, name))


def test_every_help_reads_well_at_80_columns(cli_env):
    import typer
    from rich.text import Text

    import lwm_cli.main

    root = typer.main.get_command(lwm_cli.main.app)
    paths = list(_command_paths(root))
    assert {("chat",), ("train",), ("convert", "jax2hf"), ("convert", "hf2jax")} <= set(paths)
    for path in paths:
        command = root
        for name in path:
            command = command.get_command(None, name)
        out = lwm({**cli_env, "COLUMNS": "80"}, *path, "--help")
        where = f"lwm {' '.join(path)} --help"
        assert out.returncode == 0 and out.stderr == "", where
        assert max(map(len, out.stdout.splitlines())) <= 80, where
        assert "\u2026" not in out.stdout, where  # rich's ellipsis: a word cut short
        assert not re.search(r"<bool>|BOOL(EAN)?\b", out.stdout), where  # flags take no value
        # Every word of the help texts, and every option name, is printed whole (not folded or cut).
        words = set(re.split(r"[\s\u2500-\u257f]+", out.stdout))
        words |= {w.rstrip(",") for w in words}
        texts = [command.help or ""] + [p.help or "" for p in command.params if not getattr(p, "hidden", False)]
        expected = {w for text in texts for w in Text.from_markup(text).plain.split()}
        ctx = typer.Context(command, info_name="lwm")
        for param in (p for p in command.get_params(ctx) if not getattr(p, "hidden", False)):
            expected |= {o for o in [*param.opts, *param.secondary_opts] if o.startswith("-")}
            if param.param_type_name == "option" and not (param.is_flag or param.count):
                expected.add(param.display_type_rich(ctx=ctx))  # SPEC, <int>, <params|params-unscanned|native>
        assert expected - words == set(), where


def test_readme_smoke_command_random_debug(cli_env):
    out = lwm(cli_env, "chat", "--model", "random:debug", "hello")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # not a terminal: no status line
    assert out.stdout.endswith("\n") and len(out.stdout.strip()) > 0


def test_one_shot_greedy_is_deterministic_and_matches_the_library(cli_env, tiny_reference):
    tokenizer, expected = tiny_reference
    args = ("chat", "-m", "random:tiny", "--temperature", "0", "--max-new-tokens", "24", QUESTION)
    first, second = lwm(cli_env, *args), lwm(cli_env, *args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert first.stdout == second.stdout == expected + "\n"
    as_json = lwm(cli_env, *args, "--json")
    assert as_json.returncode == 0 and as_json.stderr == ""
    lines = as_json.stdout.splitlines()
    assert len(lines) == 1
    reply = json.loads(lines[0])
    assert set(reply) == JSON_KEYS
    assert reply["text"] == expected  # streamed pieces join to the same text
    assert reply["prompt_tokens"] == len(tokenizer.encode(f"You are a helpful assistant. USER: {QUESTION} ASSISTANT:"))
    assert reply["completion_tokens"] == 24 and reply["finish_reason"] == "length"
    assert reply["tokens_per_second"] > 0


def test_piped_stdin_comes_before_the_argument(cli_env, tiny_reference):
    tokenizer, _ = tiny_reference
    document = "The quick brown fox jumps over the lazy dog.\n"

    def prompt_tokens(question):
        return len(tokenizer.encode(f"You are a helpful assistant. USER: {question} ASSISTANT:"))

    both = lwm(cli_env, "chat", "-m", "random:tiny", "-n", "4", "--json", "Summarise.", input=document)
    alone = lwm(cli_env, "chat", "-m", "random:tiny", "-n", "4", "--json", "--system", "", input=document)
    assert both.returncode == 0 and alone.returncode == 0, both.stderr + alone.stderr
    assert json.loads(both.stdout)["prompt_tokens"] == prompt_tokens(document.rstrip() + "\n\nSummarise.")
    no_system = len(tokenizer.encode(f"USER: {document.rstrip()} ASSISTANT:"))
    assert json.loads(alone.stdout)["prompt_tokens"] == no_system


def test_raw_sends_the_text_without_the_template(cli_env, tiny_reference):
    tokenizer, _ = tiny_reference
    raw = lwm(cli_env, "chat", "-m", "random:tiny", "-n", "4", "--json", "--raw", QUESTION)
    assert raw.returncode == 0, raw.stderr
    bare = len(tokenizer.encode(QUESTION))
    templated = len(tokenizer.encode(f"You are a helpful assistant. USER: {QUESTION} ASSISTANT:"))
    assert json.loads(raw.stdout)["prompt_tokens"] == bare != templated
    clash = lwm(cli_env, "chat", "--raw", "--system", "Be brief.", "hi")
    assert clash.returncode == 2 and "--raw sends no system prompt" in clash.stderr


def test_raw_keeps_piped_text_but_its_final_line_break(monkeypatch):
    """A prompt's last space is a token: LWM's needle prompt ends in `ASSISTANT: `, and `--raw` must send it so
    (a pipe's final line break is dropped; without --raw trailing whitespace goes, as the template adds its own)."""
    import io

    from lwm_cli.chat import _question

    def asked(text, prompt=None, raw=True):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
        return _question(prompt, raw=raw)

    assert asked("the document. ASSISTANT: \n") == "the document. ASSISTANT: "
    assert asked("the document. ASSISTANT: \n", raw=False) == "the document. ASSISTANT:"
    assert asked("two lines\r\n\n") == "two lines\r\n" and asked("no break ") == "no break "
    assert asked("the document \n", "Summarise.") == "the document \n\nSummarise."


def test_raw_session_completes_each_message_on_its_own():
    from types import SimpleNamespace

    from lwm_cli.chat import Sampling, Session, run_command

    tokenizer = SimpleNamespace(encode=lambda text: list(text.encode()))
    session = Session(model=SimpleNamespace(tokenizer=tokenizer), sampling=Sampling(8, 0.0, 0, 1.0, 0),
                      history=[("q", "a")], raw=True)
    assert session.prompt_ids("abc") == [97, 98, 99]  # no template, no system prompt, no history
    said = []
    assert run_command(session, "/set system Be brief.", said.append) and session.system is None
    assert said == ["--raw sends no system prompt; restart without --raw to use one"]


def test_hub_id_without_network_fails_fast_in_one_line(cli_env, tmp_path):
    import socket

    with socket.socket() as refusing:  # bound, not listening: connections to it are refused at once
        refusing.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        env = {k: v for k, v in cli_env.items() if k.lower() not in
               ("hf_hub_offline", "transformers_offline", "http_proxy", "https_proxy", "all_proxy")}
        env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path))
        start = time.perf_counter()
        out = lwm(env, "chat", "-m", "Owner/Repo", "hi")
        elapsed = time.perf_counter() - start
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert f"cannot reach {endpoint}" in lines[0] and "`hf download Owner/Repo`" in lines[0]
    assert elapsed < 10, elapsed  # huggingface_hub's retries alone took ~25 s


def test_ctrl_c_stops_a_one_shot_reply_with_status_130(cli_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lwm_cli", "chat", "-m", "random:tiny", "--set", "max_sequence_length=65536",
         "-n", "60000", "-t", "0", "tell me a long story"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env, cwd=ROOT)
    try:
        assert proc.stdout.read(1)  # the reply has started streaming
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=LOADED)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


# pexpect forks this (jax-using, so multi-threaded) process; the child execs at once, so the warning's
# deadlock cannot happen in it.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_repl_in_a_terminal(cli_env):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable, ["-m", "lwm_cli", "chat", "-m", "random:tiny", "--set", "max_sequence_length=65536",
                         "-n", "8", "-t", "0"],
        env=cli_env, cwd=str(ROOT), encoding="utf-8", timeout=LOADED, dimensions=(40, 200),
        # as from a shell: SIGINT at its default, whatever this runner's is (started with SIGINT ignored,
        # Python installs no KeyboardInterrupt handler and a Ctrl-C at the prompt would do nothing)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        child.expect("loaded random:tiny")  # the status line, shown on a terminal
        child.expect(">>> ")
        child.sendline("hello")
        child.expect("hello\r\n")
        child.expect(">>> ")  # the reply streamed and the prompt came back

        child.sendline("/set temperature 0.5")
        child.expect(r"temperature = 0\.5")
        child.sendline("/set top_p 2")
        child.expect(r"top_p must be in 0 < top_p <= 1, got 2\.0")
        child.sendline("/show")
        child.expect(r"temperature 0\.5, top_k 50, top_p 1\.0, max_new_tokens 8, seed 0; .*; 1 turn in")
        child.sendline("/clear")
        child.expect("cleared the conversation")

        # One message over three lines: after it the conversation has exactly one turn.
        child.sendline('"""first line')
        child.expect(r"\.\.\. ")
        child.sendline("second line")
        child.expect(r"\.\.\. ")
        child.sendline('third line"""')
        child.expect(">>> ")
        child.sendline("/show")
        child.expect(r"1 turn in the conversation")

        # Ctrl-C during a long reply stops it and returns to the prompt.
        child.sendline("/set temperature 0")
        child.sendline("/set max_new_tokens 60000")
        child.expect("max_new_tokens = 60000")
        child.sendline("tell me a long story")
        child.expect("story\r\n")
        child.expect(r"\S")  # reply text is arriving
        time.sleep(0.5)
        child.sendintr()
        child.expect(r"\(reply stopped\)")
        child.expect(">>> ")
        child.sendline("/show")
        child.expect(r"2 turns in the conversation")
        child.expect(">>> ")  # back at the prompt (a Ctrl-C while /show still prints is another case)

        child.sendintr()  # at the prompt: a hint, not an exit
        child.expect("Ctrl-D or /bye exits")
        child.expect(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


# ------------------------------------------------------------------------------- REPL, in-process


def test_read_message_lines_blocks_and_continuations():
    from lwm_cli.chat import CONTINUATION, PROMPT, read_message

    def reader(*lines):
        feed, prompts = iter(lines), []

        def read(prompt):
            prompts.append(prompt)
            return next(feed)
        return read, prompts

    read, prompts = reader("hello there")
    assert read_message(read) == "hello there" and prompts == [PROMPT]
    read, prompts = reader('"""', "  indented", "", 'last"""')
    assert read_message(read) == "  indented\n\nlast" and prompts == [PROMPT] + [CONTINUATION] * 3
    read, _ = reader('"""first', 'second"""')
    assert read_message(read) == "first\nsecond"
    read, _ = reader('"""one line"""')
    assert read_message(read) == "one line"
    read, prompts = reader("a \\", "b\\", "c")
    assert read_message(read) == "a \nb\nc" and prompts == [PROMPT, CONTINUATION, CONTINUATION]


def test_slash_commands_change_the_session():
    from lwm_cli.chat import Sampling, Session, run_command

    session = Session(model=None, sampling=Sampling(256, 0.2, 50, 1.0, 0), history=[("q", "a")])
    said = []
    assert run_command(session, "/set temperature 0.7", said.append)
    assert run_command(session, "/set top-k 5", said.append)
    assert run_command(session, "/set max_new_tokens 0", said.append)  # refused, unchanged
    assert run_command(session, "/set seed x", said.append)
    assert run_command(session, "/set system Talk like a pirate.", said.append)
    assert run_command(session, "/set colour red", said.append)
    assert (session.sampling.temperature, session.sampling.top_k, session.sampling.max_new_tokens) == (0.7, 5, 256)
    assert session.system == "Talk like a pirate."
    assert said[:4] == ["temperature = 0.7", "top_k = 5", "max_new_tokens must be at least 1, got 0",
                        "seed needs an integer, got 'x'"]
    assert said[5].startswith("usage: /set NAME VALUE")
    assert run_command(session, "/clear", said.append) and session.history == []
    assert run_command(session, "/nope", said.append) and "unknown command '/nope'" in said[-1]
    assert run_command(session, "/set system", said.append) and session.system is None
    assert not run_command(session, "/bye", said.append)


def test_counts_in_messages_agree_with_the_number():
    from types import SimpleNamespace

    import numpy as np

    from lwm_cli._model import describe
    from lwm_cli.chat import Sampling, Session, run_command
    from lwm_core.config import get_config
    from lwm_core.errors import LWMError
    from lwm_core.generate.decode import check_lengths
    from lwm_core.parallel.mesh import parse_mesh
    from lwm_core.plural import plural

    assert [plural(n, "device") for n in (0, 1, 2)] == ["0 devices", "1 device", "2 devices"]
    assert [plural(n, "process", "processes") for n in (1, 3)] == ["1 process", "3 processes"]
    with pytest.raises(LWMError, match="does not divide the 1 available device;"):
        parse_mesh("2,-1,1,1").resolve(1)
    with pytest.raises(LWMError, match="prompt of 1 token [+] 1 new token exceeds"):
        check_lengths(get_config("tiny").replace(max_sequence_length=1), [1], 1)
    mesh = SimpleNamespace(shape={"dp": 1, "fsdp": 1, "tp": 1, "sp": 1},
                           devices=np.array([SimpleNamespace(platform="cpu")], dtype=object))
    model = SimpleNamespace(mesh=mesh, config=SimpleNamespace(num_params=lambda: 606_500), dtype=np.float32)
    assert describe("random:tiny", model).endswith("on mesh dp=1 fsdp=1 tp=1 sp=1 (1 cpu device)")
    said = []
    session = Session(model=None, sampling=Sampling(8, 0.0, 0, 1.0, 0), history=[("q", "a")])
    run_command(session, "/show", said.append)
    assert said[-1].endswith("; 1 turn in the conversation")


# ------------------------------------------------------------------------------------- completions


def test_completion_scripts_exist_mention_chat_and_are_up_to_date(cli_env):
    for name in ("lwm.bash", "_lwm", "lwm.fish"):
        text = (COMPLETIONS / name).read_text()
        assert "chat" in text and "max-new-tokens" in text and re.search(r"random\\?:tiny", text)
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_completions.py"), "--check"],
                           capture_output=True, text=True, env=cli_env)
    assert check.returncode == 0, check.stderr
    printed = lwm(cli_env, "--completion", "bash")
    assert printed.returncode == 0 and printed.stdout == (COMPLETIONS / "lwm.bash").read_text()


BASH_CASES = {
    "lwm ": "chat gen train convert needle vqgan world models",
    "lwm gen video --n": "--n-frames",
    "lwm train --dr": "--dry-run",
    "lwm train --num": "--num-processes",
    "lwm ch": "chat",
    "lwm convert ": "jax2hf hf2jax quantize vqgan",
    "lwm convert jax2hf --max": "--max-shard-size",
    "lwm chat --dt": "--dtype",
    "lwm chat --dtype bf": "bfloat16",
    "lwm chat --no-cpu": "--no-cpu-kernels",
    "lwm chat -m random:ti": "tiny",  # bash completes only after the ':' word break
    "lwm chat --preset LWM-Text-Chat-1": "LWM-Text-Chat-128K LWM-Text-Chat-1M",
    "lwm chat -m random:tiny --top-": "--top-k --top-p",
    "lwm chat --vi": "--video",
    "lwm chat --image lwm_core/assets/tok": "lwm_core/assets/tokenizer.model",  # a file, any name
    "lwm chat --tokenizer lwm_core/assets/tok": "lwm_core/assets/tokenizer.model",
}


def test_bash_completion_answers_from_the_script():
    lines = [f"source {COMPLETIONS / 'lwm.bash'}",
             't() { COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; _lwm_complete; echo "${COMPREPLY[*]}"; }']
    lines += [f"t '{line}'" for line in BASH_CASES]
    out = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.splitlines() == list(BASH_CASES.values())


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completion_answers_from_the_script():
    script = (f"source {COMPLETIONS / 'lwm.fish'}; complete -C 'lwm chat --dtype '; "
              f"complete -C 'lwm chat -m random:ti'; complete -C 'lwm '")
    out = subprocess.run(["fish", "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    values = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert values == ["bfloat16", "float16", "float32", "random:tiny", "chat", "convert", "train"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_script_parses():
    subprocess.run(["zsh", "-n", str(COMPLETIONS / "_lwm")], check=True)
