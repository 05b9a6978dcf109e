"""The built-in model registry (lwm_core.builtin) and `lwm models`: names resolve to the package's native
directories, an unknown name lists the known ones, a model whose weights an install lacks says how to get
them. The shipped models' quality is tests/demo/test_demo_vision.py's."""

from __future__ import annotations

import pytest

from helpers import run_cli as _run
from lwm_core import builtin
from lwm_core.errors import LWMError


def test_names_resolve_to_native_directories_and_unknown_names_list_the_known(monkeypatch, tmp_path):
    import lwm_core
    from lwm_core.checkpoint import loader

    monkeypatch.setattr(builtin, "MODELS_DIR", str(tmp_path))
    with pytest.raises(LWMError, match=r"built-in model lwm-demo-text has no weights in this install .*recipe"):
        loader.resolve("lwm-demo-text")
    lwm_core.load_model("random:tiny", mesh="1,1,1,1").save(str(tmp_path / "lwm-demo-text"))
    source = loader.resolve("lwm-demo-text")
    assert (source.kind, source.path) == ("native", str(tmp_path / "lwm-demo-text"))
    assert source.tokenizer == str(tmp_path / "lwm-demo-text" / "tokenizer.model")
    with pytest.raises(LWMError) as error:
        loader.resolve("lwm-demo-txt")
    assert str(error.value) == ("unknown model 'lwm-demo-txt'; did you mean 'lwm-demo-text'? (built-in models: "
                                "lwm-demo-vision, lwm-demo-text; any other model is a path, a hub id owner/name or "
                                "random:<preset>)")
    # a path is never a name: a missing file says so
    with pytest.raises(LWMError, match="is not a file, a directory"):
        loader.resolve("./lwm-demo-txt")
    assert builtin.default("gen video") == "lwm-demo-vision" and builtin.default("needle eval") == "lwm-demo-text"


def test_lwm_models_lists_the_models_and_prints_a_card(capsys, monkeypatch, tmp_path):
    import lwm_core

    monkeypatch.setattr(builtin, "MODELS_DIR", str(tmp_path))
    code, out, err = _run(capsys, "models")
    assert code == 0 and err == ""
    assert [line.split()[0] for line in out.splitlines()[1:] if line[:1].strip()] == list(builtin.MODELS)
    assert out.count("not in this install") == 2 and "lwm gen video" in out and "lwm needle eval" in out
    lwm_core.load_model("random:tiny", mesh="1,1,1,1").save(str(tmp_path / "lwm-demo-vision"))
    (tmp_path / "lwm-demo-vision" / "CARD.md").write_text("# lwm-demo-vision\nfinal loss 1.23\n")
    code, out, err = _run(capsys, "models", "lwm-demo-vision")
    assert (code, out, err) == (0, "# lwm-demo-vision\nfinal loss 1.23\n\n", "")
    code, out, err = _run(capsys, "models", "lwm-demo-vison")
    assert code == 1 and out == "" and err.startswith("error: unknown model 'lwm-demo-vison'; did you mean")
