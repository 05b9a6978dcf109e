"""Atomic publishing of files and directories: every writer of lwm goes through here.

A writer fills a temporary sibling of its target and renames it into place at the end, so a reader
never sees half an output, and a failure (an exception, Ctrl-C, a full disk) leaves nothing. A process
killed outright (SIGKILL, power loss) cannot clean up after itself; its temporaries carry its pid in
a recognisable name, `.<target name>.lwm-tmp-<pid>-<random>`, and the next writer of the same target
removes those whose process is gone (`clean_stale`). OS errors come out as one-line `LWMError`s that
name the target the user asked for, never a hidden temporary path.

Its writers: streaming `params` files and Flax blobs (`msgpack_writer`), lwm's native directories
(`native`), Hugging Face exports (`hf`, `lwm convert`), and the training loop's run.json and the trimmed
metrics.jsonl of a resumed run (a log otherwise, appended a line at a time). The one exception is the
train state (`train_state`): orbax publishes it itself, by the same temporary-then-rename scheme, across
all the processes of a run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from typing import BinaryIO, Iterable, Iterator

from lwm_core.errors import LWMError

_MARK = ".lwm-tmp-"


def temp_path(target: str) -> str:
    """A fresh temporary sibling of `target`, named so that `clean_stale` can find it."""
    directory, name = os.path.split(os.path.abspath(target))
    return os.path.join(directory, f".{name}{_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def clean_stale(target: str) -> list[str]:
    """Remove the temporaries of `target` left by processes that no longer run; returns their paths.

    Those of a live process (another writer of the same target right now) are left alone.
    """
    directory, name = os.path.split(os.path.abspath(target))
    prefix = f".{name}{_MARK}"
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_target(target: str, *, kind: str, overwrite: bool = False, create_parent: bool = False) -> str:
    """The absolute path of an output `target` ("file" or "dir"), after the checks that must come
    before any work: an existing target only with `overwrite` and only of the same kind, and an existing
    parent directory (lwm creates its output, never a chain of missing folders; `create_parent` allows
    one missing level, for outputs that are a file inside a model folder: the caller creates it, with
    `atomic_dir`, when it writes)."""
    path = os.path.abspath(target)
    parent = os.path.dirname(path)
    if os.path.lexists(path):
        is_dir = os.path.isdir(path)
        if kind == "dir" and not is_dir:
            raise LWMError(f"output {target} is a file, not a directory; remove it or choose another path")
        if kind == "file" and is_dir:
            raise LWMError(f"output {target} is a directory; give a file path")
        if not overwrite:
            raise LWMError(f"output {target} already exists; pass --force to replace it")
    if not os.path.isdir(parent):
        grandparent = os.path.dirname(parent)
        if os.path.exists(parent):
            raise LWMError(f"cannot write {target}: {parent} is not a directory")
        if not (create_parent and os.path.isdir(grandparent)):
            raise LWMError(f"cannot write {target}: directory {parent} does not exist; create it first "
                           f"(mkdir -p {parent})")
    return path


@contextlib.contextmanager
def os_errors(target: str) -> Iterator[None]:
    """Turn an OSError raised while writing `target` into one line naming `target`."""
    try:
        yield
    except OSError as e:
        if isinstance(e, LWMError):
            raise
        raise write_error(target, e) from None


def write_error(target: str, e: OSError) -> LWMError:
    hint = {errno.ENOSPC: "free some space or write elsewhere", errno.EROFS: "write somewhere writable",
            errno.EACCES: "check the permissions or write elsewhere", errno.EDQUOT: "free some space",
            errno.EPERM: "check the permissions or write elsewhere"}.get(e.errno, "check the path")
    return LWMError(f"cannot write {target}: {e.strerror or e}; {hint}")


@contextlib.contextmanager
def atomic_file(target: str, *, mode: str = "wb") -> Iterator[BinaryIO]:
    """Write `target` through a temporary sibling file, fsynced and renamed over it on success."""
    path = os.path.abspath(target)
    clean_stale(path)
    tmp = temp_path(path)
    try:
        with os_errors(target):
            # os.open with 0o666 honours the umask (mkstemp would leave the file 0600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            f = os.fdopen(fd, mode)
        with f:
            with os_errors(target):
                yield f
                f.flush()
                os.fsync(f.fileno())
        with os_errors(target):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


def write_text(target: str, text: str) -> None:
    """Atomically replace `target` with `text` (UTF-8)."""
    with atomic_file(target) as f:
        f.write(text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory to fill; on success it replaces `target` (an existing directory
    only with `overwrite`). The old directory is moved aside before the new one moves in and removed
    after, so a kill at any moment leaves either the old or the new output (plus a temporary that the
    next writer removes), never a mix."""
    path = os.path.abspath(target)
    if os.path.exists(path) and not overwrite:
        raise LWMError(f"output {target} already exists; pass --force to replace it")
    clean_stale(path)
    tmp = temp_path(path)
    try:
        with os_errors(target):
            os.mkdir(tmp)
            yield tmp
            _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: str, path: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for name in os.listdir(tmp):
        entry = os.path.join(tmp, name)
        # a folder inside (a world's clips/) needs its execute bits, or nobody but root can enter it
        os.chmod(entry, (0o777 if os.path.isdir(entry) else 0o666) & ~umask)
    old = None
    if os.path.lexists(path):
        old = temp_path(path)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.unlink(old)


def _fsync_dir(directory: str) -> None:
    """Make a rename durable; not every filesystem lets a directory be opened for this."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_lines(path: str, lines: Iterable[str]) -> None:
    """Append whole lines (each ending in a newline) in one write, then fsync: a kill leaves whole lines
    and at most a torn last one (needle results, vqgan encode's JSONL)."""
    data = "".join(lines).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_torn_line(path: str) -> None:
    """Cut a last line without its newline (a killed run's torn write) off the file."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if not size:
            return
        # Read back from the end to the last newline: the file may be gigabytes of codes.
        end, block = size, 1 << 16
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                break
            end = start
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())
