"""Generation with a vision model (lwm_core.generate.vision, LWM.generate(vision_masks=)): text replies to
prompts that hold frames, and images and videos sampled with classifier-free guidance.

A random vision model (random:tiny + vision=true, 4096 text ids, 8448 vision ids) on one device and on a
1,1,2,4 mesh; the 3-frame video of two prompts is made once per mesh (module fixtures: compiling the
frame loop is most of the time).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lwm_core
from lwm_core.errors import LWMError
from lwm_core.generate import decode, vision
from lwm_core.prompts import (
    END_OF_FRAME,
    END_OF_VISION,
    TOKENS_PER_FRAME,
    UNCONDITIONAL,
    image_prompt,
    video_prompt,
    vision_chat_prompt,
)

PROMPTS = ["fireworks over the city", "a red cat"]
VISION = {"vision": True}


@pytest.fixture(scope="module")
def model():
    return lwm_core.load_model("random:tiny", mesh="1,1,1,1", overrides=VISION)


@pytest.fixture(scope="module")
def video(model):
    """(codes (2, 3, 16, 16), [(frame index, tokens (2, 257))]) of a 3-frame video of PROMPTS, seed 0."""
    frames = []
    codes = model.generate_vision(PROMPTS, kind="video", n_frames=3, on_frame=lambda i, t: frames.append((i, t)))
    return codes, frames


def _frames(seed: int, n: int):
    return [np.random.default_rng(seed + i).integers(0, END_OF_FRAME, (16, 16)) for i in range(n)]


# ------------------------------------------------------------------------------- prompts with frames

def test_vision_chat_prompt_is_the_originals_pieces_with_delimiters_after_each_frame(model):
    tok = model.tokenizer
    frames = _frames(0, 3)
    ids, mask = vision_chat_prompt(tok, "What happens here?", frames)
    head = tok.encode("<s>You are a helpful assistant. USER: What happens here?\n") + tok.encode("<vision>")
    tail = tok.encode("</vision>") + tok.encode(" ASSISTANT:")
    assert head[0] == tok.bos_id and tok.bos_id not in head[1:] + tail  # one BOS, at the start
    body = []
    for i, f in enumerate(frames):
        body += f.reshape(-1).tolist() + [END_OF_VISION if i == 2 else END_OF_FRAME]
    assert ids == head + body + tail and len(body) == 3 * TOKENS_PER_FRAME
    assert mask == [False] * len(head) + [True] * len(body) + [False] * len(tail)
    with pytest.raises(LWMError, match="frame 1 holds 64 int64 values; a frame is a square grid of integer VQGAN "
                                       "codes, the same for every frame"):
        vision_chat_prompt(tok, "q", [frames[0], np.zeros((8, 8), np.int64)])
    with pytest.raises(LWMError, match="frame 0 holds 60 int64 values"):
        vision_chat_prompt(tok, "q", [np.zeros(60, np.int64)])
    # another VQGAN's grid (the demo world's 8 x 8): 64 codes and a delimiter per frame
    small, _ = vision_chat_prompt(tok, "What happens here?", [np.zeros((8, 8), np.int64)] * 2)
    assert len(small) == len(head) + 2 * 65 + len(tail)
    with pytest.raises(LWMError, match="frame 0 has code 8192"):
        vision_chat_prompt(tok, "q", [np.full(256, 8192)])


def test_generate_with_vision_masks_is_greedy_over_the_models_own_logits(model):
    """A ragged batch of vision-chat prompts: each new token is the argmax of the full forward's text logits
    over the prompt (vision ids where the mask says so) and the tokens before it, and stream() agrees."""
    prompts = [vision_chat_prompt(model.tokenizer, q, _frames(i, 1)) for i, q in enumerate(["Describe it.",
                                                                                          "What colour is the sky?"])]
    ids, masks = [p[0] for p in prompts], [p[1] for p in prompts]
    new = model.generate(ids, 6, vision_masks=masks)
    for row, (p, m) in enumerate(prompts):
        tokens = new[row].tolist()
        if model.config.eos_token_id in tokens:
            tokens = tokens[:tokens.index(model.config.eos_token_id) + 1]
        logits = model.logits(np.array(p + tokens), np.array(m + [False] * len(tokens)), mode="text")
        assert tokens == logits[len(p) - 1:len(p) - 1 + len(tokens)].argmax(-1).tolist()
    first = new[0].tolist()
    first = first[:first.index(model.config.eos_token_id)] if model.config.eos_token_id in first else first
    assert list(model.stream(ids[0], 6, vision_masks=masks[0])) == first  # stream stops before EOS
    # The masks are what make the codes vision ids: without them the codes are out of the text vocabulary.
    with pytest.raises(LWMError, match="outside the vocabulary of 4096"):
        model.generate(ids[0], 2)
    with pytest.raises(LWMError, match=r"vision_masks have lengths \[3\] but the prompts \[2\]"):
        model.generate([[5, 6]], 2, vision_masks=[[False] * 3])


def test_vision_masks_and_vision_generation_need_a_vision_model():
    text_only = lwm_core.load_model("random:tiny", mesh="1,1,1,1")
    with pytest.raises(LWMError, match="vision_masks need a vision model"):
        text_only.generate([5, 6], 2, vision_masks=[False, False])
    with pytest.raises(LWMError, match="generate_vision needs a vision model"):
        text_only.generate_vision("fireworks")


# ----------------------------------------------------------------------------------- guidance

def test_guidance_at_scale_one_is_the_conditional_logits_exactly():
    rng = np.random.default_rng(0)
    cond, uncond = (jnp.asarray(rng.normal(0, 30, (2, 8448)), jnp.float32) for _ in range(2))
    both = jnp.concatenate([cond, uncond])
    np.testing.assert_array_equal(vision.guide(both, 1.0, guided=True), cond)  # bit for bit
    np.testing.assert_allclose(vision.guide(both, 5.0, guided=True), uncond + 5 * (cond - uncond), rtol=1e-5,
                               atol=1e-3)
    np.testing.assert_array_equal(vision.guide(cond, 5.0, guided=False), cond)  # unguided: only cond rows
    masked = vision.code_logits(cond, 8192)
    assert np.isneginf(masked[:, 8192:]).all() and np.array_equal(masked[:, :8192], cond[:, :8192])


def test_the_guided_logits_of_the_batched_prefill_at_scale_one_are_the_prompts_vision_logits(model):
    """The sampler's logits function on [cond; uncond] in one cache, at s = 1, against LWM.logits."""
    tok = model.tokenizer
    cond, uncond = tok.encode(image_prompt(PROMPTS[0])), tok.encode(UNCONDITIONAL)
    ids, seg = decode.left_pad([cond, uncond], model.config.pad_token_id, 64)
    keys = jnp.stack([jax.random.key(0)])
    state = vision.prefill(model.config, model.params, None, ids, seg, np.zeros(ids.shape, bool), keys, slots=128,
                           mesh=model.mesh)
    guided = np.asarray(vision.guide(state.logits, 1.0, guided=True))[0]
    want = model.logits(np.array(cond), mode="vision")[-1]
    np.testing.assert_allclose(guided, want, rtol=1e-4, atol=1e-5)
    # and s = 0 is the unconditional prompt's
    np.testing.assert_allclose(np.asarray(vision.guide(state.logits, 0.0, guided=True))[0],
                               model.logits(np.array(uncond), mode="vision")[-1], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ images and videos

def test_every_frame_is_256_codes_then_its_delimiter(video):
    codes, frames = video
    assert codes.shape == (2, 3, 16, 16) and codes.dtype == np.int32
    assert [i for i, _ in frames] == [0, 1, 2]
    for _, tokens in frames:
        assert tokens.shape == (2, TOKENS_PER_FRAME)
        assert (tokens[:, :256] >= 0).all() and (tokens[:, :256] < END_OF_FRAME).all()  # no delimiter inside
        assert (tokens[:, 256] == END_OF_FRAME).all()
    np.testing.assert_array_equal(np.stack([t for _, t in frames], 1)[..., :256].reshape(codes.shape), codes)
    assert len(np.unique(codes)) > 1000  # temperature 1 over 8192 codes: sampled, not stuck


def test_a_video_starts_with_the_image_of_its_prompt_and_a_prompt_ignores_its_batch(model, video):
    codes, _ = video
    np.testing.assert_array_equal(model.generate_vision(PROMPTS, kind="video", n_frames=3), codes)  # reruns
    alone = model.generate_vision(PROMPTS[1], kind="image")  # the second prompt alone, as an image
    assert alone.shape == (1, 1, 16, 16)
    np.testing.assert_array_equal(alone[0, 0], codes[1, 0])
    other = model.generate_vision(PROMPTS[1], kind="image", seed=1)
    assert (other != alone).mean() > 0.9


def test_greedy_images_within_a_smaller_codebook(model):
    """temperature 0 is greedy (the same codes for any seed); codebook_size masks the codes a smaller VQGAN
    lacks."""
    a = model.generate_vision(PROMPTS, kind="image", temperature=0, codebook_size=64, seed=0)
    b = model.generate_vision(PROMPTS, kind="image", temperature=0, codebook_size=64, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.max() < 64


def test_beam_search_finds_the_most_likely_frames(model):
    """Beam search with as many beams as there are prefixes: the most likely of all 27 videos of three
    1-code frames over 3 codes (after a first frame drawn as an image), their log-probabilities summed from
    the model's full forward pass; a prompt's beams do not depend on its batch; one beam is greedy."""
    import itertools

    first = vision.VisionSampling(1.0, 0, 0.0, beams=9)
    got = model.generate_vision(PROMPTS, kind="video", n_frames=4, beams=9, cfg_scale=1.0, first_frame=first,
                                codebook_size=3, frame_side=1)
    assert got.shape == (2, 4, 1, 1)
    for b, prompt in enumerate(PROMPTS):
        ids = model.tokenizer.encode(video_prompt(prompt))
        head = ids + [int(got[b, 0, 0, 0]), END_OF_FRAME]

        scores = {codes: _log_likelihood(model, head, len(ids), codes)
                  for codes in itertools.product(range(3), repeat=3)}
        best = max(scores, key=scores.get)
        chosen = tuple(int(c) for c in got[b, 1:, 0, 0])
        assert scores[chosen] >= scores[best] - 1e-4, (chosen, best, scores[chosen], scores[best])
        alone = model.generate_vision([prompt], kind="video", n_frames=4, beams=9, cfg_scale=1.0, first_frame=first,
                                      codebook_size=3, frame_side=1, seed=7)
        np.testing.assert_array_equal(alone[0], got[b])
    image = model.generate_vision(PROMPTS, kind="image", beams=1, temperature=0, cfg_scale=1.0, codebook_size=64)
    np.testing.assert_array_equal(image, model.generate_vision(PROMPTS, kind="image", temperature=0, cfg_scale=1.0,
                                                               codebook_size=64))


def _log_likelihood(model, head: list[int], n_text: int, codes) -> float:
    """log p(codes | head) over a 3-code world, one code a frame, each frame then its delimiter."""
    row = head + [t for c in codes for t in (c, END_OF_FRAME)]
    mask = [False] * n_text + [True] * (len(row) - n_text)
    logits = model.logits(np.asarray(row), np.asarray(mask), mode="vision")[:, :3]
    logits = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return sum(float(logits[len(head) - 1 + 2 * k, c]) for k, c in enumerate(codes))


def test_guided_beam_search_draws_whole_frames_and_reports_each(model):
    frames = []
    codes = model.generate_vision(PROMPTS, kind="image", beams=3, cfg_scale=3.0, codebook_size=64,
                                  on_frame=lambda i, t: frames.append((i, t)))
    assert codes.shape == (2, 1, 16, 16) and codes.max() < 64
    assert [i for i, _ in frames] == [0] and frames[0][1].shape == (2, TOKENS_PER_FRAME)
    np.testing.assert_array_equal(frames[0][1][:, :256].reshape(2, 1, 16, 16), codes)
    assert (frames[0][1][:, 256] == END_OF_FRAME).all()


def test_the_same_seed_gives_the_same_video_on_a_sharded_mesh(video):
    sharded = lwm_core.load_model("random:tiny", mesh="1,1,2,4", overrides=VISION)
    np.testing.assert_array_equal(sharded.generate_vision(PROMPTS, kind="video", n_frames=3), video[0])


def test_bad_requests_are_one_line_errors(model):
    cases = [
        (dict(kind="gif"), "kind 'gif' is not one of image, video"),
        (dict(kind="image", n_frames=2), "an image is one frame, not 2"),
        (dict(kind="video", n_frames=0), "n_frames=0 must be at least 1"),
        (dict(cfg_scale=float("nan")), "cfg_scale nan must be a finite number"),
        (dict(top_k=-1), "top_k -1 must be >= 0"),
        (dict(beams=0), "beams 0 must be a whole number >= 1"),
        (dict(seed=[1, 2, 3]), "3 seeds for 2 prompts"),
        # refused before the first frame is drawn: 4 frames after the video prompt do not fit in 1024 tokens
        (dict(kind="video", n_frames=4, on_frame=_never), r"4 frames of 257 tokens after a prompt of 40 tokens take "
                                                          r"1068 tokens, more than the model's context of 1024"),
    ]
    for kwargs, message in cases:
        with pytest.raises(LWMError, match=message):
            model.generate_vision(PROMPTS, **kwargs)


def _never(index, tokens):
    raise AssertionError("a frame was generated")


def test_video_prompts_are_the_originals():
    assert image_prompt("fireworks") == ("<s>You are a helpful assistant. USER: Generate an image of fireworks "
                                         "ASSISTANT: <vision>")
    assert video_prompt("fireworks") == ("<s>You are a helpful assistant. USER: Generate a video of fireworks "
                                         "ASSISTANT: <vision>")
    assert vision.settings("image") == vision.VisionSampling(5.0, 8192, 1.0)
    assert vision.settings("video", top_k=7) == vision.VisionSampling(1.0, 7, 1.0)


def test_a_model_directory_carries_its_own_sampling_defaults(model, tmp_path):
    """vision_sampling.json beside the weights: generate_vision's defaults (the first frame's the image's),
    kept by save; values given still win; a malformed file is one line naming it."""
    own = {"image": vision.VisionSampling(1.0, 8192, 0.0), "video": vision.VisionSampling(1.0, 100, 0.0)}
    model.vision_sampling = own
    try:
        model.save(str(tmp_path / "m"))
    finally:
        model.vision_sampling = {}
    assert vision.read_sampling(str(tmp_path / "m")) == own
    loaded = lwm_core.load_model(str(tmp_path / "m"), mesh="1,1,1,1")
    assert loaded.vision_sampling == own
    greedy = model.generate_vision(PROMPTS, kind="video", n_frames=2, temperature=0, cfg_scale=1.0,
                                   first_frame=own["image"], seed=3)
    np.testing.assert_array_equal(loaded.generate_vision(PROMPTS, kind="video", n_frames=2, seed=4), greedy)
    sampled = loaded.generate_vision(PROMPTS, kind="image", temperature=1.0, seed=4)
    assert (sampled != greedy[:, :1]).mean() > 0.5  # a value given replaces the model's default
    assert vision.settings("video", defaults={"image": own["image"]}) == vision.VIDEO  # a kind it lacks: LWM's
    for text, message in [("{", "cannot read .*vision_sampling.json"),
                          ('{"audio": {}}', "should map image and/or video to some of beams, cfg_scale, "
                                            "temperature, top_k"),
                          ('{"video": {"top_k": -2}}', "vision_sampling.json: top_k -2 must be >= 0")]:
        (tmp_path / "m" / vision.SAMPLING_FILE).write_text(text)
        with pytest.raises(LWMError, match=message):
            lwm_core.load_model(str(tmp_path / "m"), mesh="1,1,1,1")
