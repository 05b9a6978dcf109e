"""Which implementation of the per-ring-step block functions to use, and their shared argument checks.

`block_fns(impl)` returns `(block_forward, block_backward)` with the contract of
`lwm_core.attention.blocks` (the pure-JAX reference):

    "jax"                   blocks.block_forward / block_backward (any backend)
    "pallas_gpu"            Triton kernels (pallas_gpu.py)
    "pallas_tpu"            Mosaic kernels (pallas_tpu.py)
    "pallas_gpu_interpret"  the GPU kernels in Pallas interpret mode (runs on CPU; for tests)
    "pallas_tpu_interpret"  the TPU kernels in Pallas interpret mode (runs on CPU, also inside a
                            multi-device shard_map; tests/attention/test_pallas.py also runs the TPU kernels in
                            the stricter, single-device TPU interpret mode, pltpu.InterpretParams)
    "auto"                  the kernel of jax.default_backend(): gpu -> pallas_gpu,
                            tpu -> pallas_tpu, anything else -> jax

The kernel modules are imported only when asked for, so choosing "jax" never touches Pallas.
"""

from __future__ import annotations

import functools
from typing import Callable

from lwm_core.attention.blocks import _fit

IMPLS = ("auto", "jax", "pallas_gpu", "pallas_tpu", "pallas_gpu_interpret", "pallas_tpu_interpret")


def block_fns(impl: str = "auto") -> tuple[Callable, Callable]:
    """-> (block_forward, block_backward) of implementation `impl` (one of IMPLS)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown block attention implementation {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        import jax

        impl = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(jax.default_backend(), "jax")
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


def check_block_args(q, k, v, q_pos, k_pos, q_seg, k_seg, q_chunk: int, k_chunk: int, *, state=None, do=None,
                     lse=None, delta=None):
    """Validate the shapes of a block_forward/backward call -> (B, T, N, H, S, K, G, cq, ck).

    cq, ck are the tile sizes, min(chunk, length) as in the reference; a length that the tile does not
    divide raises (the reference's `_fit` message).
    """
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"expected q (B, T, N, H) and k, v (B, S, K, H); got q {q.shape}, k {k.shape}, "
                         f"v {v.shape}")
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != H:
        raise ValueError(f"k/v batch and head dim {k.shape[0]}, {k.shape[3]} must match q's {B}, {H} "
                         f"(q {q.shape}, k {k.shape})")
    if K == 0 or N % K:
        raise ValueError(f"kv heads K={K} must divide query heads N={N} (GQA)")
    expected = {"q_pos": (q_pos.shape, (T,)), "k_pos": (k_pos.shape, (S,)), "q_seg": (q_seg.shape, (B, T)),
                "k_seg": (k_seg.shape, (B, S))}
    G = N // K
    if state is not None:
        expected.update(m=(state.m.shape, (B, K, G, T)), l=(state.l.shape, (B, K, G, T)),
                        acc=(state.acc.shape, (B, K, G, T, H)))
    if do is not None:
        expected.update(do=(do.shape, q.shape), lse=(lse.shape, (B, N, T)), delta=(delta.shape, (B, N, T)))
    for name, (got, want) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"{name} has shape {tuple(got)}, expected {want} for q {q.shape}, k {k.shape}")
    return B, T, N, H, S, K, G, _fit(T, q_chunk), _fit(S, k_chunk)
