"""`lwm chat --image/--video` (vision chat) on random:tiny with vision=true and its random VQGAN (64x64 pixels,
16x16 codes): the exact LWM prompt (text, `<vision>`, 257 tokens a frame, `</vision>`, ` ASSISTANT:`) with
the VQGAN's codes of the files, read off the ids and masks handed to `LWM.stream`; piped questions; LWM's
sampling defaults; follow-up turns after the first question; the REPL's /image and /video in a terminal;
and one-line refusals, before the model loads, of what cannot work.

The CLI runs in-process (one jax import, compiled programs shared between runs), except the REPL, which
needs a terminal.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import LOADED, ROOT

MODEL = ["-m", "random:tiny", "--set", "vision=true"]
QUESTION = "What is in these?"
SYSTEM = "You are a helpful assistant."


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # no persistent cache from an in-process run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An image (100x80), a 6-frame video (frame i a flat grey of level 40 i), and files that cannot be read."""
    from PIL import Image

    from lwm_core.vision import media

    d = tmp_path_factory.mktemp("media")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(d / "a.png")
    frames = np.repeat(np.arange(6, dtype=np.uint8)[:, None, None, None] * 40, 48 * 64 * 3).reshape(6, 48, 64, 3)
    media.write_video(str(d / "clip.mp4"), frames, fps=4)
    noise = d / "noise.mp4"  # cut in half: the header is whole (+faststart), the frames stop halfway
    media.write_video(str(noise), np.random.default_rng(2).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8))
    (d / "cut.mp4").write_bytes(noise.read_bytes()[:noise.stat().st_size // 2])
    (d / "noise.png").write_bytes(np.random.default_rng(1).bytes(2000))
    (d / "notes.txt").write_text("hi")
    subprocess.run([media._ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48", "-i",
                    "pipe:0", "-c:v", "libx264", str(d / "empty.mp4")], input=b"", check=True)
    return {name: str(d / name) for name in ("a.png", "clip.mp4", "cut.mp4", "noise.png", "notes.txt", "empty.mp4")}


@pytest.fixture(scope="module")
def tokenizer():
    from lwm_core.loading import resolve_spec

    return resolve_spec("random:tiny")[2]


@pytest.fixture(scope="module")
def library_codes(files):
    """The VQGAN codes the library gives for a.png and clip.mp4 at --max-frames 2 (frames 0 and 5), with
    the VQGAN lwm gen pairs with random models, on chat's default mesh."""
    import lwm_core
    from lwm_core.generate.vision import RANDOM_VQGAN
    from lwm_core.vision import media

    spec, config = RANDOM_VQGAN
    vqgan = lwm_core.load_vqgan(spec, config=config, mesh="1,-1,1,1", seed=0)
    image = vqgan.encode(media.load_media(files["a.png"], resolution=64))
    video = vqgan.encode(media.load_media(files["clip.mp4"], resolution=64, max_frames=2))
    return np.concatenate([image, video])  # (3, 16, 16)


def _run(capsys, monkeypatch, *args, stdin: str = "") -> tuple[int, str, str]:
    from lwm_cli.main import main

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.fixture
def streams(monkeypatch):
    """The (ids, keyword arguments) of every `LWM.stream` call."""
    from lwm_core.api import LWM

    calls = []
    real = LWM.stream

    def stream(self, ids, max_new_tokens, **kwargs):
        calls.append((list(ids), kwargs))
        return real(self, ids, max_new_tokens, **kwargs)

    monkeypatch.setattr(LWM, "stream", stream)
    return calls


def _split(tokenizer, ids: list[int], question: str) -> tuple[list[int], np.ndarray, list[int]]:
    """LWM's vision chat prompt -> (head, the frames' 257 tokens each (F, 257), tail), checking the text."""
    head = tokenizer.encode(f"<s>{SYSTEM} USER: {question}\n") + tokenizer.encode("<vision>")
    tail = tokenizer.encode("</vision>") + tokenizer.encode(" ASSISTANT:")
    assert head[0] == tokenizer.bos_id
    assert ids[:len(head)] == head and ids[len(ids) - len(tail):] == tail
    body = ids[len(head):len(ids) - len(tail)]
    assert len(body) % 257 == 0
    return head, np.asarray(body).reshape(-1, 257), tail


def test_image_and_video_make_lwms_prompt_with_the_vqgans_codes(capsys, monkeypatch, files, tokenizer,
                                                                 library_codes, streams):
    code, out, err = _run(capsys, monkeypatch, "chat", *MODEL, "--video", files["clip.mp4"], "--image", files["a.png"],
                          "--max-frames", "2", "-t", "0", "-n", "4", "--json", QUESTION)
    assert code == 0, err
    reply = json.loads(out)
    # the images first, then the videos; a video's frames are at most --max-frames
    assert reply["media"] == [{"path": files["a.png"], "kind": "image", "frames": 1},
                              {"path": files["clip.mp4"], "kind": "video", "frames": 2}]
    assert reply["completion_tokens"] == 4 and reply["finish_reason"] == "length"
    [(ids, kwargs)] = streams
    assert reply["prompt_tokens"] == len(ids)
    head, frames, tail = _split(tokenizer, ids, QUESTION)
    np.testing.assert_array_equal(frames[:, :256], library_codes.reshape(3, 256))
    assert frames[:, 256].tolist() == [8192, 8192, 8193]  # END_OF_FRAME after each frame, END_OF_VISION last
    assert kwargs["vision_masks"] == [False] * len(head) + [True] * 3 * 257 + [False] * len(tail)
    assert (kwargs["temperature"], kwargs["top_k"]) == (0.0, 50)


def test_a_piped_question_about_a_video_samples_with_lwms_defaults(capsys, monkeypatch, files, tokenizer, streams):
    document = "Frames of a test clip.\n"
    code, out, err = _run(capsys, monkeypatch, "chat", *MODEL, "--video", files["clip.mp4"], "--max-frames", "3",
                          "-n", "3", "Describe it.", stdin=document)
    assert code == 0, err
    assert out.endswith("\n") and err == ""
    [(ids, kwargs)] = streams
    _, frames, _ = _split(tokenizer, ids, "Frames of a test clip.\n\nDescribe it.")  # stdin, a blank line, the argument
    assert len(frames) == 3
    assert (kwargs["temperature"], kwargs["top_k"], kwargs["top_p"]) == (0.2, 50, 1.0)


def test_follow_up_turns_come_after_the_first_question_and_its_frames(tokenizer):
    from lwm_cli.chat import Media, Sampling, Session, run_command
    from lwm_core.prompts import vision_chat_prompt

    codes = (np.arange(3 * 256) * 7 % 8192).reshape(3, 16, 16)
    replies = iter(["It is a cat.", "Grey.", "It sleeps.", "A dog."])
    seen = []

    def stream(ids, max_new_tokens, **kwargs):
        seen.append((list(ids), kwargs.get("vision_masks")))
        yield from tokenizer.encode(next(replies))

    model = SimpleNamespace(tokenizer=tokenizer, stream=stream,
                            config=SimpleNamespace(vision=True, max_sequence_length=1024))
    vision = SimpleNamespace(model="random:tiny", read=lambda path, kind: np.zeros((1, 64, 64, 3), np.float32),
                             encode=lambda items: [Media(path, kind, codes[2:]) for path, kind, _ in items],
                             check=lambda: SimpleNamespace(codes_per_side=16))  # the VQGAN's grid
    first = [Media("a.png", "image", codes[:1]), Media("clip.mp4", "video", codes[1:2])]
    session = Session(model=model, sampling=Sampling(8, 0.2, 50, 1.0, 0), vision=vision, attached=list(first))

    reply = session.ask("What is it?", lambda text: None, catch_interrupt=False)
    lwm_ids, lwm_mask = vision_chat_prompt(tokenizer, "What is it?", codes[:2])
    assert seen[0] == (lwm_ids, lwm_mask)  # the first turn is exactly LWM's prompt
    assert reply.media == first and session.media == first and session.attached == []
    session.ask("What colour?", lambda text: None, catch_interrupt=False)
    session.ask("And then?", lambda text: None, catch_interrupt=False)
    # later turns follow as text chat writes them, after the first question and its frames
    for (ids, mask), text in zip(seen[1:], [" It is a cat.</s> USER: What colour? ASSISTANT:",
                                            " It is a cat.</s> USER: What colour? ASSISTANT: Grey.</s> USER: And "
                                            "then? ASSISTANT:"]):
        assert ids == lwm_ids + tokenizer.encode(text)
        assert mask == lwm_mask + [False] * (len(ids) - len(lwm_ids))
    said = []
    run_command(session, "/show", said.append)
    assert said[-1].endswith("; 3 turns in the conversation, about a.png (image, 1 frame), clip.mp4 (video, 1 frame)")
    assert run_command(session, "/set system Be brief.", said.append) and session.system is None
    assert said[-1].startswith("vision chat uses LWM's system prompt")

    # media attached later start a new conversation about them
    run_command(session, "/video '~/my clip.mp4'", said.append)
    home_clip = os.path.expanduser("~/my clip.mp4")  # one shell word, quoted as a terminal pastes a dropped file
    assert said[-1] == (f"attached {home_clip} (video, 1 frame); asking about them starts a new conversation (media "
                        f"go in a conversation's first question)")
    run_command(session, "/show", said.append)
    assert said[-1].endswith(f"; attached for the next question: {home_clip} (video, 1 frame)")
    session.ask("Now?", lambda text: None, catch_interrupt=False)
    assert seen[-1] == vision_chat_prompt(tokenizer, "Now?", codes[2:])
    assert session.history == [("Now?", "A dog.")] and [m.path for m in session.media] == [home_clip]
    run_command(session, "/clear", said.append)
    assert said[-1] == "cleared the conversation and its images and videos"
    assert (session.history, session.media, session.attached) == ([], [], [])
    assert session.prompt("hi")[1:] == (None, [])  # a text chat again


def test_the_repl_refuses_media_it_cannot_take(capsys, tokenizer):
    from lwm_cli.chat import Sampling, Session, run_command

    vision = SimpleNamespace(model="random:tiny")
    text_only = SimpleNamespace(tokenizer=tokenizer, config=SimpleNamespace(vision=False, max_sequence_length=1024))
    said = []
    cases = [(Session(model=text_only, sampling=Sampling(8, 0.2, 50, 1.0, 0), vision=vision), "/image a.png",
              "error: model random:tiny is text-only (config vision=false); vision chat needs a vision model such as "
              "LargeWorldModel/LWM-Chat-1M-Jax (random:tiny --set vision=true to try --image out)\n"),
             (Session(model=text_only, sampling=Sampling(8, 0.2, 50, 1.0, 0), raw=True), "/video a.mp4",
              "error: --raw completes plain text; restart without --raw to ask about images and videos\n"),
             (Session(model=SimpleNamespace(config=SimpleNamespace(vision=True)), sampling=Sampling(8, 0.2, 50, 1.0, 0),
                      vision=vision, system="Be brief."), "/image a.png",
              "error: vision chat uses LWM's system prompt, as the models were tuned; /set system with no text "
              "restores it\n")]
    for session, line, error in cases:
        assert run_command(session, line, said.append)
        assert capsys.readouterr().err == error and session.attached == []
    run_command(cases[0][0], "/image", said.append)
    assert said == ["usage: /image PATH: attach an image to the next question"]


# pexpect forks this (jax-using, so multi-threaded) process; the child execs at once.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_repl_attaches_images_and_videos_in_a_terminal(cli_env, files, tokenizer):
    pexpect = pytest.importorskip("pexpect")
    from lwm_core.prompts import vision_chat_prompt

    def prompt_tokens(question, n_frames):
        return len(vision_chat_prompt(tokenizer, question, [np.zeros(256, np.int32)] * n_frames)[0])

    png, mp4 = files["a.png"], files["clip.mp4"]
    child = pexpect.spawn(sys.executable, ["-m", "lwm_cli", "chat", *MODEL, "-n", "4", "-t", "0", "--json",
                                           "--max-frames", "2", "--image", png],
                          env=cli_env, cwd=str(ROOT), encoding="utf-8", timeout=LOADED, dimensions=(40, 400))

    def reply() -> dict:
        child.expect(r"(\{.*\})\r\n")
        return json.loads(child.match.group(1))

    try:
        child.expect(re.escape(f"attached for the first question: {png} (image, 1 frame)"))
        child.expect(">>> ")
        child.sendline("What is this?")
        first = reply()
        assert first["prompt_tokens"] == prompt_tokens("What is this?", 1)
        assert first["media"] == [{"path": png, "kind": "image", "frames": 1}]
        child.expect(">>> ")
        child.sendline("Really?")
        follow_up = reply()  # the image stays in the first question; the turns follow
        assert follow_up["media"] == first["media"] and follow_up["prompt_tokens"] > first["prompt_tokens"]
        child.expect(">>> ")

        child.sendline(f"/video {mp4}")
        child.expect(re.escape(f"attached {mp4} (video, 2 frames); asking about them starts a new conversation"))
        child.sendline(f"/image {png}")
        child.expect(re.escape(f"attached {png} (image, 1 frame); 2 files, 3 frames for the next question"))
        child.sendline("/image /nonexistent/b.png")
        child.expect(re.escape("error: media file /nonexistent/b.png does not exist; check the path"))
        child.sendline("And these?")
        both = reply()  # in the order attached, in a new conversation
        assert [m["path"] for m in both["media"]] == [mp4, png]
        assert both["prompt_tokens"] == prompt_tokens("And these?", 3)
        child.sendline("/show")
        child.expect(re.escape(f"1 turn in the conversation, about {mp4} (video, 2 frames), {png} (image, 1 frame)"))
        child.sendline("/clear")
        child.expect("cleared the conversation and its images and videos")
        child.sendline("hello")
        assert "media" not in reply()
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


# ------------------------------------------------------------------------------------------ refusals


def _refused(capsys, monkeypatch, *args, code=1) -> str:
    got, stdout, err = _run(capsys, monkeypatch, *args)
    assert got == code and stdout == "" and err.count("\n") == 1, err
    return err


def test_what_cannot_work_is_refused_in_one_line_before_the_model_loads(capsys, monkeypatch, files, tmp_path):
    import lwm_cli.chat
    import lwm_core

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    model_dir = tmp_path / "model"  # a checkpoint without a `vqgan` beside its weights
    lwm_core.load_model("random:tiny", mesh="1,1,1,1", overrides={"vision": True}).save(str(model_dir))
    monkeypatch.setattr(lwm_cli.chat, "load", load)
    png, mp4 = files["a.png"], files["clip.mp4"]

    def refused(*args, code=1):
        return _refused(capsys, monkeypatch, "chat", *args, "q", code=code)

    assert refused("-m", "random:tiny", "--image", png) == (
        "error: model random:tiny is text-only (config vision=false); vision chat needs a vision model such as "
        "LargeWorldModel/LWM-Chat-1M-Jax (random:tiny --set vision=true to try --image out)\n")
    assert refused("-m", str(model_dir), "--image", png).startswith(
        f"error: no VQGAN beside the model {model_dir} (no `vqgan` or `vqgan/` in {model_dir}); pass one with "
        f"--vqgan")
    assert f"cannot read image {files['noise.png']}: not a PNG" in refused(*MODEL, "--image", files["noise.png"])
    assert f"cannot read video {files['cut.mp4']}: " in refused(*MODEL, "--video", files["cut.mp4"])
    assert f"video {files['empty.mp4']} has no frames" in refused(*MODEL, "--video", files["empty.mp4"])
    assert "unsupported extension '.txt'; supported: images" in refused(*MODEL, "--image", files["notes.txt"])
    assert refused(*MODEL, "--image", mp4) == (f"error: {mp4} is a video; ask about it with --video (in the "
                                               f"interactive chat: /video)\n")
    assert refused(*MODEL, "--video", png, "--image", png).startswith(f"error: {png} is an image; ask about it with")
    # 6 frames (--max-frames 8) and the question: 1576 tokens; the tiny model's context is 1024
    assert refused(*MODEL, "--video", mp4) == (
        "error: 6 frames of 257 tokens and the question make a prompt of 1576 tokens, which leaves no room for a "
        "reply in the model's context of 1024 tokens; use fewer frames (--max-frames) or media\n")
    # 3 frames: 805 tokens, so 219 are left for the reply unless -n asks for more
    assert refused(*MODEL, "--video", mp4, "--max-frames", "3", "-n", "256") == (
        "error: 3 frames of 257 tokens and the question make a prompt of 805 tokens; with 256 new tokens that exceeds "
        "the model's context of 1024 tokens; use fewer frames (--max-frames) or media, or a lower --max-new-tokens\n")
    # usage errors: exit 2
    assert "vision chat uses LWM's system prompt" in refused(*MODEL, "--image", png, "--system", "Be brief.", code=2)
    assert "--raw completes plain text" in refused(*MODEL, "--video", mp4, "--raw", code=2)
    assert "Invalid value for '--max-frames'" in refused(*MODEL, "--video", mp4, "--max-frames", "0", code=2)
