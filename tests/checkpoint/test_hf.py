"""LWM <-> Hugging Face Llama names and layouts, checked against transformers' own model."""

import numpy as np
import pytest

from lwm_core.checkpoint.hf import (
    config_from_hf,
    from_hf,
    halves_to_interleaved,
    hf_config,
    interleaved_to_halves,
    to_hf,
)
from lwm_core.checkpoint.streaming import iter_records


def test_rope_permutation_round_trips():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)
    moved = interleaved_to_halves(w, heads=4)
    np.testing.assert_array_equal(moved[:8, 0], w[[0, 2, 4, 6, 1, 3, 5, 7], 0])
    np.testing.assert_array_equal(halves_to_interleaved(moved, heads=4), w)


def test_fixture_exported_to_transformers_matches_lwm_logits(reference):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = reference["config"]
    hf = transformers.LlamaConfig(**{k: v for k, v in hf_config(config).items() if k != "architectures"})
    model = transformers.LlamaForCausalLM(hf).eval()
    state = {}
    for path, array in iter_records(reference["params"]):
        for name, tensor in to_hf(config, path, np.asarray(array, np.float32)):
            state[name] = torch.from_numpy(tensor)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["ids"]).long()).logits.numpy()
    assert np.abs(logits - reference["logits"]).max() <= 1e-4
    # and back: every tensor returns to the exact LWM array
    back = {}
    for name, tensor in state.items():
        path, layer, array = from_hf(config, name, tensor.numpy())
        back.setdefault(path, {})[layer] = array
    for path, array in iter_records(reference["params"]):
        got = back[path]
        got = got[None] if None in got else np.stack([got[i] for i in range(len(got))])
        np.testing.assert_array_equal(got, np.asarray(array, np.float32))
    assert config_from_hf(hf.to_dict()).replace(max_sequence_length=config.max_sequence_length) == config
