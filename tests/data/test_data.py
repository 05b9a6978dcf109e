"""The data pipeline: LWM's fields syntax and processors, JSONL access, packing, the resumable stream."""

import dataclasses
import json
import random

import numpy as np
import pytest

from lwm_core.data import Batch, DataConfig, DataStream, Example, JsonlIndex, pack_rows, parse_fields, process_example
from lwm_core.data import jsonl as jsonl_module
from lwm_core.data.fields import Field
from lwm_core.data.packing import pairs
from lwm_core.errors import LWMError
from lwm_core.tokenizer import load_tokenizer

BOS, EOS = 1, 2
EOF_ID, EOV_ID = 8192, 8193


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def run(record, config, tok, line=0):
    return process_example(record, config, tok, line=line, where="data.jsonl:7")


def example(tokens, loss=None, vision=None) -> Example:
    tokens = np.asarray(tokens, np.int32)
    loss = np.ones(len(tokens), np.float32) if loss is None else np.asarray(loss, np.float32)
    vision = np.zeros(len(tokens), np.bool_) if vision is None else np.asarray(vision, np.bool_)
    return Example(tokens, loss, vision)


# ---------------------------------------------------------------------------------------------- fields


def test_fields_syntax():
    assert parse_fields("text") == (Field("text", ("text",), True),)
    assert parse_fields("[q],a") == (Field("q", ("q",), False), Field("a", ("a",), True))
    assert parse_fields("title+body") == (Field("title+body", ("title", "body"), True),)
    assert parse_fields("[<|bos|>],text,<|eos|>") == (
        Field("<|bos|>", (), False, "bos"), Field("text", ("text",), True), Field("<|eos|>", (), True, "eos"))
    assert parse_fields(" [ q ] , a + b ") == (Field("q", ("q",), False), Field("a + b", ("a", "b"), True))
    assert [f.vision for f in parse_fields("[vision_1],text,<|eos|>")] == [True, False, False]


@pytest.mark.parametrize("spec", ["", " ", "a,,b", "a,", "[]", "[a", "b]", "a+", "+b", "a++b"])
def test_bad_fields_name_the_spec(spec):
    with pytest.raises(LWMError) as e:
        parse_fields(spec)
    assert repr(spec) in str(e.value)


def test_vision_fields_cannot_join_keys():
    assert parse_fields("vision+text") == (Field("vision+text", ("vision", "text"), True),)  # text data
    with pytest.raises(LWMError, match="'vision\\+text'.*VQGAN codes cannot be joined"):
        parse_fields("vision+text", vision_text=True)


# ---------------------------------------------------------------------------------------------- config


def test_config_defaults_and_help():
    config = DataConfig()
    assert (config.kind, config.fields, config.pack, config.tokens_per_frame, config.eof_token,
            config.eov_token) == ("text", "text", True, 256, 8192, 8193)
    for f in dataclasses.fields(DataConfig):
        help_text = f.metadata["help"]
        assert help_text and "\n" not in help_text, f.name


@pytest.mark.parametrize("overrides, words", [
    ({"kind": "image"}, ["data.kind", "'image'", "vision_text"]),
    ({"tokens_per_frame": 0}, ["data.tokens_per_frame = 0"]),
    ({"eof_token": 5}, ["data.eof_token = 5", "[8192, 8448)"]),
    ({"eov_token": 8192}, ["both 8192"]),
    ({"max_frames": 0}, ["data.max_frames = 0"]),
    ({"fields_index": -2}, ["data.fields_index = -2"]),
    ({"seed": -1}, ["data.seed = -1"]),
    ({"fields": "a,,b"}, ["'a,,b'", "empty field"]),
    ({"fields": ""}, ["''", "empty"]),
    ({"kind": "vision_text", "fields": "vision+x"}, ["'vision+x'"]),
])
def test_config_errors_name_the_value(overrides, words):
    with pytest.raises(LWMError) as e:
        DataConfig(**overrides)
    for word in words:
        assert word in str(e.value)


def test_fields_are_not_parsed_when_they_come_from_the_example():
    assert DataConfig(fields="", fields_from_example="fields").fields == ""


# ------------------------------------------------------------------------------------------------ text


def test_text_example_pinned_ids(tok):
    ex = run({"text": "hello world"}, DataConfig(), tok)
    assert ex.tokens.dtype == np.int32 and ex.loss_mask.dtype == np.float32 and ex.vision_mask.dtype == np.bool_
    assert ex.tokens.tolist() == [BOS, 529, 4011, 357, 288, 269, 1635, EOS]
    assert ex.loss_mask.tolist() == [0, 1, 1, 1, 1, 1, 1, 1]  # no loss on BOS, loss on EOS
    assert not ex.vision_mask.any()


def test_text_prompt_without_loss(tok):
    q, a = tok.encode("What is 2+2?"), tok.encode("4")
    assert (q, a) == ([566, 4014, 273, 294, 4002, 4057, 4077, 4057, 4086], [4002, 4068])
    ex = run({"q": "What is 2+2?", "a": "4", "unused": 3}, DataConfig(fields="[q],a"), tok)
    assert ex.tokens.tolist() == [BOS, *q, *a, EOS]
    assert ex.loss_mask.tolist() == [0] + [0] * 9 + [1, 1] + [1]


def test_text_joined_subfields_prepend_and_specials(tok):
    config = DataConfig(fields="[<|bos|>],x+y,<|eos|>", subfield_separator=" | ", prepend_text="Q: ",
                        add_bos=False, add_eos=False)
    ex = run({"x": "x", "y": "y"}, config, tok)
    # prepend_text goes to the first field only, and LWM skips it when that field is <|bos|>.
    assert ex.tokens.tolist() == [BOS, *tok.encode("x | y"), EOS] == [BOS, 791, 769, 528, EOS]
    assert ex.loss_mask.tolist() == [0, 1, 1, 1, 1]

    ex = run({"q": "What is 2+2?", "a": "4"}, DataConfig(fields="[q],a", prepend_text="Q: "), tok)
    assert ex.tokens.tolist() == [BOS, *tok.encode("Q: What is 2+2?"), *tok.encode("4"), EOS]
    assert ex.tokens[1:3].tolist() == [1845, 4038]  # "Q:" once, before the first field


def test_fields_from_example(tok):
    record = {"f": ["[a],b", "b,[a]"], "a": "a", "b": "a a"}
    a, b = tok.encode("a"), tok.encode("a a")
    pick = DataConfig(fields_from_example="f", fields_index=1)
    assert run(record, pick, tok).tokens.tolist() == [BOS, *b, *a, EOS]
    assert run(record, pick, tok).loss_mask.tolist() == [0, 1, 1, 0, 1]
    assert run({**record, "f": "b"}, DataConfig(fields_from_example="f"), tok).tokens.tolist() == [BOS, *b, EOS]

    # fields_index -1: LWM's random.Random(line index) choice, fixed per line.
    chosen = []
    for line in range(12):
        ex = run(record, DataConfig(fields_from_example="f"), tok, line=line)
        expected = random.Random(line).choice(record["f"])
        assert ex.tokens.tolist() == ([BOS, *a, *b, EOS] if expected == "[a],b" else [BOS, *b, *a, EOS])
        chosen.append(expected)
    assert set(chosen) == set(record["f"])

    with pytest.raises(LWMError, match="data.jsonl:7.*fields_index = 2.*lists 2"):
        run(record, dataclasses.replace(pick, fields_index=2), tok)
    with pytest.raises(LWMError, match="data.jsonl:7.*'f'.*a number"):
        run({**record, "f": 3}, pick, tok)


def test_text_errors_name_the_line_and_keys(tok):
    with pytest.raises(LWMError) as e:
        run({"question": "x", "answer": "y"}, DataConfig(fields="[q],answer"), tok)
    assert "data.jsonl:7" in str(e.value) and "'q'" in str(e.value)
    assert "'question', 'answer'" in str(e.value)
    with pytest.raises(LWMError, match="data.jsonl:7.*'text' holds a list"):
        run({"text": [1, 2]}, DataConfig(), tok)


# ---------------------------------------------------------------------------------------------- vision


def test_vision_two_frames(tok):
    codes = [(7 * i) % 8192 for i in range(512)]
    config = DataConfig(kind="vision_text", fields="[vision],text")
    ex = run({"vision": codes, "text": "a cat"}, config, tok)
    start, end = tok.encode("<vision>"), tok.encode("</vision>")
    assert (start, end) == ([899, 4025, 2641, 4037], [899, 4062, 4025, 2641, 4037])
    body = codes[:256] + [EOF_ID] + codes[256:] + [EOV_ID]
    assert ex.tokens.tolist() == [BOS, *start, *body, *end, *tok.encode("a cat"), EOS]
    assert int(ex.vision_mask.sum()) == 2 * 257
    s = 1 + len(start)
    assert ex.vision_mask[s:s + 514].all() and not ex.vision_mask[:s].any()
    assert not ex.vision_mask[s + 514:].any()  # </vision>, caption and EOS are text
    assert ex.tokens[s + 256] == EOF_ID and ex.tokens[s + 513] == EOV_ID
    # [vision]: no loss on the whole vision field (<vision> pieces included); loss on the caption.
    assert ex.loss_mask.tolist() == [0] * (1 + 4 + 514 + 5) + [1, 1, 1] + [1]


def test_vision_max_frames_evenly_spaced(tok):
    P = 4
    codes = [frame for frame in range(5) for _ in range(P)]  # frame k is four codes of value k
    config = DataConfig(kind="vision_text", fields="vision_clip", tokens_per_frame=P, max_frames=3,
                        add_bos=False, add_eos=False)
    ex = run({"vision_clip": codes}, config, tok)
    vision = ex.tokens[ex.vision_mask].tolist()
    assert vision == [0] * P + [EOF_ID] + [2] * P + [EOF_ID] + [4] * P + [EOV_ID]  # linspace(0, 4, 3)
    ex = run({"vision_clip": codes}, dataclasses.replace(config, max_frames=2), tok)
    assert ex.tokens[ex.vision_mask].tolist() == [0] * P + [EOF_ID] + [4] * P + [EOV_ID]  # first and last
    ex = run({"vision_clip": codes}, dataclasses.replace(config, max_frames=9), tok)
    assert int(ex.vision_mask.sum()) == 5 * (P + 1)  # fewer frames than max_frames: all kept


@pytest.mark.parametrize("codes, words", [
    ([1, 2, 8192, 3], ["code 8192 at index 2", "[0, 8192)"]),
    ([1, -1, 2, 3], ["code -1 at index 1"]),
    ([1, 2, 3, 4, 5, 6], ["6 codes", "tokens_per_frame = 4"]),
    ([], ["0 codes"]),
    ([1.5, 2, 3, 4], ["flat list"]),
    ([[1, 2], [3, 4]], ["flat list"]),
    ("1 2 3 4", ["holds a string", "flat list"]),
])
def test_vision_bad_codes(tok, codes, words):
    config = DataConfig(kind="vision_text", fields="vision", tokens_per_frame=4)
    with pytest.raises(LWMError) as e:
        run({"vision": codes}, config, tok)
    for word in ["data.jsonl:7", "'vision'", *words]:
        assert word in str(e.value)


# --------------------------------------------------------------------------------------------- packing


def test_pack_two_examples_and_padding():
    a = example([BOS, 5, 6, EOS], loss=[0, 0, 1, 1])
    b = example([BOS, 7, EOS], vision=[False, True, False])
    batch = pack_rows([[a, b], [b]], seq_len=8)
    assert isinstance(batch, Batch) and all(x.shape == (2, 8) for x in batch)
    assert batch.inputs.dtype == np.int32 and batch.loss_weights.dtype == np.float32
    assert batch.inputs[0].tolist() == [BOS, 5, 6, BOS, 7, 0, 0, 0]
    assert batch.targets[0].tolist() == [5, 6, EOS, 7, EOS, 0, 0, 0]
    assert batch.loss_weights[0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]  # loss_mask[1:], padding 0
    assert batch.segment_ids[0].tolist() == [1, 1, 1, 2, 2, 0, 0, 0]
    assert batch.positions[0].tolist() == [0, 1, 2, 0, 1, 0, 0, 0]
    assert batch.input_vision_masks[0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert batch.target_vision_masks[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert batch.segment_ids[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert pairs(a) == 3 and pairs(example([BOS])) == 0 and pairs(example([])) == 0


def test_pack_prompt_fields_have_no_loss(tok):
    ex = run({"q": "What is 2+2?", "a": "4"}, DataConfig(fields="[q],a"), tok)
    batch = pack_rows([[ex]], seq_len=16)
    # 12 pairs: the first 9 targets are the prompt's tokens (no loss), then the answer's 2 and EOS.
    assert batch.loss_weights[0].tolist() == [0] * 9 + [1, 1, 1] + [0] * 4
    assert batch.targets[0, 9:12].tolist() == [4002, 4068, EOS]


def test_pack_truncates_a_long_example():
    ex = example(np.arange(10, 20), loss=[0, 1, 0, 1, 0, 1, 0, 1, 0, 1], vision=[0, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    batch = pack_rows([[ex]], seq_len=4)
    assert batch.inputs[0].tolist() == [10, 11, 12, 13]
    assert batch.targets[0].tolist() == [11, 12, 13, 14]
    assert batch.loss_weights[0].tolist() == [1, 0, 1, 0]  # aligned with the targets (LWM shifted twice)
    assert batch.input_vision_masks[0].tolist() == [0, 0, 1, 1]
    assert batch.target_vision_masks[0].tolist() == [0, 1, 1, 0]
    assert batch.segment_ids[0].tolist() == [1, 1, 1, 1] and batch.positions[0].tolist() == [0, 1, 2, 3]


def test_pack_skips_empty_examples_and_refuses_overflow():
    batch = pack_rows([[example([BOS]), example([BOS, 3]), example([]), example([BOS, 4])]], seq_len=3)
    assert batch.segment_ids[0].tolist() == [1, 2, 0] and batch.targets[0].tolist() == [3, 4, 0]
    with pytest.raises(ValueError, match="row 0: 2 examples with 4 pairs"):
        pack_rows([[example([BOS, 2, 3]), example([BOS, 5, 6])]], seq_len=3)


# ----------------------------------------------------------------------------------------------- jsonl


def test_jsonl_index_offsets_across_chunks(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(60):
        kind = rng.integers(4)
        record = json.dumps({"i": i, "t": "é" * int(rng.integers(20))})  # multi-byte characters
        lines.append("" if kind == 0 else " \t\r" if kind == 1 else record)
    text = "\n".join(lines[:30]) + "\r\n" + "\n".join(lines[30:])  # one CRLF, no trailing newline
    path = tmp_path / "d.jsonl"
    path.write_bytes(text.encode())
    expected = [(n + 1, json.loads(line)) for n, line in enumerate(text.split("\n")) if line.strip()]
    for chunk in (3, 7, 64, 1 << 22):  # lines and blank runs crossing chunk edges
        monkeypatch.setattr(jsonl_module, "_CHUNK", chunk)
        index = JsonlIndex(path)
        assert len(index) == len(expected) > 20
        assert [(index.line_number(i), index.read(i)) for i in range(len(index))] == expected
        index.close()


def test_jsonl_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "no end\n[1, 2]\n')
    index = JsonlIndex(path)
    assert len(index) == 3 and index.read(0) == {"text": "ok"}
    with pytest.raises(LWMError, match=f"^{path}:3: not valid JSON"):
        index.validate()
    with pytest.raises(LWMError, match=f"^{path}:4: holds a JSON list, not an object"):
        index.read(2)
    with pytest.raises(IndexError):
        index.read(3)

    with pytest.raises(LWMError, match=f"data file {tmp_path / 'nope.jsonl'} does not exist"):
        JsonlIndex(tmp_path / "nope.jsonl")
    for content in ("", "\n \n\t\n"):
        (tmp_path / "empty.jsonl").write_text(content)
        with pytest.raises(LWMError, match="empty.jsonl has no examples"):
            JsonlIndex(tmp_path / "empty.jsonl")
    with pytest.raises(LWMError, match="is a directory"):
        JsonlIndex(tmp_path)


def test_jsonl_several_files_read_end_to_end(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"i": 0}, {"i": 1}])
    (tmp_path / "b.jsonl").write_text('\n{"i": 2}\n{"i": 3}\n{"i": 4}')  # a blank first line, no final newline
    b = str(tmp_path / "b.jsonl")
    with JsonlIndex([a, b]) as index:
        assert len(index) == 5 and [index.read(i)["i"] for i in range(5)] == [0, 1, 2, 3, 4]
        assert [index.where(i) for i in (0, 1, 2, 4)] == [f"{a}:1", f"{a}:2", f"{b}:2", f"{b}:4"]
        assert index.path == f"{a} + {b}"
    with JsonlIndex([b, a]) as index:
        assert [index.read(i)["i"] for i in range(5)] == [2, 3, 4, 0, 1]
    (tmp_path / "bad.jsonl").write_text('{"i": 5}\n[]\n')
    with pytest.raises(LWMError, match=f"^{tmp_path / 'bad.jsonl'}:2: holds a JSON list"):
        JsonlIndex([a, str(tmp_path / "bad.jsonl")]).validate()
    with pytest.raises(LWMError, match=f"data file {tmp_path / 'nope.jsonl'} does not exist"):
        JsonlIndex([a, str(tmp_path / "nope.jsonl")])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LWMError, match="empty.jsonl has no examples"):
        JsonlIndex([str(tmp_path / "empty.jsonl"), a])
    with pytest.raises(LWMError, match="no data file given"):
        JsonlIndex([])


# ---------------------------------------------------------------------------------------------- stream

N = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tok):
    """24 distinct examples of 4..14 tokens, and a map from their token tuples back to their index."""
    records = [{"text": f"n{i} " + "a " * (i * 5 % 11)} for i in range(N)]
    path = write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", records)
    ids = {tuple(run(r, DataConfig(), tok).tokens.tolist()): i for i, r in enumerate(records)}
    assert len(ids) == N
    return path, ids


def row_examples(batch: Batch, ids) -> list[list[int]]:
    """Each row's examples as dataset indices, recovered from the segments (none are truncated)."""
    out = []
    for r in range(len(batch.inputs)):
        seg = batch.segment_ids[r]
        row = []
        for s in range(1, int(seg.max()) + 1):
            where = seg == s
            tokens = [*batch.inputs[r][where].tolist(), int(batch.targets[r][where][-1])]
            row.append(ids[tuple(tokens)])
        out.append(row)
    return out


def batches(stream, n):
    return [stream.next_batch() for _ in range(n)]


def same(a: Batch, b: Batch) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_stream_same_seed_same_batches(dataset, tok):
    path, _ = dataset
    make = lambda seed: DataStream(DataConfig(path=path, seed=seed), tok, rows=3, seq_len=32)  # noqa: E731
    one, two, other = batches(make(0), 4), batches(make(0), 4), batches(make(1), 4)
    assert all(same(a, b) for a, b in zip(one, two))
    assert not any(same(a, b) for a, b in zip(one, other))
    assert one[0].inputs.shape == (3, 32)


def test_stream_over_several_files_is_the_stream_over_their_concatenation(dataset, tok, tmp_path):
    path, _ = dataset
    lines = open(path).read().splitlines(keepends=True)
    (tmp_path / "head.jsonl").write_text("".join(lines[:5]))
    (tmp_path / "tail.jsonl").write_text("".join(lines[5:]))
    split = f"{tmp_path / 'head.jsonl'},{tmp_path / 'tail.jsonl'}"
    make = lambda p: DataStream(DataConfig(path=p, seed=3), tok, rows=3, seq_len=32)  # noqa: E731
    assert all(same(a, b) for a, b in zip(batches(make(path), 6), batches(make(split), 6)))
    assert make(split).num_examples == len(lines) == N


def test_stream_order_is_the_documented_permutation(dataset, tok):
    """Row r's k-th example is stream position r + k*R; positions [eN, (e+1)N) are epoch e's permutation."""
    path, ids = dataset
    R = 4
    stream = DataStream(DataConfig(path=path, seed=5), tok, rows=R, seq_len=32)
    rows = [[] for _ in range(R)]
    while min(len(row) for row in rows) * R < 2 * N:
        for r, got in enumerate(row_examples(stream.next_batch(), ids)):
            rows[r] += got
    by_position = {r + k * R: i for r in range(R) for k, i in enumerate(rows[r])}
    for epoch in range(2):
        got = [by_position[p] for p in range(epoch * N, (epoch + 1) * N)]
        assert sorted(got) == list(range(N))  # every example once per epoch
        assert got == np.random.default_rng([5, epoch]).permutation(N).tolist()
    assert stream.cursors.tolist() == [len(row) for row in rows]
    assert stream.tokens_seen > 0


def test_stream_without_shuffle_or_packing(dataset, tok):
    path, ids = dataset
    stream = DataStream(DataConfig(path=path, shuffle=False, pack=False), tok, rows=4, seq_len=32)
    seen = [row_examples(stream.next_batch(), ids) for _ in range(N // 4 + 1)]
    assert [i for b in seen for row in b for i in row] == [*range(N), 0, 1, 2, 3]  # one per row, in order
    assert all(len(row) == 1 for b in seen for row in b)


def test_stream_packing_keeps_the_example_that_does_not_fit(tmp_path, tok):
    # "a a ... a" (k times) is k tokens of 261, so BOS + k + EOS = k + 1 pairs: 5, 5, 8, 20, 3 pairs.
    lengths = [4, 4, 7, 19, 2]
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": " ".join(["a"] * k)} for k in lengths])
    stream = DataStream(DataConfig(path=path, shuffle=False), tok, rows=1, seq_len=12)
    reads = []
    read = stream.index.read
    stream.index.read = lambda i: reads.append(i) or read(i)
    segments = []
    for _ in range(4):
        seg = stream.next_batch().segment_ids[0]
        segments.append([int((seg == s).sum()) for s in range(1, seg.max() + 1)])
    # 5 + 5 fit, 8 waits; 8 alone (20 would not fit); 20 cut to 12; 3 + the next epoch's 5 ...
    assert segments == [[5, 5], [8], [12], [3, 5]]
    assert reads == [0, 1, 2, 3, 4, 0, 1]  # the waiting examples were not read twice


def test_stream_rows_split_across_processes(dataset, tok):
    path, _ = dataset
    config = DataConfig(path=path, seed=3)
    whole = DataStream(config, tok, rows=4, seq_len=20)
    left = DataStream(config, tok, rows=4, seq_len=20, row_range=(0, 1))
    right = DataStream(config, tok, rows=4, seq_len=20, row_range=(1, 4))
    reads = []
    read = left.index.read
    left.index.read = lambda i: reads.append(i) or read(i)
    for _ in range(5):
        w, a, b = whole.next_batch(), left.next_batch(), right.next_batch()
        assert a.inputs.shape == (1, 20) and b.inputs.shape == (3, 20)
        assert all(np.array_equal(x, np.concatenate([y, z])) for x, y, z in zip(w, a, b))
    # The left process only read row 0's examples (positions 0, 4, 8, ...), each once.
    order = np.concatenate([np.random.default_rng([3, e]).permutation(N) for e in range(3)])
    k = left.cursors[0]
    assert reads == order[0:(k + 1) * 4:4].tolist()[:len(reads)] and len(reads) in (k, k + 1)
    # Each process advanced only its own rows.
    assert left.cursors[1:].tolist() == [0, 0, 0] and right.cursors[0] == 0


def test_stream_state_restore(dataset, tok):
    path, _ = dataset
    config = DataConfig(path=path, seed=7)
    first = DataStream(config, tok, rows=4, seq_len=20)
    batches(first, 3)
    saved = json.loads(json.dumps(first.state()))
    expected = batches(first, 4)
    resumed = DataStream(config, tok, rows=4, seq_len=20)
    resumed.restore(saved)
    assert all(same(a, b) for a, b in zip(expected, batches(resumed, 4)))

    # Two processes save their own rows; the merged state resumes the whole batch.
    parts = [DataStream(config, tok, rows=4, seq_len=20, row_range=rr) for rr in ((0, 2), (2, 4))]
    for part in parts:
        batches(part, 3)
    merged = DataStream.merge_states([p.state() for p in parts])
    assert merged["cursors"] == saved["cursors"]
    assert np.max([p.cursors for p in parts], axis=0).tolist() == saved["cursors"]  # same as element-wise max
    resumed = DataStream(config, tok, rows=4, seq_len=20)
    resumed.restore(merged)
    assert same(resumed.next_batch(), expected[0])

    with pytest.raises(LWMError, match="cursors for 4 rows but the batch has 2"):
        DataStream(config, tok, rows=2, seq_len=20).restore(saved)
    with pytest.raises(LWMError, match=f"file of 25 examples but {path} has 24"):
        resumed.restore({**saved, "examples": 25})


def test_stream_vision_masks(tmp_path, tok):
    codes = list(range(8))
    path = write_jsonl(tmp_path / "v.jsonl", [{"vision": codes, "text": "a cat"}])
    config = DataConfig(path=path, kind="vision_text", fields="[vision],text", tokens_per_frame=4)
    batch = DataStream(config, tok, rows=1, seq_len=24).next_batch()
    # BOS <vision>(4) codes 8192 codes 8193 </vision>(5) "a cat"(3) EOS: 24 tokens, 23 pairs.
    assert int(batch.segment_ids[0].max()) == 1 and int((batch.segment_ids[0] == 1).sum()) == 23
    assert batch.input_vision_masks[0].tolist() == [0] * 5 + [1] * 10 + [0] * 9
    assert batch.target_vision_masks[0].tolist() == [0] * 4 + [1] * 10 + [0] * 10
    assert batch.targets[0, 8:15].tolist() == [EOF_ID, 4, 5, 6, 7, EOV_ID, 899]
    assert batch.loss_weights[0].tolist() == [0] * 19 + [1, 1, 1, 1] + [0]


def test_stream_errors(tmp_path, tok):
    with pytest.raises(LWMError, match="no data file: set data.path"):
        DataStream(DataConfig(), tok, rows=1, seq_len=8)
    with pytest.raises(LWMError, match=f"data file {tmp_path / 'x.jsonl'} does not exist"):
        DataStream(DataConfig(path=str(tmp_path / "x.jsonl")), tok, rows=1, seq_len=8)
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
    with pytest.raises(LWMError, match="row_range = \\(1, 1\\)"):
        DataStream(DataConfig(path=path), tok, rows=2, seq_len=8, row_range=(1, 1))

    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": \n{"body": "b", "title": "c"}\n')
    stream = DataStream(DataConfig(path=str(path), shuffle=False, pack=False), tok, rows=1, seq_len=8)
    assert stream.next_batch().targets[0, :2].tolist() == [261, EOS]
    with pytest.raises(LWMError, match=f"^{path}:3: not valid JSON"):
        stream.next_batch()
    stream.restore({"cursors": [2], "rows": 1, "examples": 3})
    with pytest.raises(LWMError, match=f"^{path}:4: no key 'text' \\(the line has keys 'body', 'title'\\)"):
        stream.next_batch()

    empty = write_jsonl(tmp_path / "e.jsonl", [{"text": ""}])
    config = DataConfig(path=empty, add_bos=False, add_eos=False)
    with pytest.raises(LWMError, match="fewer than two tokens; nothing to train on"):
        DataStream(config, tok, rows=1, seq_len=8).next_batch()
