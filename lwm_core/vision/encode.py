"""Many images and videos -> VQGAN codes, and codes files -> frames: the library side of `lwm vqgan`.

Inputs (`find_media`): files, folders (searched recursively for IMAGE_EXTENSIONS and VIDEO_EXTENSIONS of
media.py; hidden names skipped, as `._clip.mp4` resource forks are no videos), globs (expanded here too,
for a quoted glob), and a manifest of `path` and `caption` columns (CSV with a header row, or JSONL),
its paths relative to its own folder. With both inputs and a manifest, the inputs are encoded and the
manifest gives their captions (every input needs a row; rows of other files are ignored); with a
manifest alone, its rows are the inputs. A file with several rows is one input per caption.

Encoding (`encode_items`): the frames of consecutive inputs are gathered into full batches of the
VQGAN's `batch_size` (an image is one frame, so 64 images are one call, not 64), read by a few threads
ahead of the device (reading a video is an ffmpeg process, decoding a PNG is Pillow; both leave the
GIL).

Outputs, by extension:

- `.jsonl`: LWM's vision-text training lines, as `lwm train` reads them with `data.kind = "vision_text"`
  and `data.fields_from_example = "fields"` (configs/vision-text.toml): `{"path", "caption", "fields",
  "vqgan", "vision"}`. `vision` holds the codes only, frame after frame in raster order; the data
  pipeline adds the end-of-frame / end-of-vision ids (8192, 8193) and the `<vision>` text around them,
  as LWM's loader did, and takes `data.tokens_per_frame` codes per frame (256 for LWM's VQGAN, (R/f)^2
  for another). `path` is relative to the output's folder, so the output is itself a manifest.
  `vqgan` is the VQGAN's fingerprint (`vqgan_fingerprint`). The file is appended input by input, whole
  lines then fsync (`append_lines`): a killed run leaves whole lines and at most a torn last one, which
  the next run drops (`drop_torn_line`) before skipping the inputs already there (by path and
  caption); lines of another VQGAN are refused rather than mixed in. With `--chat` (`chat_lines`) each
  captioned input gives LWM-Chat lines in both directions instead, in the prompts of `lwm_core.prompts`.
- `.npz`: one int32 array (F, R/f, R/f) per input, keyed by its path relative to the inputs' common
  folder (`clips/a.mp4`; `#2`, `#3` after the name for a file's further captions), plus `keys`,
  `paths` (relative to the output's folder) and `captions` ('' for none) in input order, and `meta`
  (JSON: the VQGAN spec, fingerprint and config, max_frames). Written atomically at the end.

Decoding (`read_codes`, `split_frames`, `write_frames`): an .npz entry, a JSONL line's vision codes or a
.npy array back to frames, delimiters stripped and frames split at them.
"""

from __future__ import annotations

import concurrent.futures
import csv
import glob
import hashlib
import io
import json
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Sequence

import numpy as np

from lwm_core.checkpoint.atomic import append_lines, drop_torn_line
from lwm_core.errors import LWMError
from lwm_core.plural import plural
from lwm_core.text import choices, json_line
from lwm_core.vision import media

MEDIA_EXTENSIONS = tuple(dict.fromkeys(media.IMAGE_EXTENSIONS + media.VIDEO_EXTENSIONS))
OUTPUT_EXTENSIONS = (".jsonl", ".npz")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
MANIFEST_COLUMNS = ("path", "caption")
NPZ_FORMAT = "lwm-vqgan-codes"  # meta["format"] of an .npz that encode wrote
NPZ_RESERVED = ("keys", "paths", "captions", "meta")  # never a key: every key ends in a media extension or #n
VISION_KEY = "vision"  # the JSONL key of the codes ("vision" in the name: a vision field to lwm_core.data)
IMAGE_OUTPUTS = tuple(media.WRITE_IMAGE_FORMATS)
VIDEO_OUTPUTS = tuple(media.WRITE_VIDEO_CODECS)


@dataclass(frozen=True)
class MediaItem:
    """One input: a file and its caption (None without a manifest)."""

    path: str  # absolute, normalised
    caption: str | None = None
    name: str = ""  # relative to the inputs' common folder, '/'-separated: its .npz key

    @property
    def identity(self) -> tuple[str, str | None]:
        """What a resumed run compares: the file (symlinks resolved) and the caption."""
        return os.path.realpath(self.path), self.caption


# ----- inputs ---------------------------------------------------------------------------------------------------


def find_media(inputs: Sequence[str], manifest: str | None = None) -> list[MediaItem]:
    """The inputs to encode, in order (see the module docstring); an `LWMError` for a missing or
    unsupported input, an empty set, or a manifest that lacks a column or a row."""
    rows = read_manifest(manifest) if manifest is not None else None
    if inputs:
        paths = _expand_all(inputs)
        if rows is None:
            items = [(p, None) for p in paths]
        else:
            captions: dict[str, list[str]] = {}
            for _, path, caption in rows:
                captions.setdefault(os.path.realpath(path), []).append(caption)
            missing = [p for p in paths if os.path.realpath(p) not in captions]
            if missing:
                raise LWMError(f"{missing[0]} has no row in manifest {manifest} ({plural(len(missing), 'input')} "
                               f"without one); add rows for them, or leave them out of the inputs")
            items = [(p, c) for p in paths for c in captions[os.path.realpath(p)]]
    elif rows is not None:
        for number, path, _ in rows:
            where = f"manifest {manifest} line {number}"
            if not os.path.isfile(path):
                what = "is a folder" if os.path.isdir(path) else "does not exist"
                raise LWMError(f"{where}: {path} {what}; the manifest's paths are files, relative to its folder")
            _check_extension(path, where)
        items = [(path, caption) for _, path, caption in rows]
    else:
        raise LWMError("no inputs: name image or video files, folders or globs, or a manifest (--manifest FILE)")
    return _named(items)


def read_manifest(path: str) -> list[tuple[int, str, str]]:
    """(line number, absolute path, caption) of each row of a CSV (header row: path, caption) or JSONL
    manifest; paths relative to the manifest's folder."""
    from lwm_core.text import decode_utf8

    ext = os.path.splitext(path)[1].lower()
    if ext not in MANIFEST_EXTENSIONS:
        raise LWMError(f"manifest {path}: unsupported extension {ext or '(none)'!r}; give a .csv with a header row "
                       f"path,caption or a .jsonl of {{\"path\": ..., \"caption\": ...}} lines")
    if os.path.isdir(path):
        raise LWMError(f"manifest {path} is a folder; give a .csv or .jsonl file")
    try:
        with open(path, "rb") as f:
            text = decode_utf8(f.read(), f"manifest {path}")
    except FileNotFoundError:
        raise LWMError(f"manifest {path} does not exist; check the path") from None
    except OSError as e:
        raise LWMError(f"cannot read manifest {path}: {e.strerror or e}") from None
    records = _csv_rows(text, path) if ext == ".csv" else _jsonl_rows(text, path)
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for number, record in records:
        where = f"manifest {path} line {number}"
        file, caption = record["path"], record["caption"]
        if not isinstance(file, str) or not file.strip():
            raise LWMError(f"{where}: path {file!r} is not a file name; give the image or video's path")
        if not isinstance(caption, str):
            raise LWMError(f"{where}: caption {caption!r} is not a string")
        out.append((number, os.path.abspath(os.path.join(base, os.path.expanduser(file.strip()))), caption))
    if not out:
        raise LWMError(f"manifest {path} has no rows; list the inputs with their captions")
    return out


def _csv_rows(text: str, path: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise LWMError(f"manifest {path} has no {missing[0]!r} column (its header: "
                           f"{','.join(header) or 'none'}); its first row must name the columns path,caption")
        rows = []
        for record in reader:
            if None in record.values() or None in record:  # too few or too many cells
                raise LWMError(f"manifest {path} line {reader.line_num}: {len(header)} columns expected; quote "
                               f"a caption that holds commas (\"a cat, asleep\")")
            rows.append((reader.line_num, record))
        return rows
    except csv.Error as e:
        raise LWMError(f"manifest {path} line {reader.line_num} is not valid CSV ({e})") from None


def _jsonl_rows(text: str, path: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = json_line(line, f"manifest {path} line {number}")
        if not isinstance(record, dict):
            raise LWMError(f"manifest {path} line {number} holds a JSON {type(record).__name__}, not an object "
                           f"such as {{\"path\": \"a.mp4\", \"caption\": \"...\"}}")
        missing = [c for c in MANIFEST_COLUMNS if c not in record]
        if missing:
            raise LWMError(f"manifest {path} line {number} has no {missing[0]!r} (its keys: "
                           f"{', '.join(record) or 'none'}); every line needs path and caption")
        rows.append((number, record))
    return rows


def _expand_all(inputs: Sequence[str]) -> list[str]:
    """Every input expanded to files, each file once (the first time it is named), in order."""
    seen, out = set(), []
    for spec in inputs:
        for path in _expand(spec):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


def _expand(spec: str) -> list[str]:
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        found = _walk(path)
        if not found:
            raise LWMError(f"folder {spec} holds no images or videos ({' '.join(MEDIA_EXTENSIONS)}); check the path")
        return found
    if os.path.isfile(path):
        _check_extension(path, f"input {spec}")
        return [os.path.abspath(path)]
    if os.path.lexists(path):
        raise LWMError(f"input {spec} is not a file or a folder (a broken link?); check the path")
    if glob.has_magic(path):
        found = []
        for match in sorted(glob.glob(path, recursive=True)):
            if os.path.isdir(match):
                found += _walk(match)
            elif _is_media(match):  # what a glob sweeps up besides media (captions.csv) is left out
                found.append(os.path.abspath(match))
        if not found:
            raise LWMError(f"{spec} matches no images or videos ({' '.join(MEDIA_EXTENSIONS)}); check the pattern")
        return found
    raise LWMError(f"input {spec} does not exist; check the path")


def _walk(folder: str) -> list[str]:
    def fail(e: OSError):
        raise LWMError(f"cannot read folder {e.filename}: {e.strerror or e}")

    found = []
    for base, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.abspath(os.path.join(base, f)) for f in sorted(files)
                  if not f.startswith(".") and _is_media(f)]
    return found


def _is_media(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in MEDIA_EXTENSIONS


def _check_extension(path: str, where: str) -> None:
    if not _is_media(path):
        ext = os.path.splitext(path)[1]
        raise LWMError(f"{where}: unsupported extension {ext or '(none)'!r}; images {' '.join(media.IMAGE_EXTENSIONS)}"
                       f", videos {' '.join(v for v in media.VIDEO_EXTENSIONS if v != '.gif')}")


def _named(pairs: Sequence[tuple[str, str | None]]) -> list[MediaItem]:
    """Items named by their path relative to the common folder of all of them; a file named again (a
    further caption) gets `#2`, `#3`, ... so that every name is a distinct .npz key."""
    root = os.path.commonpath([os.path.dirname(p) for p, _ in pairs])
    counts: dict[str, int] = {}
    items = []
    for path, caption in pairs:
        name = os.path.relpath(path, root).replace(os.sep, "/")
        counts[name] = counts.get(name, 0) + 1
        items.append(MediaItem(path, caption, name if counts[name] == 1 else f"{name}#{counts[name]}"))
    return items


# ----- encoding -------------------------------------------------------------------------------------------------


def vqgan_fingerprint(vqgan) -> str:
    """`sha256:<16 hex>` of a VQGAN's config and codebook: the same for the released pickle and its
    converted directory, different for another VQGAN (whose codes mean other things)."""
    h = hashlib.sha256(json.dumps(vqgan.config.to_dict(), sort_keys=True).encode())
    codebook = vqgan.params["quantize"]["embeddings"]
    if hasattr(codebook, "addressable_data"):  # replicated: this process's copy is the whole array
        codebook = codebook.addressable_data(0)
    h.update(np.ascontiguousarray(np.asarray(codebook, np.float32)).tobytes())
    return f"sha256:{h.hexdigest()[:16]}"


def encode_items(vqgan, items: Sequence[MediaItem], *, max_frames: int = 8,
                 read: Callable[[MediaItem], np.ndarray] | None = None,
                 readers: int = 4) -> Iterator[list[tuple[MediaItem, np.ndarray]]]:
    """(item, int32 codes (F, R/f, R/f)) of every item, in order, a list per encode call.

    Frames of consecutive items fill batches of exactly `vqgan.batch_size` (an item may straddle two
    calls; only the last call is short), read `readers` threads ahead. An input that cannot be read
    raises its `LWMError` after the items before it have been yielded, so that a caller that writes as
    it goes keeps them.

    `read(item)` -> float32 frames (F, R, R, 3) in [-1, 1]; default `media.load_media` at the VQGAN's
    resolution, at most `max_frames` frames per video.
    """
    resolution = vqgan.config.resolution
    if read is None:
        read = lambda item: media.load_media(item.path, resolution=resolution, max_frames=max_frames)  # noqa: E731
    batch = vqgan.batch_size
    waiting: deque[tuple[MediaItem, int]] = deque()  # items whose codes are not all out yet, frame counts
    frames: list[np.ndarray] = []  # frames read and not yet encoded
    unencoded = 0
    codes: list[np.ndarray] = []  # codes encoded and not yet handed to their items

    def emit(flush: bool) -> list[tuple[MediaItem, np.ndarray]]:
        nonlocal frames, unencoded, codes
        take = unencoded if flush else unencoded // batch * batch
        if take:
            x = np.concatenate(frames)
            codes.append(vqgan.encode(x[:take]))
            frames, unencoded = ([x[take:]] if take < len(x) else []), len(x) - take
        ready = np.concatenate(codes) if codes else np.zeros((0, *vqgan.code_shape), np.int32)
        out, used = [], 0
        while waiting and waiting[0][1] <= len(ready) - used:
            item, n = waiting.popleft()
            out.append((item, ready[used:used + n]))
            used += n
        codes = [ready[used:]] if used < len(ready) else []
        return out

    for item, result in _read_ahead(read, items, readers):
        if not isinstance(result, BaseException) and (np.ndim(result) != 4 or len(result) == 0):
            result = LWMError(f"{item.path}: no frames read")  # load_media raises first; a custom `read` may not
        if isinstance(result, BaseException):
            done = emit(flush=True)
            if done:
                yield done
            raise result
        result = np.asarray(result)
        waiting.append((item, len(result)))
        frames.append(result)
        unencoded += len(result)
        if unencoded >= batch:
            done = emit(flush=False)
            if done:
                yield done
    done = emit(flush=True)
    if done:
        yield done


def _read_ahead(read: Callable[[MediaItem], Any], items: Sequence[MediaItem],
                readers: int) -> Iterator[tuple[MediaItem, Any]]:
    """(item, read(item) or the exception it raised), in order, up to 2 x `readers` items ahead."""
    pool = concurrent.futures.ThreadPoolExecutor(max(1, readers), thread_name_prefix="lwm-read")
    pending: deque = deque()
    queue = iter(items)
    try:
        while True:
            while len(pending) < 2 * max(1, readers):
                item = next(queue, None)
                if item is None:
                    break
                pending.append((item, pool.submit(read, item)))
            if not pending:
                return
            item, future = pending.popleft()
            try:
                result = future.result()
            except Exception as e:  # noqa: BLE001 - handed to the caller in order, after the items before it
                result = e
            yield item, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----- outputs --------------------------------------------------------------------------------------------------


def output_kind(path: str) -> str:
    """".jsonl" or ".npz", by the output's extension; anything else is refused before any work."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise LWMError(f"cannot write {path}: unsupported extension {ext or '(none)'!r}; give .jsonl (training lines "
                       f"for lwm train, appended and resumable) or .npz (the codes of each input)")
    return ext


def check_vocabulary(vqgan) -> None:
    """Refuse a VQGAN whose codes would reach the delimiter ids of the training format."""
    from lwm_core.data.config import VQGAN_CODES

    n = vqgan.config.num_embeddings
    if n > VQGAN_CODES:
        raise LWMError(f"this VQGAN has {n} codes; training lines hold codes below {VQGAN_CODES} (the ids from "
                       f"{VQGAN_CODES} up are frame delimiters): write .npz instead")


def check_fields(specs: Sequence[str], *, captioned: bool) -> str | list[str]:
    """The `fields` value of every line: one LWM fields spec, or a list of them (the data pipeline picks
    one per line, as LWM did). Each must name only `caption` and `vision`, and `vision` at least once."""
    from lwm_core.data.fields import parse_fields

    if not specs:
        specs = ["[caption],vision" if captioned else VISION_KEY]  # text -> video, else video alone
    keys = {"caption", VISION_KEY} if captioned else {VISION_KEY}
    for spec in specs:
        fields = parse_fields(spec, vision_text=True)
        named = [k for f in fields for k in f.keys]
        if "caption" in named and not captioned:
            raise LWMError(f"fields {spec!r} name caption, but the inputs have no captions; give a manifest "
                           f"(path,caption) or fields without caption, e.g. vision")
        unknown = [k for k in named if k not in keys]
        if unknown:
            raise LWMError(f"fields {spec!r} name {unknown[0]!r}; the lines hold only {' and '.join(sorted(keys))}")
        if not any(f.vision for f in fields):
            raise LWMError(f"fields {spec!r} have no vision field: the codes would not be trained on; add vision")
    return specs[0] if len(specs) == 1 else list(specs)


def jsonl_line(item: MediaItem, codes: np.ndarray, *, base: str, fields: str | list[str], fingerprint: str) -> str:
    """One training line (with its newline): path (relative to `base`), caption, fields, vqgan, vision."""
    record: dict[str, Any] = {"path": relative(item.path, base)}
    if item.caption is not None:
        record["caption"] = item.caption
    record.update(fields=fields, vqgan=fingerprint, vision=np.asarray(codes).reshape(-1).tolist())
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


# LWM-Chat lines (`chat_lines`): the questions a line about an image or video asks, one per line chosen by
# its file and caption (the same on every run, whatever the order of the inputs).
VIDEO_QUESTIONS = ("What happens in this video?", "Describe the video.", "What do you see in this video?")
IMAGE_QUESTIONS = ("What is in this image?", "Describe the image.", "What do you see in this image?")
CHAT_FIELDS = {"generate": "[prompt],vision", "describe": "[question],[vision],[answer_turn],caption",
               "unconditional": "vision"}
# One captioned input in this many (by a hash of its path and caption) also gets an unconditional line: its
# frames after `<s><vision>` alone, the prompt that classifier-free guidance contrasts with (caption dropout
# at 10%, the usual rate for guidance; without it the unconditional prompt is one the model never saw).
UNCONDITIONAL_EVERY = 10
CHAT_TASKS = ("image", "video", "describe", "unconditional")  # the `task` of each chat line, in the order written


def chat_lines(item: MediaItem, codes: np.ndarray, *, base: str, fingerprint: str,
               tasks: Collection[str] = CHAT_TASKS) -> list[str]:
    """LWM-Chat training lines of a captioned image or video, in both directions and in the exact prompt
    layout that `lwm gen` and `lwm chat` use (`lwm_core.prompts`), each with `task` and `fields`:

    - `image`: "Generate an image of CAPTION" -> the first frame (for a video too: `lwm gen video` draws
      its first frame as an image, from the image prompt with the video's caption);
    - `video` (videos of two or more frames): "Generate a video of CAPTION" -> every frame;
    - `describe`: the image or video and a question ("What happens in this video?", ...) -> CAPTION, the
      loss on the caption (and EOS) only, as chat tuning does;
    - `unconditional`, for one input in UNCONDITIONAL_EVERY: its frames with no request at all, as the
      unconditional rows of classifier-free guidance see them (`prompts.UNCONDITIONAL`).

    Only the lines whose task is in `tasks` are written (`check_tasks`).
    """
    import zlib

    from lwm_core import prompts

    if item.caption is None:
        raise LWMError(f"{item.path} has no caption; chat lines need one: give a manifest (path,caption)")
    codes = np.asarray(codes)
    path = relative(item.path, base)
    video = len(codes) > 1
    questions = VIDEO_QUESTIONS if video else IMAGE_QUESTIONS
    digest = zlib.crc32(f"{path}\n{item.caption}".encode())
    question = questions[digest % len(questions)]
    common = {"path": path, "caption": item.caption}
    records = [dict(common, task="image", prompt=prompts.generation_request("image", item.caption),
                    fields=CHAT_FIELDS["generate"], vision=codes[:1])]
    if len(codes) > 1:
        records.append(dict(common, task="video", prompt=prompts.generation_request("video", item.caption),
                            fields=CHAT_FIELDS["generate"], vision=codes))
    records.append(dict(common, task="describe", question=prompts.question_turn(question),
                        answer_turn=prompts.ANSWER_TURN, fields=CHAT_FIELDS["describe"], vision=codes))
    if digest // len(questions) % UNCONDITIONAL_EVERY == 0:  # independent of the question drawn
        records.append(dict(common, task="unconditional", fields=CHAT_FIELDS["unconditional"], vision=codes))
    out = []
    for record in records:
        if record["task"] not in tasks:
            continue
        record.update(vqgan=fingerprint, vision=record["vision"].reshape(-1).tolist())
        out.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    return out


def check_tasks(tasks: str | Collection[str]) -> tuple[str, ...]:
    """`tasks` (a collection, or comma-separated) in CHAT_TASKS' order; an unknown or missing task is refused
    in one line."""
    return choices(tasks, CHAT_TASKS, "chat task")


def relative(path: str, base: str) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


class CodesJsonl:
    """A JSONL output that a rerun resumes: `done` holds the (file, caption) of every line already in it.

    `force` starts it afresh. A torn last line (a killed run's) is dropped; a line without `path` or
    `vision` (a file that encode did not write) or of another VQGAN is refused.
    """

    def __init__(self, path: str, *, fingerprint: str, force: bool = False):
        from lwm_core.checkpoint.atomic import check_target, os_errors

        check_target(path, kind="file", overwrite=True)  # an existing output is resumed
        self.path, self.base = path, os.path.dirname(os.path.abspath(path))
        self.done: set[tuple[str, str | None]] = set()
        self.lines = 0
        if force and os.path.exists(path):
            with os_errors(path):
                os.remove(path)
        if os.path.exists(path):
            with os_errors(path):
                drop_torn_line(path)
            self._read(fingerprint)

    def _read(self, fingerprint: str) -> None:
        from lwm_core.text import decode_utf8

        again = "pass --force to start it afresh, or another -o"
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                where = f"{self.path} line {number}"
                text = decode_utf8(raw, where)
                if not text.strip():
                    continue
                record = json_line(text, where, again)
                if not isinstance(record, dict) or not isinstance(record.get("path"), str) \
                        or not isinstance(record.get(VISION_KEY), list):
                    raise LWMError(f"{where} has no path and vision codes: {self.path} was not written by lwm "
                                   f"vqgan encode; {again}")
                if record.get("vqgan") != fingerprint:
                    raise LWMError(f"{where} was encoded by another VQGAN ({record.get('vqgan')}, this one is "
                                   f"{fingerprint}); its codes mean other things: {again}")
                path = os.path.join(self.base, record["path"])
                self.done.add((os.path.realpath(path), record.get("caption")))
                self.lines += 1

    def append(self, lines: Sequence[str]) -> None:
        from lwm_core.checkpoint.atomic import os_errors

        with os_errors(self.path):
            append_lines(self.path, lines)
        self.lines += len(lines)


# ----- .npz output ----------------------------------------------------------------------------------------------


def write_npz(path: str, results: Sequence[tuple[MediaItem, np.ndarray]], *, meta: dict[str, Any]) -> None:
    """The codes of every input under its name, with keys, paths, captions and meta (JSON), atomically."""
    from lwm_core.checkpoint.atomic import atomic_file

    base = os.path.dirname(os.path.abspath(path))
    arrays: dict[str, np.ndarray] = {item.name: np.asarray(codes, np.int32) for item, codes in results}
    arrays["keys"] = np.array([item.name for item, _ in results], dtype=str)
    arrays["paths"] = np.array([relative(item.path, base) for item, _ in results], dtype=str)
    arrays["captions"] = np.array([item.caption or "" for item, _ in results], dtype=str)
    arrays["meta"] = np.array(json.dumps({"format": NPZ_FORMAT, **meta}, sort_keys=True))
    with atomic_file(path) as f:
        np.savez(f, **arrays)


# ----- decoding -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codes:
    """Codes read from a file: where they came from, as they were stored, and the VQGAN that made them."""

    name: str  # "a.npz[clips/a.mp4]", "train.jsonl:3", "codes.npy"
    codes: np.ndarray  # as stored: (F, s, s), (s, s), or a flat stream with or without delimiters
    fingerprint: str | None  # the encoding VQGAN's, when the file says


def read_codes(path: str, *, key: str | None = None, line: int | None = None) -> Codes:
    """The codes of an .npz entry (`key`; default the first input), a JSONL line's vision codes (`line`:
    1-based line of the file, default the first that is not blank; `key`: the vision key, default
    `vision`), or a .npy."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise LWMError(f"codes file {path} {'is a folder' if os.path.isdir(path) else 'does not exist'}; give an "
                       f".npz from lwm vqgan encode, a .jsonl of training lines or a .npy")
    if line is not None and ext != ".jsonl":
        raise LWMError(f"a line number picks a line of a .jsonl; {path} is not one (an .npz takes a key)")
    if ext == ".npz":
        return _read_npz(path, key)
    if ext == ".jsonl":
        return _read_jsonl(path, key, line)
    if ext == ".npy":
        if key is not None:
            raise LWMError(f"{path} is one array; a key picks an entry of an .npz or a JSONL line's vision key")
        return Codes(path, _load_numpy(path), None)
    raise LWMError(f"codes file {path}: unsupported extension {ext or '(none)'!r}; give an .npz, .jsonl or .npy")


def _load_numpy(path: str):
    import zipfile

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LWMError(f"cannot read codes file {path}: {reason}; it is damaged or not a numpy file") from None


def _read_npz(path: str, key: str | None) -> Codes:
    with _load_numpy(path) as data:
        names = list(data.files)
        meta = _npz_meta(data)
        entries = [str(k) for k in data["keys"]] if meta is not None and "keys" in names else \
            [n for n in names if n not in NPZ_RESERVED]
        if not entries:
            raise LWMError(f"{path} holds no codes")
        if key is None:
            key = entries[0]
        elif key not in names or key in NPZ_RESERVED:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise LWMError(f"{path} has no entry {key!r}; its {plural(len(entries), 'entry', 'entries')}: {shown}")
        fingerprint = meta.get("fingerprint") if meta is not None else None
        return Codes(f"{path}[{key}]", np.asarray(data[key]), fingerprint)


def _npz_meta(data) -> dict | None:
    if "meta" not in data.files:
        return None
    try:
        meta = json.loads(str(data["meta"][()]))
    except (ValueError, TypeError, IndexError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == NPZ_FORMAT else None


def _read_jsonl(path: str, key: str | None, line: int | None) -> Codes:
    from lwm_core.data.jsonl import JsonlIndex

    with JsonlIndex(path) as index:
        if line is not None and line < 1:
            raise LWMError(f"line {line}: lines are numbered from 1")
        # the first line with an object by default (blank lines are skipped, as lwm train skips them)
        found = 0 if line is None else next((i for i in range(len(index)) if index.line_number(i) == line), None)
        if found is None:
            last = index.line_number(len(index) - 1)
            raise LWMError(f"{path} has no line {line} with a JSON object (its lines run to {last}); pick "
                           f"another line")
        record = index.read(found)
        where = index.where(found)
    if key is None:
        key = VISION_KEY if VISION_KEY in record else next((k for k in record if VISION_KEY in k), None)
        if key is None:
            raise LWMError(f"{where} has no vision key (its keys: {', '.join(list(record)[:10])}); it holds no codes")
    elif key not in record:
        raise LWMError(f"{where} has no key {key!r} (its keys: {', '.join(list(record)[:10])})")
    codes = record[key]
    if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise LWMError(f"{where}: {key!r} is not a list of integer codes")
    fingerprint = record.get("vqgan")
    return Codes(where, np.asarray(codes, np.int64), fingerprint if isinstance(fingerprint, str) else None)


def delimiters() -> tuple[int, int]:
    """(end of frame, end of vision): LWM's 8192 and 8193, as lwm_core.data places them."""
    from lwm_core.data.config import DataConfig

    defaults = DataConfig()
    return defaults.eof_token, defaults.eov_token


def split_frames(codes: np.ndarray, codes_per_side: int, *, where: str = "codes") -> np.ndarray:
    """Codes as stored -> int frames (F, s, s): frames as they are, or a flat stream cut into frames at
    its end-of-frame / end-of-vision ids (which are dropped), else every s*s codes."""
    codes = np.asarray(codes)
    s = codes_per_side
    if codes.size == 0:
        raise LWMError(f"{where} holds no codes")
    if codes.dtype.kind not in "iu":
        raise LWMError(f"{where} are {codes.dtype}, not integer codes")
    if codes.ndim >= 2:
        if codes.shape[-2:] != (s, s):
            raise LWMError(f"{where} have shape {codes.shape}: this VQGAN's frames are {s}x{s} codes; pass the "
                           f"VQGAN that encoded them")
        return codes.reshape(-1, s, s).astype(np.int32)
    per_frame = s * s
    stream = codes.reshape(-1)
    is_delimiter = np.isin(stream, delimiters())
    if is_delimiter.any():
        cuts = np.flatnonzero(is_delimiter)
        # The runs of codes between delimiters (empty ones dropped: 8192 8193 at the end of a stream).
        starts, ends = np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [len(stream)]])
        segments = [stream[a:b] for a, b in zip(starts, ends) if b > a]
        if not segments:
            raise LWMError(f"{where} hold only delimiters, no codes")
        bad = next((i for i, seg in enumerate(segments) if len(seg) != per_frame), None)
        if bad is not None:
            raise LWMError(f"{where}: frame {bad} has {plural(len(segments[bad]), 'code')} between delimiters, "
                           f"but this VQGAN's frames are {s}x{s} = {per_frame}; pass the VQGAN that made them")
        stream = np.concatenate(segments)
    elif len(stream) % per_frame:
        raise LWMError(f"{where}: {plural(len(stream), 'code')} is not a whole number of {s}x{s} = {per_frame}-code "
                       f"frames; pass the VQGAN that encoded them")
    return stream.reshape(-1, s, s).astype(np.int32)


def check_frames_output(path: str, *, sheet: bool = False) -> None:
    """Refuse, before any work, an output that `write_frames` cannot write."""
    ext = os.path.splitext(path)[1].lower()
    if sheet and ext not in IMAGE_OUTPUTS:
        raise LWMError(f"cannot write {path}: a contact sheet is an image; give {' '.join(IMAGE_OUTPUTS)}")
    if ext not in VIDEO_OUTPUTS + IMAGE_OUTPUTS:
        raise LWMError(f"cannot write {path}: unsupported extension {ext or '(none)'!r}; give a video "
                       f"({' '.join(VIDEO_OUTPUTS)}) or an image ({' '.join(IMAGE_OUTPUTS)})")


def write_frames(path: str, frames: np.ndarray, *, fps: float = 4, sheet: bool = False) -> str:
    """uint8 frames (F, H, W, 3) -> a video (.mp4/.mov/.webm/.gif at `fps`) or an image (.png/.jpg/.webp:
    one frame, or with `sheet` a contact sheet of all of them), atomically; returns the path."""
    check_frames_output(path, sheet=sheet)
    ext = os.path.splitext(path)[1].lower()
    if sheet:
        return media.write_image(path, media.contact_sheet(frames))
    if ext in VIDEO_OUTPUTS:
        return media.write_video(path, frames, fps=fps)
    if len(frames) > 1:
        raise LWMError(f"{plural(len(frames), 'frame')} for one image {path}: ask for a contact sheet of all of them, "
                       f"or write a video (.mp4, .gif)")
    return media.write_image(path, frames[0])
