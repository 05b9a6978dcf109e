"""Hub downloads through the real huggingface_hub code path, offline, against a cache built here."""

import types

import pytest
from huggingface_hub import errors

from lwm_core.errors import LWMError
from lwm_core.hub import hub_download, looks_like_hub_id, parse_hub_id

from conftest import COMMIT, cache_repo as _cache_repo

REPO = "LargeWorldModel/LWM-Text-Chat-1M-Jax"


def test_files_come_from_the_cache(hub_cache):
    snapshot = _cache_repo(hub_cache, REPO, {"params": b"\x92\x91\xa1a", "tokenizer.model": b"sp"})
    paths = hub_download(REPO, ["params", "tokenizer.model"], optional=["vqgan", "config.json"])
    assert paths == {"params": str(snapshot / "params"), "tokenizer.model": str(snapshot / "tokenizer.model")}
    with open(paths["params"], "rb") as f:
        assert f.read() == b"\x92\x91\xa1a"


def test_commit_revision_is_found_without_refs(hub_cache):
    snapshot = _cache_repo(hub_cache, REPO, {"params": b"x"}, revision="some-branch")
    assert hub_download(REPO, ["params"], revision=COMMIT) == {"params": str(snapshot / "params")}


def test_absent_repo_offline_is_one_line(hub_cache):
    with pytest.raises(LWMError) as info:
        hub_download("someone/not-cached", ["params"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot download params from the Hugging Face hub repo someone/not-cached: ")
    assert "HF_HUB_OFFLINE=1" in message and str(hub_cache) in message
    assert "`huggingface-cli download someone/not-cached`" in message


def test_missing_required_file_of_cached_repo(hub_cache):
    _cache_repo(hub_cache, REPO, {"params": b"x"})
    with pytest.raises(LWMError, match="cannot download tokenizer.model from the Hugging Face hub repo"):
        hub_download(REPO, ["params", "tokenizer.model"])


def _http_error(cls, status):
    # HfHubHTTPError only reads `headers` and `request` from the response it wraps.
    response = types.SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} error", response=response)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_http_error(errors.GatedRepoError, 403), "is gated and your token has no access"),
        (_http_error(errors.RepositoryNotFoundError, 404), "does not exist or is private"),
        (_http_error(errors.RevisionNotFoundError, 404), "revision 'v9' does not exist"),
        (_http_error(errors.RemoteEntryNotFoundError, 404), "has no file params"),
        (_http_error(errors.HfHubHTTPError, 401), "refused your token"),
        (errors.HFValidationError("bad id"), "is not a valid Hugging Face hub repo id"),
    ],
)
def test_hub_errors_become_one_line(monkeypatch, error, expected):
    def fail(repo_id, filename, *, revision=None):
        raise error

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fail)
    with pytest.raises(LWMError, match=expected) as info:
        hub_download(REPO, ["params"], revision="v9")
    assert "\n" not in str(info.value)


def test_optional_file_missing_on_the_hub_is_skipped(monkeypatch):
    def download(repo_id, filename, *, revision=None):
        if filename == "vqgan":
            raise _http_error(errors.RemoteEntryNotFoundError, 404)
        return f"/cache/{filename}"

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    assert hub_download(REPO, ["params"], optional=["vqgan", "params"]) == {"params": "/cache/params"}


def test_looks_like_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert not looks_like_hub_id("a/b")  # an existing local directory wins
    assert looks_like_hub_id("a/c")
    assert looks_like_hub_id(REPO)
    assert looks_like_hub_id(REPO + "@main")
    for spec in ("./x", "/abs", "a/b/c", "x", "owner/", "a--b/c", "a/b.", "params::a/b", REPO + "@"):
        assert not looks_like_hub_id(spec), spec


def test_parse_hub_id():
    assert parse_hub_id(REPO) == (REPO, None)
    assert parse_hub_id(REPO + "@refs/pr/1") == (REPO, "refs/pr/1")
    with pytest.raises(LWMError, match="is not a Hugging Face hub repo id"):
        parse_hub_id("a/b/c")
