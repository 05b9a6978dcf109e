"""Media IO: real files written and read back through the bundled ffmpeg and Pillow, the original LWM's
frame sampling and resize/crop arithmetic, one-line errors, atomic writes and streaming reads.

Every test video encodes each frame's index in its colours (top half: index % 12, bottom half: index // 12,
from a palette 128 levels apart), so that a lossy codec still tells which frames came back."""

import os
import subprocess
import tracemalloc
import warnings

import numpy as np
import pytest
from PIL import Image

from lwm_core.errors import LWMError
from lwm_core.vision import media

PALETTE = np.array([(r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)],
                   np.uint8)[[0, 26, 2, 6, 18, 20, 24, 8, 13, 4, 10, 22]]  # 12 colours, 128+ levels apart
FFMPEG = media._ffmpeg_exe()


def indexed_video(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(n, H, W, 3) uint8: frame i is PALETTE[i % 12] above PALETTE[i // 12]."""
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i, : height // 2] = PALETTE[i % 12]
        frames[i, height // 2:] = PALETTE[i // 12]
    return frames


def frame_indices(frames: np.ndarray) -> list[int]:
    """Which frame of `indexed_video` each decoded frame is, by the nearest palette colour of each half."""
    h, w = frames.shape[1:3]

    def nearest(pixel):
        return int(np.argmin(((PALETTE.astype(int) - pixel.astype(int)) ** 2).sum(-1)))

    return [nearest(f[h // 4, w // 2]) + 12 * nearest(f[3 * h // 4, w // 2]) for f in frames]


def has_encoder(name: str) -> bool:
    out = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in out.splitlines())


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(LWMError, match=match) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message, message
    assert e.value.__cause__ is None and e.value.__suppress_context__ or e.value.__context__ is None
    return message


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".lwm-tmp-" in name)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    """12 frames of 64x48 at 4 fps, written by write_video."""
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    assert media.write_video(path, indexed_video(12), fps=4) == path
    return path


# ----- video ---------------------------------------------------------------------------------------------------


# imageio, the independent reader here, starts ffmpeg with a preexec_fn (a Python-level fork, which jax
# warns of once imported); lwm's own media code starts its ffmpeg without one.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_mp4_is_h264_yuv420p_for_browsers(mp4):
    import imageio.v3 as iio

    meta = iio.immeta(mp4, plugin="FFMPEG")
    assert meta["codec"] == "h264"
    assert meta["pix_fmt"].startswith("yuv420p")
    assert meta["fps"] == 4.0 and meta["size"] == (64, 48) and meta["duration"] == 3.0
    frames = list(iio.imiter(mp4, plugin="FFMPEG"))
    assert len(frames) == 12 and frames[0].shape == (48, 64, 3)
    assert frame_indices(np.stack(frames)) == list(range(12))
    # The moov atom (the index) precedes the media data: browsers can play while downloading.
    head = open(mp4, "rb").read()
    assert head.index(b"moov") < head.index(b"mdat")


def test_sample_indices_are_the_originals_linspace():
    assert media.sample_indices(12, 5) == [0, 2, 5, 8, 11]
    assert media.sample_indices(12, 8) == [0, 1, 3, 4, 6, 7, 9, 11]  # 11/7 steps, truncated
    assert media.sample_indices(120, 8) == [0, 17, 34, 51, 68, 85, 102, 119]
    assert media.sample_indices(5, 8) == [0, 1, 2, 3, 4]
    assert media.sample_indices(8, 8) == list(range(8))
    assert media.sample_indices(1, 1) == [0] and media.sample_indices(9, 1) == [0]
    assert media.sample_indices(0, 8) == []
    for n in range(1, 60):
        for k in (1, 2, 3, 7, 8):
            expect = list(range(n)) if n <= k else np.linspace(0, n - 1, k, dtype=int).tolist()
            assert media.sample_indices(n, k) == expect


def test_read_video_picks_evenly_spaced_frames(mp4):
    frames = media.read_video_frames(mp4, max_frames=5)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert frame_indices(frames) == [0, 2, 5, 8, 11]
    error = np.abs(frames.astype(int) - indexed_video(12)[[0, 2, 5, 8, 11]])  # H.264 is lossy
    assert error.mean() < 2 and error[:, 4:20].max() <= 8 and error[:, 28:44].max() <= 8  # away from the edge
    assert frame_indices(media.read_video_frames(mp4)) == [0, 1, 3, 4, 6, 7, 9, 11]
    assert frame_indices(media.read_video_frames(mp4, max_frames=50)) == list(range(12))


@pytest.mark.parametrize("hint", [17, 9, 0])  # too many, too few, unknown (0: the first pass only counts)
def test_a_wrong_container_count_is_corrected_by_a_second_pass(mp4, monkeypatch, hint):
    passes = []
    decode = media._decode
    monkeypatch.setattr(media, "_frame_count_hint", lambda meta: hint)
    monkeypatch.setattr(media, "_decode", lambda *a: passes.append(1) or decode(*a))
    assert frame_indices(media.read_video_frames(mp4, max_frames=5)) == [0, 2, 5, 8, 11]
    assert len(passes) == 2


def test_a_right_container_count_takes_one_pass(mp4, monkeypatch):
    passes = []
    decode = media._decode
    monkeypatch.setattr(media, "_decode", lambda *a: passes.append(1) or decode(*a))
    media.read_video_frames(mp4, max_frames=5)
    assert len(passes) == 1


def test_reading_streams_a_long_video(tmp_path):
    """120 frames of 128x96 (4.4 MB decoded); at most a few frames' worth is ever allocated."""
    path = str(tmp_path / "long.mp4")
    media.write_video(path, indexed_video(120, 96, 128), fps=24)
    frame_bytes = 96 * 128 * 3
    tracemalloc.start()
    try:
        frames = media.read_video_frames(path, max_frames=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frame_indices(frames) == [0, 39, 79, 119]
    # 4 kept + 4 stacked + the frame being read; the whole video would be 120.
    assert peak < 12 * frame_bytes, (peak, frame_bytes)
    import inspect

    assert inspect.isgeneratorfunction(media._decode)


@pytest.mark.parametrize("ext", [".mov", ".webm", ".gif"])
def test_round_trip_other_containers(tmp_path, ext):
    if ext == ".webm" and not has_encoder("libvpx-vp9"):
        pytest.skip("this ffmpeg has no libvpx-vp9 encoder (WebM/VP9)")
    path = str(tmp_path / f"clip{ext}")
    media.write_video(path, indexed_video(12), fps=4)
    frames = media.read_video_frames(path, max_frames=5)
    assert frames.shape == (5, 48, 64, 3)
    assert frame_indices(frames) == [0, 2, 5, 8, 11]
    if ext == ".gif":
        with Image.open(path) as im:
            assert im.n_frames == 12 and im.info["duration"] == 250 and im.info["loop"] == 0
        assert np.abs(frames.astype(int) - indexed_video(12)[[0, 2, 5, 8, 11]]).max() <= 2
    else:
        assert leftovers(tmp_path) == []


def test_odd_sizes_are_padded_by_one_for_yuv420p(tmp_path):
    path = str(tmp_path / "odd.mp4")
    frames = indexed_video(4, 47, 63)
    frames[:, :, -1] = (255, 255, 255)  # the last column: the padding repeats it
    media.write_video(path, frames)
    back = media.read_video_frames(path)
    assert back.shape == (4, 48, 64, 3)
    assert frame_indices(back) == [0, 1, 2, 3]
    assert back[:, 10:20, -2:].min() > 230  # the padded column repeats the white edge, no black line


def test_load_media_dispatches_by_extension(tmp_path, mp4):
    png = str(tmp_path / "a.png")
    Image.fromarray(indexed_video(1, 40, 60)[0]).save(png)
    image = media.load_media(png, resolution=32)
    assert image.shape == (1, 32, 32, 3) and image.dtype == np.float32
    assert image.min() >= -1 and image.max() <= 1
    video = media.load_media(mp4, resolution=16, max_frames=3)
    assert video.shape == (3, 16, 16, 3)
    gif = str(tmp_path / "a.gif")
    media.write_video(gif, indexed_video(6))
    assert media.load_media(gif, resolution=16, max_frames=4).shape == (4, 16, 16, 3)
    Image.fromarray(indexed_video(1)[0]).save(str(tmp_path / "still.gif"))
    assert media.load_media(str(tmp_path / "still.gif"), resolution=16).shape == (1, 16, 16, 3)


# ----- images --------------------------------------------------------------------------------------------------


def test_images_of_each_format_and_mode(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = np.full((20, 30), 7, np.uint8)
    cases = {
        "rgb.png": (Image.fromarray(rgb), rgb),
        "rgba.png": (Image.fromarray(np.dstack([rgb, alpha])), rgb),  # alpha dropped, as the original
        "grey.png": (Image.fromarray(rgb[..., 0]), np.repeat(rgb[..., :1], 3, -1)),
        "greya.png": (Image.fromarray(np.dstack([rgb[..., 0], alpha])), np.repeat(rgb[..., :1], 3, -1)),
        "lossless.webp": (Image.fromarray(rgb), rgb),
        "bw.png": (Image.fromarray(rgb[..., 0] > 127), np.repeat(np.where(rgb[..., :1] > 127, 255, 0), 3, -1)),
    }
    palette = Image.fromarray(indexed_video(1, 20, 30)[0]).quantize(12)
    cases["palette.png"] = (palette, np.array(palette.convert("RGB")))
    palette_t = palette.copy()
    palette_t.info["transparency"] = 0
    cases["palette_t.gif"] = (palette_t, np.array(palette.convert("RGB")))
    for name, (im, expect) in cases.items():
        kwargs = {"lossless": True} if name.endswith(".webp") else {}
        im.save(str(tmp_path / name), **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. Pillow's warning for palettes with transparency
            got = media.read_image(str(tmp_path / name))
        assert got.shape == (20, 30, 3) and got.dtype == np.uint8, name
        np.testing.assert_array_equal(got, expect, err_msg=name)
    # 16-bit greyscale: scaled to 8 bits, not clipped (65535 -> 255, 257 * v -> v)
    deep = (np.arange(600, dtype=np.uint16).reshape(20, 30) % 256) * 257
    Image.fromarray(deep).save(str(tmp_path / "deep.png"))
    np.testing.assert_array_equal(media.read_image(str(tmp_path / "deep.png"))[..., 1], deep // 257)
    # JPEG (lossy) from RGB and from CMYK
    smooth = np.broadcast_to(np.linspace(0, 255, 30, dtype=np.uint8)[None, :, None], (20, 30, 3)).copy()
    Image.fromarray(smooth).save(str(tmp_path / "a.jpg"), quality=95)
    Image.fromarray(smooth).convert("CMYK").save(str(tmp_path / "cmyk.jpg"), quality=95)
    for name in ("a.jpg", "cmyk.jpg"):
        assert np.abs(media.read_image(str(tmp_path / name)).astype(int) - smooth).mean() < 4, name
    # an animated GIF: its first frame
    media.write_video(str(tmp_path / "anim.gif"), indexed_video(3))
    assert frame_indices(media.read_image(str(tmp_path / "anim.gif"))[None]) == [0]


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    im.save(str(tmp_path / "phone.jpg"), exif=exif)
    assert media.read_image(str(tmp_path / "phone.jpg")).shape == (40, 20, 3)


def test_write_image_round_trips(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    path = str(tmp_path / "out.png")
    assert media.write_image(path, rgb) == path
    np.testing.assert_array_equal(media.read_image(path), rgb)
    smooth = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 32, 3)).copy()
    for ext in (".jpg", ".jpeg", ".webp"):
        media.write_image(str(tmp_path / f"out{ext}"), smooth)
        assert np.abs(media.read_image(str(tmp_path / f"out{ext}")).astype(int) - smooth).mean() < 3, ext
    assert leftovers(tmp_path) == []


# ----- model pixels --------------------------------------------------------------------------------------------


def original_process_frame(image: Image.Image, size: int) -> np.ndarray:
    """LWM's `VisionChat._process_frame` (lwm/vision_chat.py), the reference for `to_model_frames`."""
    width, height = image.size
    if width < height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_height, new_width = size, int(size * width / height)
    image = image.resize((new_width, new_height))  # Pillow's default filter for RGB
    left, top = (new_width - size) / 2, (new_height - size) / 2
    right, bottom = (new_width + size) / 2, (new_height + size) / 2
    image = image.crop((left, top, right, bottom))
    return np.array(image, dtype=np.float32) / 127.5 - 1


@pytest.mark.parametrize("hw", [(48, 64), (64, 48), (50, 50), (33, 100), (100, 33), (200, 301), (5, 7), (341, 256)])
@pytest.mark.parametrize("resolution", [16, 32])
def test_to_model_frames_matches_the_original(hw, resolution):
    frame = np.random.default_rng(hw[0] * 1000 + hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ours = media.to_model_frames(frame[None], resolution=resolution)
    assert ours.shape == (1, resolution, resolution, 3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours[0], original_process_frame(Image.fromarray(frame), resolution))


def test_centre_crop_keeps_the_middle():
    # 96 x 32, resolution 16: resized to 48 x 16, the crop keeps resized columns 16..32 = original 32..64.
    frame = np.zeros((32, 96, 3), np.uint8)
    frame[:, :24] = (255, 0, 0)
    frame[:, 24:72] = (0, 255, 0)  # the middle, 8 original pixels wider than the crop on each side
    frame[:, 72:] = (0, 0, 255)
    out = media.to_model_frames(frame[None], resolution=16)[0]
    np.testing.assert_allclose(out[..., 1], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[..., [0, 2]], -1.0, atol=1e-6)
    # portrait: rows this time
    out = media.to_model_frames(frame.transpose(1, 0, 2)[None], resolution=16)[0]
    np.testing.assert_allclose(out[..., 1], 1.0, atol=1e-6)


def test_to_uint8_rounds_and_clips():
    levels = np.arange(256, dtype=np.uint8)
    model = levels.astype(np.float32) / 127.5 - 1  # to_model_frames' mapping
    np.testing.assert_array_equal(media.to_uint8(model), levels)  # truncation would lose 63 levels
    assert media.to_uint8(np.array([-2.0, -1.0, 1.0, 3.0])).tolist() == [0, 0, 255, 255]
    assert media.to_uint8(np.array([10.6 / 127.5 - 1])).tolist() == [11]  # rounded, not truncated to 10
    square = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(media.to_uint8(media.to_model_frames(square, resolution=16)), square)


def test_contact_sheet(tmp_path):
    frames = indexed_video(5, 4, 6)
    sheet = media.contact_sheet(frames)  # ceil(sqrt(5)) = 3 columns, 2 rows, gaps of 2
    assert sheet.shape == (2 * 4 + 2, 3 * 6 + 2 * 2, 3) and sheet.dtype == np.uint8
    for i in range(5):
        y, x = (i // 3) * 6, (i % 3) * 8
        np.testing.assert_array_equal(sheet[y:y + 4, x:x + 6], frames[i])
    assert (sheet[4:6] == 255).all() and (sheet[:, 6:8] == 255).all()
    assert (sheet[6:, 16:] == 255).all()  # the empty sixth cell
    assert media.contact_sheet(frames, columns=5, gap=1).shape == (4, 5 * 6 + 4, 3)
    assert media.contact_sheet(frames, columns=9).shape == (4, 5 * 6 + 4 * 2, 3)
    path = str(tmp_path / "sheet.png")
    media.write_image(path, sheet)
    np.testing.assert_array_equal(media.read_image(path), sheet)


# ----- errors and atomic writes --------------------------------------------------------------------------------


def test_errors_are_one_line(tmp_path, mp4):
    missing = str(tmp_path / "nope.mp4")
    for fn in (media.load_media, media.read_image, media.read_video_frames):
        assert missing in one_line_error(fn, missing, match="does not exist")
    one_line_error(media.read_video_frames, str(tmp_path), match="is a directory")

    (tmp_path / "notes.txt").write_text("hi")
    message = one_line_error(media.load_media, str(tmp_path / "notes.txt"), match="unsupported extension '.txt'")
    assert ".png" in message and ".mp4" in message and ".webm" in message and ".gif" in message
    one_line_error(media.read_image, mp4, match=r"unsupported extension '\.mp4'; supported: images")
    one_line_error(media.write_video, str(tmp_path / "a.avi"), indexed_video(2), match="cannot write .*'.avi'")
    one_line_error(media.write_image, str(tmp_path / "a.bmp"), indexed_video(1)[0], match="cannot write")

    for fn in (media.read_video_frames, media.load_media):
        one_line_error(fn, mp4, max_frames=0, match="max_frames must be at least 1, got 0")

    (tmp_path / "noise.png").write_bytes(np.random.default_rng(3).bytes(2000))
    one_line_error(media.read_image, str(tmp_path / "noise.png"), match="cannot read image .*noise.png: not a PNG")
    png = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    one_line_error(media.read_image, str(png), match="cannot read image .*cut.png: .*truncated")


def test_truncated_and_empty_videos(tmp_path, mp4):
    # A short flat clip cut in half: ffmpeg cannot even read the stream's parameters.
    short = tmp_path / "short.mp4"
    data = open(mp4, "rb").read()
    short.write_bytes(data[: len(data) // 2])
    one_line_error(media.read_video_frames, str(short), match="cannot read video .*short.mp4: .*damaged")
    # A longer clip cut in half: the header is whole (+faststart), the frames stop halfway.
    noise = np.random.default_rng(5).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    long = tmp_path / "long.mp4"
    media.write_video(str(long), noise)
    long.write_bytes(long.read_bytes()[: long.stat().st_size // 2])
    one_line_error(media.read_video_frames, str(long), match="cannot read video .*long.mp4: .*truncated")
    # Random bytes
    (tmp_path / "noise.webm").write_bytes(np.random.default_rng(6).bytes(3000))
    one_line_error(media.load_media, str(tmp_path / "noise.webm"), match="cannot read video .*noise.webm")
    # A valid MP4 with zero frames (ffmpeg given no input frames)
    empty = str(tmp_path / "empty.mp4")
    subprocess.run([FFMPEG, "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48", "-i", "pipe:0",
                    "-c:v", "libx264", empty], input=b"", check=True)
    one_line_error(media.read_video_frames, empty, match="has no frames")


def test_a_failed_encode_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.mp4"
    monkeypatch.setitem(media.WRITE_VIDEO_CODECS, ".mp4", ["-c:v", "no_such_codec"])
    one_line_error(media.write_video, str(target), indexed_video(3), match="cannot write video .*out.mp4: ffmpeg: ")
    assert os.listdir(tmp_path) == []
    target.write_bytes(b"old")  # an existing output survives a failed replacement
    one_line_error(media.write_video, str(target), indexed_video(3), match="cannot write video")
    assert os.listdir(tmp_path) == ["out.mp4"] and target.read_bytes() == b"old"


def test_an_interrupted_encode_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def interrupt(frame):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return frame

    monkeypatch.setattr(media.np, "ascontiguousarray", interrupt)
    with pytest.raises(KeyboardInterrupt):
        media.write_video(str(tmp_path / "out.mp4"), indexed_video(6))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["out.gif", "out.png"])
def test_a_failed_pillow_write_leaves_nothing(tmp_path, monkeypatch, name):
    def full_disk(self, f, *args, **kwargs):
        f.write(b"GIF89a half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    write = media.write_video if name.endswith(".gif") else lambda p, v: media.write_image(p, v[0])
    one_line_error(write, str(tmp_path / name), indexed_video(2), match=f"cannot write .*{name}: No space left")
    assert os.listdir(tmp_path) == []


def test_writes_need_an_existing_directory(tmp_path):
    one_line_error(media.write_video, str(tmp_path / "missing" / "a.mp4"), indexed_video(2), match="does not exist")
    one_line_error(media.write_image, str(tmp_path / "missing" / "a.png"), indexed_video(1)[0],
                   match="does not exist")


def test_frames_must_be_uint8_rgb():
    with pytest.raises(ValueError, match=r"uint8 RGB frames .* float32 \(2, 4, 4, 3\)"):
        media.to_model_frames(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
        media.contact_sheet(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="fps must be a positive number"):
        media.write_video("never.mp4", indexed_video(1), fps=0)
