"""The one table of dtype spellings (lwm_core.dtypes)."""

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from helpers import ROOT
from lwm_core.dtypes import ALIASES, NAMES, SHORT, jnp_dtype, np_dtype, parse_dtype
from lwm_core.errors import LWMError


@pytest.mark.parametrize("spelling, canonical", [
    ("float32", "float32"), ("fp32", "float32"), ("f32", "float32"), ("FP32", "float32"),
    ("bfloat16", "bfloat16"), ("bf16", "bfloat16"), ("BF16", "bfloat16"),
    ("float16", "float16"), ("fp16", "float16"), ("f16", "float16"),
])
def test_every_spelling_names_one_canonical_dtype(spelling, canonical):
    assert parse_dtype(spelling) == canonical
    assert np_dtype(spelling) == jnp_dtype(spelling)
    assert np_dtype(spelling).name == canonical
    assert np_dtype(spelling).itemsize == {"float32": 4, "bfloat16": 2, "float16": 2}[canonical]


def test_bfloat16_is_ml_dtypes_and_the_table_is_closed():
    assert np_dtype("bf16") == np.dtype(ml_dtypes.bfloat16)
    assert set(ALIASES.values()) == set(NAMES) == set(SHORT)
    assert all(ALIASES[short] == name for name, short in SHORT.items())


@pytest.mark.parametrize("bad", ["float8", "int32", "", None])
def test_unknown_spellings_are_refused_with_the_choices(bad):
    with pytest.raises(LWMError, match=r"dtype .* is not one of float32, bfloat16, float16"):
        parse_dtype(bad)


def test_importing_the_table_does_not_import_jax():
    """The CLI builds its --dtype choices from it before any command body runs."""
    code = "import sys, lwm_core.dtypes; print('jax' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr
