"""The attention dispatcher's choices, as one table; its vocabularies; and the attention package's imports
going one way (no cycles, no jax for the config)."""

import ast
import subprocess
import sys

import pytest

from helpers import ROOT
from lwm_core.attention import dispatch
from lwm_core.attention.dispatch import AttentionPlan, choose, ring_step
from lwm_core.config import get_config
from lwm_core.errors import LWMError
from lwm_core.parallel.mesh import make_mesh

QCS, KCS = 64, 128  # the config's query/key chunk sizes in every row below
MESHES = {1: make_mesh("1,8,1,1"), 8: make_mesh("1,1,1,8")}  # sp = 1 (and None: one device), sp = 8

DENSE = AttentionPlan("dense")
BLOCKWISE = AttentionPlan("blockwise", q_chunk=QCS, k_chunk=KCS)
CAUSAL = AttentionPlan("causal_block", block=dispatch.CAUSAL_BLOCK)


def ring(impl, q_chunk=QCS, k_chunk=KCS, layout="zigzag"):
    return AttentionPlan("ring", block_impl=impl, q_chunk=q_chunk, k_chunk=k_chunk, layout=layout)


# (phase, config.attention, sp, backend, T, S, packed, config overrides) -> plan
TABLE = [
    # forward (training, scoring): ring whenever asked for or when the sequence is split over sp
    ("forward", "auto", 8, "cpu", 512, 512, False, {}, ring("jax")),
    ("forward", "auto", 8, "gpu", 512, 512, False, {}, ring("pallas_gpu")),  # Triton tiles <= 128
    ("forward", "auto", 8, "gpu", 512, 512, False, dict(query_chunk_size=512, key_chunk_size=512),
     ring("pallas_gpu", 128, 128)),
    ("forward", "auto", 8, "tpu", 512, 512, False, dict(query_chunk_size=512, key_chunk_size=512),
     ring("pallas_tpu", 512, 512)),
    ("forward", "ring", 1, "cpu", 16, 16, False, {}, ring("jax")),  # even short, even on sp = 1
    ("forward", "ring", 8, "gpu", 512, 512, False, dict(attention_impl="jax", sequence_layout="contiguous"),
     ring("jax", layout="contiguous")),
    ("forward", "ring", 8, "cpu", 512, 512, False, dict(attention_impl="pallas_gpu_interpret"),
     ring("pallas_gpu_interpret")),  # interpret mode keeps the config's tiles
    ("forward", "ring", 8, "tpu", 512, 512, False, dict(attention_impl="pallas_gpu"), ring("pallas_gpu")),
    # forward on one sp shard: by length, the backend does not matter
    ("forward", "auto", 1, "cpu", QCS, QCS, False, {}, DENSE),
    ("forward", "auto", 1, "gpu", QCS + 1, QCS + 1, False, {}, CAUSAL),
    ("forward", "auto", 1, "tpu", dispatch.CAUSAL_BLOCK_MAX, dispatch.CAUSAL_BLOCK_MAX, False, {}, CAUSAL),
    ("forward", "auto", 1, "cpu", dispatch.CAUSAL_BLOCK_MAX + 1, dispatch.CAUSAL_BLOCK_MAX + 1, False, {}, BLOCKWISE),
    ("forward", "dense", 8, "cpu", 8192, 8192, False, {}, DENSE),  # asked for: even on sp > 1
    ("forward", "blockwise", 1, "cpu", 16, 16, False, {}, BLOCKWISE),  # asked for: even short
    ("forward", "blockwise", 1, "cpu", 1, 1, False, {}, DENSE),  # one query: nothing to tile
    # prefill (an empty cache): a ring in the cache's contiguous order where sp splits the prompt; else as
    # forward without the ring rows
    ("prefill", "auto", 1, "cpu", 32, 32, False, {}, DENSE),
    ("prefill", "auto", 8, "cpu", 1000, 1000, False, {}, ring("jax", layout="contiguous")),
    ("prefill", "auto", 8, "cpu", 1001, 1001, False, {}, CAUSAL),  # sp does not divide the prompt
    ("prefill", "auto", 1, "gpu", dispatch.CAUSAL_BLOCK_MAX + 1, dispatch.CAUSAL_BLOCK_MAX + 1, False, {}, BLOCKWISE),
    ("prefill", "ring", 8, "gpu", 1000, 1000, False, {}, ring("pallas_gpu", layout="contiguous")),
    ("prefill", "ring", 1, "gpu", 1000, 1000, False, {}, BLOCKWISE),
    ("prefill", "blockwise", 8, "cpu", 1000, 1000, False, {}, BLOCKWISE),
    ("prefill", "dense", 1, "cpu", 5000, 5000, False, {}, DENSE),
    # extend (new tokens after cached ones): no causal blocks (q and k are not the same positions)
    ("extend", "auto", 1, "cpu", 8, KCS, False, {}, DENSE),
    ("extend", "auto", 1, "cpu", 8, KCS + 1, False, {}, BLOCKWISE),
    ("extend", "auto", 8, "cpu", 100, 1000, False, {}, BLOCKWISE),
    ("extend", "ring", 1, "cpu", 8, 16, False, {}, BLOCKWISE),
    ("extend", "dense", 1, "cpu", 100, 1000, False, {}, DENSE),
    # decode (one new token per row against the cache)
    ("decode", "auto", 1, "cpu", 1, 4096, False, {}, AttentionPlan("cached")),
    ("decode", "auto", 1, "cpu", 1, 4096, True, {}, AttentionPlan("cpu_kernel")),  # packed weights
    ("decode", "auto", 8, "cpu", 1, 4096, False, {}, AttentionPlan("sharded_cached")),
    ("decode", "auto", 8, "cpu", 1, 4096, True, {}, AttentionPlan("sharded_cached")),  # the cache is on sp
    ("decode", "dense", 1, "gpu", 1, 4096, False, {}, AttentionPlan("cached")),
    ("decode", "ring", 1, "tpu", 1, 4096, False, {}, AttentionPlan("cached")),
    ("decode", "blockwise", 8, "gpu", 1, 4096, False, {}, AttentionPlan("sharded_cached")),
]


@pytest.mark.parametrize("phase, attention, sp, backend, T, S, packed, overrides, expected", TABLE)
def test_choices(phase, attention, sp, backend, T, S, packed, overrides, expected):
    config = get_config("tiny", **{"attention": attention, "query_chunk_size": QCS, "key_chunk_size": KCS, **overrides})
    plan = choose(config, mesh=MESHES[sp], backend=backend, phase=phase, q_len=T, k_len=S, packed=packed)
    assert plan == expected
    if sp == 1:  # no mesh is one device
        assert choose(config, mesh=None, backend=backend, phase=phase, q_len=T, k_len=S, packed=packed) == plan


# With lwm's CPU kernels built (cpu_kernels=True): (phase, attention, mesh, backend, T, S, overrides) -> plan.
# Mesh "one": no mesh, and a mesh of one device; "fsdp": 8 devices, sp = 1.
FLASH = AttentionPlan("cpu_flash")
KERNEL_TABLE = [
    ("forward", "auto", "one", "cpu", 512, 512, {}, FLASH),
    ("forward", "auto", "one", "cpu", 16, 16, {}, FLASH),  # short: the kernel is faster than dense there too
    ("forward", "auto", "one", "cpu", 1, 1, {}, DENSE),  # one query
    ("forward", "auto", "one", "cpu", 512, 512, dict(attention_impl="jax"), CAUSAL),  # plain JAX asked for
    ("forward", "auto", "fsdp", "cpu", 512, 512, {}, CAUSAL),  # a custom call is not partitioned over a mesh
    ("forward", "auto", "one", "gpu", 512, 512, {}, CAUSAL),
    ("forward", "blockwise", "one", "cpu", 512, 512, {}, BLOCKWISE),  # asked for
    ("forward", "dense", "one", "cpu", 512, 512, {}, DENSE),
    ("forward", "auto", 8, "cpu", 512, 512, {}, ring("jax")),
    ("prefill", "auto", "one", "cpu", 131072, 131072, {}, FLASH),
    ("extend", "auto", "one", "cpu", 8, 4096, {}, FLASH),
    ("extend", "auto", "fsdp", "cpu", 8, 4096, {}, BLOCKWISE),
    ("decode", "auto", "one", "cpu", 1, 4096, {}, AttentionPlan("cached")),
]


@pytest.mark.parametrize("phase, attention, mesh, backend, T, S, overrides, expected", KERNEL_TABLE)
def test_choices_with_the_cpu_kernels(phase, attention, mesh, backend, T, S, overrides, expected):
    config = get_config("tiny", **{"attention": attention, "query_chunk_size": QCS, "key_chunk_size": KCS, **overrides})
    meshes = {"one": [None, make_mesh("1,1,1,1")], "fsdp": [MESHES[1]], 8: [MESHES[8]]}[mesh]
    for m in meshes:
        assert choose(config, mesh=m, backend=backend, phase=phase, q_len=T, k_len=S, cpu_kernels=True) == expected


def test_table_covers_every_value():
    assert {row[0] for row in TABLE} == set(dispatch.PHASES)
    assert {row[1] for row in TABLE} == set(dispatch.ATTENTION_KINDS)
    assert {row[-1].kind for row in TABLE + KERNEL_TABLE} == set(dispatch.PLAN_KINDS)
    assert {row[3] for row in TABLE} == {"cpu", "gpu", "tpu"}


@pytest.mark.parametrize("impl, backend, expected", [
    ("auto", "cpu", "jax"), ("auto", "gpu", "pallas_gpu"), ("auto", "tpu", "pallas_tpu"), ("auto", "METAL", "jax"),
    *[(impl, backend, impl) for impl in dispatch.ATTENTION_IMPLS[1:] for backend in ("cpu", "gpu", "tpu")]])
def test_ring_step_kernels(impl, backend, expected):
    tiles = (128, 128) if expected == "pallas_gpu" else (512, 1024)
    assert ring_step(impl, backend=backend, q_chunk=512, k_chunk=1024) == (expected, *tiles)
    assert ring_step(impl, backend=backend, q_chunk=32, k_chunk=64) == (expected, 32, 64)


def test_bad_values_raise_with_the_choices():
    config = get_config("tiny")
    with pytest.raises(ValueError, match=r"phase 'train'.*forward, prefill, extend, decode"):
        choose(config, mesh=None, backend="cpu", phase="train", q_len=8, k_len=8)
    with pytest.raises(ValueError, match=r"'triton'.*auto, jax, pallas_gpu"):
        ring_step("triton", backend="gpu", q_chunk=128, k_chunk=128)
    # the config validates against the same vocabularies
    for field, values in [("attention", dispatch.ATTENTION_KINDS), ("attention_impl", dispatch.ATTENTION_IMPLS),
                          ("sequence_layout", dispatch.SEQUENCE_LAYOUTS)]:
        for value in values:
            assert getattr(get_config("tiny", **{field: value}), field) == value
        with pytest.raises(LWMError, match=f"{field}='nope' is not one of {', '.join(values)}"):
            get_config("tiny", **{field: "nope"})


def _imports(path):
    """lwm_core modules that `path` imports anywhere (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lwm_core"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            out.update(n if (ROOT / (n.replace(".", "/") + ".py")).exists() else node.module for n in names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lwm_core"))
    return out


def test_attention_imports_go_one_way():
    """No cycle among the attention modules, even through imports inside functions; none imports the
    model or the public API."""
    package = ROOT / "lwm_core" / "attention"
    graph = {f"lwm_core.attention.{p.stem}": _imports(p) for p in package.glob("*.py")
             if p.stem != "__init__"}
    for module, imports in graph.items():
        assert not {i for i in imports if i.startswith(("lwm_core.api", "lwm_core.model"))}, module
    done = set()

    def visit(module, path):
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module in done or module not in graph:
            return
        for imported in graph[module]:
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    assert "lwm_core.attention.dispatch" in graph["lwm_core.attention.ring"]


def test_config_and_dispatcher_import_without_jax():
    code = ("import sys, lwm_core.config, lwm_core.attention.dispatch; "
            "print(sorted(m for m in ('jax', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
