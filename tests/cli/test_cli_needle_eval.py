"""`lwm needle eval`: one result line per row, summary.json and heatmap.png, resume after a kill (in
process and with SIGKILL of the real CLI), --json, and bad inputs refused in one line before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT

MODEL = ("-m", "random:tiny", "--set", "max_sequence_length=1024")
MAKE = ("--ctx", "256,512", "--depths", "3", "--task", "single,multi", "--max-new-tokens", "16")


def _run(capsys, *args) -> tuple[int, str, str]:
    from lwm_cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["needle", *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def _ids(path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "needles.jsonl"
    from lwm_cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["needle", "make", "-m", "random:tiny", *MAKE, "-o", str(path)])
    assert e.value.code == 0
    return path


def test_eval_writes_a_result_per_row_a_summary_and_a_heatmap_and_resumes(capsys, tmp_path, dataset):
    out = tmp_path / "run"
    code, stdout, err = _run(capsys, "eval", *MODEL, "--data", str(dataset), "--batch-tokens", "1024",
                             "-o", str(out))
    assert (code, stdout) == (0, f"{out}\n"), err
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in rows)
    by_id = {r["id"]: r for r in rows}
    for result in results:
        assert {k: v for k, v in by_id[result["id"]].items() if k != "prompt"}.items() <= result.items()
        assert {"response", "score", "empty", "prefill_tokens_per_s", "seconds", "recited"} <= set(result)
        assert "prompt" not in result
    assert sum(r["score"] for r in results) / len(results) < 0.1  # a random model finds nothing
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == len(rows) and summary["model"] == "random:tiny"
    assert summary["tokenizer"] == rows[0]["tokenizer"] and summary["lwm_version"]
    # the command as lwm was given it, not the host process's argv (here pytest's)
    assert summary["argv"] == ["needle", "eval", *MODEL, "--data", str(dataset), "--batch-tokens", "1024",
                               "-o", str(out)]
    assert [x["ctx"] for x in summary["lengths"]] == [256, 512]
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # The same command again: nothing left to do, the same lines; --json prints the summary.
    before = (out / "results.jsonl").read_bytes()
    code, stdout, _ = _run(capsys, "eval", *MODEL, "--data", str(dataset), "-o", str(out), "--json")
    assert code == 0 and (out / "results.jsonl").read_bytes() == before
    assert json.loads(stdout)["count"] == len(rows)
    # A torn last line (a killed run) is dropped and its row redone: every id exactly once.
    (out / "results.jsonl").write_bytes(before[:-30])
    assert _run(capsys, "eval", *MODEL, "--data", str(dataset), "-o", str(out))[0] == 0
    assert sorted(_ids(out / "results.jsonl")) == sorted(by_id)
    # --force starts afresh
    assert _run(capsys, "eval", *MODEL, "--data", str(dataset), "-o", str(out), "--force",
                "--batch-tokens", "100000")[0] == 0
    assert sorted(_ids(out / "results.jsonl")) == sorted(by_id)


def test_eval_makes_the_dataset_on_the_fly_like_make(capsys, tmp_path, dataset):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(capsys, "eval", *MODEL, *MAKE, "-o", str(a))[0] == 0
    assert _run(capsys, "eval", *MODEL, "--data", str(dataset), "-o", str(b))[0] == 0
    # the same rows (so the same dataset digest) and, greedy, the same responses
    assert (a / "dataset.json").read_text() == (b / "dataset.json").read_text()
    def untimed(path):
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "prefill_tokens_per_s")}
                for line in path.read_text().splitlines()]

    assert untimed(a / "results.jsonl") == untimed(b / "results.jsonl")


def test_bad_inputs_are_one_line_before_any_work(capsys, monkeypatch, tmp_path, dataset):
    def refused(*args, code=1):
        got, stdout, err = _run(capsys, "eval", *args)
        assert got == code and stdout == "", err
        assert err.count("\n") == 1 and err.startswith("error:") or code == 2, err
        return err

    out = tmp_path / "run"
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    first_long = next(r for r in rows if r["length"] + r["max_new_tokens"] > 300)["id"]
    err = refused("-m", "random:tiny", "--set", "max_sequence_length=300", "--data", str(dataset), "-o", str(out))
    assert f"row {first_long} needs" in err and not out.exists()
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(dict(r, tokenizer="sha256:0000000000000000")) + "\n" for r in rows))
    err = refused(*MODEL, "--data", str(other), "-o", str(out))
    assert "was counted with tokenizer sha256:0000000000000000" in err and not out.exists()
    assert _run(capsys, "eval", *MODEL, "--ctx", "256", "--depths", "1", "-o", str(out))[0] == 0
    err = refused(*MODEL, "--data", str(dataset), "-o", str(out))
    assert "holds the results of another dataset" in err
    assert "--ctx" in refused(*MODEL, "--data", str(dataset), "--ctx", "256", "-o", str(out), code=2)
    assert "no dataset" in refused(*MODEL, "-o", str(out), code=2)
    from lwm_core import builtin

    with monkeypatch.context() as m:  # no -m: the built-in lwm-demo-text, here an install without its weights
        m.setattr(builtin, "MODELS_DIR", str(tmp_path / "no-models"))
        assert "built-in model lwm-demo-text has no weights" in refused("--data", str(dataset), "-o", str(out))
    assert "one at a time" in refused(*MODEL, "--hf", str(tmp_path), "--data", str(dataset), "-o", str(out), code=2)
    err = refused("--hf", str(tmp_path), "--mesh", "1,1,1,1", "--data", str(dataset), "-o", str(out), code=2)
    assert "--mesh is for lwm's own models" in err


def test_hf_directory_scores_like_the_model_it_was_converted_from(capsys, tmp_path, dataset):
    """--hf runs the dataset through transformers: the replies of `lwm convert jax2hf`'s copy are lwm's."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lwm_cli.main import main

    hf = tmp_path / "hf"
    with pytest.raises(SystemExit) as e:
        main(["convert", "jax2hf", *MODEL, "--dtype", "float32", "-o", str(hf)])
    assert e.value.code == 0
    capsys.readouterr()
    jax_run, hf_run = tmp_path / "jax", tmp_path / "torch"
    assert _run(capsys, "eval", *MODEL, "--data", str(dataset), "-o", str(jax_run))[0] == 0
    code, stdout, err = _run(capsys, "eval", "--hf", str(hf), "--data", str(dataset), "-o", str(hf_run), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["backend"], summary["dtype"], summary["model"]) == ("transformers", "float32", str(hf))

    def replies(path):
        return {r["id"]: r["response"] for r in map(json.loads, (path / "results.jsonl").read_text().splitlines())}

    assert replies(hf_run) == replies(jax_run) and len(replies(hf_run)) == len(dataset.read_text().splitlines())


@pytest.mark.sigkill
def test_sigkill_of_the_real_cli_then_rerun_scores_every_row_once(tmp_path, dataset, cli_env):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "lwm_cli", "needle", "eval", "-m", "random:tiny", "--set",
            "max_sequence_length=1024", "--data", str(dataset), "--batch-tokens", "1", "-o", str(out)]
    proc = subprocess.Popen(args, env=cli_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.stat().st_size > 0) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = [json.loads(line)["id"] for line in dataset.read_text().splitlines()]
    assert 0 < len(results.read_text().splitlines()) < len(rows)
    again = subprocess.run(args, env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(_ids(results)) == sorted(rows)


def test_ctrl_c_stops_after_the_batch_with_a_summary_and_exit_130(tmp_path, dataset, cli_env):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "lwm_cli", "needle", "eval", "-m", "random:tiny", "--set",
            "max_sequence_length=1024", "--data", str(dataset), "--batch-tokens", "1", "-o", str(out)]
    proc = subprocess.Popen(args, env=cli_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.stat().st_size > 0) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    done = len(results.read_text().splitlines())
    rows = len(dataset.read_text().splitlines())
    if done == rows:  # the run finished before the signal arrived
        assert proc.returncode == 0
        return
    assert proc.returncode == 130, stderr
    assert stdout == f"{out}\n" and f"after {done}/{rows} rows; rerun the command to resume" in stderr
    assert json.loads((out / "summary.json").read_text())["count"] == done
