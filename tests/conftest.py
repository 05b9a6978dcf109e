"""Test setup: 8 fake CPU devices (set before jax is first imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "lwm_reference"


@pytest.fixture(scope="session")
def reference():
    """The original LWM code's checkpoint (`params`), its config and its logits for `ids`."""
    import numpy as np

    from lwm_core.config import load_config_file

    data = np.load(REFERENCE / "logits.npz")
    return {"params": str(REFERENCE / "params"), "config": load_config_file(str(REFERENCE / "config.json")),
            "ids": data["ids"], "logits": data["logits"]}
