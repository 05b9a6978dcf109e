"""`lwm vqgan encode|decode`: a folder of images and a video with captions -> training lines that `lwm train`
trains on, an .npz of the same codes, a resumed run that skips what is done, decoded H.264 videos and
contact sheets, and bad inputs refused in one line with nothing half-written. In process, random:tiny
(32x32 frames -> 8x8 = 64 codes per frame, spread over the 8 fake devices)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess

import numpy as np
import pytest

from helpers import ROOT
from helpers import run_cli as _run
from lwm_core.vision import media

VQGAN = ("-m", "random:tiny")
FFMPEG = media._ffmpeg_exe()


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _leftovers(directory) -> list[str]:
    return [name for _, _, files in os.walk(directory) for name in files if ".lwm-tmp-" in name]


@pytest.fixture
def data(tmp_path):
    """clips/: four 32x32-ish images and two 6-frame videos, with captions.csv beside the folder."""
    rng = np.random.default_rng(0)
    clips = tmp_path / "clips"
    clips.mkdir()
    rows = ["path,caption"]
    for i in range(6):
        if i % 3 == 2:
            name = f"v{i}.mp4"
            media.write_video(str(clips / name), rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8))
            rows.append(f'clips/{name},"clip {i}, moving"')
        else:
            name = f"i{i}.png"
            media.write_image(str(clips / name), rng.integers(0, 256, (36, 32, 3), dtype=np.uint8))
            rows.append(f"clips/{name},picture {i}")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_encode_jsonl_trains_with_lwm_train(capsys, data):
    """The pipeline of the README: encode a captioned folder, then train a tiny vision model on it."""
    out = data / "train.jsonl"
    code, stdout, err = _run(capsys, "vqgan", "encode", str(data / "clips"), "--manifest", str(data / "captions.csv"),
                             *VQGAN, "--max-frames", "2", "-o", str(out))
    assert (code, stdout) == (0, f"{out}\n"), err
    assert "wrote" in err and "6 inputs, 8 frames" in err and "--set data.tokens_per_frame=64" in err
    lines = _lines(out)
    assert [(r["path"], r["caption"], r["fields"], len(r["vision"])) for r in lines] == [
        ("clips/i0.png", "picture 0", "[caption],vision", 64), ("clips/i1.png", "picture 1", "[caption],vision", 64),
        ("clips/i3.png", "picture 3", "[caption],vision", 64), ("clips/i4.png", "picture 4", "[caption],vision", 64),
        ("clips/v2.mp4", "clip 2, moving", "[caption],vision", 128),
        ("clips/v5.mp4", "clip 5, moving", "[caption],vision", 128)]
    assert all(0 <= c < 64 for r in lines for c in r["vision"])

    run_dir = data / "run"
    code, _, err = _run(capsys, "train", str(ROOT / "configs" / "cpu-tiny.toml"), "--run-dir", str(run_dir),
                        "--mesh", "1,1,1,1",
                        "--set", f"data.path={out}", "--set", "data.kind=vision_text", "--set",
                        "data.fields_from_example=fields", "--set", "data.tokens_per_frame=64", "--set",
                        "model.vision=true", "--set", "train.seq_len=256", "--set", "train.batch_size=2", "--set",
                        "train.steps=8", "--set", "train.log_every=1", "--set", "optimizer.warmup_steps=0",
                        "--set", "checkpoint.export=false")
    assert code == 0, err
    metrics = [m for m in _lines(run_dir / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, 9))
    for m in metrics:
        assert all(math.isfinite(m[k]) and m[k] > 0 for k in ("loss", "vision_loss", "text_loss"))
    # It learns: random init starts near log(vocab) (8448 vision ids); 8 steps on 6 examples bring the loss
    # down by a fifth (8.7 -> 7.1 on 2 cores), the last step the lowest.
    losses = [m["loss"] for m in metrics]
    assert metrics[0]["vision_loss"] > 0.9 * math.log(8448)
    assert losses[-1] < 0.85 * losses[0] and losses[-1] == min(losses), losses


def test_chat_lines_hold_the_exact_prompts_of_lwm_gen_and_lwm_chat(capsys, data):
    """--chat: per image "Generate an image of" -> it and image + question -> caption; per video also
    "Generate a video of" -> its frames, the image line its first frame. Through the training data pipeline,
    each line's tokens start with exactly the ids that lwm gen and lwm chat prompt with."""
    from lwm_core.data.config import DataConfig
    from lwm_core.data.process import process_example
    from lwm_core.prompts import END_OF_FRAME, END_OF_VISION, image_prompt, video_prompt, vision_chat_prompt
    from lwm_core.tokenizer import load_tokenizer

    out = data / "chat.jsonl"
    code, stdout, err = _run(capsys, "vqgan", "encode", "--manifest", str(data / "captions.csv"), *VQGAN,
                             "--max-frames", "3", "--chat", "-o", str(out))
    assert (code, stdout) == (0, f"{out}\n"), err
    lines = _lines(out)
    assert [(r["path"], r["task"], len(r["vision"])) for r in lines] == [
        ("clips/i0.png", "image", 64), ("clips/i0.png", "describe", 64),
        ("clips/i1.png", "image", 64), ("clips/i1.png", "describe", 64),
        ("clips/v2.mp4", "image", 64), ("clips/v2.mp4", "video", 192), ("clips/v2.mp4", "describe", 192),
        ("clips/i3.png", "image", 64), ("clips/i3.png", "describe", 64),
        ("clips/i4.png", "image", 64), ("clips/i4.png", "describe", 64),
        ("clips/v5.mp4", "image", 64), ("clips/v5.mp4", "video", 192), ("clips/v5.mp4", "describe", 192)]
    video = [r for r in lines if r["path"] == "clips/v2.mp4"]
    assert video[0]["vision"] == video[1]["vision"][:64] == video[2]["vision"][:64]  # the first frame
    tok = load_tokenizer()
    config = DataConfig(kind="vision_text", fields_from_example="fields", tokens_per_frame=64)
    for i, record in enumerate(lines):
        example = process_example(record, config, tok, line=i, where=f"line {i}")
        ids, loss = example.tokens.tolist(), example.loss_mask.tolist()
        codes = record["vision"]
        frames = [codes[k:k + 64] for k in range(0, len(codes), 64)]
        if record["task"] == "describe":
            prompt, mask = vision_chat_prompt(tok, record["question"].split("USER: ", 1)[1][:-1],
                                              [np.array(f) for f in frames])
            assert ids[:len(prompt)] == prompt and example.vision_mask.tolist()[:len(prompt)] == mask
            # the answer is the caption, then EOS: the only tokens with a loss
            answer = tok.encode(record["caption"]) + [tok.eos_id]
            assert ids[len(prompt):] == answer and loss == [0.0] * len(prompt) + [1.0] * len(answer)
            assert record["question"].split("USER: ", 1)[1].strip() in (
                "What happens in this video?", "Describe the video.", "What do you see in this video?",
                "What is in this image?", "Describe the image.", "What do you see in this image?")
        else:
            make = image_prompt if record["task"] == "image" else video_prompt
            prompt = tok.encode(make(record["caption"]))
            body = [c for k, f in enumerate(frames) for c in f + [END_OF_VISION if k == len(frames) - 1
                                                                   else END_OF_FRAME]]
            assert ids[:len(prompt) + len(body)] == prompt + body
            # no loss on the request; from `<vision>` on (the vision field, as LWM trained it) every token
            request = len(prompt) - len(tok.encode("<vision>"))
            assert loss[:request] == [0.0] * request and min(loss[request:]) == 1.0
    # --tasks: some of those lines, the same bytes
    videos = data / "videos.jsonl"
    code, _, err = _run(capsys, "vqgan", "encode", "--manifest", str(data / "captions.csv"), *VQGAN,
                        "--max-frames", "3", "--chat", "--tasks", "video,image", "-o", str(videos))
    assert code == 0, err
    assert videos.read_text().splitlines() == [x for x in out.read_text().splitlines()
                                               if json.loads(x)["task"] in ("image", "video")]


# imageio, the independent reader here, starts ffmpeg with a preexec_fn (a Python-level fork, which jax
# warns of once imported); lwm's own media code starts its ffmpeg without one.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_npz_holds_the_same_codes_and_decode_writes_a_playable_mp4(capsys, data):
    import imageio.v3 as iio

    jsonl, npz = data / "t.jsonl", data / "codes.npz"
    for out in (jsonl, npz):
        code, stdout, err = _run(capsys, "vqgan", "encode", str(data / "clips"), *VQGAN, "--max-frames", "3",
                                 "-o", str(out))
        assert (code, stdout) == (0, f"{out}\n"), err
    lines = _lines(jsonl)
    assert all("caption" not in r and r["fields"] == "vision" for r in lines)  # no manifest: no captions
    with np.load(npz) as codes:
        assert codes["keys"].tolist() == ["i0.png", "i1.png", "i3.png", "i4.png", "v2.mp4", "v5.mp4"]
        assert codes["paths"].tolist() == [r["path"] for r in lines] and set(codes["captions"].tolist()) == {""}
        meta = json.loads(str(codes["meta"]))
        assert meta["vqgan"] == "random:tiny" and meta["max_frames"] == 3 and meta["fingerprint"] == lines[0]["vqgan"]
        for key, line in zip(codes["keys"], lines):
            assert codes[key].dtype == np.int32 and codes[key].shape == ((3 if key.endswith(".mp4") else 1), 8, 8)
            assert codes[key].reshape(-1).tolist() == line["vision"]
        video_codes = codes["v2.mp4"]

    # The video's line and its .npz entry decode to the same H.264 yuv420p mp4 at --fps.
    from lwm_core import load_vqgan

    expected = media.to_uint8(load_vqgan("random:tiny").decode(video_codes))
    for source, pick in ((jsonl, ("--line", "5")), (npz, ("--key", "v2.mp4"))):
        mp4 = data / f"{source.stem}.mp4"
        code, stdout, err = _run(capsys, "vqgan", "decode", str(source), *pick, *VQGAN, "--fps", "8", "-o", str(mp4))
        assert (code, stdout) == (0, f"{mp4}\n"), err
        assert "wrote" in err and "3 frames of 32x32" in err and "8 fps" in err
        meta = iio.immeta(mp4, plugin="FFMPEG")
        assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 8.0
        frames = np.stack(list(iio.imiter(mp4, plugin="FFMPEG")))
        assert frames.shape == (3, 32, 32, 3)
        # yuv420p keeps brightness at full resolution (colour at half): the luma of every frame comes back
        # within a few levels (2.4 here; frames in another order are 27 apart).
        luma = np.array([0.299, 0.587, 0.114])
        assert np.abs(frames @ luma - expected @ luma).mean() < 6

    # --sheet: all frames on one image; a gif; a png of several frames needs --sheet.
    sheet = data / "sheet.png"
    assert _run(capsys, "vqgan", "decode", str(npz), "--key", "v5.mp4", *VQGAN, "--sheet", "-o", str(sheet))[0] == 0
    assert media.read_image(str(sheet)).shape == (66, 66, 3)  # 2x2 grid of 32x32 frames, 2-pixel gaps
    gif = data / "one.gif"
    assert _run(capsys, "vqgan", "decode", str(npz), *VQGAN, "-o", str(gif))[0] == 0  # the first entry
    assert media.read_video_frames(str(gif)).shape == (1, 32, 32, 3)
    code, _, err = _run(capsys, "vqgan", "decode", str(npz), "--key", "v5.mp4", *VQGAN, "-o", str(data / "x.png"))
    assert code == 1 and "3 frames for one image" in err and not (data / "x.png").exists()
    # a model's token stream (.npy), delimiters and all
    stream = np.concatenate([video_codes[0].ravel(), [8192], video_codes[1].ravel(), [8193]])
    np.save(data / "stream.npy", stream)
    png = data / "two.png"
    assert _run(capsys, "vqgan", "decode", str(data / "stream.npy"), *VQGAN, "--sheet", "-o", str(png))[0] == 0
    assert media.read_image(str(png)).shape == (32, 66, 3)


def test_a_rerun_resumes_after_a_partial_run_and_force_starts_afresh(capsys, data):
    out = data / "train.jsonl"
    args = ("vqgan", "encode", str(data / "clips"), "--manifest", str(data / "captions.csv"), *VQGAN,
            "--max-frames", "2", "-o", str(out))
    assert _run(capsys, *args)[0] == 0
    whole = out.read_text()
    first_two = "".join(whole.splitlines(keepends=True)[:2])
    out.write_text(first_two + whole.splitlines()[2][:50])  # as a kill in the middle of the third line leaves
    code, stdout, err = _run(capsys, *args)
    assert (code, stdout) == (0, f"{out}\n"), err
    assert "wrote" in err and "4 inputs, 6 frames" in err and "2 inputs already in it" in err
    assert out.read_text() == whole  # the same lines, each once, the first two untouched
    code, _, err = _run(capsys, *args)
    assert code == 0 and "nothing to do: all 6 inputs are in" in err and out.read_text() == whole
    code, _, err = _run(capsys, *args, "--force")
    assert code == 0 and "6 inputs, 8 frames" in err and out.read_text() == whole
    # lines of another VQGAN are not mixed in
    code, _, err = _run(capsys, *args[:-4], "-m", "random:tiny", "--set", "num_embeddings=128", "-o", str(out))
    assert code == 1 and err.count("\n") == 1 and "encoded by another VQGAN" in err
    # nor are the codes decoded by one
    code, _, err = _run(capsys, "vqgan", "decode", str(out), "-m", "random:tiny", "--set", "num_embeddings=128",
                        "-o", str(data / "x.mp4"))
    assert code == 1 and "decode with the VQGAN that encoded it" in err and not (data / "x.mp4").exists()


def test_an_unreadable_input_keeps_the_whole_lines_before_it(capsys, data):
    clip = data / "clips" / "v5.mp4"
    clip.write_bytes(clip.read_bytes()[:300])  # cut: ffmpeg cannot read its stream
    out = data / "train.jsonl"
    code, stdout, err = _run(capsys, "vqgan", "encode", str(data / "clips"), *VQGAN, "--batch-size", "8",
                             "-o", str(out))
    # the progress lines of the inputs done, then the error, one line
    assert (code, stdout) == (1, "") and err.splitlines()[-1].startswith("error: video ") and "v5.mp4" in err
    assert all(line.startswith("encode ") for line in err.splitlines()[:-1])
    assert [r["path"] for r in _lines(out)] == ["clips/i0.png", "clips/i1.png", "clips/i3.png", "clips/i4.png",
                                                "clips/v2.mp4"]
    assert out.read_text().endswith("\n") and not _leftovers(data)


def _bad(data):
    clips = data / "clips"
    empty = data / "empty"
    empty.mkdir()
    # a whole header (+faststart), the frames cut off halfway
    media.write_video(str(data / "cut.mp4"), np.random.default_rng(5).integers(0, 256, (30, 32, 32, 3), np.uint8))
    (data / "cut.mp4").write_bytes((data / "cut.mp4").read_bytes()[: (data / "cut.mp4").stat().st_size // 2])
    subprocess.run([FFMPEG, "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "32x32", "-i", "pipe:0",
                    "-c:v", "libx264", str(data / "none.mp4")], input=b"", check=True)
    (data / "notes.txt").write_text("x")
    (data / "no_caption.csv").write_text("path,text\nclips/i0.png,x\n")
    return {
        "truncated video": ([str(data / "cut.mp4")], "cannot read video .*cut.mp4: .*damaged or truncated"),
        "zero-frame video": ([str(data / "none.mp4")], "video .*none.mp4 has no frames"),
        "unsupported extension": ([str(data / "notes.txt")], "notes.txt: unsupported extension '.txt'"),
        "missing vqgan": ([str(clips), "-m", str(data / "no-vqgan")], "VQGAN .*no-vqgan' is not a file, a directory"),
        "empty folder": ([str(empty)], "folder .*empty holds no images or videos"),
        "no inputs": ([], "no inputs: name image or video files"),
        "manifest without caption": ([str(clips), "--manifest", str(data / "no_caption.csv")],
                                     "no_caption.csv has no 'caption' column"),
        "captions in fields": ([str(clips), "--fields", "[caption],vision"], "inputs have no captions"),
        "fields of an npz": ([str(clips), "--fields", "vision", "-o", str(data / "out.npz")], "an .npz has no lines"),
        "chat lines of an npz": ([str(clips), "--manifest", str(data / "captions.csv"), "--chat", "-o",
                                  str(data / "out.npz")], "--chat says what the lines .* an .npz has no lines"),
        "chat without captions": ([str(clips), "--chat"], "--chat lines pair each input with its caption"),
        "chat and fields": ([str(clips), "--manifest", str(data / "captions.csv"), "--chat", "--fields", "vision"],
                            "--chat writes its own fields"),
        "tasks without chat": ([str(clips), "--tasks", "video"], "--tasks video picks among the lines of --chat"),
        "unknown task": ([str(clips), "--manifest", str(data / "captions.csv"), "--chat", "--tasks", "video,caption"],
                         "unknown chat task 'caption': choose from image, video, describe, unconditional"),
        "output extension": ([str(clips), "-o", str(data / "out.json")], "unsupported extension '.json'"),
        "missing output folder": ([str(clips), "-o", str(data / "no" / "out.npz")], "directory .*no does not exist"),
    }


def test_bad_inputs_are_one_line_and_write_nothing(capsys, data):
    for what, (args, match) in _bad(data).items():
        if "-m" not in args:
            args = [*args, *VQGAN]
        if "-o" not in args:
            args = [*args, "-o", str(data / "out.jsonl")]
        code, stdout, err = _run(capsys, "vqgan", "encode", *args)
        assert (code, stdout) == (1, ""), what
        assert err.count("\n") == 1 and err.startswith("error: "), (what, err)
        assert re.search(match, err), (what, err)
        assert not [p for p in os.listdir(data) if p.startswith("out")] and not _leftovers(data), what
    # usage errors: exit 2, one line
    for args in (["encode", str(data / "clips"), "-o", str(data / "o.jsonl")],  # no VQGAN
                 ["encode", str(data / "clips"), *VQGAN, "--max-frames", "0", "-o", str(data / "o.jsonl")],
                 ["decode", str(data / "stream.npy"), *VQGAN, "--fps", "0", "-o", str(data / "o.mp4")]):
        code, stdout, err = _run(capsys, "vqgan", *args)
        assert (code, stdout) == (2, "") and err.count("\n") == 1, err
    code, _, err = _run(capsys, "vqgan", "encode", str(data / "clips"), "-o", str(data / "o.jsonl"))
    assert "name the VQGAN, e.g. -m LargeWorldModel/LWM-Chat-1M-Jax" in err
