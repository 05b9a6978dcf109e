"""Train-state checkpoints (params, optimizer state, step, RNG, data position) with orbax-checkpoint.

Why orbax: the state is sharded over a mesh that may span hosts; orbax writes each process's shards in
parallel (tensorstore/OCDBT), restores onto any sharding, and commits atomically: a step is written
under a temporary name and renamed only once every process has finished, so a crash mid-write leaves
a temporary directory that `latest_step` never returns (and that we delete on the next start).
Saving is synchronous: the loop saves rarely, and a save that returns is a save on disk, which is what
SIGTERM handling needs.
"""

from __future__ import annotations

import os
from typing import Any


class TrainCheckpoints:
    """`directory/<step>/{state,data}`: keep the last `keep` plus every multiple of `keep_every`."""

    def __init__(self, directory: str, *, keep: int, keep_every: int = 0):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        # cleanup_tmp_directories: the temporaries of a save that a kill (SIGKILL, a second Ctrl-C's
        # os._exit) cut short are removed in the background from here on; orbax's save waits for that,
        # so it can never race a new temporary (tests/cli/test_train_signals.py kills mid-save to check).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_every or None, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=False)
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data: dict) -> None:
        args = self._ocp.args
        self.manager.save(step, args=args.Composite(state=args.StandardSave(state), data=args.JsonSave(data)),
                          force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """The state at `step`, placed like `abstract_state` (ShapeDtypeStructs with shardings)."""
        args = self._ocp.args
        out = self.manager.restore(step, args=args.Composite(state=args.StandardRestore(abstract_state),
                                                             data=args.JsonRestore()))
        return out["state"], dict(out["data"])

    def close(self) -> None:
        self.manager.close()

