"""Compiled plans: lower and compile the programs a run executes (the train step; generation's prefill and
decode step) for a mesh, from abstract inputs (shapes, dtypes and shardings: no weights exist), and read
what XLA made of them: per-device memory, FLOPs and collectives per step, and the partitioner's warnings.

On a machine without the target's devices the mesh is made of simulated CPU devices (the CLI starts jax
with that many: `lwm train --dry-run`). The memory figures are then XLA:CPU's for the same partitioned
program: the sharding, the buffers every device holds and the collectives are the target's; fusion and
scheduling (and so the temporaries) are the CPU compiler's. XLA:CPU widens bfloat16 to float32 around
its dots and collectives, so a bfloat16 program's temporaries come out larger than a GPU or TPU
compiler makes them (LWM-7B train steps: 25-35% above the arithmetic estimate, which agrees within 5%
in float32).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lwm_core.checkpoint.loader import layout_of
from lwm_core.config import ModelConfig
from lwm_core.model.llama import param_layout
from lwm_core.parallel.mesh import CACHE_AXES, logical_spec, named_sharding, shard_count
from lwm_core.quantize import stored_dtype
from lwm_core.scale.hlo import Profile, profile

# What XLA's SPMD partitioner logs when it cannot move between two shardings except by replicating the
# whole array and re-splitting it: at 1M tokens that is every device holding the whole activation.
_PARTITIONER_WARNING = re.compile(r"Involuntary full rematerialization|\[SPMD\].*(?:replicat|rematerializ)", re.I)


@dataclass(frozen=True)
class CompiledProgram:
    """One compiled program, per device. Memory from `Compiled.memory_analysis()`; FLOPs and collectives
    per step from the optimised HLO (`hlo.profile`: every loop counted as often as it runs)."""

    name: str
    arguments: int  # bytes of the inputs (params, optimizer state, batch, cache)
    outputs: int
    aliased: int  # outputs written in place of donated inputs (counted once)
    temporaries: int  # XLA's scratch buffers at their peak
    profile: Profile
    seconds: float  # lowering + compilation
    warnings: tuple[str, ...]  # the partitioner's replication warnings (none is the goal)

    @property
    def peak(self) -> int:
        """Bytes a device holds at the program's peak: inputs, outputs not aliased, temporaries."""
        return self.arguments + self.outputs - self.aliased + self.temporaries


@contextlib.contextmanager
def xla_log():
    """Capture what XLA's C++ code writes to stderr (fd 2) meanwhile: yields a list that holds its lines
    afterwards. Lines that are not partitioner warnings are written back to stderr."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            lines.extend(text.splitlines())
            other = [line for line in lines if not _PARTITIONER_WARNING.search(line)]
            if other:
                sys.stderr.write("\n".join(other) + "\n")


def compile_program(name: str, fn, *args, **kwargs) -> CompiledProgram:
    """Lower and compile jitted `fn` on abstract `args` (jax.ShapeDtypeStruct with shardings)."""
    return _program(name, *_compile(fn, *args, **kwargs))


def _compile(fn, *args, **kwargs):
    """-> (the compiled program, seconds it took, XLA's log meanwhile)."""
    started = time.monotonic()
    with xla_log() as log:
        compiled = fn.lower(*args, **kwargs).compile()
    return compiled, time.monotonic() - started, log


def _program(name: str, compiled, seconds: float, log: list[str]) -> CompiledProgram:
    memory = compiled.memory_analysis()
    warnings = tuple(_short(line) for line in log if _PARTITIONER_WARNING.search(line))
    return CompiledProgram(name, int(memory.argument_size_in_bytes), int(memory.output_size_in_bytes),
                           int(memory.alias_size_in_bytes), int(memory.temp_size_in_bytes),
                           profile(compiled.as_text(), _device_count(compiled.input_shardings[0])), seconds,
                           warnings)


def _device_count(shardings) -> int:
    for s in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)):
        if isinstance(s, jax.sharding.Sharding):
            return len(s.device_set)
    return 1


def _short(line: str) -> str:
    """A partitioner warning without the log prefix, and the HLO it quotes cut short."""
    line = re.sub(r"^[WIE]\d{4} [\d:.]+\s+\d+\s+\S+\]\s*", "", line.strip())
    return line if len(line) <= 300 else line[:297] + "..."


def abstract(shape_tree, sharding_tree):
    """ShapeDtypeStructs carrying shardings: what `lower` takes in place of arrays."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shape_tree, sharding_tree)


def abstract_params(config: ModelConfig, mesh: Mesh, dtype, quantize: str = "none") -> dict:
    """The model's parameters as sharded ShapeDtypeStructs; with `quantize` ("int8", "int4") its quantized
    kernels and their float32 scales, as `load_model(quantize=)` places them."""
    from flax.traverse_util import unflatten_dict

    return unflatten_dict({path: jax.ShapeDtypeStruct(shape, stored_dtype(path, quantize, dtype),
                                                      sharding=named_sharding(mesh, axes, shape))
                           for path, (shape, axes) in layout_of(config, quantize).items()})


# -------------------------------------------------------------------------------------------- training


def train_step(plan) -> CompiledProgram:
    """The train step of a `lwm_core.train.plan.Plan`, exactly as `lwm train` jits it, compiled for the
    plan's mesh."""
    from lwm_core.data.packing import pack_rows
    from lwm_core.train.loop import _Compiled, abstract_state

    fns = _Compiled.of(plan)
    t = plan.run.train
    A, R, T = t.accumulate, plan.micro_rows, t.seq_len
    sharding = named_sharding(plan.mesh, (None, "batch", "seq"), (A, R, T))
    empty = pack_rows([[]], 1)  # the dtypes of a batch
    batch = type(empty)(*(jax.ShapeDtypeStruct((A, R, T), x.dtype, sharding=sharding) for x in empty))
    return compile_program("train step", fns.step, abstract_state(plan, fns), batch)


# ------------------------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class Inference:
    """A generation request's shapes: `batch` rows of `prompt` tokens (padded as generation pads them)
    and `max_new` new tokens, in `dtype`, the weights quantized as `quantize` says ("none", "int8",
    "int4")."""

    batch: int
    prompt: int
    max_new: int
    dtype: str = "bfloat16"
    quantize: str = "none"

    @property
    def shapes(self) -> tuple[int, int, int]:
        """(padded prompt length, new-token slots, cache slots), as `generate.decode.start` makes them."""
        from lwm_core.generate.decode import bucket

        length, new = bucket(self.prompt), bucket(self.max_new)
        return length, new, length + new


def inference_programs(config: ModelConfig, mesh: Mesh, request: Inference) -> tuple[CompiledProgram, ...]:
    """Generation's prefill (the prompt into the KV cache, first token sampled) and one decode step, as
    `LWM.generate` runs them with the layer weights read in place (no second copy: the choice where memory
    is tight, see generate/weights.py), compiled for `mesh`."""
    from lwm_core.dtypes import jnp_dtype
    from lwm_core.generate.decode import decode_n, prefill
    from lwm_core.generate.sampling import Sampling

    dtype = jnp_dtype(request.dtype)
    params = abstract_params(config, mesh, dtype, request.quantize)
    length, new, slots = request.shapes
    rows = NamedSharding(mesh, logical_spec(("batch", None), mesh, (request.batch, length)))
    ids = jax.ShapeDtypeStruct((request.batch, length), jnp.int32, sharding=rows)
    replicated = NamedSharding(mesh, P())
    key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=replicated)
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
    sampling = Sampling(scalar, scalar)
    static = {"top_k": 0, "mesh": mesh}
    fill = functools.partial(prefill, config, params, None, ids, ids, key, sampling, max_new=new, slots=slots,
                             **static)
    compiled, seconds, log = _compile(prefill, config, params, None, ids, ids, key, sampling, max_new=new,
                                      slots=slots, **static)
    first = _program("prefill", compiled, seconds, log)
    state = abstract(jax.eval_shape(fill), compiled.output_shardings)  # decode takes what prefill gives
    limit = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    step = compile_program("decode step", decode_n, config, params, None, state, limit, sampling, **static)
    return first, step


def inference_estimate(config: ModelConfig, mesh: Mesh, request: Inference) -> dict[str, float]:
    """Per-device bytes of a generation, by arithmetic: the weights as sharded, the KV cache (its slots
    over sp, its rows and kv heads over dp x fsdp where they divide), and the prefill's working set (the
    hidden states of the prompt split over sp, one layer's q/k/v and FFN chunk, the ring's keys and
    values, and the layer's weights as FSDP gathers them)."""
    from lwm_core.dtypes import jnp_dtype

    dtype = jnp_dtype(request.dtype)
    itemsize = dtype.itemsize
    weights = 0.0
    for path, (shape, axes) in layout_of(config, request.quantize).items():
        size = jnp.dtype(stored_dtype(path, request.quantize, dtype)).itemsize
        weights += size * math.prod(shape) / shard_count(logical_spec(axes, mesh, shape), mesh)
    length, _, slots = request.shapes
    B, L, K, H = request.batch, config.num_hidden_layers, config.kv_heads, config.head_dim
    cache_shape = (B * K, slots, H)
    cache_spec = logical_spec(CACHE_AXES, mesh, cache_shape)
    cache = 2 * L * math.prod(cache_shape) / shard_count(cache_spec, mesh)
    sp = mesh.shape["sp"] if length % mesh.shape["sp"] == 0 else 1
    tokens = B * length / sp
    D, F = config.hidden_size, config.intermediate_size
    chunk = min(config.mlp_chunk_size or length, length) / length
    tp = mesh.shape["tp"]
    work = tokens * (3 * D + 2 * (config.num_attention_heads + 2 * K) * H / tp + 3 * F * chunk / tp)
    # A prefill's keys and values of the layer: on sp > 1 a ring holds its own and the block passing
    # through (dispatch: prefill); FSDP gathers one layer's weights whole, and quantized weights are
    # dequantized a layer at a time (as the dot's float operand; counted whole, as where XLA does not fuse it).
    keys = B * length * 2 * K * H / tp / sp * (2 if sp > 1 else 1)
    layer = sum(math.prod(shape[1:]) for shape, axes in param_layout(config).values() if axes[0] == "layers")
    whole = mesh.shape["fsdp"] * mesh.shape["sp"] > 1 or request.quantize != "none"
    gathered = layer / tp if whole else 0
    return {"weights": weights, "kv cache": cache * itemsize,
            "prefill activations": (work + keys + gathered) * itemsize}
