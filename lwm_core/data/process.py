"""One JSON line -> one `Example`: token ids, loss mask and vision mask (LWM's TextProcessor and
VisionTextProcessor, with errors that name the line instead of KeyErrors and asserts).

Layout of an example, as LWM builds it:

    [BOS]                                  loss 0   (add_bos)
    for each field of the spec:
      <|bos|> / <|eos|>                    one id, loss of the field
      text field                           encode(prepend_text + text) for the first field, else encode(text)
      vision field (vision_text data)      encode('<vision>') codes(frame 0) 8192 ... codes(frame F-1) 8193
                                           encode('</vision>'); vision mask on the codes and delimiters only
    [EOS]                                  loss 1   (add_eos)

The vision mask tells the model which positions use the vision embedding and head: VQGAN codes
[0, 8192) overlap text ids, so the id alone does not say which table it indexes.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import numpy as np

from lwm_core.data.config import VQGAN_CODES, DataConfig
from lwm_core.data.fields import Field, parse_fields
from lwm_core.errors import LWMError
from lwm_core.plural import plural


class Example(NamedTuple):
    tokens: np.ndarray  # int32 (n,): text ids, or VQGAN codes / delimiters where vision_mask is set
    loss_mask: np.ndarray  # float32 (n,): 1 where predicting this token counts towards the loss
    vision_mask: np.ndarray  # bool (n,): True on VQGAN codes and the end-of-frame/vision ids


def process_example(record: dict, config: DataConfig, tokenizer, *, line: int, where: str) -> Example:
    """Tokenize one JSON object.

    Args:
        record: the parsed JSON line.
        config: the data config (fields, special tokens, vision layout).
        tokenizer: anything with `encode(text) -> list[int]`, `bos_id` and `eos_id`.
        line: 0-based line index in the file (LWM's example index): seeds the choice among a list of
            fields strings, so a line always gets the same one, as in LWM (`random.Random(index)`).
        where: the line for error messages, e.g. "data.jsonl:17".
    """
    fields = _fields_of(record, config, line, where)
    vision_text = config.kind == "vision_text"
    tokens: list[np.ndarray] = []
    loss: list[np.ndarray] = []
    vision: list[np.ndarray] = []

    def add(ids, loss_value: float, vision_value: bool | np.ndarray = False) -> None:
        ids = np.asarray(ids, np.int32)
        tokens.append(ids)
        loss.append(np.full(len(ids), loss_value, np.float32))
        vision.append(np.broadcast_to(np.asarray(vision_value, np.bool_), ids.shape))

    if config.add_bos:
        add([tokenizer.bos_id], 0.0)  # nothing predicts the first token
    for i, field in enumerate(fields):
        weight = 1.0 if field.loss else 0.0
        if field.special:
            add([tokenizer.bos_id if field.special == "bos" else tokenizer.eos_id], weight)
        elif vision_text and field.vision:
            ids, mask = _vision_tokens(_value(record, field.keys[0], where), field.keys[0], config, tokenizer,
                                       where)
            add(ids, weight, mask)
        else:
            values = [_value(record, key, where) for key in field.keys]
            for key, value in zip(field.keys, values):
                if not isinstance(value, str):
                    raise LWMError(f"{where}: key {key!r} holds {_json_type(value)}, not a string; text "
                                   "fields must be strings (vision codes need data.kind = vision_text)")
            text = config.subfield_separator.join(values)
            if i == 0:  # LWM: only when the first field is text (a leading <|bos|> or vision field drops it)
                text = config.prepend_text + text
            add(tokenizer.encode(text), weight)
    if config.add_eos:
        add([tokenizer.eos_id], 1.0)  # predicting EOS teaches the model to stop
    # Never an empty list: parse_fields yields at least one field (its tokens may be empty).
    return Example(np.concatenate(tokens), np.concatenate(loss), np.concatenate(vision))


def _fields_of(record: dict, config: DataConfig, line: int, where: str) -> tuple[Field, ...]:
    vision_text = config.kind == "vision_text"
    if not config.fields_from_example:
        return parse_fields(config.fields, vision_text=vision_text)
    key = config.fields_from_example
    spec = _value(record, key, where)
    if isinstance(spec, list) and spec:
        if config.fields_index >= 0:
            if config.fields_index >= len(spec):
                raise LWMError(f"{where}: data.fields_index = {config.fields_index} but key {key!r} lists "
                               f"{plural(len(spec), 'fields string')}; use an index below {len(spec)} or -1")
            spec = spec[config.fields_index]
        else:
            # LWM picks one per line with random.Random(line index): the same line gets the same
            # fields string in every epoch and in every run.
            spec = random.Random(line).choice(spec)
    if not isinstance(spec, str):
        raise LWMError(f"{where}: key {key!r} (data.fields_from_example) holds {_json_type(spec)}; it must "
                       "be a fields string such as '[question],answer' or a non-empty list of them")
    try:
        return parse_fields(spec, vision_text=vision_text)
    except LWMError as e:
        raise LWMError(f"{where}: {e}") from None


def _vision_tokens(codes: Any, key: str, config: DataConfig, tokenizer, where: str) -> tuple[np.ndarray, np.ndarray]:
    """`<vision>` frames with delimiters `</vision>` as ids, and the vision mask over them."""
    P = config.tokens_per_frame
    array = None
    if isinstance(codes, list):
        try:
            array = np.asarray(codes)
        except ValueError:  # ragged nested lists
            pass
    if array is None or array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        held = "a list of other values" if isinstance(codes, list) else _json_type(codes)
        raise LWMError(f"{where}: vision key {key!r} holds {held}; it must be a flat list of VQGAN codes "
                       f"(integers), {P} per frame")
    if array.size == 0 or array.size % P:
        raise LWMError(f"{where}: vision key {key!r} has {plural(array.size, 'code')}, not a positive multiple of "
                       f"data.tokens_per_frame = {P}; check the VQGAN tokenization or tokens_per_frame")
    bad = (array < 0) | (array >= VQGAN_CODES)
    if bad.any():
        raise LWMError(f"{where}: vision key {key!r} has code {int(array[bad][0])} at index "
                       f"{int(np.flatnonzero(bad)[0])}; VQGAN codes are in [0, {VQGAN_CODES})")
    # (F, P): one row of codes per frame
    frames = array.reshape(-1, P)
    F = len(frames)
    if 0 < config.max_frames < F:
        # Evenly spaced frames including the first and last, as LWM picks them.
        frames = frames[np.linspace(0, F - 1, config.max_frames).astype(int)]
        F = config.max_frames
    delimiters = np.full((F, 1), config.eof_token)
    delimiters[-1] = config.eov_token
    # (F, P + 1) -> (F * (P + 1),): each frame followed by end-of-frame, the last by end-of-vision
    body = np.concatenate([frames, delimiters], axis=1).reshape(-1)
    start, end = tokenizer.encode("<vision>"), tokenizer.encode("</vision>")
    ids = np.concatenate([np.asarray(start, np.int64), body, np.asarray(end, np.int64)])
    mask = np.zeros(len(ids), np.bool_)
    mask[len(start): len(start) + len(body)] = True
    return ids, mask


def _value(record: dict, key: str, where: str) -> Any:
    try:
        return record[key]
    except KeyError:
        keys = ", ".join(repr(k) for k in list(record)[:20]) + (", ..." if len(record) > 20 else "")
        raise LWMError(f"{where}: no key {key!r} (the line has keys {keys or 'none'}); "
                       "fix data.fields or the data") from None


def _json_type(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
