"""Text <-> token ids, as the Feb-2024 LWM release did it (docs/compatibility.md#tokenizer).

The model code only sees ids; this module is the one place that turns text into ids and back.

Rules (they match the slow, "legacy" Hugging Face `LlamaTokenizer` that produced LWM's prompts):

- `encode` never adds a BOS or EOS. A literal `<s>` or `</s>` in the text becomes the model's bos
  or eos id (1 / 2 for LLaMA); the text between them is encoded piece by piece, each piece getting
  sentencepiece's usual dummy-prefix space, and whitespace around the markers is kept as is. This is
  how prompts such as `<s>You are a helpful assistant. USER: ...` are written. (Later LWM revisions
  switched to a tokenizer that added a BOS on every `encode` call and so put stray BOS tokens in the
  middle of prompts; we do not.)
- Data and haystack text go through the same `encode`; nothing special is added to them.
- `decode` skips nothing, but bos and eos render as the empty string (sentencepiece control
  symbols have no surface); `<unk>` renders as sentencepiece's ` ⁇ `.
- pad: the model's pad id, or 0 when it has none (the LLaMA convention; padded positions are
  masked, so the id only has to be valid).

`load_tokenizer` reads a sentencepiece `tokenizer.model` (a file, or a directory holding one) or,
failing that, a Hugging Face tokenizer directory through `transformers` (an optional extra).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from lwm_core.errors import LWMError
from lwm_core.text import check_text

BOS_TEXT = "<s>"
EOS_TEXT = "</s>"
# Captures the markers so that re.split keeps them as list items.
_SPECIAL = re.compile(f"({re.escape(BOS_TEXT)}|{re.escape(EOS_TEXT)})")
_REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence (byte-fallback pieces) decodes to


def default_tokenizer_path() -> str:
    """The small tokenizer shipped with lwm (for `random:<preset>` models; see assets/README.md)."""
    return str(Path(__file__).resolve().parent / "assets" / "tokenizer.model")


class Tokenizer:
    """A loaded tokenizer: `encode`/`decode` plus the ids the model and data code need.

    Attributes:
        vocab_size: number of ids the tokenizer can produce (a model's vocab must be at least this).
        bos_id, eos_id: the ids a literal `<s>` / `</s>` becomes.
        pad_id: id for padded positions (0 when the tokenizer defines none).
        path: the file or directory it was loaded from.
    """

    def __init__(
        self,
        *,
        path: str,
        vocab_size: int,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        encode_piece: Callable[[str], list[int]],
        decode_ids: Callable[[list[int]], str],
    ):
        self.path = path
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self._encode_piece = encode_piece
        self._decode_ids = decode_ids

    def __repr__(self) -> str:
        return f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: no BOS/EOS added; literal `<s>`/`</s>` become bos_id/eos_id."""
        check_text(text, "the text to tokenize")  # sentencepiece cannot take undecodable bytes
        ids: list[int] = []
        for part in _SPECIAL.split(text):
            if part == BOS_TEXT:
                ids.append(self.bos_id)
            elif part == EOS_TEXT:
                ids.append(self.eos_id)
            elif part:
                ids.extend(self._encode_piece(part))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; bos and eos render as nothing. Ids outside the vocabulary raise LWMError."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise LWMError(
                f"token id {bad[0]} is outside the vocabulary of the tokenizer {self.path} "
                f"({self.vocab_size} ids); use the tokenizer that matches the model (its vocab_size)"
            )
        return self._decode_ids([i for i in ids if i not in (self.bos_id, self.eos_id)])


class StreamDecoder:
    """Incremental detokenization for streaming generated text.

    `push(id)` returns the text completed by that token, `flush()` whatever is left. Concatenating
    every returned string gives `tokenizer.decode(all ids)`.

    Decoding token by token is wrong for sentencepiece: a piece's leading space depends on whether it
    is first, and byte-fallback pieces carry one UTF-8 byte each, so a character can span several
    tokens. We therefore decode a window of ids twice, with and without the newest ones, and emit the
    difference; while the window's text ends in U+FFFD (an incomplete byte sequence) we hold it back
    and wait for the remaining bytes. The window starts at the previously emitted tokens, so each
    push costs O(window), not O(all ids) (the scheme vLLM uses).
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = 0  # ids before this have been emitted

    def push(self, token_id: int) -> str:
        """Add one generated id; return the newly completed text (possibly "")."""
        self._ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        """Return any held-back text (a trailing incomplete character decodes to U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset])
        text = decode(self._ids[self._prefix_offset :])
        if len(text) <= len(prefix) or (text.endswith(_REPLACEMENT) and not final):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return text[len(prefix) :]


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Tokenizer:
    """Load a tokenizer.

    Args:
        path: None for the shipped tokenizer; a sentencepiece `tokenizer.model`; a directory holding
            `tokenizer.model` (preferred, as the Feb-2024 LWM used it) or else a Hugging Face
            tokenizer (`tokenizer.json` / `tokenizer_config.json`, needs `transformers`).
    """
    path = default_tokenizer_path() if path is None else os.fspath(path)
    if os.path.isdir(path):
        model_file = os.path.join(path, "tokenizer.model")
        if os.path.isfile(model_file):
            return _load_sentencepiece(model_file)
        if any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
            return _load_huggingface(path)
        raise LWMError(
            f"tokenizer directory {path} has no tokenizer.model, tokenizer.json or tokenizer_config.json; "
            "pass the tokenizer.model of the checkpoint"
        )
    if os.path.isfile(path):
        return _load_sentencepiece(path)
    raise LWMError(
        f"tokenizer {path} does not exist; pass the tokenizer.model of the checkpoint "
        "(or a directory holding it), or omit it for the small shipped tokenizer"
    )


def _load_sentencepiece(path: str) -> Tokenizer:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:  # sentencepiece raises RuntimeError("INTERNAL: could not parse ...")
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LWMError(
            f"{path} is not a sentencepiece tokenizer.model ({reason}); pass the tokenizer.model of the checkpoint"
        ) from None
    return Tokenizer(
        path=path,
        vocab_size=sp.get_piece_size(),
        bos_id=sp.bos_id(),
        eos_id=sp.eos_id(),
        pad_id=sp.pad_id() if sp.pad_id() >= 0 else 0,
        encode_piece=sp.encode,
        decode_ids=sp.decode,
    )


def _load_huggingface(path: str) -> Tokenizer:
    try:
        import transformers
    except ImportError:
        raise LWMError(
            f"{path} is a Hugging Face tokenizer directory, which needs transformers; "
            "run `pip install 'lwm[torch]'` or pass a sentencepiece tokenizer.model"
        ) from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LWMError(
            f"cannot load the Hugging Face tokenizer in {path} ({reason}); "
            "pass the tokenizer.model of the checkpoint"
        ) from None
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise LWMError(
            f"the Hugging Face tokenizer in {path} has no bos or eos token (bos={tok.bos_token}, "
            f"eos={tok.eos_token}); pass a LLaMA-style tokenizer.model"
        )

    def encode_piece(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    def decode_ids(ids: list[int]) -> str:
        # clean_up_tokenization_spaces would remove spaces before punctuation: not a round trip.
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return Tokenizer(
        path=path,
        vocab_size=len(tok),
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
        encode_piece=encode_piece,
        decode_ids=decode_ids,
    )
