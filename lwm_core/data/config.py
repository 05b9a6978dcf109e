"""What `lwm train` reads and how it turns lines into rows: one frozen config, the `[data]` table of a run.

The defaults read LWM's text format (`{"text": "..."}` per line, loss on every token, BOS and EOS
added) and pack several examples into each row with segment ids, so no token attends across examples.
"""

from __future__ import annotations

from dataclasses import dataclass

from lwm_core.config import VISION_VOCAB_SIZE, _f
from lwm_core.data.fields import parse_fields
from lwm_core.errors import LWMError

KINDS = ("text", "vision_text")
# VQGAN codebook size: codes are [0, 8192); the ids above it (up to VISION_VOCAB_SIZE) are reserved
# for delimiters such as end-of-frame and end-of-vision.
VQGAN_CODES = 8192


def split_paths(value: str) -> tuple[str, ...]:
    """`a.jsonl` or `a.jsonl,b.jsonl` (data.path, data.eval_path) -> the files, in order."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class DataConfig:
    """A JSONL data set and the rules that turn each line into tokens, loss weights and vision masks."""

    path: str = _f("training data: a JSONL file, one JSON object per line; several (a TOML list, or "
                   "comma-separated) read as one, end to end in the order given", default="")
    eval_path: str = _f("optional eval data in the same format, one file or several (empty: no eval set)",
                        default="")
    kind: str = _f("text (LWM's json) | vision_text (LWM's json_vision: VQGAN codes in 'vision' fields)",
                   default="text")
    fields: str = _f("LWM fields: comma-separated keys; [key] = no loss, a+b = joined, <|bos|>/<|eos|>",
                     default="text")
    fields_from_example: str = _f("key whose value is the fields string (or a list of them); "
                                  "overrides fields", default="")
    fields_index: int = _f("which string of a fields list to use (-1: one chosen per line, as LWM does)",
                           default=-1)
    subfield_separator: str = _f("text put between the values of a+b", default=" ")
    prepend_text: str = _f("text put before the first field of every example", default="")
    add_bos: bool = _f("start every example with BOS (no loss on it)", default=True)
    add_eos: bool = _f("end every example with EOS (with loss: the model learns to stop)", default=True)
    tokens_per_frame: int = _f("VQGAN codes per image or video frame (16 x 16 = 256)", default=256)
    eof_token: int = _f("vision id after every frame but the last (end of frame)", default=8192)
    eov_token: int = _f("vision id after the last frame (end of vision)", default=8193)
    max_frames: int = _f("keep at most this many frames, evenly spaced (-1: all)", default=-1)
    pack: bool = _f("pack several examples per row with segment ids (false: one example per row, padded)",
                    default=True)
    shuffle: bool = _f("shuffle the examples, with a fresh order every epoch", default=True)
    seed: int = _f("seed of the shuffle (the order depends only on seed, epoch and the number of lines)",
                   default=0)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LWMError(f"data.kind = {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.tokens_per_frame <= 0:
            raise LWMError(f"data.tokens_per_frame = {self.tokens_per_frame} must be positive (LWM: 256)")
        for name in ("eof_token", "eov_token"):
            value = getattr(self, name)
            if not VQGAN_CODES <= value < VISION_VOCAB_SIZE:
                raise LWMError(f"data.{name} = {value} must be a reserved vision id in "
                               f"[{VQGAN_CODES}, {VISION_VOCAB_SIZE}), above the VQGAN codes (LWM: 8192, 8193)")
        if self.eof_token == self.eov_token:
            raise LWMError(f"data.eof_token and data.eov_token are both {self.eof_token}; the model could not "
                           "tell the end of a frame from the end of the video (LWM: 8192, 8193)")
        if self.max_frames == 0 or self.max_frames < -1:
            raise LWMError(f"data.max_frames = {self.max_frames} must be -1 (all frames) or positive")
        if self.fields_index < -1:
            raise LWMError(f"data.fields_index = {self.fields_index} must be -1 (chosen per line) or >= 0")
        if self.seed < 0:
            # numpy's SeedSequence, which orders the epochs, accepts only non-negative entropy.
            raise LWMError(f"data.seed = {self.seed} must be >= 0")
        if not self.fields_from_example:
            # Fail at startup, not at the first line: raises LWMError naming the spec.
            parse_fields(self.fields, vision_text=self.kind == "vision_text")
