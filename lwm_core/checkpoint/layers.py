"""The two layouts of the per-layer weights in a checkpoint, defined once for every reader and writer.

Scanned (how the model holds them and how LWM releases them): one array per weight with the L layers
stacked on axis 0, under `SCAN` = `transformer/h/scan_decoder` (the model's own definition). Unscanned
(LWM's `scan_layers=False` files, lwm's `params-unscanned`): one array per layer, under
`transformer/h/{i}`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lwm_core.model.llama import SCAN

__all__ = ["SCAN", "split_unscanned", "unscanned_path"]

_LAYER_INDEX = re.compile(r"^\d+$")


def unscanned_path(layer: int, rest: Sequence[str]) -> tuple[str, ...]:
    """The unscanned path of layer `layer` of the weight at `(*SCAN, *rest)`."""
    return ("transformer", "h", str(layer), *rest)


def split_unscanned(path: Sequence[str]) -> tuple[tuple[str, ...], int] | None:
    """(scanned path, layer index) of an unscanned per-layer path; None for any other path."""
    if len(path) > 3 and tuple(path[:2]) == ("transformer", "h") and _LAYER_INDEX.match(path[2]):
        return (*SCAN, *path[3:]), int(path[2])
    return None
