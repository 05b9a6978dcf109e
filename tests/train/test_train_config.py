"""The run config of `lwm train`: TOML + --set, typed, typo-proof; every shipped config loads."""

import pathlib

import pytest

from helpers import ROOT
from lwm_core.errors import LWMError
from lwm_core.train.config import RunConfig, load_run_config, to_toml

CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def test_every_shipped_config_is_tested():
    names = {p.name for p in CONFIGS}
    assert names == {"cpu-tiny.toml", "text-long-sp.toml", "vision-text.toml", "context-extension.toml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    run = load_run_config(str(path))
    again = tmp_path / "again.toml"
    again.write_text(to_toml(run))
    assert load_run_config(str(again)) == run


def test_cpu_tiny_values():
    run = load_run_config(str(ROOT / "configs/cpu-tiny.toml"))
    assert run.model.init == "random:tiny"
    assert run.train.seq_len == 128 and run.train.batch_size == 8 and run.optimizer.lr == 3e-3
    assert run.data.path == str(ROOT / "configs/data/counting.jsonl") and run.data.pack  # relative to the file


def test_data_paths_take_several_files(tmp_path):
    """A TOML list (or commas) names several files read end to end; each is relative to the config."""
    (tmp_path / "c").mkdir()
    config = tmp_path / "c" / "run.toml"
    config.write_text('[data]\npath = ["a.jsonl", "/abs/b.jsonl"]\neval_path = "e1.jsonl, e2.jsonl"\n'
                      '[[stages]]\nname = "s"\ndata.path = ["x.jsonl"]\n')
    run = load_run_config(str(config))
    here = tmp_path / "c"
    assert run.data.path == f"{here / 'a.jsonl'},/abs/b.jsonl"
    assert run.data.eval_path == f"{here / 'e1.jsonl'},{here / 'e2.jsonl'}"
    assert run.stage_configs()[0].data.path == str(here / "x.jsonl")
    again = tmp_path / "again.toml"
    again.write_text(to_toml(run))
    assert load_run_config(str(again)) == run
    config.write_text('[data]\npath = []\n')
    with pytest.raises(LWMError, match=r"data.path = \[\] must list one or more file paths"):
        load_run_config(str(config))


def test_long_context_config_uses_ring_over_sp():
    run = load_run_config(str(ROOT / "configs/text-long-sp.toml"))
    assert run.mesh.endswith(",8") and dict(run.model.overrides)["attention"] == "ring"
    assert run.train.seq_len == 131072 and run.train.seq_len % 8 == 0


def test_vision_config():
    run = load_run_config(str(ROOT / "configs/vision-text.toml"))
    assert run.data.kind == "vision_text" and dict(run.model.overrides)["vision"] is True
    assert (run.train.vision_loss_weight, run.train.text_loss_weight) == (0.5, 0.5)


def test_context_extension_stages_raise_length_and_theta():
    run = load_run_config(str(ROOT / "configs/context-extension.toml"))
    stages = run.stage_configs()
    assert [s.stage for s in stages] == ["32k", "128k", "256k", "512k", "1m"]
    lengths = [s.train.seq_len for s in stages]
    thetas = [dict(s.model.overrides)["theta"] for s in stages]
    assert lengths == [32768, 131072, 262144, 524288, 1048576]
    assert thetas == sorted(thetas) and thetas[0] == 1e6 and thetas[-1] == 5e7
    assert [s.run_dir for s in stages][-1] == "runs/context-extension/1m"
    assert all(dict(s.model.overrides)["max_sequence_length"] == s.train.seq_len for s in stages)


def test_set_overrides_are_typed():
    run = load_run_config(str(ROOT / "configs/cpu-tiny.toml"),
                          ["train.steps=7", "optimizer.lr=1e-2", "data.pack=false", "model.theta=5e5",
                           "mesh=1,2,2,2", "checkpoint.every_minutes=0.5"])
    assert run.train.steps == 7 and run.optimizer.lr == 0.01 and run.data.pack is False
    assert dict(run.model.overrides)["theta"] == "5e5" and run.mesh == "1,2,2,2"
    assert run.checkpoint.every_minutes == 0.5


@pytest.mark.parametrize("item, message", [
    ("train.stpes=5", "did you mean 'train.steps'"),
    ("optimzer.lr=1", "did you mean 'optimizer.lr'"),
    ("model.hiden_size=3", "did you mean 'model.hidden_size'"),
    ("train.steps=many", "train.steps='many' is not an integer"),
    ("train.batch_size=6", "not divisible by train.accumulate"),
    ("data.kind=audio", "data.kind = 'audio' is not one of"),
    ("mesh=1,2,3", "is not four integers"),
    ("model.theta=abc", "is not a number"),
    ("steps", "is not key=value"),
])
def test_bad_settings_are_one_clear_error(item, message):
    extra = ["train.accumulate=4"] if "batch_size" in item else []
    with pytest.raises(LWMError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_run_config(str(ROOT / "configs/cpu-tiny.toml"), [*extra, item])


def test_bad_file(tmp_path):
    with pytest.raises(LWMError, match="does not exist"):
        load_run_config(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3\n")
    with pytest.raises(LWMError, match="not valid TOML"):
        load_run_config(str(bad))
    typo = tmp_path / "typo.toml"
    typo.write_text("[trian]\nsteps = 3\n")
    with pytest.raises(LWMError, match="unknown key 'trian.steps'.*did you mean 'train.steps'"):
        load_run_config(str(typo))
    stage = tmp_path / "stage.toml"
    stage.write_text("[[stages]]\nname = 'a'\ntrain.seq_ln = 4\n")
    with pytest.raises(LWMError, match="stage 'a'.*did you mean 'train.seq_len'"):
        load_run_config(str(stage))


def test_unreadable_config_files(tmp_path):
    with pytest.raises(LWMError, match=f"^config file {tmp_path} is a directory; pass a TOML file"):
        load_run_config(str(tmp_path))
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[train]\n# d\u00e9j\u00e0 vu\nsteps = 3\n'.encode("latin-1"))
    with pytest.raises(LWMError, match=f"^config file {latin} is not UTF-8 text: byte 0xE9 at offset 11; convert"):
        load_run_config(str(latin))
    (tmp_path / "file").write_text("")
    with pytest.raises(LWMError, match=r"cannot read config file .*file/x.toml \(Not a directory\)"):
        load_run_config(str(tmp_path / "file" / "x.toml"))
    bom = tmp_path / "bom.toml"  # what some Windows editors write: read as the same TOML
    bom.write_bytes(b"\xef\xbb\xbf[train]\nsteps = 3\n")
    assert load_run_config(str(bom)).train.steps == 3


def test_run_dir_that_cannot_be_one(tmp_path):
    from lwm_core.train.config import check_run_dir

    (tmp_path / "file").write_text("")
    with pytest.raises(LWMError, match=f"^run_dir {tmp_path / 'file'} is a file, not a directory"):
        check_run_dir(str(tmp_path / "file"))
    file = tmp_path / "file"
    with pytest.raises(LWMError, match=f"^run_dir {file}/a/b cannot be created: {file} is a file"):
        check_run_dir(str(tmp_path / "file" / "a" / "b"))
    check_run_dir(str(tmp_path / "new" / "run"))  # missing levels are fine: they are created
    check_run_dir(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # checking writes nothing


def test_defaults_are_valid():
    assert isinstance(load_run_config(None), RunConfig)
    assert pathlib.Path(ROOT / load_run_config(str(ROOT / "configs/cpu-tiny.toml")).data.path).exists()
