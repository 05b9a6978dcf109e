"""One policy for text from outside: UTF-8 or a one-line refusal naming the input, the byte and its offset."""

import json

import pytest

from lwm_core.errors import LWMError
from lwm_core.text import check_text, decode_utf8


def test_utf8_passes_and_a_byte_order_mark_is_dropped():
    assert decode_utf8("naïve – 世界".encode(), "stdin") == "naïve – 世界"
    assert decode_utf8(b"\xef\xbb\xbfhi", "stdin") == "hi"
    assert check_text("naïve – 世界", "PROMPT") == "naïve – 世界"


@pytest.mark.parametrize("data, offset, byte", [
    (b"caf\xe9", 3, 0xE9),  # latin-1
    ("é".encode() + b"\xff", 2, 0xFF),  # the offset counts bytes, not characters
    (b"ok\xe2\x82", 2, 0xE2),  # a sequence cut short
    (bytes(range(256)), 128, 0x80),  # binary
])
def test_the_first_bad_byte_is_named_with_its_byte_offset(data, offset, byte):
    message = f"is not UTF-8 text: byte 0x{byte:02X} at offset {offset}"
    with pytest.raises(LWMError, match=f"^stdin {message}; convert it to UTF-8"):
        decode_utf8(data, "stdin")
    # argv and C-locale stdin reach Python as lone surrogates (surrogateescape): the same answer.
    with pytest.raises(LWMError, match=f"^PROMPT {message}"):
        check_text(data.decode("utf-8", "surrogateescape"), "PROMPT")


def test_the_tokenizer_refuses_undecodable_text_in_one_line():
    from lwm_core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(None)
    with pytest.raises(LWMError, match="the text to tokenize is not UTF-8 text: byte 0xE9 at offset 3"):
        tokenizer.encode(b"caf\xe9".decode("utf-8", "surrogateescape"))


def test_a_data_line_that_is_not_utf8_names_file_and_line(tmp_path):
    from lwm_core.data import JsonlIndex

    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps({"text": "fine"}).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    with JsonlIndex(str(path)) as index, pytest.raises(LWMError, match=f"line {path}:2 is not UTF-8 text: "
                                                                       f"byte 0xE9 at offset 13"):
        index.validate()


def test_a_config_json_that_is_not_utf8(tmp_path):
    from lwm_core.config import load_config_file

    path = tmp_path / "config.json"
    path.write_bytes(b'{"theta": 1e6, "x": "caf\xe9"}')
    with pytest.raises(LWMError, match=f"config file {path} is not UTF-8 text: byte 0xE9 at offset 24"):
        load_config_file(str(path))
