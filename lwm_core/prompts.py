"""The exact prompt strings the LWM models were trained with (docs/compatibility.md#prompts)."""

from __future__ import annotations

SYSTEM = "You are a helpful assistant."


def chat_prompt(question: str, *, system: str = SYSTEM, history: list[tuple[str, str]] = ()) -> str:
    """`You are a helpful assistant. USER: {question} ASSISTANT:`, with earlier turns in the same
    USER/ASSISTANT form (the released chat models were tuned on single turns; earlier turns are
    closed with `</s>` as in Vicuna-style templates)."""
    parts = [system] if system else []
    for user, assistant in history:
        parts.append(f"USER: {user} ASSISTANT: {assistant}</s>")
    parts.append(f"USER: {question} ASSISTANT:")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------- vision
# A frame in a prompt is its VQGAN's codes (LWM's: 16 x 16 = 256, raster order) and one delimiter:
# END_OF_FRAME after every frame but the last, END_OF_VISION after the last
# (docs/compatibility.md#vision-language-models). Another VQGAN's grid (the demo world's 8 x 8) works the same.
FRAME_SIDE = 16
FRAME_CODES = FRAME_SIDE * FRAME_SIDE  # 256
TOKENS_PER_FRAME = FRAME_CODES + 1  # 257
END_OF_FRAME = 8192
END_OF_VISION = 8193
VISION_START, VISION_END = "<vision>", "</vision>"  # ordinary text: several sentencepiece pieces each

# Classifier-free guidance's unconditional prompt: the start of a vision block and nothing else.
UNCONDITIONAL = "<s><vision>"


def generation_request(kind: str, caption: str) -> str:
    """`You are a helpful assistant. USER: Generate an image of {caption} ASSISTANT:` (or `a video of`): the
    turn before a generated image or video, as it is both in a prompt (`image_prompt`, `video_prompt`) and
    in LWM-Chat training lines (`lwm vqgan encode --chat`), where the data pipeline adds the BOS and the
    `<vision>` around the codes."""
    what = "an image" if kind == "image" else "a video"
    return f"{SYSTEM} USER: Generate {what} of {caption} ASSISTANT:"


def image_prompt(prompt: str) -> str:
    """`<s>You are a helpful assistant. USER: Generate an image of {prompt} ASSISTANT: <vision>`: the prompt
    the vision models were tuned to draw an image after (the frame's codes follow it)."""
    return f"<s>{generation_request('image', prompt)} {VISION_START}"


def video_prompt(prompt: str) -> str:
    """`... USER: Generate a video of {prompt} ASSISTANT: <vision>`, as `image_prompt`."""
    return f"<s>{generation_request('video', prompt)} {VISION_START}"


def question_turn(question: str) -> str:
    """`You are a helpful assistant. USER: {question}\n`: what comes before the frames of a vision chat
    prompt (`vision_chat_prompt`) and of an LWM-Chat training line about an image or video."""
    return f"{SYSTEM} USER: {question}\n"


ANSWER_TURN = " ASSISTANT:"  # after the frames' `</vision>`; the answer follows it


def vision_chat_prompt(tokenizer, question: str, frame_codes) -> tuple[list[int], list[bool]]:
    """A question about an image or video -> (ids, vision_mask) for `LWM.generate(..., vision_masks=)`.

    The pieces are tokenized one by one, as the original's vision chat did (Feb-2024 tokenizer: no BOS is
    added, a literal `<s>` is the BOS id): `<s>You are a helpful assistant. USER: {question}\\n`, then
    `<vision>`, then each frame's codes (256 with LWM's VQGAN) followed by END_OF_FRAME (8192), the last frame's by
    END_OF_VISION (8193) instead, then `</vision>`, then ` ASSISTANT:`. The mask is True on the codes and
    delimiters only.

    frame_codes: one entry per frame, each a square grid of VQGAN codes ((256,) or (16, 16) for LWM's
    VQGAN, raster order) in [0, 8192), as `lwm_core.load_vqgan(...).encode` gives them for evenly spaced
    frames; every frame the same size.
    """
    import math

    import numpy as np

    from lwm_core.errors import LWMError

    frames = [np.asarray(f) for f in frame_codes]
    if not frames:
        raise LWMError("no frames: give the codes of at least one image or video frame")
    body: list[int] = []
    size = frames[0].size
    for i, codes in enumerate(frames):
        square = size > 0 and math.isqrt(size) ** 2 == size
        if codes.size != size or not square or codes.dtype.kind not in "iu":
            raise LWMError(f"frame {i} holds {codes.size} {codes.dtype} values; a frame is a square grid of integer "
                           f"VQGAN codes, the same for every frame ({FRAME_SIDE}x{FRAME_SIDE} = {FRAME_CODES} for the "
                           f"released VQGAN)")
        bad = (codes < 0) | (codes >= END_OF_FRAME)
        if bad.any():
            raise LWMError(f"frame {i} has code {int(codes[bad].flat[0])}; VQGAN codes are in [0, {END_OF_FRAME})")
        body += codes.reshape(-1).astype(int).tolist()
        body.append(END_OF_VISION if i == len(frames) - 1 else END_OF_FRAME)
    head = tokenizer.encode(f"<s>{question_turn(question)}") + tokenizer.encode(VISION_START)
    tail = tokenizer.encode(VISION_END) + tokenizer.encode(ANSWER_TURN)
    ids = head + body + tail
    mask = [False] * len(head) + [True] * len(body) + [False] * len(tail)
    return ids, mask
