"""Ctrl-C and SIGTERM for long commands: acknowledged at once, turned into a stop request that the
command polls, and a second Ctrl-C that ends the process at once (exit 130).

Why a thread and a wakeup fd: Python runs a signal handler only when the main thread is back in the
interpreter, and an XLA compile or a device step keeps it in C++ for seconds: Ctrl-C looked ignored,
and the second one raised KeyboardInterrupt into the interpreter's teardown while XLA's threads were
still running (a segfault, exit 139). The C-level handler that Python installs writes the signal number
to the wakeup fd (`signal.set_wakeup_fd`) the moment the signal arrives, whatever the main thread is
doing; a daemon thread blocked on the other end of a socket pair reacts at once (an XLA compile releases
the GIL, so the thread does run). The Python-level handlers do nothing, so KeyboardInterrupt is never
raised at an arbitrary point of the main thread.

    with StopRequest("nothing was written") as stop:   # before heavy imports: see below
        ...                                            # start-up: a signal ends the process at once
        stop.stopping = "a checkpoint is saved after the current step"
        stop.aborted = "the last checkpoint is intact"
        stop.at_abort(remove_what_is_half_made)
        while not stop():                              # from here the first signal asks, the second ends
            ...

Enter it before importing jax: a KeyboardInterrupt raised inside jaxlib's import crashed the interpreter
(exit 139), and one raised inside a garbage-collector callback of jax was swallowed (Ctrl-C ignored).
The exit is `os._exit`: no interpreter teardown racing XLA threads, and no `finally` blocks either;
what must happen before it (removing a half-made output, stopping a live display) is registered with
`at_abort`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

from lwm_cli._errors import INTERRUPTED

# How long the end may take (its message, the `at_abort` callbacks) before the process exits anyway.
_ABORT_GRACE_S = 5.0


def _name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequest:
    """SIGINT and SIGTERM, acknowledged on stderr the moment they arrive.

    While `stopping` is None (start-up: nothing to finish), the first signal prints
    "stopped by Ctrl-C; <aborted>" and ends the process at once. Once the command sets `stopping` (what
    a stop will do, e.g. "a checkpoint is saved after the current step"), the first signal prints it
    and sets the request that `__call__` answers; a second Ctrl-C prints "aborted ...; <aborted>" and
    ends the process at once; after such a stop, leaving the block ignores further signals (the process
    is ending). `by` says what asked ("Ctrl-C", "SIGTERM"). Ending the process runs the
    `at_abort` callbacks (in the order registered, from the watcher thread, `_ABORT_GRACE_S` seconds in
    all), flushes stdout and stderr and calls `os._exit(130)`.

    Enter it in the main thread (only the main thread may set signal handlers).
    """

    def __init__(self, aborted: str):
        self.aborted = aborted
        self.stopping: str | None = None
        self.by = ""
        self._requested = threading.Event()
        self._at_abort: list[Callable[[], None]] = []
        self._previous: dict[int, object] = {}
        self._old_wakeup_fd = -1
        self._writer: socket.socket | None = None

    def __call__(self) -> bool:
        return self._requested.is_set()

    def at_abort(self, callback: Callable[[], None]) -> None:
        self._at_abort.append(callback)

    def __enter__(self) -> "StopRequest":
        reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # set_wakeup_fd needs a non-blocking fd
        # Handlers first: Python's C handler writes to the wakeup fd only for signals with a Python handler.
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, _ignore)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(reader,), name="lwm-signals", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self._old_wakeup_fd)
        # After a stop the process is on its way out: a signal in the interpreter's teardown would turn
        # exit 130 into a death by SIGINT (Python resets its handlers to SIG_DFL there, but leaves
        # SIG_IGN alone), so from here on signals are ignored rather than handed back.
        stopping = self()
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if stopping else handler)
        if self._writer is not None:
            self._writer.close()  # the watcher's recv returns b"": it ends and closes the reader

    def _watch(self, reader: socket.socket) -> None:
        with reader:
            while True:
                try:
                    data = reader.recv(64)
                except OSError:
                    return
                if not data:
                    return
                for signum in data:
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum not in (signal.SIGINT, signal.SIGTERM):
            return
        if not self._requested.is_set():
            self.by = _name(signum)
            if self.stopping is None:
                self._end(f"stopped by {self.by}; {self.aborted}")
                return
            self._requested.set()
            if signum == signal.SIGINT:
                _say(f"stopping: {self.stopping}; Ctrl-C again to abort now")
            else:
                _say(f"stopping on {self.by}: {self.stopping}")
        elif signum == signal.SIGINT:
            self._end(f"aborted by a second Ctrl-C; {self.aborted}")
            return
        # A repeated SIGTERM (some schedulers send one per process of a job step) changes nothing.

    def _end(self, message: str) -> None:
        # The timer first, and without flushing: even a write can block (a full pipe nobody reads).
        timer = threading.Timer(_ABORT_GRACE_S, os._exit, args=(INTERRUPTED,))
        timer.daemon = True
        timer.start()
        _say(message)
        for callback in self._at_abort:
            try:
                callback()
            except Exception:  # noqa: BLE001 - nothing may keep the process from ending
                pass
        _exit_now()


def _ignore(signum, frame) -> None:
    """The Python-level handler: the watcher thread has already acted on the signal."""


def _say(line: str) -> None:
    # sys.stderr, not the original stream: under a Rich live display it is the proxy that prints the
    # line above the progress bar instead of through it.
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    _show_cursor()
    os._exit(INTERRUPTED)


def _show_cursor() -> None:
    """A progress display hides the cursor and shows it again when it stops; `os._exit` stops nothing."""
    try:
        if sys.__stderr__ is not None and sys.__stderr__.isatty() and os.environ.get("TERM") != "dumb":
            os.write(sys.__stderr__.fileno(), b"\x1b[?25h")
    except (OSError, ValueError):
        pass
