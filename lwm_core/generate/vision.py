"""Image and video generation: VQGAN frames sampled with classifier-free guidance (CFG).

A frame is its VQGAN's codes in raster order and a delimiter: for LWM's VQGAN 16 x 16 = 256 codes and
END_OF_FRAME, 257 tokens, all vision ids (the vision embedding `vte` in, the vision head out). The grid
is the VQGAN's (`frame_side`: 16 for the released one, 8 for `random:tiny`), not the language model's:
a model knows the grid it was trained on only through its data.

The conditional prompts ("Generate an image of ...") and the unconditional one (`<s><vision>`) run as
one batch in one KV cache, rows [cond_0..cond_B-1; uncond_0..uncond_B-1]; each step guides the
conditional logits away from the unconditional ones, `uncond + s (cond - uncond)`, samples one token per
prompt and feeds that same token to both of its rows.

The ladder, as in decode.py: `prefill` (the left-padded prompts into the cache, the vision logits of their
last position) -> `decode_frame` (257 steps of guide -> mask -> sample -> feed, one compiled fori_loop)
-> `generate_frames` (one compiled call per frame from the host, so a caller can show progress and stop
between frames). `generate` is the whole image or video procedure of the original
(`lwm/vision_generation.py`):

- image: one frame after `prompts.image_prompt` (defaults `IMAGE`: s = 5, top-k 8192, T = 1);
- video: the first frame exactly as an image (image prompt, image settings), then the other frames after
  `prompts.video_prompt` followed by that first frame's 257 tokens (vision ids), unconditional rows
  `<s><vision>` + the same first frame (defaults `VIDEO`: s = 1, top-k 100, T = 1).

Where we differ from the original, on purpose:

- Inside a frame only VQGAN codes can be sampled: ids from the codebook size up (the delimiters 8192,
  8193 and the reserved ids) get -inf. The original sampled over all 8448 vision ids, so a delimiter
  drawn mid-frame shifted every later code of the video.
- Every 257th token is forced to END_OF_FRAME (8192), the last frame's too, as the original did (it never
  generated END_OF_VISION; the delimiter is dropped from the codes returned either way).
- At s = 1 the guided logits are the conditional ones, so the unconditional rows are not run at all
  (half the work of a video at its default s = 1; the original ran them anyway).
- Guidance is computed as `cond + (s - 1)(cond - uncond)`: the same value, and exactly `cond` at s = 1.
- The original cut prompts to their last 128 tokens (its tokenizer's `truncation_side='left'`); we keep
  the whole prompt and refuse one that does not fit the context.
- Beam search (`VisionSampling.beams` > 1, which the original did not have): each prompt keeps the
  `beams` most likely code sequences under the guided distribution, through the frames of one stage (an
  image, or a video's frames after the first), and the most likely is returned. A small model that has
  learnt its clips by heart but not yet firmly (lwm-demo-vision) gives the clip it learnt a higher
  likelihood than greedy decoding's, which one wrong code early carries through the frames after.
  Deterministic: the seed plays no part.
- A PRNG key per prompt, from its seed, split visibly (the first frame's and the rest's, then one per
  token): a prompt's frames depend on its seed, not on the other prompts of the batch (the original drew
  one key for the whole batch from global state).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.generate import decode
from lwm_core.generate.sampling import Sampling, sample
from lwm_core.model.llama import CachedWeights, KVCache, Params, forward_cached
from lwm_core.parallel.mesh import put
from lwm_core.plural import plural
from lwm_core.prompts import (
    END_OF_FRAME,
    FRAME_CODES,
    FRAME_SIDE,
    UNCONDITIONAL,
    image_prompt,
    video_prompt,
)

CODEBOOK = END_OF_FRAME  # 8192 VQGAN codes: vision ids [0, 8192); the delimiters and reserved ids follow
KINDS = ("image", "video")


@dataclass(frozen=True)
class VisionSampling:
    """How one stage (an image, or a video's frames after the first) samples its frames."""

    cfg_scale: float  # s in uncond + s (cond - uncond); 1 = no guidance, 0 = unconditional
    top_k: int  # sample among the k most likely codes; 0 (or >= the codebook) = all of them
    temperature: float  # 0 = greedy
    beams: int = 1  # > 1: beam search over the guided log-probabilities instead (top_k, temperature unused)

    def __post_init__(self) -> None:
        if isinstance(self.beams, bool) or not isinstance(self.beams, int) or self.beams < 1:
            raise LWMError(f"beams {self.beams} must be a whole number >= 1 (1: sample; more: beam search)")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise LWMError(f"cfg_scale {self.cfg_scale} must be a finite number >= 0 (1: no guidance)")
        if self.top_k < 0:
            raise LWMError(f"top_k {self.top_k} must be >= 0 (0: no top-k filter)")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise LWMError(f"temperature {self.temperature} must be a finite number >= 0 (0: greedy)")

    @property
    def guided(self) -> bool:
        """Whether the unconditional rows are needed (at s = 1 the guided logits are the conditional ones)."""
        return self.cfg_scale != 1.0


# The original's settings (lwm/vision_generation.py, scripts/run_sample_*.sh). Video top-k: its flag's
# default was 100 from the first release on, while its run_sample_video.sh passed 1000; we take 100.
IMAGE = VisionSampling(cfg_scale=5.0, top_k=8192, temperature=1.0)
VIDEO = VisionSampling(cfg_scale=1.0, top_k=100, temperature=1.0)


def settings(kind: str, *, cfg_scale: float | None = None, top_k: int | None = None,
             temperature: float | None = None, beams: int | None = None,
             defaults: Mapping[str, VisionSampling] | None = None) -> VisionSampling:
    """The defaults of `kind` (image or video: a model's own, from `defaults`, else LWM's IMAGE and VIDEO)
    with the values given replacing theirs."""
    if kind not in KINDS:
        raise LWMError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    given = {k: v for k, v in dict(cfg_scale=cfg_scale, top_k=top_k, temperature=temperature, beams=beams).items()
             if v is not None}
    return replace(default_sampling(kind, defaults), **given)


def default_sampling(kind: str, defaults: Mapping[str, VisionSampling] | None = None) -> VisionSampling:
    """`kind`'s sampling when nothing is given: the model's (`defaults`, from its SAMPLING_FILE), else LWM's."""
    return (defaults or {}).get(kind) or (IMAGE if kind == "image" else VIDEO)


# A model directory may carry its own sampling defaults, for `lwm gen` and `generate_vision` when no value is
# given: {"image": {"cfg_scale": 1.5, "top_k": 50, "temperature": 0.8}, "video": {...}}, each kind and field
# optional (LWM's values fill in). The released models have none and use LWM's; a small model trained on
# another world may sample best otherwise (lwm-demo-vision: docs/demo.md).
SAMPLING_FILE = "vision_sampling.json"


def read_sampling(directory: str) -> dict[str, VisionSampling]:
    """The sampling defaults of a model directory ({} when it has no SAMPLING_FILE); a malformed file is one
    LWMError naming it."""
    import json
    import os

    path = os.path.join(directory, SAMPLING_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise LWMError(f"cannot read {path}: {e}; it should be JSON like {{\"video\": {{\"top_k\": 50}}}}") from None
    fields = {f.name for f in dataclasses.fields(VisionSampling)}
    if not isinstance(raw, dict) or set(raw) - set(KINDS) or \
            not all(isinstance(v, dict) and set(v) <= fields for v in raw.values()):
        raise LWMError(f"{path} should map {' and/or '.join(KINDS)} to some of {', '.join(sorted(fields))}; "
                       f"got {json.dumps(raw)[:200]}")
    try:
        return {kind: replace(default_sampling(kind), **values) for kind, values in raw.items()}
    except (TypeError, LWMError) as e:
        raise LWMError(f"{path}: {e}") from None


def write_sampling(directory: str, defaults: Mapping[str, VisionSampling]) -> None:
    """Write `defaults` as the directory's SAMPLING_FILE, atomically (nothing when there are none)."""
    import json
    import os

    from lwm_core.checkpoint.atomic import write_text

    if defaults:
        text = json.dumps({kind: dataclasses.asdict(value) for kind, value in defaults.items()}, indent=1)
        write_text(os.path.join(directory, SAMPLING_FILE), text + "\n")


class VisionState(NamedTuple):
    cache: KVCache
    logits: jax.Array  # (R, Vv) float32 vision logits after the last token fed; R = 2B guided, else B
    position: jax.Array  # (R,) RoPE position of the next token
    slot: jax.Array  # () cache slot of the next token (one for all rows: the prompts are left-padded)
    keys: jax.Array  # (B,) one PRNG key per prompt: a prompt's frames do not depend on the others of its batch


# ------------------------------------------------------------------------------------ on the device

def guide(logits: jax.Array, cfg_scale: jax.Array | float, *, guided: bool) -> jax.Array:
    """Logits (2B, V) of rows [cond; uncond] -> guided (B, V): uncond + s (cond - uncond), written as
    cond + (s - 1)(cond - uncond), the same value that is exactly `cond` at s = 1. Unguided (B rows of
    conditional logits only): as they are."""
    if not guided:
        return logits
    cond, uncond = jnp.split(logits, 2, axis=0)
    return cond + (jnp.asarray(cfg_scale, logits.dtype) - 1) * (cond - uncond)


def code_logits(logits: jax.Array, codebook: int) -> jax.Array:
    """(B, V) -> the same with every id >= `codebook` (delimiters, reserved ids, codes the VQGAN lacks) at
    -inf: what may be sampled inside a frame."""
    return jnp.where(jnp.arange(logits.shape[-1]) < codebook, logits, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("config", "slots", "mesh"))
def prefill(config: ModelConfig, params: Params, layers: CachedWeights | None, ids: jax.Array, seg: jax.Array,
            vision_masks: jax.Array, keys: jax.Array, *, slots: int, mesh: Mesh | None) -> VisionState:
    """The padded prompts (R, T) and their vision masks into a fresh cache of `slots` slots -> the state
    whose logits are those of the prompts' last position."""
    R, T = ids.shape
    positions = decode.prompt_positions(seg)
    cache = decode.empty_cache(config, params, R, slots, mesh)
    logits, cache = forward_cached(config, params, ids, positions, seg, cache, jnp.int32(0), mesh=mesh,
                                   vision_masks=vision_masks, mode="vision", layers=layers, fresh=True)
    return VisionState(cache, logits.astype(jnp.float32), positions[:, -1] + 1, jnp.int32(T), keys)


@functools.partial(jax.jit, static_argnames=("config", "guided", "top_k", "codebook", "frame_codes", "mesh"),
                   donate_argnames=("state",))
def decode_frame(config: ModelConfig, params: Params, layers: CachedWeights | None, state: VisionState,
                 cfg_scale: jax.Array, sampling: Sampling, *, guided: bool, top_k: int, codebook: int,
                 frame_codes: int = FRAME_CODES, mesh: Mesh | None) -> tuple[VisionState, jax.Array]:
    """One frame: `frame_codes` + 1 steps (257 for LWM's VQGAN) of guide -> mask -> sample -> feed, in one
    compiled loop -> (state, the frame's tokens (B, frame_codes + 1): the codes and END_OF_FRAME). The state
    (its cache above all) is donated."""
    R = state.logits.shape[0]
    B = R // 2 if guided else R
    is_vision = jnp.ones((R, 1), bool)  # every token fed is a vision id: embedded by vte

    def step(i, carry):
        s, tokens = carry
        logits = code_logits(guide(s.logits, cfg_scale, guided=guided), codebook)
        keys = jax.vmap(jax.random.split)(s.keys)  # (B, 2): each prompt's next key and this step's
        token = jax.vmap(lambda row, key: sample(row[None], key, sampling, top_k)[0])(logits, keys[:, 1])
        token = jnp.where(i == frame_codes, END_OF_FRAME, token)  # the frame's last token is its delimiter
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
        feed = jnp.concatenate([token, token]) if guided else token  # the same token to cond and uncond rows
        logits, cache = forward_cached(config, params, feed[:, None], s.position[:, None], jnp.ones((R, 1), jnp.int32),
                                       s.cache, s.slot, mesh=mesh, vision_masks=is_vision, mode="vision",
                                       layers=layers)
        return VisionState(cache, logits.astype(jnp.float32), s.position + 1, s.slot + 1, keys[:, 0]), tokens

    tokens = jnp.zeros((B, frame_codes + 1), jnp.int32)
    return jax.lax.fori_loop(0, frame_codes + 1, step, (state, tokens))


class Beams(NamedTuple):
    scores: jax.Array  # (B*W,) float32: each beam's summed log-probability of the codes it drew
    tokens: jax.Array  # (B*W, n) int32: each beam's tokens so far (every frame of the stage, delimiters included)


def take_rows(cache: KVCache, rows: jax.Array, kv_heads: int, mesh: Mesh | None) -> KVCache:
    """The cache of rows `rows` (R,) of `cache`, in that order: a beam that continues another's takes its
    keys and values (the (row, kv head) leading axis gathered per row)."""
    from lwm_core.parallel.mesh import CACHE_AXES, constrain

    index = (rows[:, None] * kv_heads + jnp.arange(kv_heads)).reshape(-1)
    return KVCache(*(tuple(constrain(c[index], mesh, CACHE_AXES) for c in kv) for kv in cache[:2]), cache.seg[rows])


@functools.partial(jax.jit, static_argnames=("config", "guided", "beams", "codebook", "frame_codes", "mesh"),
                   donate_argnames=("state", "beam"))
def decode_beam_frame(config: ModelConfig, params: Params, layers: CachedWeights | None, state: VisionState,
                      beam: Beams, frame: jax.Array, cfg_scale: jax.Array, *, guided: bool, beams: int,
                      codebook: int, frame_codes: int = FRAME_CODES,
                      mesh: Mesh | None = None) -> tuple[VisionState, Beams]:
    """One frame of beam search: `frame_codes` + 1 steps of guide -> mask -> log-softmax -> keep the `beams`
    best continuations of each prompt -> reorder the rows -> feed. Rows are [prompt 0's beams, prompt 1's,
    ...] (and the same again, unconditional, when guided); `frame` is the frame's index in the stage, where
    its tokens go in `beam.tokens`. Its delimiter changes no score and no beam."""
    R = state.logits.shape[0]
    BW = R // 2 if guided else R
    B = BW // beams
    is_vision = jnp.ones((R, 1), bool)
    start = frame * (frame_codes + 1)

    def step(i, carry):
        s, b = carry
        logp = jax.nn.log_softmax(code_logits(guide(s.logits, cfg_scale, guided=guided), codebook), axis=-1)
        V = logp.shape[-1]
        top, flat = jax.lax.top_k((b.scores[:, None] + logp).reshape(B, beams * V), beams)  # (B, W)
        last = i == frame_codes
        parent = jnp.where(last, jnp.arange(beams, dtype=flat.dtype), flat // V)
        token = jnp.where(last, END_OF_FRAME, flat % V).reshape(-1).astype(jnp.int32)
        scores = jnp.where(last, b.scores.reshape(B, beams), top).reshape(-1)
        rows = (jnp.arange(B)[:, None] * beams + parent).reshape(-1)
        tokens = jax.lax.dynamic_update_slice(b.tokens[rows], token[:, None], (0, start + i))
        every = jnp.concatenate([rows, rows + BW]) if guided else rows  # a prompt's uncond rows follow its beams
        # A sure model mostly continues each beam with its own best code: then no row moves and the cache (the
        # bulk of the memory traffic) stays where it is.
        cache = jax.lax.cond(jnp.any(rows != jnp.arange(BW)), lambda c: take_rows(c, every, config.kv_heads, mesh),
                             lambda c: c, s.cache)
        feed = jnp.concatenate([token, token]) if guided else token
        logits, cache = forward_cached(config, params, feed[:, None], s.position[every, None],
                                       jnp.ones((R, 1), jnp.int32), cache, s.slot, mesh=mesh,
                                       vision_masks=is_vision, mode="vision", layers=layers)
        state = VisionState(cache, logits.astype(jnp.float32), s.position[every] + 1, s.slot + 1, s.keys)
        return state, Beams(scores, tokens)

    return jax.lax.fori_loop(0, frame_codes + 1, step, (state, beam))


# ------------------------------------------------------------------------------------------ on the host

def check_frames(n_frames: int) -> None:
    if n_frames < 1:
        raise LWMError(f"n_frames={n_frames} must be at least 1")


def check_context(config: ModelConfig, prompt_lengths: list[int], n_frames: int, *,
                  frame_side: int = FRAME_SIDE) -> None:
    """Refuse `n_frames` frames (side^2 + 1 tokens each) after text prompts that would not fit in the context."""
    if not prompt_lengths:
        return
    per_frame = frame_side * frame_side + 1
    need = max(prompt_lengths) + n_frames * per_frame
    if need > config.max_sequence_length:
        raise LWMError(f"{plural(n_frames, 'frame')} of {per_frame} tokens after a prompt of "
                       f"{plural(max(prompt_lengths), 'token')} take {need} tokens, more than the model's context of "
                       f"{config.max_sequence_length}; ask for fewer frames or give a shorter prompt")


def _text(tokenizer, prompt: str) -> tuple[list[int], list[bool]]:
    ids = tokenizer.encode(prompt)
    return ids, [False] * len(ids)


def prompt_rows(config: ModelConfig, tokenizer, prompts: Sequence[str], n_frames: int, *,
                frame_side: int = FRAME_SIDE):
    """Captions -> the (ids, vision mask) rows of the image prompts and, for more than one frame, of the
    video prompts (the first frame is added once drawn); both checked against the context before either
    runs: a video's prompt holds its first frame, then come the other frames."""
    images = [_text(tokenizer, image_prompt(p)) for p in prompts]
    videos = [_text(tokenizer, video_prompt(p)) for p in prompts] if n_frames > 1 else []
    check_context(config, [len(ids) for ids, _ in images], 1, frame_side=frame_side)
    check_context(config, [len(ids) for ids, _ in videos], n_frames, frame_side=frame_side)
    return images, videos


def generate_frames(config: ModelConfig, params: Params, layers: tuple[CachedWeights | None, CachedWeights | None],
                    cond: list[tuple[list[int], list[bool]]], uncond: list[tuple[list[int], list[bool]]], *,
                    n_frames: int, sampling: VisionSampling, codebook: int, keys: jax.Array, mesh: Mesh,
                    frame_side: int = FRAME_SIDE,
                    on_frame: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """Sample `n_frames` frames after each conditional prompt -> tokens (B, n_frames, side^2 + 1).

    cond, uncond: (ids, vision mask) of each row (uncond one per cond row; unused when s = 1). keys: one
    PRNG key per cond row. layers: (the layers prefill reads, the layers decode reads), from
    `generate.weights.DecodeWeights`. on_frame: called after each frame with its index and tokens
    (B, side^2 + 1), on the host; what it raises ends the generation there.
    """
    check_frames(n_frames)
    W = sampling.beams
    # Beam search: each prompt's row W times over (its beams), the unconditional rows likewise.
    rows = [row for row in (cond + uncond if sampling.guided else cond) for _ in range(W)]
    prompts, masks = [ids for ids, _ in rows], [m for _, m in rows]
    n_new = n_frames * (frame_side * frame_side + 1)
    decode.check_lengths(config, [len(p) for p in prompts], n_new)
    decode.check_ids(config, np.asarray([t for p in prompts for t in p], np.int32),
                     np.asarray([v for m in masks for v in m], bool))
    length = decode.bucket(max(len(p) for p in prompts))
    ids, seg = decode.left_pad(prompts, config.pad_token_id, length)
    vision_masks = decode.left_pad_masks(masks, length)
    # Slots for the frames, rounded up so that a few shapes serve every frame count and any sp divides them.
    slots = length + -(-n_new // 64) * 64
    batch = ("batch", None)
    state = prefill(config, params, layers[0], put(ids, mesh, batch), put(seg, mesh, batch),
                    put(vision_masks, mesh, batch), keys, slots=slots, mesh=mesh)
    cfg_scale = jnp.float32(sampling.cfg_scale)
    frame_codes = frame_side * frame_side
    if W > 1:
        B = len(cond)
        # Beam 0 of each prompt starts alone (the others at -inf, where they stay until there are W sequences
        # to keep): the first step's best are distinct codes.
        scores = jnp.where(jnp.arange(B * W) % W == 0, 0.0, -jnp.inf).astype(jnp.float32)
        beam = Beams(scores, jnp.zeros((B * W, n_frames * (frame_codes + 1)), jnp.int32))
        for f in range(n_frames):
            state, beam = decode_beam_frame(config, params, layers[1], state, beam, jnp.int32(f), cfg_scale,
                                            guided=sampling.guided, beams=W, codebook=codebook,
                                            frame_codes=frame_codes, mesh=mesh)
            if on_frame is not None:  # the frame of each prompt's best beam so far (a later frame may change it)
                best = _best_beams(beam, B, W)
                on_frame(f, best[:, f * (frame_codes + 1):(f + 1) * (frame_codes + 1)])
        return _best_beams(beam, B, W).reshape(B, n_frames, frame_codes + 1)
    top_k = sampling.top_k if 0 < sampling.top_k < codebook else 0  # k >= the codes left: no filter to apply
    draw = Sampling(jnp.float32(sampling.temperature), jnp.float32(1.0))
    frames = []
    for f in range(n_frames):
        state, tokens = decode_frame(config, params, layers[1], state, cfg_scale, draw, guided=sampling.guided,
                                     top_k=top_k, codebook=codebook, frame_codes=frame_codes, mesh=mesh)
        frames.append(np.asarray(jax.device_get(tokens)))
        if on_frame is not None:
            on_frame(f, frames[-1])
    return np.stack(frames, axis=1)


def _best_beams(beam: Beams, B: int, W: int) -> np.ndarray:
    """The tokens (B, n) of each prompt's most likely beam (the first of equals)."""
    scores, tokens = np.asarray(jax.device_get(beam.scores)), np.asarray(jax.device_get(beam.tokens))
    return tokens[np.arange(B) * W + scores.reshape(B, W).argmax(axis=1)]


def generate(config: ModelConfig, params: Params, layers: tuple[CachedWeights | None, CachedWeights | None],
             tokenizer, prompts: list[str], *, kind: str, n_frames: int, sampling: VisionSampling,
             first_frame: VisionSampling = IMAGE, codebook: int = CODEBOOK, seeds: Sequence[int], mesh: Mesh,
             frame_side: int = FRAME_SIDE,
             on_frame: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """Captions -> tokens (B, n_frames, side^2 + 1): the original's image or video procedure (module docstring).

    kind "image": one frame with `sampling`. kind "video": the first frame with `first_frame` (the image
    settings), the others with `sampling`. seeds: one per prompt. frame_side: the VQGAN's codes per side
    (16 for LWM's). on_frame(index, tokens (B, side^2 + 1)) over the whole video.
    """
    if kind not in KINDS:
        raise LWMError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    check_frames(n_frames)
    if kind == "image" and n_frames != 1:
        raise LWMError(f"an image is one frame, not {n_frames}; ask for a video for more")
    if not 0 < codebook <= CODEBOOK:
        raise LWMError(f"codebook {codebook} must be in 1..{CODEBOOK} (the model's VQGAN ids)")
    if not prompts:
        raise LWMError("no prompts: give at least one")
    if len(seeds) != len(prompts):
        raise LWMError(f"{plural(len(seeds), 'seed')} for {plural(len(prompts), 'prompt')}; give one seed, or one "
                       f"per prompt")
    bad = [s for s in seeds if not 0 <= s < 2**63]
    if bad:
        raise LWMError(f"seed {bad[0]} is out of range; use an integer from 0 to 2**63 - 1")

    if frame_side < 1:
        raise LWMError(f"frame_side {frame_side} must be at least 1 (codes per side of a VQGAN frame)")
    images, videos = prompt_rows(config, tokenizer, prompts, n_frames, frame_side=frame_side)
    uncond = [_text(tokenizer, UNCONDITIONAL)] * len(prompts)
    run = functools.partial(generate_frames, config, params, layers, codebook=codebook, mesh=mesh,
                            frame_side=frame_side)
    # Each prompt's key splits into its first frame's and the other frames'.
    keys = jax.vmap(jax.random.split)(jnp.stack([jax.random.key(s) for s in seeds]))  # (B, 2)
    first = run(images, uncond, n_frames=1,
                sampling=sampling if kind == "image" else first_frame, keys=keys[:, 0], on_frame=on_frame)
    if n_frames == 1:
        return first

    def with_first(row: tuple[list[int], list[bool]], b: int) -> tuple[list[int], list[bool]]:
        # The first frame's tokens (codes and END_OF_FRAME) after the prompt, as vision ids.
        ids, mask = row
        return ids + first[b, 0].tolist(), mask + [True] * first.shape[-1]

    rest = run([with_first(row, b) for b, row in enumerate(videos)],
               [with_first(row, b) for b, row in enumerate(uncond)], n_frames=n_frames - 1, sampling=sampling,
               keys=keys[:, 1], on_frame=None if on_frame is None else (lambda f, tokens: on_frame(f + 1, tokens)))
    return np.concatenate([first, rest], axis=1)


def codes(tokens: np.ndarray) -> np.ndarray:
    """Tokens (..., side^2 + 1) -> VQGAN codes (..., side, side): the delimiter dropped, raster order
    restored (16 x 16 for LWM's VQGAN)."""
    side = math.isqrt(tokens.shape[-1] - 1)
    if side * side + 1 != tokens.shape[-1]:
        raise LWMError(f"frames of {tokens.shape[-1]} tokens are not a square grid of codes and a delimiter")
    return tokens[..., :-1].reshape(*tokens.shape[:-1], side, side)


# --------------------------------------------------------------------- pairing a VQGAN with the model

# The random VQGAN for `random:` models: the tiny preset at 64 x 64 pixels, which makes LWM's 16 x 16 codes
# of 8192 (the tiny preset itself makes 8 x 8 of 64).
RANDOM_VQGAN = ("random:tiny", {"resolution": 64, "num_embeddings": CODEBOOK})


def vqgan_beside(spec: str, source) -> tuple[str, dict | None]:
    """The VQGAN that goes with the model `spec` (resolved: its `checkpoint.loader.Source`) -> (VQGAN spec,
    config overrides for `load_vqgan`): the `vqgan` beside its weights (the LWM-Chat-*-Jax repos keep it
    beside `params`) or a VQGAN directory `vqgan/` there (the built-in demo models, and any model that
    ships its own), the hub repo's for a hub id, `RANDOM_VQGAN` for random weights."""
    import os

    from lwm_core import hub
    from lwm_core.vision.loading import PICKLE

    if source.kind == "random":
        return RANDOM_VQGAN
    directory = source.path if os.path.isdir(source.path) else os.path.dirname(os.path.abspath(source.path))
    if os.path.exists(os.path.join(directory, PICKLE)):
        return directory, None
    if os.path.isfile(os.path.join(directory, "vqgan", "config.json")):
        return os.path.join(directory, "vqgan"), None
    if hub.looks_like_hub_id(spec) and not os.path.exists(spec):
        return spec, None  # load_vqgan downloads the repo's `vqgan`
    raise LWMError(f"no VQGAN beside the model {spec} (no `{PICKLE}` or `vqgan/` in {directory}); pass one with "
                   f"--vqgan: the released `vqgan` file, a directory from lwm convert vqgan, or a hub id such as "
                   f"LargeWorldModel/LWM-Chat-1M-Jax")


def check_vqgan(config, name: str) -> None:
    """Refuse a VQGAN (its `VQGANConfig`) whose codebook is larger than the model's 8192 code ids. Its grid
    (16 x 16 codes for LWM's) is the frame a model reads and writes with it: a model trained with another
    VQGAN's codes draws noise through this one, which nothing but the pairing can tell."""
    if config.num_embeddings > CODEBOOK:
        raise LWMError(f"VQGAN {name} has {config.num_embeddings} codes; the model's vision ids hold {CODEBOOK}; pass "
                       f"the VQGAN the model was trained with")
