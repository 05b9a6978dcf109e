"""The one table of dtype names: the three floating dtypes lwm computes and stores in, and their spellings.

Every other place that names a dtype (the CLI's `--dtype` choices, `lwm convert --dtype`, the train config,
the Hugging Face export) takes its names from here. Imports nothing heavy: the CLI builds its choices from
it before jax is loaded.
"""

from __future__ import annotations

from typing import Any

from lwm_core.errors import LWMError

NAMES = ("float32", "bfloat16", "float16")  # canonical: numpy's / jax's own names
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # the spellings of `lwm convert --dtype`
ALIASES = {
    **{name: name for name in NAMES},
    **{short: name for name, short in SHORT.items()},
    "f32": "float32",
    "f16": "float16",
}


def parse_dtype(name: str) -> str:
    """Any spelling (case-insensitive) -> its canonical name: `"BF16"` -> `"bfloat16"`."""
    canonical = ALIASES.get(name.lower()) if isinstance(name, str) else None
    if canonical is None:
        raise LWMError(f"dtype {name!r} is not one of {', '.join(NAMES)}")
    return canonical


def np_dtype(name: str) -> Any:
    """A spelling -> numpy dtype; bfloat16 is ml_dtypes' (numpy has none of its own)."""
    import numpy as np

    canonical = parse_dtype(name)
    if canonical == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(canonical)


def jnp_dtype(name: str) -> Any:
    """A spelling -> jax dtype (the same objects as `np_dtype`: jax's bfloat16 is ml_dtypes')."""
    import jax.numpy as jnp

    return jnp.dtype(parse_dtype(name))
