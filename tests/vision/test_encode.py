"""Encoding many inputs (lwm_core/vision/encode.py): discovery of files, folders, globs and manifests;
batches that span inputs and give each input the codes it gets alone; training lines that lwm_core.data
reads as vision-text examples; a resumable JSONL output; codes files read back and split into frames."""

import json
import os

import numpy as np
import pytest

from lwm_core.data import DataConfig, JsonlIndex, process_example
from lwm_core.errors import LWMError
from lwm_core.tokenizer import load_tokenizer
from lwm_core.vision import encode as enc
from lwm_core.vision import media


@pytest.fixture(scope="module")
def vqgan():
    """random:tiny: 32x32 frames -> 8x8 codes of 64; 4 frames per compiled call."""
    from lwm_core import load_vqgan

    return load_vqgan("random:tiny", mesh="1,1,1,1", batch_size=4)


def one_line(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(LWMError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def noise(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """clips/: a.png, c.mp4 (5 frames), sub/b.jpg, and what a folder also holds (notes.txt, a hidden
    ._a.png resource fork, a .hidden folder), with captions.csv beside it."""
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    (clips / ".hidden").mkdir()
    media.write_image(str(clips / "a.png"), noise(0, (40, 48, 3)))
    media.write_image(str(clips / "sub" / "b.jpg"), noise(1, (32, 32, 3)))
    media.write_video(str(clips / "c.mp4"), noise(2, (5, 36, 36, 3)))
    (clips / "notes.txt").write_text("not media")
    (clips / "._a.png").write_bytes(b"resource fork")
    media.write_image(str(clips / ".hidden" / "x.png"), noise(3, (8, 8, 3)))
    (tmp_path / "captions.csv").write_text('path,caption\nclips/a.png,"a cat, asleep"\nclips/sub/b.jpg,a dog\n'
                                           "clips/c.mp4,a clip\n")
    return clips


# ----- inputs ---------------------------------------------------------------------------------------------------


def test_folders_files_and_globs_expand_to_media_once_in_order(folder):
    items = enc.find_media([str(folder)])
    assert [i.name for i in items] == ["a.png", "c.mp4", "sub/b.jpg"]  # sorted walk, hidden names skipped
    assert [i.path for i in items] == [str(folder / n) for n in ("a.png", "c.mp4", "sub/b.jpg")]
    assert all(i.caption is None for i in items)
    # A quoted glob is expanded here; what it sweeps up besides media is left out; each file once.
    items = enc.find_media([str(folder / "**" / "*"), str(folder / "a.png")])
    assert [i.name for i in items] == ["a.png", "c.mp4", "sub/b.jpg"]
    items = enc.find_media([str(folder / "sub" / "b.jpg"), str(folder / "*.mp4")])
    assert [i.name for i in items] == ["sub/b.jpg", "c.mp4"]  # named from the common folder
    assert [i.name for i in enc.find_media([str(folder / "c.mp4")])] == ["c.mp4"]


def test_a_manifest_gives_captions_or_the_inputs(folder):
    manifest = str(folder.parent / "captions.csv")
    items = enc.find_media([str(folder)], manifest)
    assert [(i.name, i.caption) for i in items] == [("a.png", "a cat, asleep"), ("c.mp4", "a clip"),
                                                    ("sub/b.jpg", "a dog")]
    alone = enc.find_media([], manifest)  # its rows, in its order
    assert [(i.name, i.caption) for i in alone] == [("a.png", "a cat, asleep"), ("sub/b.jpg", "a dog"),
                                                    ("c.mp4", "a clip")]
    # JSONL, relative to its own folder; a file with two captions is two inputs with distinct names
    jsonl = folder / "sub" / "more.jsonl"
    jsonl.write_text('{"path": "../a.png", "caption": "one"}\n\n{"path": "../a.png", "caption": "two"}\n')
    assert [(i.name, i.caption) for i in enc.find_media([], str(jsonl))] == [("a.png", "one"), ("a.png#2", "two")]
    # only the inputs named are encoded; rows of other files are ignored
    assert [i.caption for i in enc.find_media([str(folder / "c.mp4")], manifest)] == ["a clip"]


@pytest.mark.parametrize("make, match", [
    (lambda d: [str(d / "notes.txt")], r"input .*notes.txt: unsupported extension '.txt'; images .png"),
    (lambda d: [str(d / "nope.mp4")], r"input .*nope.mp4 does not exist"),
    (lambda d: [str(d / "*.webm")], r"\*.webm matches no images or videos"),
    (lambda d: [str(d / "empty")], r"folder .*empty holds no images"),
    (lambda d: [], r"no inputs: name image or video files"),
])
def test_bad_inputs_are_one_line(folder, make, match):
    (folder / "empty").mkdir()
    one_line(enc.find_media, make(folder), match=match)


@pytest.mark.parametrize("name, text, match", [
    ("m.csv", "file,caption\na.png,x\n", r"manifest .*m.csv has no 'path' column \(its header: file,caption\)"),
    ("m.csv", "path\nclips/a.png\n", r"has no 'caption' column"),
    ("m.csv", 'path,caption\nclips/a.png,x,y\n', r"m.csv line 2: 2 columns expected"),
    ("m.jsonl", '{"path": "clips/a.png"}\n', r"m.jsonl line 1 has no 'caption' \(its keys: path\)"),
    ("m.jsonl", '{"path": "clips/a.png", "caption": 3}\n', r"line 1: caption 3 is not a string"),
    ("m.jsonl", "[1]\n", r"line 1 holds a JSON list"),
    ("m.jsonl", "", r"m.jsonl has no rows"),
    ("m.jsonl", '{"path": "clips/gone.mp4", "caption": "x"}\n', r"line 1: .*gone.mp4 does not exist"),
    ("m.txt", "", r"manifest .*m.txt: unsupported extension '.txt'"),
])
def test_bad_manifests_are_one_line(folder, name, text, match):
    (folder.parent / name).write_text(text)
    one_line(enc.find_media, [], str(folder.parent / name), match=match)


def test_an_input_without_a_manifest_row_is_refused(folder):
    (folder.parent / "m.csv").write_text("path,caption\nclips/a.png,x\n")
    one_line(enc.find_media, [str(folder)], str(folder.parent / "m.csv"),
             match=r"c.mp4 has no row in manifest .*m.csv \(2 inputs without one\)")


# ----- encoding -------------------------------------------------------------------------------------------------


def test_batches_span_inputs_and_give_each_the_codes_it_gets_alone(vqgan, monkeypatch):
    frames = {f"x{i}.png": np.random.default_rng(i).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)
              for i, n in enumerate([1, 3, 1, 1, 6, 1])}  # 13 frames
    items = [enc.MediaItem(name, None, name) for name in frames]
    alone = {name: vqgan.encode(x) for name, x in frames.items()}
    calls = []
    real = vqgan.encode
    monkeypatch.setattr(vqgan, "encode", lambda x: calls.append(len(x)) or real(x))
    batches = list(enc.encode_items(vqgan, items, read=lambda item: frames[item.name], readers=2))
    # Whole batches of the VQGAN's 4 frames (1+3, then 1+1+6 = 8 read before the next check), the rest last.
    assert calls == [4, 8, 1]
    out = [pair for batch in batches for pair in batch]
    assert [item.name for item, _ in out] == list(frames)
    for item, codes in out:
        assert codes.dtype == np.int32 and codes.shape == (len(frames[item.name]), 8, 8)
        np.testing.assert_array_equal(codes, alone[item.name])


def test_an_unreadable_input_raises_after_the_inputs_before_it(vqgan):
    items = [enc.MediaItem(f"x{i}", None, f"x{i}") for i in range(4)]

    def read(item):
        if item.name == "x2":
            raise LWMError("cannot read video x2: damaged")
        return np.zeros((1, 32, 32, 3), np.float32)

    got = []
    with pytest.raises(LWMError, match="cannot read video x2"):
        for batch in enc.encode_items(vqgan, items, read=read):
            got += [item.name for item, _ in batch]
    assert got == ["x0", "x1"]


def test_real_files_encode_at_the_vqgans_resolution(vqgan, folder):
    items = enc.find_media([str(folder)])
    out = dict((item.name, codes) for batch in enc.encode_items(vqgan, items, max_frames=3) for item, codes in batch)
    assert {k: v.shape for k, v in out.items()} == {"a.png": (1, 8, 8), "c.mp4": (3, 8, 8), "sub/b.jpg": (1, 8, 8)}
    pixels = media.load_media(str(folder / "c.mp4"), resolution=32, max_frames=3)
    np.testing.assert_array_equal(out["c.mp4"], vqgan.encode(pixels))


def test_training_lines_are_vision_text_examples(vqgan, tmp_path):
    """What lwm_core.data makes of a line: <vision> frame 8192 frame 8193 </vision> over the codes as they
    were encoded, vision mask on codes and delimiters, the caption as text before it."""
    codes = np.arange(2 * 64, dtype=np.int32).reshape(2, 8, 8) % 64
    item = enc.MediaItem(str(tmp_path / "clips" / "v.mp4"), "a red ball", "v.mp4")
    fields = enc.check_fields([], captioned=True)
    line = enc.jsonl_line(item, codes, base=str(tmp_path), fields=fields, fingerprint="sha256:0")
    (tmp_path / "t.jsonl").write_text(line)
    record = JsonlIndex(str(tmp_path / "t.jsonl")).read(0)
    assert record == {"path": "clips/v.mp4", "caption": "a red ball", "fields": "[caption],vision",
                      "vqgan": "sha256:0", "vision": codes.reshape(-1).tolist()}
    tok = load_tokenizer()
    config = DataConfig(kind="vision_text", fields_from_example="fields", tokens_per_frame=64)
    ex = process_example(record, config, tok, line=0, where="t.jsonl:1")
    vision = ex.tokens[ex.vision_mask]
    np.testing.assert_array_equal(vision, np.concatenate([codes[0].ravel(), [8192], codes[1].ravel(), [8193]]))
    caption = tok.encode("a red ball")
    start = 1 + len(caption)  # BOS, caption (no loss), then <vision>
    assert ex.tokens[1:start].tolist() == caption and not ex.loss_mask[:start].any()
    assert ex.vision_mask.sum() == 2 * 65 and ex.loss_mask[ex.vision_mask].all()
    # LWM's 256 codes per frame: the same line is 64 codes short of a frame
    with pytest.raises(LWMError, match="not a positive multiple of data.tokens_per_frame = 256"):
        process_example(record, DataConfig(kind="vision_text", fields_from_example="fields"), tok, line=0, where="t")


def test_one_input_in_ten_also_trains_the_unconditional_prompt(tmp_path):
    """Caption dropout for classifier-free guidance: about a tenth of the inputs (a hash of path and caption,
    the same on every run) get a line of their frames alone, whose tokens are exactly the unconditional
    prompt that guidance runs (`<s><vision>`) and then the frames, all with a loss."""
    from lwm_core.generate.vision import _text
    from lwm_core.prompts import UNCONDITIONAL

    codes = np.arange(2 * 64, dtype=np.int32).reshape(2, 8, 8) % 64
    items = [enc.MediaItem(str(tmp_path / f"v{i}.mp4"), f"a red ball {i}", f"v{i}.mp4") for i in range(200)]
    lines = {item.name: [json.loads(x) for x in enc.chat_lines(item, codes, base=str(tmp_path), fingerprint="f")]
             for item in items}
    chosen = [name for name, records in lines.items() if records[-1]["task"] == "unconditional"]
    assert 10 <= len(chosen) <= 30  # ~20 of 200
    again = [json.loads(x) for x in enc.chat_lines(items[0], codes, base=str(tmp_path), fingerprint="f")]
    assert again == lines[items[0].name]
    record = lines[chosen[0]][-1]
    assert [r["task"] for r in lines[chosen[0]]] == ["image", "video", "describe", "unconditional"]
    assert record["fields"] == "vision" and record["vision"] == codes.reshape(-1).tolist()
    tok = load_tokenizer()
    config = DataConfig(kind="vision_text", fields_from_example="fields", tokens_per_frame=64)
    ex = process_example(record, config, tok, line=0, where="t")
    prompt = _text(tok, UNCONDITIONAL)[0]
    assert ex.tokens[:len(prompt)].tolist() == prompt
    body = ex.tokens[len(prompt):len(prompt) + 130].tolist()
    assert body == codes[0].ravel().tolist() + [8192] + codes[1].ravel().tolist() + [8193]
    assert ex.loss_mask[len(prompt) - 1:].all()  # from the <vision> pieces on, as a generation line


def test_fields_name_only_what_the_lines_hold():
    assert enc.check_fields([], captioned=False) == "vision"
    assert enc.check_fields(["vision,caption", "[caption],vision"], captioned=True) == ["vision,caption",
                                                                                       "[caption],vision"]
    one_line(enc.check_fields, ["[caption],vision"], captioned=False, match="inputs have no captions")
    one_line(enc.check_fields, ["[question],vision"], captioned=True, match="name 'question'; the lines hold only")
    one_line(enc.check_fields, ["caption"], captioned=True, match="no vision field")
    one_line(enc.check_fields, ["[caption,vision"], captioned=True, match="unbalanced bracket")


def test_the_fingerprint_tells_vqgans_apart(vqgan):
    from lwm_core import load_vqgan

    fp = enc.vqgan_fingerprint(vqgan)
    assert fp.startswith("sha256:") and len(fp) == 23
    assert enc.vqgan_fingerprint(load_vqgan("random:tiny", mesh="1,1,1,1")) == fp  # batch size is no part
    assert enc.vqgan_fingerprint(load_vqgan("random:tiny", mesh="1,1,1,1", seed=1)) != fp


# ----- resumable JSONL ------------------------------------------------------------------------------------------


def test_a_jsonl_output_resumes_drops_a_torn_line_and_refuses_foreign_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    items = [enc.MediaItem(str(tmp_path / f"{n}.png"), c, f"{n}.png") for n, c in (("a", "x"), ("b", None))]
    lines = [enc.jsonl_line(i, np.zeros((1, 8, 8), np.int32), base=str(tmp_path), fields="vision",
                            fingerprint="sha256:1") for i in items]
    enc.append_lines(str(path), lines[:1])
    with open(path, "ab") as f:
        f.write(lines[1].encode()[:30])  # a kill in the middle of the second line
    out = enc.CodesJsonl(str(path), fingerprint="sha256:1")
    assert out.done == {items[0].identity} and out.lines == 1
    assert path.read_text() == lines[0]  # the torn line is gone
    out.append(lines[1:])
    again = enc.CodesJsonl(str(path), fingerprint="sha256:1")
    assert again.done == {i.identity for i in items} and again.lines == 2
    one_line(enc.CodesJsonl, str(path), fingerprint="sha256:2", match=r"out.jsonl line 1 was encoded by another "
             r"VQGAN \(sha256:1, this one is sha256:2\).*--force")
    assert enc.CodesJsonl(str(path), fingerprint="sha256:2", force=True).done == set()
    assert not path.exists()
    path.write_text('{"text": "a line of another data set"}\n')
    one_line(enc.CodesJsonl, str(path), fingerprint="sha256:1", match="not written by lwm vqgan encode")


# ----- codes back -----------------------------------------------------------------------------------------------


def test_split_frames_strips_delimiters_and_splits_at_them():
    frames = np.arange(3 * 4).reshape(3, 2, 2)
    flat = frames.reshape(-1)
    with_delims = np.concatenate([flat[:4], [8192], flat[4:8], [8192], flat[8:], [8193]])
    for stored in (frames, flat, with_delims, with_delims.tolist()):
        np.testing.assert_array_equal(enc.split_frames(np.asarray(stored), 2), frames)
    np.testing.assert_array_equal(enc.split_frames(frames[0], 2), frames[:1])  # one (s, s) frame
    one_line(enc.split_frames, np.concatenate([flat[:3], [8192], flat[3:]]), 2,
             match="frame 0 has 3 codes between delimiters, but this VQGAN's frames are 2x2 = 4")
    one_line(enc.split_frames, flat[:5], 2, match="5 codes is not a whole number of 2x2 = 4-code frames")
    one_line(enc.split_frames, np.zeros((2, 3, 3), np.int32), 2, match=r"shape \(2, 3, 3\): this VQGAN's frames")
    one_line(enc.split_frames, np.array([8192, 8193]), 2, match="only delimiters")
    one_line(enc.split_frames, np.zeros(4, np.float32), 2, match="not integer codes")


def test_codes_are_read_from_npz_jsonl_and_npy(tmp_path):
    items = [enc.MediaItem(str(tmp_path / "v" / n), c, n) for n, c in (("a.png", "x"), ("b.mp4", None))]
    codes = [np.full((1, 2, 2), 1, np.int32), np.full((3, 2, 2), 2, np.int32)]
    enc.write_npz(str(tmp_path / "c.npz"), list(zip(items, codes)), meta={"fingerprint": "sha256:9"})
    with np.load(tmp_path / "c.npz") as data:  # the layout, without pickle
        assert sorted(data.files) == sorted(["a.png", "b.mp4", "keys", "paths", "captions", "meta"])
        assert data["keys"].tolist() == ["a.png", "b.mp4"] and data["paths"].tolist() == ["v/a.png", "v/b.mp4"]
        assert data["captions"].tolist() == ["x", ""]
        assert json.loads(str(data["meta"]))["format"] == "lwm-vqgan-codes"
    first = enc.read_codes(str(tmp_path / "c.npz"))
    assert (first.name, first.fingerprint) == (f"{tmp_path / 'c.npz'}[a.png]", "sha256:9")
    np.testing.assert_array_equal(enc.read_codes(str(tmp_path / "c.npz"), key="b.mp4").codes, codes[1])
    one_line(enc.read_codes, str(tmp_path / "c.npz"), key="c.gif", match=r"no entry 'c.gif'; its 2 entries: a.png")
    one_line(enc.read_codes, str(tmp_path / "c.npz"), line=2, match="a line number picks a line of a .jsonl")

    lines = [enc.jsonl_line(i, c, base=str(tmp_path), fields="vision", fingerprint="sha256:9")
             for i, c in zip(items, codes)]
    (tmp_path / "t.jsonl").write_text(lines[0] + "\n" + lines[1])  # a blank line between
    read = enc.read_codes(str(tmp_path / "t.jsonl"), line=3)
    assert read.name.endswith("t.jsonl:3") and read.fingerprint == "sha256:9"
    np.testing.assert_array_equal(read.codes, codes[1].reshape(-1))
    one_line(enc.read_codes, str(tmp_path / "t.jsonl"), line=2, match="no line 2 with a JSON object")
    one_line(enc.read_codes, str(tmp_path / "t.jsonl"), key="pixels", match="t.jsonl:1 has no key 'pixels'")

    np.save(tmp_path / "s.npy", np.array([1, 2, 3, 4, 8193]))
    np.testing.assert_array_equal(enc.read_codes(str(tmp_path / "s.npy")).codes, [1, 2, 3, 4, 8193])
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    one_line(enc.read_codes, str(tmp_path / "bad.npz"), match="cannot read codes file .*bad.npz: .*damaged")
    one_line(enc.read_codes, str(tmp_path / "none.npz"), match="none.npz does not exist")
    one_line(enc.read_codes, str(tmp_path / "t.jsonl.txt"), match="does not exist")
    (tmp_path / "c.txt").write_text("1 2 3")
    one_line(enc.read_codes, str(tmp_path / "c.txt"), match=r"unsupported extension '.txt'")


def test_outputs_are_checked_by_extension():
    assert enc.output_kind("a/b.JSONL") == ".jsonl" and enc.output_kind("x.npz") == ".npz"
    one_line(enc.output_kind, "x.json", match=r"unsupported extension '.json'; give .jsonl")
    enc.check_frames_output("x.mp4")
    enc.check_frames_output("x.png", sheet=True)
    one_line(enc.check_frames_output, "x.mp4", sheet=True, match="a contact sheet is an image")
    one_line(enc.check_frames_output, "x.avi", match=r"unsupported extension '.avi'; give a video \(.mp4")
    assert enc.relative(os.path.join(os.sep, "a", "b", "c.png"), os.path.join(os.sep, "a")) == "b/c.png"
