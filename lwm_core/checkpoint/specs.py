"""Load specs (`KIND::PATH`, as in LWM's `--load_checkpoint`) and which records of a file each kind keeps.

- `params::PATH`: a streaming file of the params tree; every record.
- `trainstate::PATH`, `trainstate_params::PATH`: a streaming file of a whole train state (step, params,
  optimizer state); both yield the `params/params/...` records with that prefix removed.
- `flax_params::PATH`: one ordinary Flax msgpack blob of the params tree.

A file of the other kind is refused at its first telling record, with the spec that would read it.
"""

from __future__ import annotations

import re

from lwm_core.errors import LWMError

LOAD_KINDS = ("params", "trainstate", "trainstate_params", "flax_params")
TRAINSTATE_KINDS = ("trainstate", "trainstate_params")

# Where a train state keeps the params: TrainState.params, itself Flax's {"params": tree}.
_TRAINSTATE_PREFIX = ("params", "params")
# First keys of a params tree; seeing one in a file loaded as a train state means the kind is wrong.
_PARAMS_ROOTS = frozenset({"transformer", "lm_head", "vision_head"})
# First keys of a train state (EasyLM/LWM TrainState: step, params, opt_state).
_TRAINSTATE_ROOTS = frozenset({"step", "opt_state"})

_KIND_RE = re.compile(r"[A-Za-z_]+")


def parse_load_spec(spec: str) -> tuple[str, str] | None:
    """Splits `KIND::PATH` into `(kind, path)`; returns None for a string without a `KIND::` prefix."""
    kind, sep, path = spec.partition("::")
    # A plain path may contain "::" further on; only an identifier before it counts as a kind.
    if not sep or not _KIND_RE.fullmatch(kind):
        return None
    if kind not in LOAD_KINDS:
        raise LWMError(
            f"unknown checkpoint kind {kind!r} in load spec {spec!r}; "
            f"use one of {', '.join(k + '::PATH' for k in LOAD_KINDS)}"
        )
    if not path:
        raise LWMError(f"load spec {spec!r} has no path after '::'; write it as {kind}::PATH")
    return kind, path


def check_kind(kind: str) -> None:
    if kind not in LOAD_KINDS:
        raise LWMError(f"unknown checkpoint kind {kind!r}; use one of {', '.join(LOAD_KINDS)}")


def params_key(kind: str | None, key: tuple[str, ...], path: str) -> tuple[str, ...] | None:
    """The params key of a streaming record read as `kind` (None: every record, as stored), or None for
    a record that kind skips (a train state's step and optimizer state). Raises an LWMError at a record
    that shows the file is of the other kind, naming the spec that reads it."""
    if kind == "params":
        if key[0] in _TRAINSTATE_ROOTS or key[:2] == _TRAINSTATE_PREFIX:
            raise LWMError(
                f"checkpoint {path} holds a train state (record key {'/'.join(key)}), not a params "
                f"tree; load it as trainstate_params::{path}"
            )
    elif kind in TRAINSTATE_KINDS:
        if key[0] in _PARAMS_ROOTS:
            raise LWMError(
                f"checkpoint {path} holds a params tree (record key {'/'.join(key)}), not a train "
                f"state; load it as params::{path}"
            )
        if key[:2] != _TRAINSTATE_PREFIX or len(key) == 2:
            return None
        return key[2:]
    return key


def check_found(kind: str | None, found: int, path: str) -> None:
    """After the last record: a file read as a train state must have held some params."""
    if kind in TRAINSTATE_KINDS and found == 0:
        raise LWMError(
            f"checkpoint {path} has no records under params/params, so it is not a train state; "
            f"load it as params::{path}"
        )
