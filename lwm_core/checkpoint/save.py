"""Writing a model's parameters: lwm's native directory, or LWM's streaming `params` file.

`LWM.save` / `LWM.save_params` and the training loop's final export call these. The arrays are gathered
to the host one at a time (`loader.host_arrays`), so host memory stays near the largest array.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from lwm_core.checkpoint.layers import SCAN, unscanned_path
from lwm_core.config import ModelConfig

Records = Iterable[tuple[tuple[str, ...], np.ndarray]]


def save_native(directory: str, config: ModelConfig, params, tokenizer=None, *, overwrite: bool = False) -> None:
    """Write lwm's native directory (config.json + safetensors + tokenizer.model).

    tokenizer: a loaded tokenizer; its sentencepiece file is copied when it has one (`.path`). quantized params
    (int8, int4: `lwm_core.quantize`) are written as they are, and config.json says so."""
    from lwm_core.checkpoint.loader import host_arrays
    from lwm_core.checkpoint.native import write_native
    from lwm_core.quantize import quantization

    tok = getattr(tokenizer, "path", None)
    write_native(directory, config, host_arrays(params), tokenizer_path=tok if tok and tok.endswith(".model") else None,
                 overwrite=overwrite, quantize=quantization(params))


def save_params(path: str, config: ModelConfig, params, *, scanned: bool | None = None) -> None:
    """Write LWM's streaming `params` file: the scanned layout, or one entry per layer (`transformer/h/{i}/...`).
    scanned None: the config's `scan_layers`."""
    from lwm_core.checkpoint.loader import host_arrays
    from lwm_core.checkpoint.msgpack_writer import write_records

    scanned = config.scan_layers if scanned is None else scanned
    write_records(path, host_arrays(params) if scanned else _unscan(host_arrays(params)))


def _unscan(arrays: Records) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Scanned records -> per-layer ones: (L, ...) at transformer/h/scan_decoder/... -> L records of (...)
    at transformer/h/{i}/... (the two layouts: checkpoint/layers.py)."""
    for path, arr in arrays:
        if tuple(path[:len(SCAN)]) == SCAN:
            for i in range(arr.shape[0]):
                yield unscanned_path(i, path[len(SCAN):]), arr[i]
        else:
            yield path, arr
