"""`lwm needle plot`: the heatmap of a results directory, comparisons, and one-line errors for a bad one.

In-process through the `needle` group's own Typer app (run as `lwm_cli._errors.run` runs the root, so
exit codes and error lines are the real ones); the subprocess test runs `python -m lwm_cli` once the
root registers the group."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from PIL import Image

from helpers import lwm

CTXS = (1024, 4096, 8192)
DEPTHS = (0, 50, 100)


def _run(capsys, *args):
    from lwm_cli import _errors, needle

    root = typer.Typer()
    root.add_typer(needle.app)
    root.callback()(lambda: None)
    code = _errors.run(typer.main.get_command(root), ["needle", "plot", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _results(directory, *, model="LWM-Text-Chat-1M", tail=""):
    directory.mkdir()
    rows = [{"task": "niah", "ctx": c, "depth": d, "score": 1.0 if c < 8192 else 0.0, "empty": c >= 8192}
            for c in CTXS for d in DEPTHS]
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    if model:
        (directory / "summary.json").write_text(json.dumps({"model": model}))
    return directory


def _check_png(path, panels):
    from lwm_core.needle.plot import PALETTE, cell_centres, read_layout

    layout = read_layout(str(path))
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape[:2] == (layout["height"], layout["width"]) and len(layout["panels"]) == panels
    centres = cell_centres(layout)
    assert len(centres) == panels * len(CTXS) * len(DEPTHS)
    for _, _, j, x, y in centres:
        want = PALETTE[2] if CTXS[j] < 8192 else PALETTE[0]
        assert np.abs(pixels[int(y), int(x)] - [int(want[k:k + 2], 16) for k in (1, 3, 5)]).max() <= 2
    return layout


def test_plot_redraws_the_runs_heatmap(tmp_path, capsys):
    run = _results(tmp_path / "run", tail='{"task": "ni')  # a killed run's torn last line
    code, out, err = _run(capsys, run)
    assert (code, out, err) == (0, f"{run / 'heatmap.png'}\n", "")
    layout = _check_png(run / "heatmap.png", 1)
    assert layout["title"] == "Needle in a haystack: LWM-Text-Chat-1M"
    assert _run(capsys, run)[0] == 0  # its own heatmap.png is redrawn without --force
    code, _, err = _run(capsys, run, "-o", run / "heatmap.png")
    assert code == 1 and err == f"error: output {run / 'heatmap.png'} already exists; pass --force to replace it\n"
    assert _run(capsys, run, "-o", run / "heatmap.png", "--force")[0] == 0


def test_plot_compares_two_runs(tmp_path, capsys):
    a, b = _results(tmp_path / "a"), _results(tmp_path / "b")
    code, out, _ = _run(capsys, a, "--compare", b, "-o", tmp_path / "ab.png", "--threshold", "0.9")
    assert (code, out) == (0, f"{tmp_path / 'ab.png'}\n")
    layout = _check_png(tmp_path / "ab.png", 2)
    assert layout["title"] == "LWM-Text-Chat-1M (a) vs LWM-Text-Chat-1M (b)"


@pytest.mark.parametrize("case, message", [
    ("missing", "{d} does not exist; give the directory that lwm needle eval -o wrote"),
    ("no results", "{d} has no results.jsonl; give the directory that lwm needle eval -o wrote"),
    ("empty", "{d}/results.jsonl has no result rows yet; plot it once lwm needle eval has scored some"),
    ("bad line", "{d}/results.jsonl line 1 is not valid JSON (Expecting value at column 1); only the last "
                 "line of a killed run may be incomplete"),
])
def test_bad_result_directories_are_one_line_errors(tmp_path, capsys, case, message):
    d = tmp_path / "run"
    if case != "missing":
        d.mkdir()
    if case == "empty":
        (d / "results.jsonl").write_text("")
    if case == "bad line":
        (d / "results.jsonl").write_text('oops\n{"task": "niah"}\n')
    code, out, err = _run(capsys, d)
    assert (code, out, err) == (1, "", f"error: {message.format(d=d)}\n")
    assert not (d / "heatmap.png").exists()


def test_lwm_needle_plot_in_a_subprocess(tmp_path, cli_env):
    import lwm_cli.main

    if "needle" not in [m.app.info.name for m in lwm_cli.main.COMMANDS]:
        pytest.skip("lwm_cli.main does not register the needle group yet")
    run = _results(tmp_path / "run")
    result = lwm(cli_env, "needle", "plot", str(run))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{run / 'heatmap.png'}\n", "")
    _check_png(run / "heatmap.png", 1)
