"""Frames <-> VQGAN codes on a mesh: the object that `lwm_core.load_vqgan` returns.

Encode and decode are each one jit-compiled function of a fixed number of frames (`batch_size`): a video
runs through it in chunks, so neither compilation nor memory grows with its length. A last chunk that is
shorter is padded to a power-of-two number of frames per device (at most log2(batch_size) extra
compilations in all, instead of one per video length). Frames are split over every device of the mesh:
the parameters are replicated (~585 MB for the released model), so each device encodes its own frames
and no axis of the mesh sits idle (the language model's dp/fsdp/tp/sp meaning plays no part here).
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lwm_core.errors import LWMError
from lwm_core.plural import plural
from lwm_core.vision.config import VQGANConfig
from lwm_core.vision.vqgan import VQGANModel

FRAMES_PER_DEVICE = 8  # default batch: the decoder needs ~0.25 GB per 256 x 256 frame (XLA CPU: 1.9 GB for 8)
PIXEL_SLACK = 1e-3  # how far outside [-1, 1] pixels may stray (rounding in a caller's conversion)


def chunk_plan(n: int, batch_size: int, devices: int) -> list[tuple[int, int]]:
    """(frames taken, frames computed) per call for `n` frames: full batches, then the rest padded to
    `devices` times a power of two (capped at batch_size), so that few distinct sizes are ever compiled."""
    plan = []
    while n > 0:
        take = min(n, batch_size)
        per_device = 2 ** math.ceil(math.log2(math.ceil(take / devices)))
        plan.append((take, min(batch_size, devices * per_device)))
        n -= take
    return plan


@functools.lru_cache(maxsize=8)
def _compiled(config: VQGANConfig, mesh: Mesh):
    """The jitted encode and decode of a config on a mesh, shared by every VQGAN object of the two (a
    reloaded VQGAN does not compile again). Outputs are whole on every device: readable by every process."""
    model = VQGANModel(config)
    replicated = NamedSharding(mesh, P())
    encode = jax.jit(lambda params, x: model.apply({"params": params}, x, method=VQGANModel.encode),
                     out_shardings=replicated)
    decode = jax.jit(lambda params, c: model.apply({"params": params}, c, method=VQGANModel.decode),
                     out_shardings=replicated)
    return encode, decode


class VQGAN:
    """A loaded VQGAN: `encode` frames to codes, `decode` codes to frames (numpy in, numpy out).

    Attributes: `config` (a VQGANConfig), `params` (replicated on `mesh`), `mesh`, `batch_size`.
    """

    def __init__(self, config: VQGANConfig, params: dict, mesh: Mesh, *, batch_size: int | None = None):
        devices = mesh.size
        batch_size = FRAMES_PER_DEVICE * devices if batch_size is None else batch_size
        if batch_size <= 0 or batch_size % devices:
            raise LWMError(f"VQGAN batch_size {batch_size} is not a positive multiple of the mesh's "
                           f"{plural(devices, 'device')}; use a multiple of {devices}")
        self.config, self.params, self.mesh, self.batch_size = config, params, mesh, batch_size
        axes = tuple(a for a in mesh.axis_names if mesh.shape[a] > 1)
        self._frames = NamedSharding(mesh, P(axes or None))  # the frame axis over every device
        self._encode, self._decode = _compiled(config, mesh)

    def __repr__(self) -> str:
        c = self.config
        return (f"VQGAN({c.resolution}x{c.resolution} frames -> {c.codes_per_side}x{c.codes_per_side} codes of "
                f"{c.num_embeddings}, mesh {dict(self.mesh.shape)}, batch_size {self.batch_size})")

    @property
    def frame_shape(self) -> tuple[int, int, int]:  # (R, R, C)
        c = self.config
        return (c.resolution, c.resolution, c.num_channels)

    @property
    def code_shape(self) -> tuple[int, int]:  # (R/f, R/f)
        return (self.config.codes_per_side, self.config.codes_per_side)

    def encode(self, pixels) -> np.ndarray:
        """Frames (..., R, R, 3), float in [-1, 1] -> int32 codes (..., R/f, R/f) (leading axes kept:
        (N, ...) images, (B, T, ...) videos). Deterministic."""
        x = self._check_pixels(pixels)
        lead = x.shape[:-3]
        codes = self._run(self._encode, x.reshape(-1, *self.frame_shape), self.code_shape, np.int32)
        return codes.reshape(*lead, *self.code_shape)

    def decode(self, codes) -> np.ndarray:
        """int codes (..., R/f, R/f) in [0, num_embeddings) -> float32 frames (..., R, R, 3) in [-1, 1]."""
        c = self._check_codes(codes)
        lead = c.shape[:-2]
        pixels = self._run(self._decode, c.reshape(-1, *self.code_shape), self.frame_shape, np.float32)
        return pixels.reshape(*lead, *self.frame_shape)

    def _run(self, fn, x: np.ndarray, out_tail: tuple[int, ...], dtype) -> np.ndarray:
        """`fn` over the frames of `x` in chunks; the next chunk is dispatched before the last is read."""
        out = np.empty((x.shape[0], *out_tail), dtype)
        pending: list[tuple[int, int, jax.Array]] = []
        start = 0
        for take, size in chunk_plan(x.shape[0], self.batch_size, self.mesh.size):
            chunk = x[start:start + take]
            if size > take:
                chunk = np.concatenate([chunk, np.zeros((size - take, *chunk.shape[1:]), chunk.dtype)])
            # Every process holds all frames and fills its own devices' shards (multi-host safe).
            placed = jax.make_array_from_callback(chunk.shape, self._frames, lambda i, a=chunk: a[i])
            pending.append((start, take, fn(self.params, placed)))
            start += take
            if len(pending) > 1:
                self._collect(out, *pending.pop(0))
        for item in pending:
            self._collect(out, *item)
        return out

    @staticmethod
    def _collect(out: np.ndarray, start: int, take: int, result: jax.Array) -> None:
        out[start:start + take] = np.asarray(result)[:take]

    def _check_pixels(self, pixels) -> np.ndarray:
        x = np.asarray(pixels)
        if x.ndim < 3 or x.shape[-3:] != self.frame_shape:
            raise LWMError(f"VQGAN frames of shape {x.shape}: it takes (..., {', '.join(map(str, self.frame_shape))})"
                           f" (its resolution is {self.config.resolution}); resize and crop the frames first")
        if x.dtype.kind != "f":
            raise LWMError(f"VQGAN frames are {x.dtype}; pass floats in [-1, 1] (from uint8: x / 127.5 - 1)")
        x = x.astype(np.float32, copy=False)
        if x.size:
            lo, hi = float(x.min()), float(x.max())
            if not (-1 - PIXEL_SLACK <= lo and hi <= 1 + PIXEL_SLACK):  # also false for NaN
                raise LWMError(f"VQGAN frames span [{lo:g}, {hi:g}]; pixels must be in [-1, 1] (from uint8: "
                               f"x / 127.5 - 1)")
        return x

    def _check_codes(self, codes) -> np.ndarray:
        c = np.asarray(codes)
        if c.ndim < 2 or c.shape[-2:] != self.code_shape:
            raise LWMError(f"VQGAN codes of shape {c.shape}: it takes (..., {self.code_shape[0]}, "
                           f"{self.code_shape[1]}), one code per {self.config.downsample_factor}x"
                           f"{self.config.downsample_factor} pixels")
        if c.dtype.kind not in "iu":
            raise LWMError(f"VQGAN codes are {c.dtype}; pass integers")
        n = self.config.num_embeddings
        bad = np.argwhere((c < 0) | (c >= n))
        if len(bad):
            where = tuple(int(i) for i in bad[0])
            raise LWMError(f"VQGAN code {int(c[where])} at {where} is outside the codebook (0..{n - 1}); vision "
                           f"ids {n} and up are frame delimiters: drop them before decoding")
        return c.astype(np.int32, copy=False)
