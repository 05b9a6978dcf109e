"""The tokenizer wrapper: LLaMA-2 ids, the Feb-2024 `<s>`/`</s>` rule, round trips, streaming, errors."""

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm

from lwm_core.errors import LWMError
from lwm_core.tokenizer import StreamDecoder, Tokenizer, default_tokenizer_path, load_tokenizer

REPO = Path(__file__).resolve().parent.parent
TEXTS = [
    "You are a helpful assistant. USER: What is 12345 + 678? ASSISTANT:",
    "naïve café 你好 🙂",
    "  two  spaces,\ttabs\nand newlines\n\n",
    "Ünïcödé: Ελληνικά, русский, العربية, 日本語の文章, "
    "emoji 👩‍👩‍👧 and ∑ x² ≤ ∞",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer()


@pytest.fixture(scope="module")
def sp() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=default_tokenizer_path())


def test_shipped_asset_has_llama_ids(tok):
    assert tok.path == default_tokenizer_path()
    assert os.path.getsize(tok.path) < 300_000
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (4096, 1, 2, 0)
    raw = spm.SentencePieceProcessor(model_file=tok.path)
    assert [raw.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert raw.unk_id() == 0 and raw.pad_id() == -1
    assert raw.id_to_piece(3) == "<0x00>"  # byte fallback pieces follow the specials, as in LLaMA-2
    assert raw.encode("2024") == [raw.piece_to_id(p) for p in ["▁", "2", "0", "2", "4"]]  # split digits


def test_encode_adds_no_bos_or_eos(tok, sp):
    ids = tok.encode("You are a helpful assistant.")
    assert ids == sp.encode("You are a helpful assistant.")
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.encode("") == []


def test_literal_markers_become_bos_and_eos(tok, sp):
    assert tok.encode("<s>You are</s>") == [1, *sp.encode("You are"), 2]
    # Each piece between markers gets sentencepiece's dummy prefix (legacy slow LlamaTokenizer).
    assert tok.encode("a</s><s>b") == [*sp.encode("a"), 2, 1, *sp.encode("b")]
    assert tok.encode("<s><vision>") == [1, *sp.encode("<vision>")]
    assert tok.encode("<s> x") == [1, *sp.encode(" x")]  # whitespace next to a marker is kept
    assert tok.encode("<S> <s/>") == sp.encode("<S> <s/>")  # only the exact markers are special


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_renders_bos_eos_as_nothing(tok, sp):
    assert tok.decode(tok.encode("<s>You are</s>")) == "You are"
    assert tok.decode([1, 2, 1]) == ""
    assert tok.decode([0]) == sp.decode([0])  # <unk> is not skipped


def test_decode_rejects_ids_outside_the_vocab(tok):
    with pytest.raises(LWMError, match="token id 4096 is outside the vocabulary"):
        tok.decode([5, 4096])


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decoder_reproduces_text(tok, text):
    ids = tok.encode("<s>" + text + "</s>")
    stream = StreamDecoder(tok)
    chunks = [stream.push(i) for i in ids]
    chunks.append(stream.flush())
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)
    # Multi-byte characters really were spread over several byte-fallback tokens and held back.
    if "🙂" in text:
        assert any(c == "" for c in chunks[:-1])


def test_stream_decoder_flush_emits_incomplete_bytes(tok, sp):
    stream = StreamDecoder(tok)
    byte_ids = [sp.piece_to_id("<0xF0>"), sp.piece_to_id("<0x9F>")]  # first half of an emoji
    assert [stream.push(i) for i in byte_ids] == ["", ""]
    assert stream.flush() == tok.decode(byte_ids)
    assert stream.flush() == ""


def test_missing_path(tmp_path):
    with pytest.raises(LWMError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.model")


def test_random_bytes_and_text_files_are_rejected(tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(hashlib.sha256(b"seed").digest() * 40)
    text = tmp_path / "tokenizer.json"
    text.write_text('{"model": {"type": "BPE"}}\n')
    for path in (junk, text):
        with pytest.raises(LWMError, match="is not a sentencepiece tokenizer.model") as info:
            load_tokenizer(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_directory_with_tokenizer_model(tmp_path):
    shutil.copy(default_tokenizer_path(), tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer.json").write_text("not used: tokenizer.model wins")
    tok = load_tokenizer(tmp_path)
    assert tok.path == str(tmp_path / "tokenizer.model") and tok.vocab_size == 4096


def test_empty_directory(tmp_path):
    with pytest.raises(LWMError, match="has no tokenizer.model"):
        load_tokenizer(tmp_path)


def test_huggingface_directory(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    src, out = tmp_path / "src", tmp_path / "hf"
    src.mkdir()
    shutil.copy(default_tokenizer_path(), src / "tokenizer.model")
    (src / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    transformers.LlamaTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(str(out))
    (out / "tokenizer.model").unlink(missing_ok=True)  # exercise the Hugging Face branch
    hf = load_tokenizer(out)
    assert (hf.vocab_size, hf.bos_id, hf.eos_id, hf.pad_id) == (4096, 1, 2, 0)
    text = "naïve café 你好 🙂"
    assert hf.encode(text) == tok.encode(text)
    assert hf.encode(f"<s>{text}</s>") == [1, *tok.encode(text), 2]
    assert hf.decode(hf.encode(f"<s>{text}</s>")) == text
    stream = StreamDecoder(hf)
    assert "".join([stream.push(i) for i in hf.encode(text)] + [stream.flush()]) == text


def _build_script():
    spec = importlib.util.spec_from_file_location("build_tokenizer", REPO / "scripts" / "build_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_is_deterministic(tmp_path):
    build = _build_script()
    # A small sample of real training text keeps this fast.
    lines = [line for doc in (json.__doc__, os.path.__doc__, str.__doc__, TEXTS[0]) for line in doc.splitlines()]
    first = build.train_tokenizer(lines, vocab_size=512)
    second = build.train_tokenizer(lines, vocab_size=512)
    assert first == second
    (tmp_path / "t.model").write_bytes(first)
    small = load_tokenizer(tmp_path / "t.model")
    assert (small.vocab_size, small.bos_id, small.eos_id, small.pad_id) == (512, 1, 2, 0)
    assert small.decode(small.encode(TEXTS[1])) == TEXTS[1]  # byte fallback covers unseen characters


def test_build_script_skips_unsafe_modules():
    build = _build_script()
    for name in ("antigravity", "this", "idlelib.pyshell", "tkinter", "venv.__main__", "test.support", "_ast"):
        assert build._skipped(name), name
    for name in ("json", "email.mime.text", "unittest.mock", "os"):
        assert not build._skipped(name), name
