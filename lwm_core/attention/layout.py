"""Sequence layouts over the `sp` axis.

Contiguous: device i holds positions [i T/N, (i+1) T/N). Under a causal mask the last device attends to
everything and the first to almost nothing, so a ring step waits for the slowest device (~53% of ideal
on 8 devices). Zigzag: the sequence is cut into 2N chunks and device i holds chunks i and 2N-1-i, so
every device holds one early and one late chunk and does the same amount of unmasked work at every
ring step. The permutation is applied once when a batch enters the model and undone on the way out;
positions and segment ids travel with their tokens, so nothing else changes.
"""

from __future__ import annotations

import numpy as np

from lwm_core.attention.dispatch import SEQUENCE_LAYOUTS
from lwm_core.errors import LWMError


def zigzag_order(length: int, sp: int) -> np.ndarray:
    """Original index of each position in the zigzag layout: (length,) int32."""
    if length % (2 * sp):
        raise LWMError(f"sequence length {length} is not divisible by 2*sp = {2 * sp} (the zigzag layout cuts "
                       f"it into 2*sp chunks); pad it to a multiple of {2 * sp} or use layout=contiguous")
    chunk = length // (2 * sp)
    chunks = np.arange(length, dtype=np.int32).reshape(2 * sp, chunk)
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * sp - 1 - i]]) for i in range(sp)])


def order(layout: str, length: int, sp: int) -> np.ndarray | None:
    """The permutation for `layout`, or None when it is the identity."""
    if layout not in SEQUENCE_LAYOUTS:
        raise LWMError(f"sequence layout {layout!r} is not one of {', '.join(SEQUENCE_LAYOUTS)}")
    if layout == "contiguous" or sp == 1:
        return None
    return zigzag_order(length, sp)


def inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm), dtype=perm.dtype)
    return inv


def unmasked_work(positions: np.ndarray, sp: int, causal: bool = True) -> np.ndarray:
    """(sp devices, sp ring steps) count of unmasked (query, key) pairs each device scores at each step,
    for the layout whose device-major positions are `positions` (length T): the load-balance figure."""
    local = positions.reshape(sp, -1)
    work = np.zeros((sp, sp), np.int64)
    for device in range(sp):
        for step in range(sp):
            keys = local[(device - step) % sp]
            q = local[device]
            work[device, step] = (keys[None, :] <= q[:, None]).sum() if causal else q.size * keys.size
    return work
