"""Files from Hugging Face hub repos (`LargeWorldModel/LWM-Text-Chat-1M-Jax` and the like).

All downloads go through `huggingface_hub.hf_hub_download`, so the user's usual setup applies: the
cache in HF_HOME / HF_HUB_CACHE (big files stream there, and a second run reuses them), HF_HUB_OFFLINE,
HF_ENDPOINT and the saved or HF_TOKEN token for private and gated repos. Its exceptions are turned
into one-line `LWMError`s that say what to do; the exception classes are those of huggingface_hub's
`errors` module (checked against huggingface_hub 2.4).

Without a network huggingface_hub retries each request for ~25 s, logging a warning per try, before it
falls back to the cache. So `hub_download` first checks, in about a second, that the hub endpoint (or
the proxy in front of it) accepts a TCP connection, and if not reads the cache directly; and it
silences huggingface_hub's loggers, so that a failure is the one line of our error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lwm_core.errors import LWMError

# The hub's own rule for owner and repo names: letters, digits, '-', '_', '.', at most 96 chars,
# no '--' or '..', not starting or ending with '-' or '.'. An optional '@revision' (branch, tag or
# commit) follows the name.
_NAME = r"(?![A-Za-z0-9._-]*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^\s@]+))?")
_HTTP_MODULES = ("httpx", "httpx2", "requests", "urllib3", "h11", "httpcore")
# Long enough for a TCP handshake across the world (~0.3 s) plus a DNS lookup; short enough that an
# offline run answers at once. It bounds the DNS lookup too, which socket timeouts do not.
PROBE_TIMEOUT_S = 2.0


def looks_like_hub_id(spec: str) -> bool:
    """True for `owner/name` or `owner/name@revision` when no file or directory of that name exists.

    A local path always wins: `checkpoints/run1` that exists is a directory, not a repo. Paths that
    start with `.` or `/`, or have more than one `/`, are never hub ids.
    """
    return _HUB_ID.fullmatch(spec) is not None and not os.path.exists(spec)


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """Split `owner/name@revision` into `("owner/name", "revision")`; the revision may be None."""
    match = _HUB_ID.fullmatch(spec)
    if match is None:
        raise LWMError(
            f"{spec!r} is not a Hugging Face hub repo id; write it as owner/name or owner/name@revision "
            "(e.g. LargeWorldModel/LWM-Text-Chat-1M-Jax)"
        )
    return match["repo"], match["revision"]


def hub_download(
    repo_id: str,
    filenames: Sequence[str],
    *,
    revision: str | None = None,
    optional: Sequence[str] = (),
) -> dict[str, str]:
    """Download (or find in the local cache) files of a model repo on the Hugging Face hub.

    Args:
        repo_id: `owner/name`.
        filenames: files that must exist in the repo.
        revision: branch, tag or commit; None for the default branch.
        optional: files to fetch when the repo has them (or, offline, when the cache has them).

    Returns:
        filename -> local path in the hub cache, for every required file and each optional one found.
    """
    from huggingface_hub import constants

    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    # HF_HUB_OFFLINE=1 already makes huggingface_hub read the cache only; otherwise probe, once.
    unreachable = None if offline else _unreachable(constants.ENDPOINT)
    why = _why_not_from_hub(offline, unreachable, constants.ENDPOINT)
    paths: dict[str, str] = {}
    for filename in dict.fromkeys([*filenames, *optional]):  # in order, each once
        request = _Request(repo_id, filename, revision, why)
        path = _download_one(request, optional=filename not in filenames, cache_only=unreachable is not None)
        if path is not None:
            paths[filename] = path
    return paths


def _why_not_from_hub(offline: bool, unreachable: str | None, endpoint: str) -> str:
    """Why a file that is not in the cache could not be had from the hub, for the error that says so."""
    if offline:
        return "HF_HUB_OFFLINE=1 is set"
    if unreachable:
        return f"cannot reach {endpoint} ({unreachable})"
    return "the hub did not answer"  # reachable, but the requests failed after huggingface_hub's retries


@dataclass(frozen=True)
class _Request:
    """One file asked of a repo, and what the messages about it need."""

    repo_id: str
    filename: str
    revision: str | None
    why: str  # why the hub could not be asked (`_why_not_from_hub`)

    @property
    def where(self) -> str:
        return self.repo_id + (f" at revision {self.revision}" if self.revision else "")

    @property
    def fetch(self) -> str:
        """The command that fills the cache with this repo."""
        return f"hf download {self.repo_id}" + (f" --revision {self.revision}" if self.revision else "")


def _download_one(request: _Request, *, optional: bool, cache_only: bool) -> str | None:
    """The local path of one file; None for an optional file that the repo (or, offline, the cache) lacks.
    huggingface_hub's exceptions become one-line `LWMError`s (`_error_table`)."""
    from huggingface_hub import errors, hf_hub_download

    try:
        with _quiet_hub_logs():
            return hf_hub_download(request.repo_id, request.filename, revision=request.revision,
                                   local_files_only=cache_only)
    except Exception as e:
        for classes, missing, message in _error_table(errors):
            if isinstance(e, classes):
                if missing and optional:
                    return None
                raise LWMError(message(request, e)) from None
        # Proxy and connection errors of the HTTP client that huggingface_hub lets through.
        if type(e).__module__.split(".")[0] not in _HTTP_MODULES:
            raise
        raise LWMError(_network_message(request, e)) from None


def _error_table(errors) -> tuple[tuple[Any, bool, Callable[[_Request, Exception], str]], ...]:
    """(exception classes, "the file is missing", message) for huggingface_hub's `errors` module, tried in
    order: a subclass comes before its base. A missing optional file is skipped instead of raised."""
    # huggingface_hub >= 1.0 names the remote "no such file" error RemoteEntryNotFoundError; older
    # releases raised EntryNotFoundError, of which LocalEntryNotFoundError is a subclass (so the
    # local case must come first, as it does below).
    remote_missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    return (
        (errors.HFValidationError, False, _invalid_id_message),
        ((errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled), True, _not_cached_message),
        (errors.GatedRepoError, False, _gated_message),
        (errors.RepositoryNotFoundError, False, _no_repo_message),
        (errors.RevisionNotFoundError, False, _no_revision_message),
        (remote_missing, True, _no_file_message),
        (errors.HfHubHTTPError, False, _http_message),
    )


def _invalid_id_message(r: _Request, e: Exception) -> str:
    return (f"{r.repo_id!r} is not a valid Hugging Face hub repo id ({_first_line(e)}); "
            "write it as owner/name, e.g. LargeWorldModel/LWM-Text-Chat-1M-Jax")


def _not_cached_message(r: _Request, e: Exception) -> str:
    from huggingface_hub import constants

    return (f"cannot download {r.filename} from the Hugging Face hub repo {r.where}: {r.why}, and it is not "
            f"in the local cache {constants.HF_HUB_CACHE}; run `{r.fetch}` where there is a network (it "
            "fills that cache; with --local-dir DIR it writes a directory to pass instead)")


def _gated_message(r: _Request, e: Exception) -> str:
    return (f"the Hugging Face hub repo {r.repo_id} is gated and your token has no access to it; accept its "
            f"terms at https://huggingface.co/{r.repo_id} and log in (`hf auth login` or HF_TOKEN)")


def _no_repo_message(r: _Request, e: Exception) -> str:
    return (f"the Hugging Face hub repo {r.repo_id} does not exist or is private; check the name "
            "(e.g. LargeWorldModel/LWM-Text-Chat-1M-Jax), or log in (`hf auth login` or HF_TOKEN) "
            "if it is yours")


def _no_revision_message(r: _Request, e: Exception) -> str:
    return (f"revision {r.revision!r} does not exist in the Hugging Face hub repo {r.repo_id}; "
            "pass an existing branch, tag or commit, or no revision for the default branch")


def _no_file_message(r: _Request, e: Exception) -> str:
    return (f"the Hugging Face hub repo {r.where} has no file {r.filename}; check that it is the repo "
            "you meant (the Jax repos hold params, the PyTorch ones safetensors)")


def _http_message(r: _Request, e: Exception) -> str:
    if getattr(getattr(e, "response", None), "status_code", None) == 401:
        return (f"the Hugging Face hub refused your token for {r.repo_id} (HTTP 401); "
                "log in again (`hf auth login`) or set a valid HF_TOKEN")
    return (f"cannot download {r.filename} from the Hugging Face hub repo {r.where} ({_first_line(e)}); "
            "try again later, or download it elsewhere and pass the local directory")


def _network_message(r: _Request, e: Exception) -> str:
    return (f"cannot reach the Hugging Face hub for {r.filename} of {r.where} ({type(e).__name__}: "
            f"{_first_line(e)}); check your network and proxy settings, or download it elsewhere "
            "and pass the local directory")


def _unreachable(endpoint: str) -> str | None:
    """Why the hub `endpoint` (a URL) cannot be reached, or None when it accepts a TCP connection.

    When a proxy serves the endpoint (HTTPS_PROXY and the like, minus NO_PROXY, as the HTTP clients
    read them), the proxy is what must answer: a direct connection may well be blocked.
    """
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port = proxied.hostname or "", proxied.port or 80
    result: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                result.append(None)
        except OSError as e:
            result.append(e.strerror or type(e).__name__)

    # A thread, because a hanging DNS lookup ignores the socket timeout; daemon, so that one still
    # hanging cannot keep the process alive.
    thread = threading.Thread(target=connect, name="lwm-hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    return result[0] if result else f"no answer in {PROBE_TIMEOUT_S:g} s"


@contextlib.contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """Mute huggingface_hub's loggers (its retry warnings): failures reach the user as our LWMError."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
