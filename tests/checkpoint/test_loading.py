"""Model specs end to end: every way a user names weights, and every way they can be wrong."""

import shutil

import numpy as np
import pytest

import lwm_core
from helpers import REFERENCE, cache_repo
from lwm_core.checkpoint.streaming import iter_records, write_records
from lwm_core.errors import LWMError
from lwm_core.tokenizer import default_tokenizer_path


@pytest.fixture(scope="module")
def ref_model(reference):
    return lwm_core.load_model(f"params::{reference['params']}", config=reference["config"], mesh="1,1,1,1")


def test_native_directory_round_trip(ref_model, reference, tmp_path):
    out = tmp_path / "model"
    ref_model.save(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    again = lwm_core.load_model(str(out), mesh="1,1,1,1")  # config comes from the directory
    assert again.config == ref_model.config
    np.testing.assert_array_equal(again.logits(reference["ids"]), ref_model.logits(reference["ids"]))
    with pytest.raises(LWMError, match="already exists"):
        ref_model.save(str(out))


def test_trainstate_specs_load_the_same_weights(ref_model, reference, tmp_path):
    path = tmp_path / "trainstate"
    records = [(("step",), np.array(7, np.int32))]
    for key, arr in iter_records(reference["params"]):
        records.append((("params", "params", *key), arr))
        records.append((("opt_state", "1", "0", "mu", *key), np.zeros(arr.shape, np.float32)))
    write_records(str(path), records)
    for kind in ("trainstate", "trainstate_params"):
        model = lwm_core.load_model(f"{kind}::{path}", config=reference["config"], mesh="1,1,1,1")
        np.testing.assert_array_equal(model.logits(reference["ids"]), ref_model.logits(reference["ids"]))


def test_directory_with_params_config_and_tokenizer(reference, tmp_path):
    for name in ("params", "config.json"):
        shutil.copy(REFERENCE / name, tmp_path / name)
    shutil.copy(default_tokenizer_path(), tmp_path / "tokenizer.model")
    model = lwm_core.load_model(str(tmp_path), mesh="1,1,1,1")
    assert model.config == reference["config"] and model.tokenizer.path == str(tmp_path / "tokenizer.model")
    assert np.abs(model.logits(reference["ids"]) - reference["logits"]).max() <= 1e-4


def test_hub_id_resolves_through_the_local_cache(hub_cache, reference):
    repo = "LargeWorldModel/LWM-Text-Chat-1M-Jax"
    cache_repo(hub_cache, repo, {"params": (REFERENCE / "params").read_bytes(),
                                 "config.json": (REFERENCE / "config.json").read_bytes()})
    model = lwm_core.load_model(repo, mesh="1,1,1,1")
    assert np.abs(model.logits(reference["ids"]) - reference["logits"]).max() <= 1e-4


def test_hub_id_offline_and_absent_is_one_clear_line(hub_cache):
    with pytest.raises(LWMError, match="cannot download params .*HF_HUB_OFFLINE=1 is set.*`hf download "):
        lwm_core.load_model("LargeWorldModel/LWM-Text-Chat-1M-Jax", mesh="1,1,1,1")


def test_random_model_takes_vocab_from_its_tokenizer():
    model = lwm_core.load_model("random:tiny", mesh="1,1,1,1")
    assert model.config.vocab_size == model.tokenizer.vocab_size == 4096
    params = sum(x.size for x in __import__("jax").tree.leaves(model.params))
    assert params == model.config.num_params()


def test_bfloat16_load_is_close(reference):
    model = lwm_core.load_model(f"params::{reference['params']}", config=reference["config"], mesh="1,1,1,1",
                                dtype="bfloat16")
    leaf = model.params["lm_head"]["kernel"]
    assert leaf.dtype == np.dtype("bfloat16")
    got = model.logits(reference["ids"])
    scale = np.abs(reference["logits"]).max()
    assert np.abs(got - reference["logits"]).max() <= 0.1 * scale


def test_bad_checkpoints_are_one_line_errors(reference, tmp_path):
    config = reference["config"]
    with pytest.raises(LWMError, match="does not exist"):
        lwm_core.load_model(f"params::{tmp_path / 'nope'}", config=config, mesh="1,1,1,1")
    truncated = tmp_path / "truncated"
    truncated.write_bytes((REFERENCE / "params").read_bytes()[:-1000])
    with pytest.raises(LWMError, match="truncated"):
        lwm_core.load_model(f"params::{truncated}", config=config, mesh="1,1,1,1")
    with pytest.raises(LWMError, match=r"transformer/wte/embedding has shape \(1000, 256\) but the config "
                                       r"expects \(32000, 256\)|lm_head/kernel has shape \(256, 1000\)"):
        lwm_core.load_model(f"params::{reference['params']}", config="debug", mesh="1,1,1,1")
    missing_layer = tmp_path / "missing"
    write_records(str(missing_layer), [(k, a) for k, a in iter_records(reference["params"]) if k[-2] != "wq"])
    with pytest.raises(LWMError, match="missing 1 weight.*wq"):
        lwm_core.load_model(f"params::{missing_layer}", config=config, mesh="1,1,1,1")
    with pytest.raises(LWMError, match="unexpected weight transformer/vte"):
        vision = lwm_core.load_model("random:tiny", config=lwm_core.get_config("tiny", vision=True), mesh="1,1,1,1")
        vision.save_params(str(tmp_path / "vision"))
        lwm_core.load_model(f"params::{tmp_path / 'vision'}", config="tiny", mesh="1,1,1,1")
    lonely = tmp_path / "lonely" / "weights"
    lonely.parent.mkdir()
    shutil.copy(REFERENCE / "params", lonely)
    with pytest.raises(LWMError, match="no config for"):
        lwm_core.load_model(str(lonely), mesh="1,1,1,1")
    with pytest.raises(LWMError, match="not a file, a directory"):
        lwm_core.load_model("./no/such/thing", mesh="1,1,1,1")
    hf_dir = tmp_path / "hf"  # a transformers directory: its config.json names a model_type
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text('{"model_type": "llama", "head_dim": 64}')
    with pytest.raises(LWMError, match=f"{hf_dir} is a Hugging Face .*lwm convert hf2jax {hf_dir} -o DIR"):
        lwm_core.load_model(str(hf_dir), mesh="1,1,1,1")
    (hf_dir / "config.json").write_text('{"model_type": "vqgan", "resolution": 256}')  # lwm convert vqgan's
    with pytest.raises(LWMError, match=f"{hf_dir} is a VQGAN .*not a language model"):
        lwm_core.load_model(str(hf_dir), mesh="1,1,1,1")
    with pytest.raises(LWMError, match="not a sentencepiece"):
        bad_tok = tmp_path / "tok.model"
        bad_tok.write_bytes(np.random.default_rng(0).bytes(300))
        lwm_core.load_model("random:tiny", tokenizer=str(bad_tok), mesh="1,1,1,1")


def test_prompt_longer_than_context_is_refused():
    model = lwm_core.load_model("random:tiny", config=lwm_core.get_config("tiny", max_sequence_length=64),
                                mesh="1,1,1,1")
    with pytest.raises(LWMError, match="prompt of 60 tokens \\+ 10 new tokens exceeds the model's context of 64"):
        model.generate(list(range(3, 63)), 10)


def test_flax_params_blob_loads(ref_model, reference, tmp_path):
    from flax.traverse_util import unflatten_dict

    from lwm_core.checkpoint.streaming import write_flax_params

    tree = unflatten_dict(dict(iter_records(reference["params"])))
    write_flax_params(str(tmp_path / "blob"), {"params": tree})
    model = lwm_core.load_model(f"flax_params::{tmp_path / 'blob'}", config=reference["config"], mesh="1,1,1,1")
    np.testing.assert_array_equal(model.logits(reference["ids"]), ref_model.logits(reference["ids"]))


def test_a_resolved_source_is_not_resolved_again(reference, monkeypatch):
    """Commands that check input against the config before loading pass the resolved spec on: the second
    step must not look the spec up again (for a hub id, a second round of downloads)."""
    from lwm_core.checkpoint import loader
    from lwm_core.loading import resolve_spec

    source, config, tokenizer = resolve_spec(f"params::{reference['params']}", config=reference["config"])

    def looked_up_again(*args):
        raise AssertionError("the spec was resolved a second time")

    monkeypatch.setattr(loader, "_beside_config", looked_up_again)
    monkeypatch.setattr(loader, "_beside", looked_up_again)
    assert loader.resolve(source) is source
    model = lwm_core.load_model(source, config=config, tokenizer=tokenizer, mesh="1,1,1,1")
    assert np.abs(model.logits(reference["ids"]) - reference["logits"]).max() <= 1e-4
