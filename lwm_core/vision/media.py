"""Media IO for vision chat and generation: images and videos in, model frames out; frames back to
videos, images and contact sheets.

Reading follows the original LWM (`lwm/vision_chat.py`) where it decides what the model sees:

- Frames of a video: evenly spaced, `np.linspace(0, n - 1, max_frames)` truncated to int, every frame
  when the video has at most `max_frames` (`sample_indices`).
- One frame for the model: the short side resized to `resolution` with Pillow's BICUBIC filter (the
  filter the original got from `Image.resize`'s default), then the centre `resolution` x `resolution`
  square, then `x / 127.5 - 1` in float32 (`to_model_frames`).
- Images go through Pillow's `convert("RGB")`: palette and greyscale become RGB, alpha is dropped (not
  composited), as in the original.

Where this module differs, on purpose: EXIF orientation is applied to photos (ffmpeg rotates videos by
their rotation tag too, so both come out upright); 16-bit greyscale PNGs are scaled to 8 bits rather than
clipped by `convert`; decoded pixels go back to uint8 by rounding, not truncation (`to_uint8`); the crop
is always exactly `resolution` wide (the original's float crop box, rounded half to even at both edges,
could come out one pixel too wide or narrow for an odd resolution; for 256 the two agree exactly).

Videos are decoded by the ffmpeg binary that the imageio-ffmpeg wheel ships (no PyAV, no decord), one
frame at a time through a pipe: only the sampled frames are kept, so a long video never sits in memory.
The frame count comes from the container (duration x fps); the decoding pass counts the frames anyway,
and when the container was wrong (or silent) a second pass samples by the true count, so the frames
picked are those of the exact count, as decord's were. ffmpeg runs at log level "error": anything it
reports while decoding means a damaged or truncated file and is raised, never sampled around. GIFs are
read by Pillow.

Writers publish atomically (a temporary sibling renamed into place, `checkpoint.atomic`): MP4/MOV as
H.264 in yuv420p with the index at the front (`+faststart`), which browsers play; WebM as VP9; GIF
through Pillow, looping forever; PNG, JPEG and WebP images.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import tempfile
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from lwm_core.checkpoint.atomic import _fsync_dir, atomic_file, check_target, clean_stale, os_errors, temp_path
from lwm_core.errors import LWMError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")  # read_image (a GIF: its first frame)
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".gif")  # read_video_frames
WRITE_IMAGE_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
                       ".webp": ("WEBP", {"quality": 95})}
# H.264 at CRF 18 (visually lossless; the original's imageio default was CRF 25) in yuv420p, the one pixel
# format every browser decodes; +faststart puts the index first so a page can play it while it loads.
# VP9 in constant-quality mode (-b:v 0 lets -crf alone set the quality).
_H264 = ["-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
WRITE_VIDEO_CODECS = {".mp4": _H264, ".mov": _H264,
                      ".webm": ["-c:v", "libvpx-vp9", "-crf", "30", "-b:v", "0", "-pix_fmt", "yuv420p"],
                      ".gif": None}  # Pillow


def _supported() -> str:
    return f"images {' '.join(IMAGE_EXTENSIONS)}; videos {' '.join(VIDEO_EXTENSIONS)}"


# ----- reading --------------------------------------------------------------------------------------------------


def load_media(path: str | os.PathLike, resolution: int = 256, max_frames: int = 8) -> np.ndarray:
    """The model's frames of an image or a video: float32 (N, resolution, resolution, 3) in [-1, 1], N = 1
    for an image, at most `max_frames` evenly spaced frames for a video or a GIF."""
    path = _readable(path)
    _check_max_frames(max_frames)
    ext = _extension(path, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS, _supported())
    if ext in VIDEO_EXTENSIONS:  # a GIF may be animated: read as a video (a still GIF gives one frame)
        frames = read_video_frames(path, max_frames=max_frames)
    else:
        frames = read_image(path)[None]
    return to_model_frames(frames, resolution=resolution)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3): PNG, JPEG, WebP or GIF (its first frame)."""
    path = _readable(path)
    _extension(path, IMAGE_EXTENSIONS, f"images {' '.join(IMAGE_EXTENSIONS)}")
    with _pillow(path) as im:
        return _rgb(ImageOps.exif_transpose(im))


def sample_indices(n_frames: int, max_frames: int) -> list[int]:
    """The frames LWM feeds the model: all of them up to `max_frames`, else `max_frames` evenly spaced
    from the first to the last, truncated to int (`np.linspace(..., dtype=int)`, as the original)."""
    _check_max_frames(max_frames)
    if n_frames <= max_frames:
        return list(range(n_frames))
    return np.linspace(0, n_frames - 1, max_frames).astype(int).tolist()


def read_video_frames(path: str | os.PathLike, max_frames: int = 8) -> np.ndarray:
    """At most `max_frames` evenly spaced frames (`sample_indices`) of an MP4, WebM, MOV or GIF, as uint8
    RGB (N, H, W, 3), decoded one at a time: only the kept frames are held in memory."""
    path = _readable(path)
    _check_max_frames(max_frames)
    ext = _extension(path, VIDEO_EXTENSIONS, f"videos {' '.join(VIDEO_EXTENSIONS)}")
    if ext == ".gif":
        return _gif_frames(path, max_frames)
    meta = _probe(path)
    # The container's count when it has one, else 0: then the first pass keeps nothing and only counts.
    n = _frame_count_hint(meta)
    frames, seen = _pick(path, meta["size"], sample_indices(n, max_frames))
    if seen != n:  # the container's duration x fps was off (or absent): sample by the true count
        n = seen
        frames, seen = _pick(path, meta["size"], sample_indices(n, max_frames))
    if seen == 0:
        raise LWMError(f"video {path} has no frames; give a video with at least one frame")
    return np.stack(frames)


def _pick(path: str, size: tuple[int, int], wanted: list[int]) -> tuple[list[np.ndarray], int]:
    """One decoding pass: the frames at `wanted` (in order) and the number of frames the video has."""
    want = set(wanted)
    kept, seen = [], 0
    for i, frame in enumerate(_decode(path, size)):
        if i in want:
            kept.append(frame)
        seen = i + 1
    return kept, seen


def _gif_frames(path: str, max_frames: int) -> np.ndarray:
    with _pillow(path) as im:
        frames = []
        for i in sample_indices(getattr(im, "n_frames", 1), max_frames):
            im.seek(i)  # Pillow composes the frame from the ones before it; it keeps only the current one
            frames.append(_rgb(im))
        return np.stack(frames)


def _rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit greyscale (PNG): scale to 8 bits; convert("RGB") would clip everything above 255 to white.
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the same colours; Pillow warns when a palette with transparency goes to RGB
    return np.array(im.convert("RGB"))


@contextlib.contextmanager
def _pillow(path: str) -> Iterator[Image.Image]:
    """Open `path` with Pillow; a file it cannot identify or decode becomes one LWMError line."""
    try:
        with Image.open(path) as im:
            im.load()  # Image.open only reads the header: decode now so a truncated file fails here
            yield im
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        if isinstance(e, Image.UnidentifiedImageError):
            reason = "not a PNG, JPEG, WebP or GIF image"
        else:
            reason = _first_line(str(e)) or type(e).__name__
        raise LWMError(f"cannot read image {path}: {reason}; check that the file is a complete image") from None


# ----- model pixels ---------------------------------------------------------------------------------------------


def to_model_frames(frames: np.ndarray | Sequence[np.ndarray], resolution: int = 256) -> np.ndarray:
    """uint8 RGB frames (N, H, W, 3) -> float32 (N, resolution, resolution, 3) in [-1, 1]: the short side
    resized to `resolution` (Pillow BICUBIC), the centre square kept, `x / 127.5 - 1`."""
    frames = _as_frames(frames)
    if resolution < 1:
        raise ValueError(f"resolution must be at least 1, got {resolution}")
    out = np.empty((len(frames), resolution, resolution, 3), np.float32)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(_square(Image.fromarray(frame), resolution), dtype=np.float32) / 127.5 - 1
    return out


def _square(im: Image.Image, size: int) -> np.ndarray:
    width, height = im.size
    # The original's arithmetic, float then int(): the long side is truncated, never rounded up.
    if width < height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    # BICUBIC is what the original's `image.resize((w, h))` used (Pillow's default for RGB since 7.0):
    # named here so a change of default cannot change what the model sees. Pillow antialiases when it
    # shrinks (the kernel widens with the scale), so downsized frames do not alias.
    pixels = np.asarray(im.resize((new_width, new_height), Image.Resampling.BICUBIC))
    # The original cropped the float box ((W - s) / 2, (H - s) / 2, (W + s) / 2, (H + s) / 2), which Pillow
    # rounds half to even, as Python's round does; for an even size both edges round alike, so the crop
    # starts at round((W - s) / 2) and is s wide. Starting there and taking s keeps it s wide for odd s too.
    left, top = round((new_width - size) / 2), round((new_height - size) / 2)
    return pixels[top:top + size, left:left + size]


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Model pixels in [-1, 1] -> uint8 `(x + 1) * 127.5`, clipped and rounded to nearest.

    The original truncated (`.astype(np.uint8)`), which darkens every pixel by half a level on average
    and does not even invert `x / 127.5 - 1` in float32 (63 of the 256 levels come back one lower);
    rounding inverts it exactly and differs from the original by at most one level."""
    return np.rint(np.clip((np.asarray(pixels, dtype=np.float32) + 1) * 127.5, 0, 255)).astype(np.uint8)


def contact_sheet(frames: np.ndarray | Sequence[np.ndarray], columns: int | None = None, *, gap: int = 2,
                  background: int = 255) -> np.ndarray:
    """Frames (N, H, W, 3) uint8 tiled row by row into one uint8 image, `gap` pixels of `background`
    between neighbours (none around the edge); `columns` defaults to ceil(sqrt(N)), a near-square grid.
    Write it with `write_image`."""
    frames = _as_frames(frames)
    n, h, w, _ = frames.shape
    columns = columns or math.ceil(math.sqrt(n))
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    sheet = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), background, np.uint8)
    for i, frame in enumerate(frames):
        y, x = (i // columns) * (h + gap), (i % columns) * (w + gap)
        sheet[y:y + h, x:x + w] = frame
    return sheet


def _as_frames(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected uint8 RGB frames (N >= 1, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


# ----- writing --------------------------------------------------------------------------------------------------


def write_image(path: str | os.PathLike, frame: np.ndarray) -> str:
    """Write one uint8 RGB frame (H, W, 3) as PNG, JPEG (quality 95) or WebP (quality 95), atomically;
    returns the path written."""
    path = os.fspath(path)
    ext = _extension(path, tuple(WRITE_IMAGE_FORMATS), "images " + " ".join(WRITE_IMAGE_FORMATS), verb="write")
    fmt, options = WRITE_IMAGE_FORMATS[ext]
    frame = _as_frames(np.asarray(frame)[None])[0]
    check_target(path, kind="file", overwrite=True)
    with atomic_file(path) as f:
        Image.fromarray(frame).save(f, format=fmt, **options)
    return path


def write_video(path: str | os.PathLike, frames: np.ndarray | Sequence[np.ndarray], fps: float = 4) -> str:
    """Write uint8 RGB frames (N, H, W, 3) as a video at `fps` (LWM writes 4), atomically; returns the path.

    .mp4/.mov: H.264, yuv420p. yuv420p stores colour at half resolution, so H.264 needs an even width and
    height: an odd one is padded by one row/column repeating the edge (VQGAN's 256 x 256 frames never are).
    .webm: VP9, padded alike. .gif: Pillow, 256 colours per frame, each shown 1/fps s, looping forever;
    consecutive identical frames are merged into one longer frame by Pillow (the playback is the same)."""
    path = os.fspath(path)
    ext = _extension(path, tuple(WRITE_VIDEO_CODECS), "videos " + " ".join(WRITE_VIDEO_CODECS), verb="write")
    frames = _as_frames(frames)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    check_target(path, kind="file", overwrite=True)
    if ext == ".gif":
        images = [Image.fromarray(frame) for frame in frames]
        with atomic_file(path) as f:
            # GIF delays are in 1/100 s: Pillow rounds the milliseconds. loop=0 means forever.
            images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                           loop=0)
        return path
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        # frames: (N, H, W, 3) -> (N, H + H % 2, W + W % 2, 3), the last row/column repeated
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with _atomic_path(path) as tmp:
        _encode(frames, tmp, fps, WRITE_VIDEO_CODECS[ext], target=path)
    return path


@contextlib.contextmanager
def _atomic_path(target: str) -> Iterator[str]:
    """`atomic_file` for a writer that needs a path, not a file object: ffmpeg opens the file itself and
    picks the container by its extension, so the temporary sibling keeps the target's extension (after
    the `.lwm-tmp-<pid>-<random>` that `clean_stale` recognises)."""
    path = os.path.abspath(target)
    clean_stale(path)
    tmp = temp_path(path) + os.path.splitext(path)[1]
    try:
        yield tmp
        with os_errors(target):
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


def _encode(frames: np.ndarray, out: str, fps: float, codec: list[str], *, target: str) -> None:
    _, h, w, _ = frames.shape
    cmd = [_ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", f"{fps}", "-i", "pipe:0",
           "-an", *codec, out]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)  # a terminal's Ctrl-C is ours to handle, not ffmpeg's
        try:
            for frame in frames:
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg stopped early: its log says why
        except BaseException:  # Ctrl-C: stop ffmpeg now; _atomic_path removes what it wrote
            proc.kill()
            proc.wait()
            raise
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()  # the end of the input: ffmpeg finishes the file
        if proc.wait() != 0:
            log.seek(0)
            reason = _first_line(log.read().decode(errors="replace")) or f"exit status {proc.returncode}"
            raise LWMError(f"cannot write video {target}: ffmpeg: {reason}")


# ----- ffmpeg -----------------------------------------------------------------------------------------------------


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        raise LWMError("no ffmpeg binary found; pip install imageio-ffmpeg (its wheels ship one) or point "
                       "IMAGEIO_FFMPEG_EXE at an ffmpeg executable") from None


def _probe(path: str) -> dict:
    """imageio-ffmpeg's metadata of `path`: size (W, H) of the decoded frames (after rotation), fps and
    duration (0 when unknown), codec, pix_fmt. ffmpeg runs as our own child in its own session
    (`start_new_session`: no Python runs between fork and exec, which imageio-ffmpeg's reader does, and
    which jax warns of in a threaded process); its header is parsed by imageio-ffmpeg."""
    from imageio_ffmpeg._parsing import parse_ffmpeg_header  # the parser imageio-ffmpeg's own reader uses

    exe = _ffmpeg_exe()
    run = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", _ffmpeg_input(path)], capture_output=True,
                         start_new_session=True)
    log = run.stderr.decode(errors="replace")
    # ffmpeg with an input and no output prints the input's header and exits 1 ("At least one output file
    # must be specified"): the header is there when the file's streams could be read.
    header = log[log.find("Input #0"):] if "Input #0" in log else ""
    try:
        if not header:
            raise ValueError("no header")
        with _quiet_rotation_warning():
            return parse_ffmpeg_header(header)
    except Exception:
        # No header, or one without a video stream (the parser raises IndexError, ...): any failure to read
        # it is a file ffmpeg cannot read. Ask ffmpeg again, quietly, for the one line that says what is wrong.
        raise _unreadable(path, exe) from None


@contextlib.contextmanager
def _quiet_rotation_warning() -> Iterator[None]:
    """imageio-ffmpeg logs a warning for every rotated video (the decoded size differs from the stored
    one), which reaches stderr through logging's last-resort handler; lwm_core prints nothing, and a
    rotated phone video is no news. The filter is on only while the header is read."""
    logger = logging.getLogger("imageio_ffmpeg")
    drop = lambda record: not str(record.msg).startswith("The frame size for reading")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _unreadable(path: str, exe: str) -> LWMError:
    run = subprocess.run([exe, "-nostdin", "-v", "error", "-i", _ffmpeg_input(path), "-map", "0:v:0",
                          "-frames:v", "1", "-f", "null", "-"], capture_output=True, start_new_session=True)
    log = run.stderr.decode(errors="replace")
    if "matches no streams" in log:  # ffmpeg's words for `-map 0:v:0` in a file without a video stream
        return LWMError(f"video {path} has no frames (no video stream); give a video with at least one frame")
    return LWMError(f"cannot read video {path}: {_first_line(log) or 'ffmpeg cannot decode it'}; the file is "
                    f"damaged, truncated or not a video")


def _frame_count_hint(meta: dict) -> int:
    """The container's frame count, duration x fps, or 0 when it does not say. Only a guess (the duration
    is to 1/100 s and is the longest stream's): `read_video_frames` checks it against the decoded count."""
    fps, duration = meta.get("fps") or 0, meta.get("duration") or 0
    return round(fps * duration) if fps > 0 and duration > 0 and math.isfinite(fps * duration) else 0


def _decode(path: str, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Yield the frames of `path`'s video stream one at a time, uint8 RGB (H, W, 3), `size` = (W, H).

    ffmpeg writes raw RGB to a pipe that is read a frame at a time; its log (level "error") goes to a
    temporary file, which cannot fill up and stall it as a second pipe could. Anything in that log, or a
    non-zero exit, means the file is damaged: raised after the last frame."""
    width, height = size
    frame_bytes = width * height * 3
    cmd = [_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", _ffmpeg_input(path), "-an", "-sn", "-dn",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True)  # a terminal's Ctrl-C is ours to handle, not ffmpeg's
        try:
            while data := proc.stdout.read(frame_bytes):  # a BufferedReader: a whole frame, or the end
                if len(data) < frame_bytes:
                    break  # half a frame: ffmpeg stopped mid-frame; its log or exit status says why
                yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
        except BaseException:  # the consumer stopped early (GeneratorExit) or failed: stop ffmpeg now
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            proc.wait()
        log.seek(0)
        errors = log.read().decode(errors="replace").strip()
        if proc.returncode != 0 or errors or len(data) not in (0, frame_bytes):
            reason = _first_line(errors) or f"ffmpeg exit status {proc.returncode}"
            raise LWMError(f"cannot read video {path}: {reason}; the file is damaged or truncated")


def _ffmpeg_input(path: str) -> str:
    # Absolute, so that ffmpeg never reads a name such as `pipe:0` or `http:x.mp4` as a protocol.
    return os.path.abspath(path)


def _first_line(log: str) -> str:
    """The first line of an ffmpeg log, less its `[h264 @ 0x...]` context tags."""
    for line in log.splitlines():
        while line.startswith("[") and "]" in line:
            line = line[line.index("]") + 1:].lstrip()
        if line.strip():
            return line.strip().rstrip(".")
    return ""


# ----- shared checks ----------------------------------------------------------------------------------------------


def _readable(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LWMError(f"media file {path} does not exist; check the path")
    if os.path.isdir(path):
        raise LWMError(f"media file {path} is a directory; give an image or a video file")
    return path


def _extension(path: str, allowed: tuple[str, ...], listing: str, *, verb: str = "read") -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in allowed:
        raise LWMError(f"cannot {verb} {path}: unsupported extension {ext or '(none)'!r}; supported: {listing}")
    return ext


def _check_max_frames(max_frames: int) -> None:
    if max_frames < 1:
        raise LWMError(f"max_frames must be at least 1, got {max_frames}")
