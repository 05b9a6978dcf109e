"""`lwm convert`: exact export to transformers and back, shards, and refusals that leave nothing behind."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import REFERENCE  # noqa: E402
from helpers import run_cli as cli  # noqa: E402
from lwm_core.tokenizer import default_tokenizer_path  # noqa: E402


def test_fixture_export_runs_in_transformers_with_the_original_logits(capsys, tmp_path):
    out = tmp_path / "hf"
    code, stdout, _ = cli(capsys, "convert", "jax2hf", "-m", f"params::{REFERENCE / 'params'}", "--tokenizer",
                          default_tokenizer_path(), "-o", str(out), "--dtype", "fp32", "--verify")
    assert code == 0 and "greedy tokens agree 32/32: ok" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "tokenizer.model", "tokenizer_config.json"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    reference = np.load(REFERENCE / "logits.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(reference["ids"]).long()).logits.numpy()
    assert np.abs(logits - reference["logits"]).max() <= 1e-4
    assert model.config.rope_parameters["rope_theta"] == 1e7 and model.config.max_position_embeddings == 4096
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tokenizer("hello world", add_special_tokens=False).input_ids == \
        __import__("lwm_core").load_tokenizer(None).encode("hello world")


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_hf_to_lwm_to_hf_is_bit_exact(capsys, tmp_path, kv_heads):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, rms_norm_eps=1e-6,
                                      max_position_embeddings=256, rope_parameters={"rope_type": "default",
                                                                                    "rope_theta": 5e5})
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1 so that a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / "hf")
    assert cli(capsys, "convert", "hf2jax", "-m", str(tmp_path / "hf"), "-o", str(tmp_path / "lwm" / "params"))[0] == 0
    code, _, _ = cli(capsys, "convert", "jax2hf", "-m", str(tmp_path / "lwm"), "-o", str(tmp_path / "back"),
                     "--dtype", "fp32")
    assert code == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    original = model.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    # lwm itself agrees with transformers on the imported weights: logits and greedy tokens
    import lwm_core

    ours = lwm_core.load_model(str(tmp_path / "lwm"), mesh="1,1,1,1")
    ids = np.random.default_rng(0).integers(3, 300, 40)
    with torch.no_grad():
        theirs = model(torch.from_numpy(ids)[None]).logits[0].numpy()
        greedy = model.generate(torch.from_numpy(ids)[None], max_new_tokens=16, min_new_tokens=16,
                                do_sample=False)[0, 40:].numpy()
    assert np.abs(ours.logits(ids) - theirs).max() <= 1e-4
    np.testing.assert_array_equal(ours.generate(ids, 16), greedy)


def test_small_shards_make_an_index_that_loads(capsys, tmp_path):
    code, _, _ = cli(capsys, "convert", "jax2hf", "-m", "random:tiny", "-o", str(tmp_path / "hf"),
                     "--max-shard-size", "400KB", "--dtype", "fp32")
    assert code == 0
    shards = sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert model.config.num_hidden_layers == 2


def _one_error(capsys, *args) -> str:
    code, out, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_are_refused_and_leave_nothing(capsys, tmp_path):
    hf = tmp_path / "hf"
    assert cli(capsys, "convert", "jax2hf", "-m", "random:tiny", "-o", str(hf), "--max-shard-size", "400KB")[0] == 0
    # another architecture
    other = tmp_path / "gpt2"
    shutil.copytree(hf, other)
    config = json.loads((other / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (other / "config.json").write_text(json.dumps(config))
    assert "is not LlamaForCausalLM" in _one_error(capsys, "convert", "hf2jax", "-m", str(other), "-o",
                                                   str(tmp_path / "o1"))
    # a missing shard
    missing = tmp_path / "missing"
    shutil.copytree(hf, missing)
    next(missing.glob("model-00002-*.safetensors")).unlink()
    assert "missing shard model-00002" in _one_error(capsys, "convert", "hf2jax", "-m", str(missing), "-o",
                                                     str(tmp_path / "o2"))
    # an index that does not match its shards
    wrong = tmp_path / "wrong"
    shutil.copytree(hf, wrong)
    index = json.loads((wrong / "model.safetensors.index.json").read_text())
    names = sorted(index["weight_map"])
    index["weight_map"][names[0]], index["weight_map"][names[-1]] = (index["weight_map"][names[-1]],
                                                                     index["weight_map"][names[0]])
    if index["weight_map"][names[0]] == index["weight_map"][names[-1]]:
        index["weight_map"][names[0]] = "model-00001-of-99999.safetensors"
    (wrong / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "index" in _one_error(capsys, "convert", "hf2jax", "-m", str(wrong), "-o", str(tmp_path / "o3"))
    # an output that exists
    assert "already exists; pass --force" in _one_error(capsys, "convert", "jax2hf", "-m", "random:tiny", "-o", str(hf))
    # a vision model without --text-only
    vision = tmp_path / "vision"
    assert "--text-only" in _one_error(capsys, "convert", "jax2hf", "-m", "random:tiny", "--set", "vision=true",
                                       "-o", str(vision))
    assert not vision.exists()
    assert cli(capsys, "convert", "jax2hf", "-m", "random:tiny", "--set", "vision=true", "--text-only",
               "-o", str(vision))[0] == 0
    assert not any(p.name.startswith(".lwm") for p in tmp_path.iterdir())  # no temporary leftovers
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


def test_jax2hf_refuses_a_config_that_does_not_match_the_checkpoint(capsys, tmp_path):
    """Loading refuses a checkpoint whose shapes differ from its config; export gives the same error
    (it used to write a wrong model without a word)."""
    import lwm_core

    lwm_core.load_model("random:tiny", mesh="1,1,1,1").save(str(tmp_path / "tiny"))
    args = ("-m", str(tmp_path / "tiny"), "--set", "num_key_value_heads=2")
    with pytest.raises(lwm_core.LWMError) as loading:
        lwm_core.load_model(args[1], overrides={"num_key_value_heads": 2}, mesh="1,1,1,1")
    line = _one_error(capsys, "convert", "jax2hf", *args, "-o", str(tmp_path / "hf"))
    assert line == f"error: {loading.value}" and "has shape" in line and "expects" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_hf2jax_never_pairs_new_weights_with_an_old_config(capsys, tmp_path):
    """params go into a folder beside config.json: a second model converted into the same folder must
    not keep the first one's config."""
    for name, layers in (("a", 2), ("b", 3)):
        config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96,
                                          num_hidden_layers=layers, num_attention_heads=4,
                                          max_position_embeddings=256)
        transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / name)
    out = tmp_path / "lwm" / "params"
    assert cli(capsys, "convert", "hf2jax", "-m", str(tmp_path / "a"), "-o", str(out))[0] == 0
    before = (out.parent / "config.json").read_bytes(), out.read_bytes()
    # Another file name in the same folder: the folder's config.json would describe the wrong model.
    line = _one_error(capsys, "convert", "hf2jax", "-m", str(tmp_path / "b"), "-o", str(out.parent / "params-b"))
    assert f"{out.parent / 'config.json'} already exists and describes another model; pass --force" in line
    assert ((out.parent / "config.json").read_bytes(), out.read_bytes()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.json", "params"]
    # The same model again is fine; --force replaces both the weights and the config.
    assert cli(capsys, "convert", "hf2jax", "-m", str(tmp_path / "a"), "-o", str(out), "--force")[0] == 0
    assert cli(capsys, "convert", "hf2jax", "-m", str(tmp_path / "b"), "-o", str(out), "--force")[0] == 0
    assert __import__("lwm_core").load_model(str(out.parent), mesh="1,1,1,1").config.num_hidden_layers == 3


# ------------------------------------------------------------------------------------- vqgan

_TINY_VQGAN = ("dict(resolution=32, hidden_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, z_channels=8, "
               "num_embeddings=64, quantized_embed_dim=8)")


def _vqgan_pickle(path):
    """A VQGAN pickle in the released format (the bare params tree of float32 numpy arrays), tiny."""
    import pickle

    from flax.traverse_util import unflatten_dict

    from lwm_core.vision.config import get_vqgan_config
    from lwm_core.vision.vqgan import random_params

    flat = random_params(get_vqgan_config("tiny"), seed=5)
    with open(path, "wb") as f:
        pickle.dump(unflatten_dict(flat), f)
    return flat


def test_convert_vqgan_writes_safetensors_with_the_pickle_bits(capsys, tmp_path):
    from safetensors.numpy import load_file

    import lwm_core

    flat = _vqgan_pickle(tmp_path / "vqgan")
    out = tmp_path / "vqgan-st"
    code, stdout, err = cli(capsys, "convert", "vqgan", str(tmp_path / "vqgan"), "--set", _TINY_VQGAN, "-o", str(out))
    assert (code, stdout) == (0, f"{out}\n"), err
    assert "133 float32 arrays" in err and "32x32 frames -> 8x8 codes of 64" in err
    tensors = load_file(str(out / "model.safetensors"))
    assert set(tensors) == {"/".join(path) for path in flat}
    for path, value in flat.items():
        assert tensors["/".join(path)].dtype == np.float32 and np.array_equal(tensors["/".join(path)], value)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "vqgan" and config["channel_mult"] == [1, 1, 2] and config["resolution"] == 32
    assert lwm_core.load_vqgan(str(out), mesh="1,1,1,1").config.num_embeddings == 64
    # -m names the same input; the released architecture is assumed without --set, and refused here
    assert "already exists; pass --force" in _one_error(capsys, "convert", "vqgan", "-m", str(tmp_path / "vqgan"),
                                                        "--set", _TINY_VQGAN, "-o", str(out))
    line = _one_error(capsys, "convert", "vqgan", "-m", str(tmp_path / "vqgan"), "-o", str(tmp_path / "o1"))
    assert "decoder/Conv_0/bias has shape (64,) but the config expects (768,)" in line
    code, _, err = cli(capsys, "convert", "vqgan", str(tmp_path / "vqgan"), "-m", str(tmp_path / "vqgan"),
                       "-o", str(tmp_path / "o2"))
    assert code == 2 and "name it once" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vqgan", "vqgan-st"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_convert_vqgan_refuses_a_pickle_that_runs_code(capsys, tmp_path):
    import pickle

    marker = tmp_path / "marker"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"encoder": _Evil(marker)}))
    line = _one_error(capsys, "convert", "vqgan", str(tmp_path / "evil.pkl"), "-o", str(tmp_path / "out"))
    assert line.startswith(f"error: VQGAN file {tmp_path / 'evil.pkl'} is not a plain params pickle: it calls "
                           "posix.system") and "refusing to load it" in line
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pkl"]  # no output, no temporaries
