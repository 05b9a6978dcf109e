"""Examples -> fixed-shape training rows with segment ids (masked sequence packing).

LWM concatenated tokenized examples into one stream and cut it into rows, so a row's tokens attended
to the end of the previous, unrelated document, and documents were split across rows. Here each row
holds whole examples one after another, each with its own segment id and positions restarting at 0;
attention is masked to the segment (same id) and RoPE sees every example start at position 0, so a
packed row trains exactly like the separate examples it holds, without padding waste.

An example of n tokens gives n - 1 (input, target) pairs: inputs tokens[:-1], targets tokens[1:].
Loss weights and the target vision mask belong to the predicted token (index 1..n-1), the input
vision mask to the input token (index 0..n-2). Padding: segment 0, weight 0, ids 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lwm_core.data.process import Example


class Batch(NamedTuple):
    """One batch of rows; every array is (R, T): R rows of T positions."""

    inputs: np.ndarray  # int32 (R, T): token fed at each position
    targets: np.ndarray  # int32 (R, T): token to predict there (the next one of the same example)
    loss_weights: np.ndarray  # float32 (R, T): 1 where the target counts, 0 on [field]s, BOS and padding
    segment_ids: np.ndarray  # int32 (R, T): 1, 2, ... per example within a row; 0 = padding
    positions: np.ndarray  # int32 (R, T): position within the example (0 at its first token); 0 on padding
    input_vision_masks: np.ndarray  # bool (R, T): inputs that are VQGAN codes / vision delimiters
    target_vision_masks: np.ndarray  # bool (R, T): targets that are (use the vision head)


def pairs(example: Example) -> int:
    """(input, target) pairs the example contributes to a row: one per token after the first."""
    return max(len(example.tokens) - 1, 0)


def pack_rows(rows: list[list[Example]], seq_len: int) -> Batch:
    """Place each row's examples one after another, pad the rest.

    An example with more than `seq_len` pairs is cut to its first `seq_len`; examples with no pairs
    (fewer than two tokens) take no room and get no segment id. The examples of a row must fit:
    choosing which ones do is the caller's job (`DataStream`), so overflow is a ValueError.
    """
    R, T = len(rows), seq_len
    if T <= 0:
        raise ValueError(f"seq_len = {seq_len} must be positive")
    inputs = np.zeros((R, T), np.int32)
    targets = np.zeros((R, T), np.int32)
    loss_weights = np.zeros((R, T), np.float32)
    segment_ids = np.zeros((R, T), np.int32)
    positions = np.zeros((R, T), np.int32)
    input_vision = np.zeros((R, T), np.bool_)
    target_vision = np.zeros((R, T), np.bool_)
    for r, row in enumerate(rows):
        examples = [ex for ex in row if pairs(ex) > 0]
        # Only a lone example may be longer than the row; anything else means the caller overfilled it.
        used = sum(min(pairs(ex), T) for ex in examples)
        if used > T:
            raise ValueError(f"row {r}: {len(examples)} examples with {used} pairs do not fit in seq_len = {T}")
        start = 0
        for segment, ex in enumerate(examples, start=1):
            n = min(pairs(ex), T)
            end = start + n
            inputs[r, start:end] = ex.tokens[:n]
            targets[r, start:end] = ex.tokens[1:n + 1]
            # Weights of the predicted tokens. (LWM's 'pad' mode shifted the mask twice when it cut a
            # long example, pairing each target with its neighbour's weight.)
            loss_weights[r, start:end] = ex.loss_mask[1:n + 1]
            segment_ids[r, start:end] = segment
            positions[r, start:end] = np.arange(n, dtype=np.int32)
            input_vision[r, start:end] = ex.vision_mask[:n]
            target_vision[r, start:end] = ex.vision_mask[1:n + 1]
            start = end
    return Batch(inputs, targets, loss_weights, segment_ids, positions, input_vision, target_vision)
