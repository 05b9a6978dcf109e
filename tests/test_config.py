import jax
import pytest

from lwm_core.config import (
    CARDS,
    PRESETS,
    find_card,
    get_config,
    load_config_file,
    parse_lwm_override,
    parse_set_options,
    split_key_value,
)
from lwm_core.errors import LWMError
from lwm_core.model.llama import init_params


def test_presets_match_lwm_sizes():
    c = get_config("7b")
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads) == (4096, 11008, 32, 32)
    assert get_config("65b").rms_norm_eps == 1e-5 and get_config("13b").rms_norm_eps == 1e-6
    assert get_config("30b").head_dim == 128


@pytest.mark.parametrize("name", ["7b", "65b"])
def test_full_size_presets_shape_check_for_free(name):
    config = get_config(name)
    shapes = jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
    n = sum(x.size for x in jax.tree.leaves(shapes))
    assert n == config.num_params()
    if name == "7b":
        assert 6.7e9 < n < 6.8e9


def test_cards_carry_theta_and_context():
    assert get_config("LWM-Text-Chat-1M").theta == 5e7
    assert get_config("LWM-Text-128K").theta == 1e7 and get_config("LWM-Text-256K").max_sequence_length == 262144
    assert get_config("LWM-Text-512K").theta == 2.5e7
    chat = get_config("LWM-Chat-32K")
    assert chat.vision and chat.theta == 5e7 and chat.max_sequence_length == 32768
    assert find_card("LargeWorldModel/LWM-Text-Chat-1M-Jax").name == "LWM-Text-Chat-1M"
    assert len(CARDS) == 11 and "tiny" in PRESETS


def test_overrides_are_typed_and_never_evaluated():
    sets = parse_set_options(["theta=5e7", "vision=true", "num_hidden_layers=4", "attention=blockwise"])
    c = get_config("debug", **sets)
    assert c.theta == 5e7 and c.vision is True and c.num_hidden_layers == 4 and c.attention == "blockwise"
    lwm = parse_lwm_override("dict(theta=50000000,max_sequence_length=32768,scan_attention=True)")
    c = get_config("7b", **lwm)
    assert c.theta == 5e7 and c.max_sequence_length == 32768
    with pytest.raises(LWMError, match="not of the form"):
        parse_lwm_override("dict(theta=__import__('os').system('echo pwned'))")
    with pytest.raises(LWMError, match="not of the form"):
        parse_lwm_override("os.system('x')")


def test_bad_config_values_name_the_value():
    with pytest.raises(LWMError, match="did you mean 'theta'"):
        get_config("debug", thetta=1)
    with pytest.raises(LWMError, match="did you mean '7b'"):
        get_config("7bb")
    with pytest.raises(LWMError, match="num_hidden_layers='four' is not an integer"):
        get_config("debug", num_hidden_layers="four")
    with pytest.raises(LWMError, match="num_key_value_heads=3 must divide"):
        get_config("debug", num_key_value_heads=3)
    with pytest.raises(LWMError, match="not key=value"):
        parse_set_options(["theta"])


def test_key_value_items_split_at_the_first_equals_sign():
    """The one parser of `--set` items, for model overrides and run configs alike."""
    assert split_key_value(" theta = 5e7 ", what="override", example="theta=1") == ("theta", "5e7")
    assert split_key_value("data.path=a=b.jsonl", what="--set", example="x=1") == ("data.path", "a=b.jsonl")
    assert split_key_value("model.tokenizer=", what="--set", example="x=1") == ("model.tokenizer", "")
    for bad in ("theta", " =5", ""):
        with pytest.raises(LWMError) as info:
            split_key_value(bad, what="--set", example="train.steps=200")
        assert str(info.value) == f"--set {bad!r} is not key=value; e.g. --set train.steps=200"
    assert parse_set_options([" theta = 5e7", "dict(vision=True)"]) == {"theta": "5e7", "vision": True}


def test_config_file_from_original_code(reference):
    c = reference["config"]
    assert (c.vocab_size, c.hidden_size, c.theta, c.num_hidden_layers) == (1000, 256, 1e7, 2)


def test_config_json_round_trip(tmp_path):
    c = get_config("LWM-Chat-32K", num_key_value_heads=8)
    (tmp_path / "config.json").write_text(c.to_json())
    assert load_config_file(str(tmp_path / "config.json")) == c
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LWMError, match="not valid JSON"):
        load_config_file(str(tmp_path / "bad.json"))
