"""Hub downloads through the real huggingface_hub code path, against a cache built here.

No test reaches the network: the hub endpoint is HF_HUB_OFFLINE=1 (conftest's `hub_cache`) or a port
on 127.0.0.1 (`hub_up`: one that accepts connections, `hub_down`: one that refuses them).
"""

import socket
import time
import types

import pytest
from huggingface_hub import constants, errors

from helpers import COMMIT
from helpers import cache_repo as _cache_repo
from lwm_core.errors import LWMError
from lwm_core.hub import hub_download, looks_like_hub_id, parse_hub_id

REPO = "LargeWorldModel/LWM-Text-Chat-1M-Jax"


def _point_hub_at(monkeypatch, sock):
    """Online mode with HF_ENDPOINT at `sock`'s loopback port (env and huggingface_hub's constants,
    which it read at import)."""
    endpoint = "http://127.0.0.1:%d" % sock.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return endpoint


@pytest.fixture
def hub_up(monkeypatch):
    """A hub endpoint that accepts TCP connections (and never answers: tests mock hf_hub_download)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield _point_hub_at(monkeypatch, sock)


@pytest.fixture
def hub_down(hub_cache, monkeypatch):
    """An empty hub cache and a hub endpoint that refuses connections: a port bound but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield _point_hub_at(monkeypatch, sock)


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
    assert message.startswith("cannot download params from the Hugging Face hub repo someone/not-cached: "
                              "HF_HUB_OFFLINE=1 is set, and it is not in the local cache ")
    assert str(hub_cache) in message and "`hf download someone/not-cached`" in message


def test_unreachable_hub_fails_at_once_with_one_line(hub_down, hub_cache, capfd):
    start = time.perf_counter()
    with pytest.raises(LWMError) as info:
        hub_download("someone/not-cached", ["params"], revision="v2")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert elapsed < 3, elapsed  # huggingface_hub's own retries take ~25 s
    assert "\n" not in message
    assert message.startswith("cannot download params from the Hugging Face hub repo someone/not-cached at "
                              f"revision v2: cannot reach {hub_down} (Connection refused), and it is not in "
                              f"the local cache {hub_cache}; ")
    assert "`hf download someone/not-cached --revision v2`" in message
    assert capfd.readouterr() == ("", "")  # no retry warnings from huggingface_hub


def test_unreachable_hub_still_serves_the_cache(hub_down, hub_cache, capfd):
    snapshot = _cache_repo(hub_cache, REPO, {"params": b"x", "tokenizer.model": b"sp"})
    start = time.perf_counter()
    paths = hub_download(REPO, ["params"], optional=["tokenizer.model", "config.json"])
    assert time.perf_counter() - start < 3
    assert paths == {"params": str(snapshot / "params"), "tokenizer.model": str(snapshot / "tokenizer.model")}
    assert capfd.readouterr() == ("", "")


def test_probe_goes_to_the_proxy_unless_no_proxy(monkeypatch):
    from lwm_core.hub import _unreachable

    with socket.socket() as listening, socket.socket() as refusing:
        for sock in (listening, refusing):
            sock.bind(("127.0.0.1", 0))
        listening.listen()
        up, down = (f"http://127.0.0.1:{s.getsockname()[1]}" for s in (listening, refusing))
        for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                     "ALL_PROXY", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        assert _unreachable(up) is None
        assert _unreachable(down) == "Connection refused"
        monkeypatch.setenv("http_proxy", up)
        assert _unreachable(down) is None  # only the proxy is contacted
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert _unreachable(down) == "Connection refused"


def test_missing_required_file_of_cached_repo(hub_cache):
    _cache_repo(hub_cache, REPO, {"params": b"x"})
    with pytest.raises(LWMError, match="cannot download tokenizer.model from the Hugging Face hub repo"):
        hub_download(REPO, ["params", "tokenizer.model"])


def _http_error(cls, status):
    # HfHubHTTPError only reads `headers` and `request` from the response it wraps.
    response = types.SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} error", response=response)


@pytest.mark.parametrize(
    ("error", "expected", "login"),
    [
        (_http_error(errors.GatedRepoError, 403), "is gated and your token has no access", True),
        (_http_error(errors.RepositoryNotFoundError, 404), "does not exist or is private", True),
        (_http_error(errors.RevisionNotFoundError, 404), "revision 'v9' does not exist", False),
        (_http_error(errors.RemoteEntryNotFoundError, 404), "has no file params", False),
        (_http_error(errors.HfHubHTTPError, 401), "refused your token", True),
        (errors.HFValidationError("bad id"), "is not a valid Hugging Face hub repo id", False),
    ],
)
def test_hub_errors_become_one_line(hub_up, monkeypatch, error, expected, login):
    def fail(repo_id, filename, *, revision=None, local_files_only=False):
        assert not local_files_only  # the hub answered the probe
        raise error

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fail)
    with pytest.raises(LWMError, match=expected) as info:
        hub_download(REPO, ["params"], revision="v9")
    assert "\n" not in str(info.value)
    assert ("`hf auth login`" in str(info.value)) == login  # the command of huggingface_hub >= 1.0


def test_optional_file_missing_on_the_hub_is_skipped(hub_up, monkeypatch):
    def download(repo_id, filename, *, revision=None, local_files_only=False):
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
