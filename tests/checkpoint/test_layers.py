"""The scanned and unscanned layouts of the per-layer weights: one definition for every reader and writer."""

from lwm_core.checkpoint import hf, layers, loader
from lwm_core.model import llama


def test_one_scanned_key_everywhere():
    assert layers.SCAN is llama.SCAN and hf.SCAN is llama.SCAN
    assert llama.SCAN == ("transformer", "h", "scan_decoder")


def test_unscanned_paths_round_trip():
    rest = ("attention", "wq", "kernel")
    path = layers.unscanned_path(12, rest)
    assert path == ("transformer", "h", "12", "attention", "wq", "kernel")
    assert layers.split_unscanned(path) == ((*llama.SCAN, *rest), 12)
    assert layers.split_unscanned(list(path)) == ((*llama.SCAN, *rest), 12)


def test_other_paths_are_not_layers():
    for path in [(*llama.SCAN, "attention", "wq", "kernel"), ("transformer", "wte", "embedding"),
                 ("transformer", "h", "x1", "ffn_norm", "kernel"), ("transformer", "h", "3"), ("lm_head", "kernel")]:
        assert layers.split_unscanned(path) is None, path


def test_loader_places_an_unscanned_path_in_its_layer():
    from lwm_core.config import get_config

    config = get_config("tiny")
    key, layer, shape, axes = loader._locate(("transformer", "h", "1", "ffn_norm", "kernel"),
                                              llama.param_layout(config), config.num_hidden_layers, "x")
    assert (key, layer, shape) == ((*llama.SCAN, "ffn_norm", "kernel"), 1, (config.hidden_size,))
    assert axes == ("norm",)
