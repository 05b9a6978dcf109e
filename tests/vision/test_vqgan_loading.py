"""Loading the VQGAN: the released pickle format (read without running pickle code), the safetensors
directory of `lwm convert vqgan`, model directories, hub ids and random presets; files that do not fit
are refused with one line."""

from __future__ import annotations

import json
import os
import pickle

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from helpers import cache_repo
from lwm_core.errors import LWMError
from lwm_core.vision.config import get_vqgan_config
from lwm_core.vision.loading import load_vqgan, read_vqgan, write_vqgan_dir
from lwm_core.vision.vqgan import random_params

TINY = get_vqgan_config("tiny")


def released_params(seed: int = 0) -> dict:
    """A params tree as the original held it and pickled it: nested dicts of float32 numpy arrays, with
    the bare tree at the top (the original passed the unpickled object to apply({'params': ...}))."""
    return unflatten_dict(random_params(TINY, seed))


def write_pickle(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def assert_same(flat: dict, tree: dict):
    expected = flatten_dict(tree)
    assert set(flat) == set(expected)
    for path, value in expected.items():
        assert flat[path].dtype == np.float32 and np.array_equal(flat[path], np.asarray(value)), path


def test_released_pickle_loads_encodes_decodes_and_converts_bit_identically(tmp_path):
    # A downloaded LWM-Chat-*-Jax repo: `vqgan` beside `params`; the directory is found by its `vqgan`.
    repo = tmp_path / "LWM-Chat-1M-Jax"
    repo.mkdir()
    (repo / "params").write_bytes(b"")
    tree = released_params()
    write_pickle(repo / "vqgan", tree)
    vqgan = load_vqgan(str(repo), config="tiny", mesh="1,1,1,1")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    codes = vqgan.encode(x)
    assert codes.shape == (3, 8, 8) and codes.dtype == np.int32 and 0 <= codes.min() <= codes.max() < 64
    pixels = vqgan.decode(codes)
    assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == np.float32
    assert -1 <= pixels.min() < pixels.max() <= 1
    assert_same({path: np.asarray(v) for path, v in flatten_dict(jax.device_get(vqgan.params)).items()}, tree)
    # The safetensors directory holds the same bits and says what it is; loading it needs no config.
    out = tmp_path / "vqgan-st"
    config, flat = read_vqgan(str(repo / "vqgan"), config={"resolution": 32, **{
        k: getattr(TINY, k) for k in ("hidden_channels", "channel_mult", "num_res_blocks", "z_channels",
                                      "num_embeddings", "quantized_embed_dim")}})
    assert config == TINY
    write_vqgan_dir(str(out), config, flat)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "vqgan" and saved["channel_mult"] == [1, 1, 2]
    again = load_vqgan(str(out), mesh="1,1,1,1")
    assert again.config == TINY
    assert_same({path: np.asarray(v) for path, v in flatten_dict(jax.device_get(again.params)).items()}, tree)
    np.testing.assert_array_equal(again.encode(x), codes)
    np.testing.assert_array_equal(again.decode(codes), pixels)
    # a model directory holding the converted `vqgan` directory is found too
    (repo / "vqgan").unlink()
    os.rename(out, repo / "vqgan")
    assert read_vqgan(str(repo))[0] == TINY


@pytest.mark.parametrize("variant", ["protocol2", "protocol5", "jax_arrays", "frozen_dict", "params_wrapper"])
def test_every_way_the_original_could_have_pickled_its_params_is_read(tmp_path, variant):
    tree = released_params(seed=1)
    obj, protocol = tree, pickle.DEFAULT_PROTOCOL
    if variant == "protocol2":  # bytes travel as _codecs.encode(str, 'latin1')
        protocol = 2
    elif variant == "protocol5":  # numpy's _frombuffer
        protocol = 5
    elif variant == "jax_arrays":  # pickled without device_get: jax's _reconstruct_array
        obj = jax.tree.map(jax.numpy.asarray, tree)
    elif variant == "frozen_dict":  # Flax's init returned FrozenDicts before flax 0.8
        from flax.core import FrozenDict

        obj = FrozenDict(tree)
    else:
        obj = {"params": tree}
    path = write_pickle(tmp_path / "vqgan", obj, protocol)
    assert_same(read_vqgan(path, config="tiny")[1], tree)


class Evil:
    """Unpickling this runs a shell command (what a tampered checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_pickles(marker) -> dict:
    tree = released_params()
    nested = {**tree, "encoder": {**tree["encoder"], "Conv_0": {"kernel": Evil(marker), "bias": np.zeros(3)}}}
    return {"top": (Evil(marker), 4), "nested": (nested, 4), "protocol0": (Evil(marker), 0),
            "eval": (_Eval(marker), 4)}


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize("kind", ["top", "nested", "protocol0", "eval"])
def test_a_pickle_that_calls_a_function_is_refused_without_running_it(tmp_path, kind):
    marker = tmp_path / "marker"
    obj, protocol = evil_pickles(marker)[kind]
    path = write_pickle(tmp_path / "evil.pkl", obj, protocol)
    with pytest.raises(LWMError) as e:
        read_vqgan(path, config="tiny")
    message = str(e.value)
    assert "\n" not in message and f"VQGAN file {path} is not a plain params pickle" in message
    assert ("posix.system" if kind != "eval" else "builtins.eval") in message and "refusing to load it" in message
    assert not marker.exists()


def test_files_that_do_not_fit_are_refused_with_one_line(tmp_path):
    tree = released_params()
    good = write_pickle(tmp_path / "good", tree)

    def error(path, config="tiny") -> str:
        with pytest.raises(LWMError) as e:
            read_vqgan(str(path), config=config)
        assert "\n" not in str(e.value)
        return str(e.value)

    truncated = tmp_path / "truncated"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    assert "is damaged or not a params pickle (" in error(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "is not a pickle (it does not start like one)" in error(text)
    # the tiny pickle read as the released architecture
    assert (f"VQGAN checkpoint {good}: decoder/Conv_0/bias has shape (64,) but the config expects (768,); pass "
            "the config it was made with") in error(good, None)
    flat = flatten_dict(tree)
    missing = dict(flat)
    del missing[("quantize", "embeddings")]
    assert "is missing 1 of 133 weights, e.g. quantize/embeddings" in error(
        write_pickle(tmp_path / "missing", unflatten_dict(missing)))
    extra = {**flat, ("encoder", "AttnBlock_0", "kernel"): np.zeros(3, np.float32)}
    assert "has an unexpected weight encoder/AttnBlock_0/kernel" in error(
        write_pickle(tmp_path / "extra", unflatten_dict(extra)))
    ints = {**flat, ("quant_conv", "bias"): np.zeros(8, np.int64)}
    assert "quant_conv/bias is a int64 array, not a floating-point array" in error(
        write_pickle(tmp_path / "ints", unflatten_dict(ints)))
    assert "holds a list, not a params dict" in error(write_pickle(tmp_path / "list", [1, 2]))


def test_specs_and_configs_are_checked(tmp_path, hub_cache):
    def error(spec, **kwargs) -> str:
        with pytest.raises(LWMError) as e:
            read_vqgan(spec, **kwargs)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "unknown VQGAN preset 'tin'; did you mean 'tiny'?" in error("random:tin")
    assert "names no preset; write random:tiny or random:default" in error("random:")
    assert "is not a file, a directory, random:<preset> or a hub id" in error("./nowhere/vqgan")
    assert f"directory {tmp_path} holds no VQGAN" in error(str(tmp_path))
    language_model = tmp_path / "lm"
    language_model.mkdir()
    (language_model / "config.json").write_text(json.dumps({"hidden_size": 64}))
    (language_model / "model.safetensors").write_bytes(b"")
    assert "holds a language model and no `vqgan`" in error(str(language_model))
    tree = released_params(seed=3)
    write_pickle(language_model / "vqgan", tree)  # a saved LWM-Chat model with the VQGAN beside it
    assert_same(read_vqgan(str(language_model), config="tiny")[1], tree)
    assert "unknown VQGAN config key 'z_chanels'; did you mean 'z_channels'?" in error("random:tiny",
                                                                                   config={"z_chanels": 4})
    config, flat = read_vqgan("random:tiny", config={"num_embeddings": 32})
    assert config.num_embeddings == 32 and flat[("quantize", "embeddings")].shape == (32, 8)
    # A hub id: downloaded through huggingface_hub (offline here, so from its cache, or one line).
    line = error("LargeWorldModel/LWM-Chat-1M-Jax")
    assert line.startswith("cannot download vqgan from the Hugging Face hub repo LargeWorldModel/LWM-Chat-1M-Jax: "
                           "HF_HUB_OFFLINE=1 is set")
    tree = released_params(seed=2)
    cache_repo(hub_cache, "LargeWorldModel/LWM-Chat-1M-Jax", {"vqgan": pickle.dumps(tree)})
    assert_same(read_vqgan("LargeWorldModel/LWM-Chat-1M-Jax", config="tiny")[1], tree)
