"""`lwm needle make`: byte-identical files for the same arguments, stdout with `-o -`, stdin haystacks,
and bad inputs refused in one line with a non-zero exit and nothing written."""

from __future__ import annotations

import json

import pytest

from helpers import ROOT


def _run(capsys, *args, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    from lwm_cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["needle", "make", *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


ARGS = ("-m", "random:tiny", "--ctx", "512,1K", "--depths", "3", "--task", "single,multi,vt", "--rounds", "2")


def test_same_arguments_give_byte_identical_files_and_stdout(capsys, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert _run(capsys, *ARGS, "-o", str(a))[:2] == (0, f"{a}\n")
    assert _run(capsys, *ARGS, "-o", str(b))[0] == 0
    assert a.read_bytes() == b.read_bytes()
    code, out, err = _run(capsys, *ARGS, "-o", "-")
    assert (code, err) == (0, "") and out.encode() == a.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert len(rows) == 3 * 2 * 3 * 2
    assert rows[0]["id"] == "single-512-0-0" and rows[-1]["id"] == "vt-1024-100-1"
    assert [r["depth"] for r in rows[:6:2]] == [0, 50, 100]
    # an existing output is refused unless --force, and kept whole
    code, _, err = _run(capsys, *ARGS, "-o", str(a))
    assert code == 1 and "already exists" in err
    assert _run(capsys, *ARGS, "--seed", "1", "--force", "-o", str(a))[0] == 0
    assert a.read_bytes() != b.read_bytes()


def test_tokenizer_alone_and_a_haystack_on_stdin(capsys, monkeypatch, tmp_path):
    import io

    text = "A short story begins. It goes on for a while! Does it end? It does. " * 20
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    tokenizer = ROOT / "lwm_core" / "assets" / "tokenizer.model"
    code, out, err = _run(capsys, "--tokenizer", str(tokenizer), "--haystack", "-", "--ctx", "2K", "--depths",
                          "1", "-o", "-")
    assert code == 0, err
    row = json.loads(out)
    assert row["haystack"] == "stdin" and row["ctx"] == 2048 and 1984 - 20 <= row["length"] <= 1984
    assert "It goes on for a while!" in row["prompt"]


@pytest.mark.parametrize("args, message", [
    (("--task", "single,bogus"), "unknown task 'bogus'"),
    (("--ctx", "4K"), "--ctx 4096 is longer than the context of random:tiny (1024 tokens)"),
    (("--ctx", "1K:2K"), "a range is FIRST:LAST:COUNT"),
    (("--ctx", "big"), "--ctx 'big' is not a length"),
    (("--ctx", "100"), "--ctx 100 is too short for task single"),
    (("--haystack", "/no/such/haystack.jsonl"), "haystack /no/such/haystack.jsonl does not exist"),
    (("--haystack", "EMPTY"), "has no text"),
    (("--task", "multi", "--needles", "2", "--retrieve", "3"), "--retrieve 3 is more than --needles 2"),
    (("--depths", "0,150"), "depth 150 is outside 0..100"),
    (("--template", "chatml"), "--template 'chatml' is not one of lwm-chat, base, raw"),
])
def test_bad_inputs_are_one_line_and_write_nothing(capsys, tmp_path, args, message):
    (tmp_path / "empty.jsonl").write_text("")
    args = tuple(str(tmp_path / "empty.jsonl") if a == "EMPTY" else a for a in args)
    out = tmp_path / "out.jsonl"
    code, stdout, err = _run(capsys, "-m", "random:tiny", *args, "-o", str(out))
    assert code == 1 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "empty.jsonl"]


def test_a_tokenizer_is_required(capsys, tmp_path):
    code, _, err = _run(capsys, "-o", str(tmp_path / "x.jsonl"))
    assert code == 1 and "pass -m SPEC" in err and not (tmp_path / "x.jsonl").exists()
