"""Which attention runs where: the one place that decides, from config, mesh, backend and phase.

`choose` returns an `AttentionPlan`; `lwm_core.model.llama` runs it and decides nothing itself. The
decision table (T new positions, S key positions, sp the mesh's sequence axis, qcs/kcs the config's
query/key chunk sizes; the first matching row wins):

    phase    condition                                            plan
    forward  attention=ring, or auto and sp > 1                   ring (block_impl, tiles and layout below)
    forward  attention=dense, or T = 1                            dense
    forward  auto, one CPU device, the CPU kernels built and      cpu_flash (lwm_core.attention.cpu_flash)
             attention_impl auto
    forward  auto and T <= qcs and S <= kcs                       dense
    forward  auto and T <= CAUSAL_BLOCK_MAX                       causal_block (CAUSAL_BLOCK query rows)
    forward  otherwise (blockwise; auto, longer)                  blockwise (qcs x kcs tiles)
    prefill  attention=ring or auto, sp > 1 and sp divides T      ring, contiguous layout (the cache's)
    prefill  otherwise as forward without the ring rows           dense | cpu_flash | causal_block | blockwise
    extend   attention=dense, or T = 1                            dense
    extend   as forward's cpu_flash row                           cpu_flash
    extend   auto and T <= qcs and S <= kcs                       dense
    extend   otherwise                                            blockwise (qcs x kcs tiles)
    decode   sp > 1                                               sharded_cached (the cache's slots on sp)
    decode   packed CPU weights                                   cpu_kernel (lwm_core.cpu_decode)
    decode   otherwise                                            cached

Phases: `forward` is a whole sequence without a cache (training, scoring, logits); `prefill` writes T > 1
new tokens into an empty cache (they attend among themselves); `extend` attends T > 1 new tokens to
everything cached before them; `decode` is one new token per row against the cache. Two choices depend
on the backend: the ring-step kernels (`attention_impl=auto` is Pallas on gpu/tpu and plain JAX elsewhere,
Triton's tiles at most 128 x 128; `ring_step`), and on one CPU device whole-sequence attention, which is
lwm's fused C++ kernel when it could be built (`cpu_flash`: the caller says so, as it does for packed
weights), plain JAX with `attention_impl=jax`. Whether decode weights are packed for the CPU
kernels (one float32 CPU device, the kernels built, memory to spare) is decided where the weights are
made (lwm_core.generate); the plan follows the weights it is given.

This module also holds the vocabularies of the attention config fields (`ATTENTION_KINDS`,
`ATTENTION_IMPLS`, `SEQUENCE_LAYOUTS`: lwm_core.config validates against them) and the registry of
ring-step kernels (`block_fns`). It imports neither jax nor any lwm_core module at module level (the
config, ring.py and layout.py import it), and the kernels only when `block_fns` is asked for them,
which import nothing back: no cycle.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from jax.sharding import Mesh

# config.attention: which attention a whole-sequence forward uses (auto: see the table above).
ATTENTION_KINDS = ("auto", "dense", "blockwise", "ring")
# config.attention_impl: the kernels of one ring step (the contract of `blocks.block_forward/backward`):
#   jax                   blocks.block_forward / block_backward (any backend; the reference)
#   pallas_gpu            Triton kernels (pallas_gpu.py)
#   pallas_tpu            Mosaic kernels (pallas_tpu.py)
#   pallas_*_interpret    those kernels in Pallas interpret mode, on CPU (tests; the TPU ones also inside a
#                         multi-device shard_map; tests/attention/test_pallas.py also runs the TPU kernels
#                         in the stricter, single-device TPU interpret mode, pltpu.InterpretParams)
#   auto                  the kernels of the backend: gpu -> pallas_gpu, tpu -> pallas_tpu, else jax; on one
#                         CPU device also whole-sequence attention by lwm's C++ kernel (plan cpu_flash)
ATTENTION_IMPLS = ("auto", "jax", "pallas_gpu", "pallas_tpu", "pallas_gpu_interpret", "pallas_tpu_interpret")
# config.sequence_layout: the order of the sequence over sp under ring attention (layout.py).
SEQUENCE_LAYOUTS = ("zigzag", "contiguous")

PHASES = ("forward", "prefill", "extend", "decode")
PLAN_KINDS = ("dense", "blockwise", "causal_block", "ring", "cached", "sharded_cached", "cpu_kernel", "cpu_flash")

# `auto` attention of a causal self-attention up to this many positions (a prompt, a training row) is
# causal-block attention with query blocks of CAUSAL_BLOCK rows: faster than blockwise attention on CPU
# (no online-softmax state, masks on diagonal blocks only; benchmarks/README.md#design-measurements).
CAUSAL_BLOCK_MAX = 8192
CAUSAL_BLOCK = 256
# Triton's ring-step tiles: 512 x 512 would not fit on-chip memory; 128 is the kernels' default.
GPU_TILE_MAX = 128


class AttentionConfig(Protocol):
    """What `choose` reads of a `lwm_core.config.ModelConfig` (named structurally: the config imports
    this module for its vocabularies, so this module does not import the config)."""

    attention: str
    attention_impl: str
    sequence_layout: str
    query_chunk_size: int
    key_chunk_size: int


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    """The chosen attention and its static settings (fields that do not apply to `kind` are None)."""

    kind: str  # one of PLAN_KINDS
    block_impl: str | None = None  # ring: the ring-step kernels, a concrete ATTENTION_IMPLS entry (not auto)
    q_chunk: int | None = None  # blockwise, ring: query positions per tile
    k_chunk: int | None = None  # blockwise, ring: key positions per tile
    block: int | None = None  # causal_block: query rows per block
    layout: str | None = None  # ring: the sequence layout over sp (SEQUENCE_LAYOUTS)


def choose(config: AttentionConfig, *, mesh: Mesh | None, backend: str, phase: str, q_len: int, k_len: int,
           packed: bool = False, cpu_kernels: bool = False) -> AttentionPlan:
    """The attention for `phase` (PHASES) with q_len new positions against k_len key positions on
    `mesh` (None: one device) and `backend` ("cpu", "gpu", "tpu": jax.default_backend()); `packed`:
    the decode weights are the CPU kernels' packed weights; `cpu_kernels`: lwm's CPU kernels are built
    (`lwm_core.cpu_decode.available()`). Pure: the same arguments, the same plan."""
    if phase not in PHASES:
        raise ValueError(f"unknown attention phase {phase!r}; choose one of {', '.join(PHASES)}")
    sp = mesh.shape["sp"] if mesh is not None else 1
    if phase == "decode":
        if sp > 1:
            return AttentionPlan("sharded_cached")
        return AttentionPlan("cpu_kernel" if packed else "cached")
    kind, T, S = config.attention, q_len, k_len
    # A prefill split over sp attends as a ring too, in the cache's contiguous order: each device then
    # sends its keys and values once around the ring, where blockwise attention over the split sequence
    # gathers every key and value again for each of its query tiles (LWM-7B at 1M tokens on 1,1,4,64:
    # 406 GB sent per device, against 128 GB by the ring).
    ring_prefill = phase == "prefill" and kind in ("ring", "auto") and sp > 1 and T % sp == 0
    if (phase == "forward" and (kind == "ring" or (kind == "auto" and sp > 1))) or ring_prefill:
        impl, q_chunk, k_chunk = ring_step(config.attention_impl, backend=backend, q_chunk=config.query_chunk_size,
                                           k_chunk=config.key_chunk_size)
        return AttentionPlan("ring", block_impl=impl, q_chunk=q_chunk, k_chunk=k_chunk,
                             layout="contiguous" if ring_prefill else config.sequence_layout)
    if kind == "dense" or T == 1:
        return AttentionPlan("dense")
    one_device = mesh is None or mesh.devices.size == 1  # a custom call is not partitioned over a mesh
    if kind == "auto" and backend == "cpu" and cpu_kernels and one_device and config.attention_impl == "auto":
        return AttentionPlan("cpu_flash")
    if kind == "auto" and T <= config.query_chunk_size and S <= config.key_chunk_size:  # small score matrix
        return AttentionPlan("dense")
    # Causal-block attention needs q and k/v to be the same positions 0..T-1: no cache before them.
    if kind == "auto" and phase != "extend" and T <= CAUSAL_BLOCK_MAX:
        return AttentionPlan("causal_block", block=CAUSAL_BLOCK)
    return AttentionPlan("blockwise", q_chunk=config.query_chunk_size, k_chunk=config.key_chunk_size)


def ring_step(impl: str, *, backend: str, q_chunk: int, k_chunk: int) -> tuple[str, int, int]:
    """-> (the concrete ring-step kernels of `impl` on `backend`, q_chunk, k_chunk they take)."""
    _check_impl(impl)
    if impl == "auto":
        impl = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(backend, "jax")
    if impl == "pallas_gpu":
        q_chunk, k_chunk = min(q_chunk, GPU_TILE_MAX), min(k_chunk, GPU_TILE_MAX)
    return impl, q_chunk, k_chunk


def block_fns(impl: str = "auto") -> tuple[Callable, Callable]:
    """-> (block_forward, block_backward) of the ring-step kernels `impl` (ATTENTION_IMPLS; auto: of
    jax.default_backend()), with the contract of `lwm_core.attention.blocks`. The kernel modules are
    imported only when asked for, so choosing "jax" never touches Pallas."""
    _check_impl(impl)
    if impl == "auto":
        import jax

        impl = ring_step(impl, backend=jax.default_backend(), q_chunk=1, k_chunk=1)[0]
    if impl == "jax":
        from lwm_core.attention import blocks

        return blocks.block_forward, blocks.block_backward
    if impl.startswith("pallas_gpu"):
        from lwm_core.attention import pallas_gpu as module
    else:
        from lwm_core.attention import pallas_tpu as module
    if impl.endswith("_interpret"):
        return (functools.partial(module.block_forward, interpret=True),
                functools.partial(module.block_backward, interpret=True))
    return module.block_forward, module.block_backward


def _check_impl(impl: str) -> None:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown block attention implementation {impl!r}; choose one of "
                         f"{', '.join(ATTENTION_IMPLS)}")
