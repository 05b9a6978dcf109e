"""`lwm gen image|video` run in-process on the 8 fake devices (mesh 1,1,2,4): numbered outputs, an H.264
mp4 that an independent reader reads back, PNGs that are exactly the library's images, and one-line
refusals, before any weights are loaded, of what cannot work.

The model is random:tiny with vision=true and its random VQGAN (64x64 pixels, 16x16 codes); the library
run and the CLI runs share their compiled programs (the same shapes on the same mesh).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from helpers import run_cli as _run

PROMPTS = ["fireworks over the city", "a red cat"]
MODEL = ["-m", "random:tiny", "--set", "vision=true"]
MESH = ["--mesh", "1,1,2,4"]


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # no persistent cache from an in-process run


@pytest.fixture(scope="module")
def library_images():
    """What the library draws for PROMPTS on the same mesh, decoded by the same VQGAN: uint8 (2, 64, 64, 3)."""
    import lwm_core
    from lwm_core.generate.vision import RANDOM_VQGAN
    from lwm_core.vision.media import to_uint8

    model = lwm_core.load_model("random:tiny", mesh="1,1,2,4", overrides={"vision": True})
    codes = model.generate_vision(PROMPTS, kind="image")
    spec, config = RANDOM_VQGAN
    vqgan = lwm_core.load_vqgan(spec, config=config, mesh=model.mesh)
    return to_uint8(vqgan.decode(codes[:, 0]))


def test_gen_image_from_stdin_writes_numbered_pngs_that_are_the_librarys_images(capsys, monkeypatch, tmp_path,
                                                                                 library_images):
    from PIL import Image

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\n".join([PROMPTS[0], "", PROMPTS[1], ""])
                                                                 .encode())))
    out = tmp_path / "fw.png"
    code, stdout, err = _run(capsys, "gen", "image", "-", *MODEL, *MESH, "-o", str(out))
    assert code == 0, err
    paths = [tmp_path / "fw-1.png", tmp_path / "fw-2.png"]
    assert stdout == "".join(f"{p}\n" for p in paths)
    for path, want in zip(paths, library_images):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), want)
    assert "image 2/2" in err and "wrote 2 images (image, 64x64)" in err
    # an existing output is refused unless --force, before anything runs
    code, stdout, err = _run(capsys, "gen", "image", *PROMPTS, *MODEL, "-o", str(out))
    assert (code, stdout) == (1, "") and err == f"error: output {paths[0]} already exists; pass --force to replace it\n"


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio's reader forks (see test_media.py)
def test_gen_video_writes_h264_yuv420p_mp4s_whose_first_frame_is_the_image(capsys, tmp_path, library_images):
    import imageio.v3 as iio

    out = tmp_path / "clip.mp4"
    code, stdout, err = _run(capsys, "gen", "video", *PROMPTS, *MODEL, *MESH, "--n-frames", "3", "-o", str(out))
    assert code == 0, err
    paths = [tmp_path / "clip-1.mp4", tmp_path / "clip-2.mp4"]
    assert stdout == "".join(f"{p}\n" for p in paths)
    assert "video 6/6" in err and "wrote 2 videos (3 frames at 4 fps, 64x64)" in err
    for path, image in zip(paths, library_images):
        meta = iio.immeta(path, plugin="FFMPEG")
        assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
        assert meta["size"] == (64, 64) and meta["fps"] == 4.0
        frames = np.stack(list(iio.imiter(path, plugin="FFMPEG")))
        assert frames.shape == (3, 64, 64, 3)
        # A video's first frame is drawn as the image of its prompt. H.264 in yuv420p keeps the brightness of
        # the random VQGAN's noisy pixels (mean error ~2.5 levels), not their colour (chroma at half size).
        luma = lambda rgb: rgb.astype(float) @ [0.299, 0.587, 0.114]  # noqa: E731
        assert np.abs(luma(frames[0]) - luma(image)).mean() < 5
        assert np.abs(luma(frames[2]) - luma(image)).mean() > 10  # later frames are new codes


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio's ffmpeg reader forks
def test_a_vqgan_of_another_grid_draws_its_own_frames(capsys, tmp_path):
    """A VQGAN's grid is the frame: random:tiny makes 8 x 8 codes of 32 x 32 pixels, so each frame is 65
    tokens (the demo world's VQGAN is such a one)."""
    import imageio.v3 as iio

    out = tmp_path / "small.mp4"
    code, stdout, err = _run(capsys, "gen", "video", "a red cat", *MODEL, "--mesh", "1,1,1,8", "--vqgan", "random:tiny",
                             "--n-frames", "2", "-o", str(out))
    assert (code, stdout) == (0, f"{out}\n"), err
    assert "wrote 1 video (2 frames at 4 fps, 32x32)" in err
    assert np.stack(list(iio.imiter(out, plugin="FFMPEG"))).shape == (2, 32, 32, 3)


def _one_line_error(capsys, tmp_path, *args, code=1) -> str:
    got, stdout, err = _run(capsys, *args)
    assert got == code and stdout == "" and err.count("\n") == 1, err
    assert list(tmp_path.glob("*.png")) == list(tmp_path.glob("*.mp4")) == []
    return err


def test_what_cannot_work_is_refused_in_one_line_before_loading(capsys, tmp_path):
    import lwm_core

    png = str(tmp_path / "a.png")
    err = _one_line_error(capsys, tmp_path, "gen", "image", "x", "-m", "random:tiny", "-o", png)
    assert err == ("error: model random:tiny is text-only (config vision=false); lwm gen needs a vision model such as "
                   "LargeWorldModel/LWM-Chat-1M-Jax (random:tiny --set vision=true to try the command out)\n")
    err = _one_line_error(capsys, tmp_path, "gen", "video", "x", *MODEL, "-o", str(tmp_path / "a.avi"))
    assert "cannot write" in err and "unsupported extension '.avi'; lwm gen video writes .mp4 .mov .webm .gif" in err
    err = _one_line_error(capsys, tmp_path, "gen", "image", "x", *MODEL, "-o", str(tmp_path / "a.mp4"))
    assert "unsupported extension '.mp4'; lwm gen image writes .png .jpg .jpeg .webp" in err
    err = _one_line_error(capsys, tmp_path, "gen", "video", "x", *MODEL, "-o", str(tmp_path / "a.mp4"))  # 8 frames
    assert "8 frames of 257 tokens after a prompt of 33 tokens take 2089 tokens, more than the model's context" in err
    # a checkpoint directory without a `vqgan` beside its weights
    model_dir = tmp_path / "model"
    lwm_core.load_model("random:tiny", mesh="1,1,1,1", overrides={"vision": True}).save(str(model_dir))
    err = _one_line_error(capsys, tmp_path, "gen", "image", "x", "-m", str(model_dir), "-o", png)
    assert err.startswith(f"error: no VQGAN beside the model {model_dir} (no `vqgan` or `vqgan/` in {model_dir}); "
                          f"pass one with --vqgan")
    # usage errors: exit 2
    err = _one_line_error(capsys, tmp_path, "gen", "video", "x", *MODEL, "--fps", "0", "-o", str(tmp_path / "a.mp4"),
                          code=2)
    assert "fps must be a positive number, got 0.0" in err
    err = _one_line_error(capsys, tmp_path, "gen", "image", " ", *MODEL, "-o", png, code=2)
    assert "a prompt is empty" in err


def test_several_outputs_are_numbered_in_prompt_order():
    from lwm_cli.gen import output_paths

    assert output_paths("out.mp4", 1) == ["out.mp4"]
    assert output_paths("dir/out.mp4", 3) == ["dir/out-1.mp4", "dir/out-2.mp4", "dir/out-3.mp4"]
    assert output_paths("a.png", 12)[::11] == ["a-01.png", "a-12.png"]
