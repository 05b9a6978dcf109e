"""Train a VQGAN (the LWM architecture of vqgan.py, any `VQGANConfig`) on the frames of a folder of images
and videos: JAX + optax, checkpointed, resumable, with held-out PSNR and codebook usage in metrics.jsonl.

The objective, and why (VQ-VAE, van den Oord et al. 2017, section 3.2; VQGAN, Esser et al. 2021):

    loss = l1 * |x - x'|_1 + l2 * |x - x'|^2 + |sg(z) - e|^2 + commitment_cost * |z - sg(e)|^2

- Reconstruction L1 + L2 (means over pixels, x in [-1, 1]): L2 alone is the PSNR we report but blurs
  (it is the Gaussian likelihood, which averages modes); L1 keeps flat regions and edges crisp, which the
  demo world (flat shapes on flat backgrounds) is made of. No perceptual loss: LPIPS needs a network
  downloaded from somewhere, and the world's frames have no texture for it to care about.
- No adversarial loss: a discriminator doubles the step cost on a CPU, needs its own schedule (VQGAN
  turns it on only after many thousand steps, with an adaptive weight) and its benefit, sharper texture,
  is invisible on flat synthetic frames; it cannot be tested cheaply either. Left out on purpose.
- The codebook is learned by gradient (the codebook term above), not by EMA: it is the objective that
  LWM's config describes (`commitment_cost`), it keeps the codebook an ordinary parameter of the
  original's tree (no EMA statistics beside it) and one optimizer updates everything.
- Straight-through estimator: the decoder sees z + sg(e - z), whose value is e and whose gradient flows
  to z unchanged, so the encoder learns from the reconstruction.
- Dead-code restarts: a small codebook collapses (a few entries take every vector and the rest, never
  nearest, never move). Every `restart_every` steps each entry that no vector of the last `restart_every`
  batches chose is moved onto an encoder output of the current batch (Dhariwal et al. 2020, Jukebox,
  section 2.2), so usage climbs towards the whole codebook instead of staying where the random init put
  it. The outputs are drawn in proportion to their squared distance from their nearest entry, not
  uniformly: on frames that are mostly flat background a uniform draw lands nearly every restarted entry
  on a background vector, and the background ends up split over hundreds of near-identical codes (5.4
  nats of code entropy on the world's plain backgrounds, measured), which a language model over the codes
  then has to learn as noise; drawn by error, the new entries go where the codebook is short. Their Adam
  moments are left as they are: they decay within a few dozen steps.

Determinism: the batch of step s is a function of (seed, s) (a seeded permutation per epoch) and the
restart key is fold_in(seed, s), so a run resumed from a checkpoint at step s continues the same curve.

Files in the output directory:
    checkpoint/   state.safetensors (params, optimizer state, usage counts) + state.json (step, configs)
    metrics.jsonl one line per logged step (loss parts, lr, batch usage) and per evaluation (PSNR, usage)
    vqgan/        the final weights (model.safetensors + config.json, `write_vqgan_dir`): `load_vqgan(out)`
                  and `lwm vqgan encode -m OUT` read them
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.vision.config import VQGANConfig

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"
FINAL = "vqgan"  # the directory `resolve_vqgan` looks for inside a directory it is given
STATE_FORMAT = "lwm-vqgan-train"


def _f(description: str, **kwargs: Any) -> Any:
    return field(metadata={"help": description}, **kwargs)


@dataclass(frozen=True)
class VQGANTrainConfig:
    """How to train a VQGAN: steps, batch, optimizer, loss weights, codebook restarts, evaluation."""

    steps: int = _f("optimizer steps", default=2000)
    batch_size: int = _f("frames per step", default=16)
    lr: float = _f("peak learning rate (AdamW, after warmup; cosine decay to lr/10)", default=1e-3)
    warmup: int = _f("linear warmup steps (at most a fifth of the steps)", default=100)
    weight_decay: float = _f("AdamW weight decay", default=0.0)
    grad_clip: float = _f("global gradient-norm clip (0: none)", default=1.0)
    l1_weight: float = _f("weight of the L1 reconstruction loss", default=1.0)
    l2_weight: float = _f("weight of the L2 (mean squared error) reconstruction loss", default=1.0)
    restart_every: int = _f("steps between dead-code restarts (0: never)", default=50)
    seed: int = _f("seed of the initial weights, the batch order and the restarts", default=0)
    eval_fraction: float = _f("share of the input files held out for evaluation (frames when there is one file)",
                              default=0.05)
    eval_frames: int = _f("most held-out frames evaluated (evenly spaced)", default=256)
    log_every: int = _f("steps between metrics lines", default=25)
    eval_every: int = _f("steps between evaluations on the held-out frames (and at the end)", default=250)
    checkpoint_every: int = _f("steps between checkpoints (and at the end, and on a stop)", default=250)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "eval_frames"):
            if getattr(self, name) < 1:
                raise LWMError(f"VQGAN train config {name}={getattr(self, name)} must be at least 1")
        for name in ("warmup", "restart_every", "seed"):
            if getattr(self, name) < 0:
                raise LWMError(f"VQGAN train config {name}={getattr(self, name)} must not be negative")
        for name in ("lr", "weight_decay", "grad_clip", "l1_weight", "l2_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise LWMError(f"VQGAN train config {name}={value} must be a finite number >= 0")
        if self.lr == 0 or self.l1_weight + self.l2_weight == 0:
            raise LWMError(f"VQGAN train config lr={self.lr}, l1_weight={self.l1_weight}, l2_weight="
                           f"{self.l2_weight}: the learning rate and one reconstruction weight must be positive")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise LWMError(f"VQGAN train config eval_fraction={self.eval_fraction} must be in [0, 1)")

    @property
    def warmup_steps(self) -> int:
        return min(self.warmup, self.steps // 5)

    # What a resumed run must share with the checkpoint for the loss curve to be the same one.
    _SCHEDULE_FREE = ("log_every", "eval_every", "checkpoint_every")

    def curve_fields(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self._SCHEDULE_FREE}


def apply_train_overrides(config: VQGANTrainConfig, overrides: Mapping[str, Any]) -> VQGANTrainConfig:
    """`config` with `overrides` (field -> value or command-line string) applied, typed by each field."""
    from lwm_core.config import coerce, did_you_mean

    fields = {f.name: f for f in dataclasses.fields(VQGANTrainConfig)}
    changes = {}
    for name, value in overrides.items():
        if name not in fields:
            raise LWMError(f"unknown VQGAN train config key {name!r}{did_you_mean(name, fields)} "
                           f"(keys: {', '.join(fields)})")
        changes[name] = coerce(name, fields[name].type, value)
    return dataclasses.replace(config, **changes) if changes else config


# ----- data -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameData:
    """Every frame of the inputs at the model's resolution, as uint8 (N, R, R, 3) (a quarter of float32's
    memory), split by file into training and held-out frames."""

    train: np.ndarray
    eval: np.ndarray
    files: int
    eval_files: int  # 0: the held-out frames are the last ones of the only file

    def summary(self) -> dict[str, int]:
        return {"files": self.files, "eval_files": self.eval_files, "train_frames": len(self.train),
                "eval_frames": len(self.eval)}


# More than any video here has: read_video_frames keeps every frame up to this many.
_ALL_FRAMES = 1 << 20


def read_frames(inputs: Sequence[str], resolution: int, *, eval_fraction: float = 0.05, seed: int = 0,
                on_file: Callable[[int, int], None] | None = None) -> FrameData:
    """Every frame of every image and video in `inputs` (files, folders, globs), resized to `resolution`
    (media.py's short-side resize + centre crop). Held out: a seeded `eval_fraction` of the files (at
    least one when there are two or more, so that no held-out frame has a near-twin in training), or the
    last `eval_fraction` of the frames of a single file."""
    from lwm_core.vision.encode import find_media
    from lwm_core.vision.media import load_media, to_uint8

    items = find_media(list(inputs))
    per_file = []
    for i, item in enumerate(items):
        per_file.append(to_uint8(load_media(item.path, resolution=resolution, max_frames=_ALL_FRAMES)))
        if on_file is not None:
            on_file(i + 1, len(items))
    shape = (0, resolution, resolution, 3)
    if len(items) == 1:
        frames = per_file[0]
        held = int(round(len(frames) * eval_fraction))
        held = min(held, len(frames) - 1)
        return FrameData(frames[:len(frames) - held], frames[len(frames) - held:], 1, 0)
    held = 0 if eval_fraction == 0 else max(1, int(round(len(items) * eval_fraction)))
    held = min(held, len(items) - 1)
    order = np.random.default_rng(seed).permutation(len(items))
    eval_ids = set(order[:held].tolist())
    train = [f for i, f in enumerate(per_file) if i not in eval_ids]
    held_out = [f for i, f in enumerate(per_file) if i in eval_ids]
    return FrameData(np.concatenate(train), np.concatenate(held_out) if held_out else np.zeros(shape, np.uint8),
                     len(items), held)


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """The training frames of step `step`: sample k = step * batch_size + j is frame perm_e[k mod n] of the
    epoch e = k // n, perm_e a permutation seeded by (seed, e). A function of the step alone: resuming
    needs no data position."""
    ks = np.arange(step * batch_size, (step + 1) * batch_size)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(ks // n):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        mask = ks // n == epoch
        out[mask] = perm[ks[mask] % n]
    return out


def to_pixels(frames: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], as media.to_model_frames maps them."""
    return frames.astype(np.float32) / 127.5 - 1


# ----- losses and the step --------------------------------------------------------------------------------------


def forward(config: VQGANConfig, params, pixels):
    """pixels (B, R, R, 3) -> (reconstruction before the clip (B, R, R, 3), latents z (B, h, w, E), codes
    (B, h, w)). The decoder gets the straight-through latents z + sg(e - z): the value e, the gradient of z."""
    import jax

    from lwm_core.vision.vqgan import VQGANModel

    model = VQGANModel(config)
    variables = {"params": params}
    z = model.apply(variables, pixels, method=VQGANModel.latents)
    codes = model.apply(variables, jax.lax.stop_gradient(z), method=lambda m, x: m.quantize.codes(x))
    e = params["quantize"]["embeddings"][codes]  # (B, h, w, E), differentiable in the codebook
    z_st = z + jax.lax.stop_gradient(e - z)
    # Unclipped: decode's clip to [-1, 1] would stop the gradient of every pixel that overshoots.
    recon = model.apply(variables, z_st, method=lambda m, x: m.decoder(m.post_quant_conv(x)))
    return recon, z, e, codes


def loss_parts(config: VQGANConfig, train: VQGANTrainConfig, params, pixels):
    """(total loss, ({part: value}, codes, z)) of a batch (jax.value_and_grad's has_aux form); see the module
    docstring for the terms."""
    import jax
    import jax.numpy as jnp

    recon, z, e, codes = forward(config, params, pixels)
    err = recon - pixels
    l1 = jnp.mean(jnp.abs(err))
    l2 = jnp.mean(err ** 2)
    codebook = jnp.mean((jax.lax.stop_gradient(z) - e) ** 2)  # moves the entries to the encoder outputs
    commitment = jnp.mean((z - jax.lax.stop_gradient(e)) ** 2)  # keeps the encoder near its entries
    total = train.l1_weight * l1 + train.l2_weight * l2 + codebook + config.commitment_cost * commitment
    parts = {"loss": total, "l1": l1, "l2": l2, "codebook": codebook, "commitment": commitment}
    return total, (parts, codes, z)


def make_schedule(train: VQGANTrainConfig):
    """step -> learning rate: linear warmup to lr, cosine decay to lr / 10 at the last step."""
    import optax

    return optax.warmup_cosine_decay_schedule(0.0, train.lr, train.warmup_steps, max(train.steps, 1),
                                              end_value=train.lr / 10)


def make_optimizer(grad_clip: float, weight_decay: float):
    """AdamW without its learning rate: clip, Adam's scaling, decoupled weight decay; the step multiplies
    by -lr itself (an argument), so that one compiled step serves every schedule. b2 = 0.99 rather than
    0.999: the codebook's gradients change abruptly at each restart and the second moment should follow."""
    import optax

    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    parts += [optax.scale_by_adam(b1=0.9, b2=0.99)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    return optax.chain(*parts)


def init_state(config: VQGANConfig, train: VQGANTrainConfig) -> dict:
    """{params, opt, hits}: the original's initialisers (random_params, seeded), a fresh optimizer, and
    per code the vectors that chose it since the last restart (0: a dead code)."""
    import jax.numpy as jnp
    from flax.traverse_util import unflatten_dict

    from lwm_core.vision.vqgan import random_params

    params = unflatten_dict({k: jnp.asarray(v) for k, v in random_params(config, train.seed).items()})
    optimizer = make_optimizer(train.grad_clip, train.weight_decay)
    return {"params": params, "opt": optimizer.init(params), "hits": jnp.zeros(config.num_embeddings, jnp.int32)}


def make_step(config: VQGANConfig, train: VQGANTrainConfig):
    """step(state, pixels, step, lr, key) -> (state, metrics): one AdamW update, then the dead-code restart
    when `step + 1` is a multiple of restart_every. Jitted (the state's buffers are donated) and shared by
    every run whose model and objective are the same: the schedule and the seed are arguments."""
    return _compiled_step(config, train.l1_weight, train.l2_weight, train.restart_every, train.grad_clip,
                          train.weight_decay)


@functools.lru_cache(maxsize=4)
def _compiled_step(config: VQGANConfig, l1_weight: float, l2_weight: float, restart_every: int, grad_clip: float,
                   weight_decay: float):
    import jax
    import jax.numpy as jnp
    import optax

    optimizer = make_optimizer(grad_clip, weight_decay)
    weights = VQGANTrainConfig(l1_weight=l1_weight, l2_weight=l2_weight)  # what loss_parts reads
    V = config.num_embeddings

    def step_fn(state, pixels, step, lr, key):
        grad_fn = jax.value_and_grad(lambda p: loss_parts(config, weights, p, pixels), has_aux=True)
        (_, (parts, codes, z)), grads = grad_fn(state["params"])
        updates, opt = optimizer.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], jax.tree_util.tree_map(lambda u: -lr * u, updates))
        counts = jnp.zeros(V, jnp.int32).at[codes.reshape(-1)].add(1)  # (V,): vectors per code in this batch
        hits = state["hits"] + counts
        restarted = jnp.zeros((), jnp.int32)
        if restart_every:
            now = (step + 1) % restart_every == 0
            dead = now & (hits == 0)  # (V,)
            emb = params["quantize"]["embeddings"]
            picks = restart_picks(key, jax.lax.stop_gradient(z), codes, emb)  # (V, E)
            params = {**params, "quantize": {**params["quantize"],
                                             "embeddings": jnp.where(dead[:, None], picks, emb)}}
            hits = jnp.where(now, 0, hits)
            restarted = jnp.sum(dead).astype(jnp.int32)
        p = counts / counts.sum()
        metrics = {**parts, "codes_used": jnp.sum(counts > 0), "perplexity": _perplexity(p), "restarted": restarted}
        return {"params": params, "opt": opt, "hits": hits}, metrics

    return jax.jit(step_fn, donate_argnums=(0,))


def restart_picks(key, z, codes, embeddings):
    """One encoder output per codebook entry (V, E), drawn from the batch's outputs z (..., E) in proportion
    to each one's squared distance from its entry (`codes`, the same leading shape): the outputs the codebook
    serves worst get the restarted entries."""
    import jax
    import jax.numpy as jnp

    flat = z.reshape(-1, z.shape[-1])  # (P, E)
    miss = jnp.sum((flat - embeddings[codes.reshape(-1)]) ** 2, axis=-1)  # (P,)
    return flat[jax.random.categorical(key, jnp.log(miss + 1e-12), shape=(embeddings.shape[0],))]


def _perplexity(p):
    import jax.numpy as jnp

    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


# ----- evaluation -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def make_eval(config: VQGANConfig):
    """The jitted evaluation: (params, pixels (B, R, R, 3)) -> (squared error per frame of the clipped decode
    (B,), codes)."""
    import jax
    import jax.numpy as jnp

    def eval_fn(params, pixels):
        recon, _, _, codes = forward(config, params, pixels)
        return jnp.mean((jnp.clip(recon, -1, 1) - pixels) ** 2, axis=(1, 2, 3)), codes

    return jax.jit(eval_fn)


def evaluate(eval_fn, params, frames: np.ndarray, *, batch_size: int, num_embeddings: int,
             max_frames: int) -> dict[str, Any]:
    """PSNR (dB, peak-to-peak 2 of pixels in [-1, 1], i.e. 255 in uint8; the mean of per-frame PSNRs) and
    codebook usage (distinct codes, perplexity of the code histogram) on at most `max_frames` frames."""
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).astype(int)]
    errors, counts = [], np.zeros(num_embeddings, np.int64)
    for start in range(0, len(frames), batch_size):
        chunk = to_pixels(frames[start:start + batch_size])
        take = len(chunk)
        if take < batch_size:  # one compiled shape: pad the last chunk with copies, then drop them
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - take, axis=0)])
        mse, codes = eval_fn(params, chunk)
        errors.append(np.asarray(mse)[:take])
        counts += np.bincount(np.asarray(codes)[:take].reshape(-1), minlength=num_embeddings)
    mse = np.concatenate(errors).astype(np.float64)
    psnr = 10 * np.log10(4.0 / np.maximum(mse, 1e-12))
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"eval_psnr": float(np.mean(psnr)), "eval_mse": float(np.mean(mse)),
            "eval_codes_used": int(np.count_nonzero(counts)),
            "eval_perplexity": float(np.exp(-np.sum(nz * np.log(nz)))), "eval_frames": len(frames)}


# ----- checkpoints ----------------------------------------------------------------------------------------------


def save_checkpoint(out_dir: str, step: int, state: dict, meta: dict) -> None:
    """checkpoint/ = state.safetensors (every leaf of the state, by its index in tree order) + state.json,
    replaced atomically as one directory: a kill leaves the previous checkpoint or this one."""
    import jax
    from safetensors.numpy import save_file

    from lwm_core.checkpoint.atomic import atomic_dir

    leaves = jax.tree_util.tree_leaves(state)
    with atomic_dir(os.path.join(out_dir, CHECKPOINT), overwrite=True) as tmp:
        save_file({f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)},
                  os.path.join(tmp, "state.safetensors"))
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
            json.dump({"format": STATE_FORMAT, "step": step, **meta}, f, indent=1)


def read_checkpoint_meta(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, CHECKPOINT, "state.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LWMError(f"cannot read checkpoint {path} ({e}); pass --force to start afresh") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise LWMError(f"{path} is not a VQGAN training checkpoint; pass another output or --force")
    return meta


def load_checkpoint(out_dir: str, template: dict) -> dict:
    """The saved state, in the structure (and checked against the shapes) of `template`."""
    import jax
    import jax.numpy as jnp
    from safetensors.numpy import load_file

    path = os.path.join(out_dir, CHECKPOINT, "state.safetensors")
    try:
        saved = load_file(path)
    except Exception as e:  # OSError, or safetensors' own error type for a damaged file
        raise LWMError(f"cannot read checkpoint {path} ({e}); pass --force to start afresh") from None
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(saved) != len(leaves):
        raise LWMError(f"checkpoint {path} holds {len(saved)} arrays, the run needs {len(leaves)}; it was made by "
                       f"another version or config: pass --force to start afresh")
    out = []
    for i, leaf in enumerate(leaves):
        arr = saved[f"{i:05d}"]
        if arr.shape != leaf.shape:
            raise LWMError(f"checkpoint {path}: array {i} has shape {arr.shape}, the run needs {leaf.shape}; pass "
                           f"--force to start afresh")
        out.append(jnp.asarray(arr, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def _run_meta(config: VQGANConfig, train: VQGANTrainConfig, data: FrameData) -> dict:
    return {"config": config.to_dict(), "train": train.curve_fields(), "data": data.summary()}


def check_resume(meta: dict, config: VQGANConfig, train: VQGANTrainConfig, data: FrameData | None,
                 out_dir: str) -> None:
    """Refuse to resume a checkpoint of another model, objective or data set (its curve is another one).
    Without `data`, only the configs are compared (before reading a folder of videos for nothing)."""
    want = _run_meta(config, train, data or FrameData(np.zeros(0), np.zeros(0), 0, 0))
    for part in ("config", "train", "data") if data is not None else ("config", "train"):
        have = meta.get(part, {})
        diff = [k for k in sorted(set(have) | set(want[part])) if have.get(k) != want[part].get(k)]
        if diff:
            k = diff[0]
            raise LWMError(f"{out_dir} holds a run with {part} {k}={have.get(k)!r}, this one has "
                           f"{want[part].get(k)!r}; rerun with the same options to resume, or --force to start "
                           f"afresh")


# ----- the loop -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    step: int  # steps done
    stopped: bool  # by should_stop, before `steps`
    final: str | None  # the final VQGAN directory, when the run completed
    eval: dict | None  # the last evaluation
    resumed_from: int  # 0: a fresh run


def train_vqgan(config: VQGANConfig, train: VQGANTrainConfig, data: FrameData, out_dir: str, *,
                should_stop: Callable[[], bool] = lambda: False,
                on_metrics: Callable[[dict], None] | None = None,
                on_event: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume, from out_dir/checkpoint) to `train.steps`, then write out_dir/vqgan. The data's
    frames must be at config.resolution."""
    import jax
    from flax.traverse_util import flatten_dict

    from lwm_core.checkpoint.atomic import append_lines, drop_torn_line, write_text
    from lwm_core.vision.loading import write_vqgan_dir

    if len(data.train) == 0:
        raise LWMError("no training frames; give more images or videos")
    if data.train.shape[1:] != (config.resolution, config.resolution, 3):
        raise ValueError(f"frames are {data.train.shape[1:]}, the config wants {config.resolution}x{config.resolution}")
    os.makedirs(out_dir, exist_ok=True)
    say = on_event or (lambda text: None)
    metrics_path = os.path.join(out_dir, METRICS)
    meta = _run_meta(config, train, data)
    state = init_state(config, train)
    start = 0
    saved = read_checkpoint_meta(out_dir)
    if saved is not None:
        check_resume(saved, config, train, data, out_dir)
        state = load_checkpoint(out_dir, state)
        start = int(saved["step"])
        say(f"resumed from the checkpoint at step {start}")
    # Lines a killed run logged after its last checkpoint are redone by this one: drop them.
    if os.path.exists(metrics_path):
        drop_torn_line(metrics_path)
        with open(metrics_path, encoding="utf-8") as f:
            kept = [line for line in f if json.loads(line).get("step", 0) <= start] if start else []
        write_text(metrics_path, "".join(kept))

    step_fn = make_step(config, train)
    schedule = make_schedule(train)
    root = jax.random.key(train.seed)  # the restarts of step s draw with fold_in(root, s)
    eval_fn = make_eval(config)
    eval_frames = data.eval if len(data.eval) else data.train

    def log(record: dict) -> None:
        append_lines(metrics_path, [json.dumps(record) + "\n"])
        if on_metrics is not None:
            on_metrics(record)

    def run_eval(step: int) -> dict:
        record = {"step": step, **evaluate(eval_fn, state["params"], eval_frames, batch_size=train.batch_size,
                                           num_embeddings=config.num_embeddings, max_frames=train.eval_frames)}
        if not len(data.eval):
            record["eval_on"] = "train"  # nothing held out (eval_fraction 0, or one frame)
        log(record)
        return record

    # A fresh run's first line is the untrained model's: the baseline that PSNR and usage climb from.
    last_eval = run_eval(0) if start == 0 else None
    step, t0, restarted = start, time.monotonic(), 0
    while step < train.steps:
        if should_stop():
            save_checkpoint(out_dir, step, state, meta)
            return TrainResult(step, True, None, last_eval, start)
        pixels = to_pixels(data.train[batch_indices(step, train.batch_size, len(data.train), train.seed)])
        lr = float(schedule(step))
        state, metrics = step_fn(state, pixels, np.int32(step), np.float32(lr), jax.random.fold_in(root, step))
        step += 1
        if train.restart_every:
            restarted += int(metrics["restarted"])
        if step % train.log_every == 0 or step == train.steps:
            record = {"step": step, **{k: float(v) for k, v in jax.device_get(metrics).items() if k != "restarted"},
                      "lr": lr}
            record["codes_used"] = int(record["codes_used"])
            record["restarted"] = restarted
            record["seconds"] = round(time.monotonic() - t0, 3)
            restarted = 0
            log(record)
        if step % train.eval_every == 0 or step == train.steps:
            last_eval = run_eval(step)
        if step % train.checkpoint_every == 0 or step == train.steps:
            save_checkpoint(out_dir, step, state, meta)
    final = os.path.join(out_dir, FINAL)
    flat = {k: np.asarray(v, np.float32) for k, v in flatten_dict(jax.device_get(state["params"])).items()}
    write_vqgan_dir(final, config, flat, overwrite=True)
    if last_eval is None:  # a rerun of a finished run: evaluate what it wrote
        last_eval = evaluate(eval_fn, state["params"], eval_frames, batch_size=train.batch_size,
                             num_embeddings=config.num_embeddings, max_frames=train.eval_frames)
    return TrainResult(step, False, final, last_eval, start)
