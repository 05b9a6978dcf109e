"""The training data stream: deterministic, resumable, and split by rows across processes.

Order. The examples of epoch e are `np.random.default_rng([seed, e]).permutation(N)` (or 0..N-1
without shuffle); the global stream is epoch 0, epoch 1, ... end to end. Row r of the global batch
(R rows) owns stream positions r, r + R, r + 2R, ...: its k-th example is position r + k * R. A row
therefore never depends on another row, and the batch is the same however the rows are split
between processes (`row_range`): each process tokenizes only the lines of its own rows.

Packing. With `pack`, a row takes its next examples while their (input, target) pairs fit in
seq_len; the first that does not fit waits for the row's next batch (kept tokenized, not re-read).
An example longer than seq_len on its own is cut to seq_len and consumed (its tail is dropped, as in
LWM's padded mode). Without `pack`, each row holds one example, padded.

State. The whole position of the stream is one integer per row: how many examples the row has
consumed. `state()` returns all R cursors; a process only advances the rows in its `row_range` and
carries the others unchanged from the state it restored, so the global state is its rows' entries
from each process (`DataStream.merge_states`; equivalently the element-wise max of the cursor arrays
when every process restored the same state). `restore(state)` then resumes exactly: the next batches
are the ones the saved stream would have produced.

Disk. Building the line index reads the whole file once (offsets only, nothing parsed); after that a
process reads and tokenizes only the lines its rows use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lwm_core.data.config import DataConfig, split_paths
from lwm_core.data.jsonl import JsonlIndex
from lwm_core.data.packing import Batch, pack_rows, pairs
from lwm_core.data.process import Example, process_example
from lwm_core.errors import LWMError
from lwm_core.plural import plural

_ORDERS_CACHED = 3  # rows drift apart by at most an epoch or so: keep the few epoch orders in use


class DataStream:
    """Endless batches of (hi - lo, seq_len) rows from a JSONL file (see the module docstring).

    Args:
        config: the data config; `path` (or the `path` argument) names the JSONL file, or several joined
            by commas (read end to end).
        tokenizer: `encode`, `bos_id`, `eos_id` (lwm_core.tokenizer.Tokenizer).
        rows: R, rows of the global batch (all processes together).
        seq_len: T, positions per row.
        row_range: (lo, hi), the rows this process builds; default all.
        path: read this file instead of config.path (e.g. config.eval_path).
    """

    def __init__(self, config: DataConfig, tokenizer, *, rows: int, seq_len: int,
                 row_range: tuple[int, int] | None = None, path: str | None = None):
        path = config.path if path is None else path
        if not path:
            raise LWMError("no data file: set data.path to a JSONL file (one JSON object per line)")
        if rows < 1 or seq_len < 1:
            raise LWMError(f"data stream rows = {rows} and seq_len = {seq_len} must be at least 1")
        lo, hi = (0, rows) if row_range is None else (int(row_range[0]), int(row_range[1]))
        if not 0 <= lo < hi <= rows:
            raise LWMError(f"data stream row_range = {tuple(row_range)} must satisfy 0 <= lo < hi <= rows = {rows}")
        self.config, self.tokenizer = config, tokenizer
        self.rows, self.seq_len, self.row_range = rows, seq_len, (lo, hi)
        self.index = JsonlIndex(split_paths(path))
        self._cursors = np.zeros(rows, np.int64)  # examples consumed by each row
        self._pending: dict[int, tuple[int, Example]] = {}  # row -> (its cursor, example read at it)
        self._orders: OrderedDict[int, np.ndarray] = OrderedDict()  # epoch -> order, least recent first
        self.tokens_seen = 0  # pairs placed in this process's rows since the stream was made

    @property
    def num_examples(self) -> int:
        return len(self.index)

    @property
    def cursors(self) -> np.ndarray:
        """Examples consumed per row, all R rows (a copy)."""
        return self._cursors.copy()

    def next_batch(self) -> Batch:
        """The next (hi - lo, seq_len) rows of the global batch."""
        lo, hi = self.row_range
        T = self.seq_len
        rows = []
        for r in range(lo, hi):
            row: list[Example] = []
            used = 0  # pairs placed in the row
            empty = 0  # examples with no pairs taken in a row, to stop on data with nothing to learn
            while used < T:
                example = self._peek(r)
                n = pairs(example)
                if used and used + n > T:
                    break  # waits, already tokenized, for this row's next batch
                self._consume(r)
                row.append(example)
                used += min(n, T)
                if not self.config.pack:
                    break
                empty = empty + 1 if n == 0 else 0
                if empty > self.num_examples:
                    raise LWMError(f"row {r} of {self.index.path} read {plural(empty, 'example')} in a row with "
                                   "fewer than two tokens; nothing to train on (check data.fields, add_bos and "
                                   "add_eos)")
            self.tokens_seen += used
            rows.append(row)
        return pack_rows(rows, T)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state(self) -> dict[str, Any]:
        """JSON-ready position of the stream: cursors of all rows (rows outside row_range carried)."""
        return {"cursors": [int(c) for c in self._cursors], "row_range": list(self.row_range),
                "rows": self.rows, "examples": self.num_examples}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state()` or `merge_states`): the next batches are the saved ones'."""
        cursors = np.asarray(state.get("cursors", []), np.int64)
        if cursors.shape != (self.rows,):
            raise LWMError(f"data state has cursors for {plural(cursors.size, 'row')} but the batch has "
                           f"{plural(self.rows, 'row')}; resume with the batch size the run was saved with")
        if (cursors < 0).any():
            raise LWMError(f"data state has a negative cursor ({int(cursors.min())}); the state is corrupt")
        if state.get("examples", self.num_examples) != self.num_examples:
            raise LWMError(f"data state was saved for a file of {plural(state['examples'], 'example')} but "
                           f"{self.index.path} has {self.num_examples}; the data changed, so the saved "
                           "position means nothing; restore the file or start the data from the beginning")
        self._cursors = cursors.copy()
        self._pending.clear()

    @staticmethod
    def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One state from every process's `state()`: each row's cursor from the process that owns it.

        Rows owned by several processes (e.g. processes that split a row's sequence) must agree;
        rows owned by none keep the first state's value.
        """
        if not states:
            raise ValueError("merge_states needs at least one state")
        merged = np.asarray(states[0]["cursors"], np.int64).copy()
        owned = np.zeros(len(merged), np.bool_)
        for state in states:
            cursors = np.asarray(state["cursors"], np.int64)
            if cursors.shape != merged.shape or state["examples"] != states[0]["examples"]:
                raise ValueError("data states of different batch sizes or files cannot be merged")
            lo, hi = state["row_range"]
            if (owned[lo:hi] & (merged[lo:hi] != cursors[lo:hi])).any():
                raise ValueError(f"processes that share rows {lo}..{hi - 1} consumed different examples")
            merged[lo:hi], owned[lo:hi] = cursors[lo:hi], True
        return {**states[0], "cursors": merged.tolist(), "row_range": [0, len(merged)]}

    def close(self) -> None:
        self.index.close()

    def _order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            N = self.num_examples
            if self.config.shuffle:
                order = np.random.default_rng([self.config.seed, epoch]).permutation(N)
            else:
                order = np.arange(N)
            self._orders[epoch] = order
            if len(self._orders) > _ORDERS_CACHED:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(epoch)
        return order

    def _peek(self, r: int) -> Example:
        """Row r's next example, read and tokenized at most once."""
        cursor = int(self._cursors[r])
        pending = self._pending.get(r)
        if pending is not None and pending[0] == cursor:
            return pending[1]
        epoch, offset = divmod(r + cursor * self.rows, self.num_examples)
        i = int(self._order(epoch)[offset])
        example = process_example(self.index.read(i), self.config, self.tokenizer,
                                  line=self.index.line_number(i) - 1, where=self.index.where(i))
        self._pending[r] = (cursor, example)
        return example

    def _consume(self, r: int) -> None:
        self._cursors[r] += 1
        self._pending.pop(r, None)
