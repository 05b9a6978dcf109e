"""A progress line on stderr for commands that work through a known amount: on a terminal a Rich bar
(`label ━━━━━ 12/40 <line>`), elsewhere (logs, CI, pipes) one plain line per update when `plain` asks
for it, and nothing otherwise."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """`with ProgressLine("eval", total=40) as bar: bar.update(12, "prefill 900 tok/s")`.

    `plain`: also print each update as its own line when stderr is not a terminal (a long run's log);
    a short one (making a dataset) stays quiet there. `close` may be called from another thread (the
    signal watcher, before it ends the process) and more than once."""

    def __init__(self, label: str, total: int, *, plain: bool = False):
        from rich.console import Console

        self.label, self.total, self.plain = label, total, plain
        self.console = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.progress = None
        self.task = None

    def __enter__(self) -> "ProgressLine":
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn(f"[bold]{self.label}[/]"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[line]}"), console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total, line="")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, done: int, line: str = "") -> None:
        progress = self.progress  # read once: the signal thread may close it meanwhile
        if progress is not None:
            progress.update(self.task, completed=done, line=line)
        elif self.plain and not self.console.is_terminal:
            self.console.print(f"{self.label} {done}/{self.total}  {line}".rstrip(), markup=False)

    def close(self) -> None:
        progress, self.progress = self.progress, None
        if progress is not None:
            progress.stop()


class LineView:
    """A command's own progress view drawn on `self.line` (a ProgressLine): entering, leaving and closing
    (from the signal thread too) go to the line; `started` runs once it shows."""

    line: ProgressLine

    def __enter__(self):
        self.line.__enter__()
        self.started()
        return self

    def __exit__(self, *exc) -> None:
        self.line.close()

    def close(self) -> None:
        self.line.close()

    def started(self) -> None:
        pass


class Eta:
    """Time left from the work done so far, `elapsed / done * left`, in units the caller picks (prompt
    tokens for an eval, whose rows grow longer as it goes). The clock starts when the object is made,
    just before the work: the first batch's compilation counts, and weighs less as more is done."""

    def __init__(self, total: float):
        self.total, self.start = total, time.monotonic()

    def __call__(self, done: float) -> str:
        elapsed = time.monotonic() - self.start
        if done <= 0 or elapsed <= 0:
            return "ETA -"
        return f"ETA {clock(elapsed / done * max(self.total - done, 0))}"


def clock(seconds: float | None) -> str:
    """`h:mm:ss` (or `-` for unknown)."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
