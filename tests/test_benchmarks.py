"""The benchmark scripts stay runnable as the library moves: every name they import from lwm_core exists,
and every attribute they read from an `LWM` (`model.<name>`) is one the class has. Running them takes
minutes, so the default suite checks their references; `-m slow` runs the cheap ones for real."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from helpers import ROOT

SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_lwm_core_name_a_benchmark_imports_exists(path):
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lwm_core":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{path.name}: from {node.module} import {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lwm_core":
                    importlib.import_module(alias.name)


@pytest.fixture(scope="module")
def model():
    import lwm_core

    return lwm_core.load_model("random:tiny", mesh="1,1,1,1")


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_model_attribute_a_benchmark_reads_exists(path, model):
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "model":
            assert hasattr(model, node.attr), f"{path.name}: model.{node.attr}"


@pytest.mark.slow
def test_ring_balance_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ring_balance.py"), "--sp", "2", "4"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr


def test_vqgan_vs_torch_port_computes_lwms_network(monkeypatch):
    """benchmarks/vqgan_vs_torch.py's torch port, loaded with lwm's weights, computes lwm's VQGAN (the check
    the script makes before timing, on the tiny config): the same codes, the same decoded pixels; and the
    check fails when the port differs by one weight."""
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = importlib.import_module("vqgan_vs_torch")
    for layout in ("channels_last", "nchw"):
        pair = bench.Pair("tiny", frames=4, layout=layout)
        pixels = bench.test_frames(pair.config, 4)
        check = bench.compare(pair, pixels)
        assert check["ok"], check
        assert check["agreement"] == 1.0 and check["distinct_codes"] > 10  # not one code everywhere
        assert check["latent_diff"] < 1e-5 and check["pixel_diff"] < 1e-4
    # One GroupNorm bias of the last decoder level changed: the decode check must see it.
    pair.peer.decoder.UpsamplingBlock_2.ResnetBlock_1.GroupNorm_1.bias.data += 0.5
    check = bench.compare(pair, pixels)
    assert not check["ok"] and check["pixel_diff"] > 1e-2 and check["agreement"] == 1.0
