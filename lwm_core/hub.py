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
from collections.abc import Iterator, Sequence

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
    from huggingface_hub import constants, errors, hf_hub_download

    # huggingface_hub >= 1.0 names the remote "no such file" error RemoteEntryNotFoundError; older
    # releases raised EntryNotFoundError, of which LocalEntryNotFoundError is a subclass (so the
    # local case must be caught first, as it is below).
    remote_missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    # HF_HUB_OFFLINE=1 already makes huggingface_hub read the cache only; otherwise probe, once.
    unreachable = None if offline else _unreachable(constants.ENDPOINT)
    if offline:
        why = "HF_HUB_OFFLINE=1 is set"
    elif unreachable:
        why = f"cannot reach {constants.ENDPOINT} ({unreachable})"
    else:  # reachable, but the requests failed after huggingface_hub's retries
        why = "the hub did not answer"
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")

    paths: dict[str, str] = {}
    for filename in dict.fromkeys([*filenames, *optional]):  # in order, each once
        is_optional = filename not in filenames
        try:
            with _quiet_hub_logs():
                paths[filename] = hf_hub_download(repo_id, filename, revision=revision,
                                                  local_files_only=unreachable is not None)
        except errors.HFValidationError as e:
            raise LWMError(
                f"{repo_id!r} is not a valid Hugging Face hub repo id ({_first_line(e)}); "
                "write it as owner/name, e.g. LargeWorldModel/LWM-Text-Chat-1M-Jax"
            ) from None
        except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
            if is_optional:
                continue
            raise LWMError(
                f"cannot download {filename} from the Hugging Face hub repo {where}: {why}, and it is not "
                f"in the local cache {constants.HF_HUB_CACHE}; run `{fetch}` where there is a network (it "
                "fills that cache; with --local-dir DIR it writes a directory to pass instead)"
            ) from None
        except errors.GatedRepoError:
            raise LWMError(
                f"the Hugging Face hub repo {repo_id} is gated and your token has no access to it; accept its "
                f"terms at https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN)"
            ) from None
        except errors.RepositoryNotFoundError:
            raise LWMError(
                f"the Hugging Face hub repo {repo_id} does not exist or is private; check the name "
                "(e.g. LargeWorldModel/LWM-Text-Chat-1M-Jax), or log in (`hf auth login` or HF_TOKEN) "
                "if it is yours"
            ) from None
        except errors.RevisionNotFoundError:
            raise LWMError(
                f"revision {revision!r} does not exist in the Hugging Face hub repo {repo_id}; "
                "pass an existing branch, tag or commit, or no revision for the default branch"
            ) from None
        except remote_missing:
            if is_optional:
                continue
            raise LWMError(
                f"the Hugging Face hub repo {where} has no file {filename}; check that it is the repo "
                "you meant (the Jax repos hold params, the PyTorch ones safetensors)"
            ) from None
        except errors.HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status == 401:
                raise LWMError(
                    f"the Hugging Face hub refused your token for {repo_id} (HTTP 401); "
                    "log in again (`hf auth login`) or set a valid HF_TOKEN"
                ) from None
            raise LWMError(
                f"cannot download {filename} from the Hugging Face hub repo {where} ({_first_line(e)}); "
                "try again later, or download it elsewhere and pass the local directory"
            ) from None
        except Exception as e:
            # Proxy and connection errors of the HTTP client that huggingface_hub lets through.
            if type(e).__module__.split(".")[0] not in _HTTP_MODULES:
                raise
            raise LWMError(
                f"cannot reach the Hugging Face hub for {filename} of {where} ({type(e).__name__}: "
                f"{_first_line(e)}); check your network and proxy settings, or download it elsewhere "
                "and pass the local directory"
            ) from None
    return paths


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
