"""lwm's CPU decode kernels (`cpu_decode.cc`), called from jitted code: a matrix-vector product over
panel-packed float32 weights, and attention of one new query per row against the KV cache. The
attention dispatcher (`lwm_core.attention.dispatch`, kind "cpu_kernel") picks `decode_attention` for
decode steps that read packed weights.

Batch-1 decode reads every weight once per token; on a CPU it is bound by memory bandwidth, and XLA's
own matvec streams a chain of layer-sized weights at ~70% of the bandwidth it reaches on one large
matrix; this kernel, on its packed layout and huge pages, at ~90% (see `cpu_decode.cc` for why and
the figures). This module compiles `cpu_decode.cc`, with `cpu_attention.cc` (the fused attention of
`lwm_core.attention.cpu_flash`) and the `cpu_common.h` both include, into one library with the machine's
C++ compiler on first use (~10 s, `-march=native`; kept in `cache_dir()` per source, compiler, CPU model
and jaxlib), registers its kernels with XLA's FFI, and exposes:

- `pack_all(weights)`: (K, N) weights as the model stores them (x @ w) -> `Packed` weights in the
  kernel's panel layout, all in one huge-page buffer.
- `pack_all(weights, quant="int8")`: the same panels in int8 with one float32 scale per output channel
  (`lwm_core.quantize`), a quarter of the bytes; `quant="int4"`: 4-bit weights with a scale per 32 inputs
  and output channel, in panels of their own (`cpu_decode.cc`, "int4 weights").
- `matvec(x, w)`: x (..., K) @ w -> (..., N) through the kernel (float32, int8 or int4 weights).
- `matvec_reference(x, w)`: the same product in plain jnp, from the packed layout (its twin).
- `decode_attention(q, k_cache, v_cache, q_slot=, k_seg=)`: `attention.reference.cached_attention`
  (its twin), reading only the visible slots of the cache.
- `argmax(logits)`: `jnp.argmax` over each row in one pass: greedy decoding's choice on packed weights
  (`generate.sampling.sample(cpu_kernels=True)`).
- `available()`: whether the kernel is usable here; False (with the reason in `unavailable_reason()`)
  on non-CPU backends, without a C++ compiler, or when the build fails. Callers then use XLA's dots.

Only a compiler is needed, not a build step at install time: the FFI headers come with jaxlib.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import mmap
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import jax
import jax.dlpack
import jax.numpy as jnp
import jaxlib
import numpy as np

from lwm_core.plural import plural
from lwm_core.quantize import quantize_array, quantize_array_int4, unpack_int4

ROWS, COLS = 8, 16  # the panel shape; must match kRows/kCols in cpu_decode.cc
TARGET = "lwm_matvec_f32"
INT8_TARGET = "lwm_matvec_i8"
INT4_TARGET = "lwm_matvec_q4"
GROUP = 32  # int4: inputs per scale (quantize.GROUP, kGroup in cpu_decode.cc)
ATTENTION_TARGET = "lwm_decode_attention_f32"
FLASH_TARGET = "lwm_flash_attention_f32"  # cpu_attention.cc; lwm_core.attention.cpu_flash calls these two
FLASH_BWD_TARGET = "lwm_flash_attention_bwd_f32"
ARGMAX_TARGET = "lwm_argmax_f32"
_SOURCES = (Path(__file__).with_name("cpu_decode.cc"), Path(__file__).with_name("cpu_attention.cc"))
_HEADER = Path(__file__).with_name("cpu_common.h")  # what both share; part of the build's key
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept: $XDG_CACHE_HOME/lwm/kernels, else ~/.cache/lwm/kernels (the
    user's, never the package's directory, which may be read-only)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lwm" / "kernels"


def _cpu_signature() -> str:
    """What a -march=native build depends on: the CPU model and its feature flags (Linux), else the arch."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [line for line in text.splitlines() if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return platform.machine() + "\n".join(sorted(set(keep)))


def _build(compiler: str, directory: Path) -> Path:
    """Compile the kernels' sources into one library in `directory` (atomically: a temp file, then a
    rename) unless already there."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    sources = [source.read_text() for source in (*_SOURCES, _HEADER)]
    key = hashlib.sha256("\0".join([*sources, version, *_FLAGS, jax.__version__, jaxlib.__version__,
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    target = directory / f"kernels-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), *map(str, _SOURCES), "-o", tmp],
            capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(compiler: str | None, directory: Path | None) -> str | None:
    """Build, load and register the kernel; the reason it is unusable, or None when it is ready."""
    if jax.default_backend() != "cpu":
        return f"the default backend is {jax.default_backend()}, not cpu"
    compiler = compiler or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not compiler:
        return "no C++ compiler (c++, g++ or clang++) on PATH"
    try:
        library = ctypes.CDLL(str(_build_in(compiler, directory)))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.LwmMatvecF32), platform="cpu")
        jax.ffi.register_ffi_target(ATTENTION_TARGET, jax.ffi.pycapsule(library.LwmDecodeAttentionF32),
                                    platform="cpu")
        jax.ffi.register_ffi_target(INT8_TARGET, jax.ffi.pycapsule(library.LwmMatvecI8), platform="cpu")
        jax.ffi.register_ffi_target(INT4_TARGET, jax.ffi.pycapsule(library.LwmMatvecQ4), platform="cpu")
        jax.ffi.register_ffi_target(FLASH_TARGET, jax.ffi.pycapsule(library.LwmFlashAttentionF32), platform="cpu")
        jax.ffi.register_ffi_target(FLASH_BWD_TARGET, jax.ffi.pycapsule(library.LwmFlashAttentionBwdF32),
                                    platform="cpu")
        jax.ffi.register_ffi_target(ARGMAX_TARGET, jax.ffi.pycapsule(library.LwmArgmaxF32), platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
        return f"building the CPU kernels failed: {e}"
    return None


def _build_in(compiler: str, directory: Path | None) -> Path:
    """`_build` into `directory`, or the user's cache; where that cannot be written (a read-only home, as in
    some containers), a per-user directory under the system's temp directory."""
    if directory is not None:
        return _build(compiler, directory)
    try:
        return _build(compiler, cache_dir())
    except OSError:
        user = os.getuid() if hasattr(os, "getuid") else "user"
        return _build(compiler, Path(tempfile.gettempdir()) / f"lwm-kernels-{user}")


def available(*, compiler: str | None = None, directory: Path | None = None) -> bool:
    """Whether the kernel is built and registered. The first call decides for the whole process (it
    builds, loads and registers; thread-safe): `compiler` and `directory` (default: c++ on PATH,
    `cache_dir()`) count only there."""
    with _lock:
        if "reason" not in _state:
            _state["reason"] = _load(compiler, directory)
        return _state["reason"] is None


def unavailable_reason() -> str | None:
    """Why `available()` said no (None if it said yes or was not asked)."""
    return _state.get("reason")


def padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pack(w: jax.Array, dtype=jnp.float32) -> jax.Array:
    """A (K, N) weight (y = x @ w) -> (N/8, K/16, 8, 16) panels of its transpose, zero-padded:
    packed[p, c, r, j] = w[16c + j, 8p + r]. Works under jit; `dtype` out (float32, or int8 for
    quantized weights)."""
    K, N = w.shape
    Kp, Np = padded(K, COLS), padded(N, ROWS)
    w = jnp.pad(w.astype(dtype), ((0, Kp - K), (0, Np - N)))
    # (Kp, Np) -> (Kp/16, 16, Np/8, 8) -> (Np/8, Kp/16, 8, 16)
    return w.reshape(Kp // COLS, COLS, Np // ROWS, ROWS).transpose(2, 0, 3, 1)


def pack_int4(q: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An int4 weight in lwm_core.quantize's layout (q uint8 (K/2, N), scale (K/32, N)) -> the kernel's
    panels: bytes (N/8, K/32, 8, 16) with packed[p, c, r, j] = q[16c + j, 8p + r], and scales (N/8, K/32, 8);
    N zero-padded to a multiple of 8 (scale 0). Works under jit."""
    half, N = q.shape
    C, Np = half // 16, padded(N, ROWS)
    q = jnp.pad(q, ((0, 0), (0, Np - N)))
    scale = jnp.pad(scale, ((0, 0), (0, Np - N)))
    # bytes (K/2, Np) -> (C, 16, Np/8, 8) -> (Np/8, C, 8, 16); scales (C, Np) -> (C, Np/8, 8) -> (Np/8, C, 8)
    return (q.reshape(C, 16, Np // ROWS, ROWS).transpose(2, 0, 3, 1),
            scale.reshape(C, Np // ROWS, ROWS).transpose(1, 0, 2))


class Segment(NamedTuple):
    """Where one packed (K, N) weight sits in its flat buffer (static: the kernel's attribute)."""

    offset: int  # elements from the start of the buffer
    k: int  # contracted size
    n: int  # output size
    scale_offset: int = -1  # int8 and int4 weights: where its scales start in the scales buffer
    quant: str = "none"  # "none" (float32), "int8", "int4"


@jax.tree_util.register_pytree_node_class
class Packed:
    """One packed (K, N) weight: `segment` of `flat`, a float32 buffer shared by several weights, or of an
    int8 buffer with its per-output-channel float32 `scales` (W[:, n] ~ scales[n] * Q[:, n]), or of a uint8
    buffer of int4 panels with a scale per 32 inputs and output channel (`pack_int4`).

    A pytree whose leaves are `flat` (and `scales`), so it passes through jit like an array; the segment
    is static."""

    def __init__(self, flat: jax.Array, segment: Segment, scales: jax.Array | None = None):
        self.flat, self.segment, self.scales = flat, segment, scales

    @property
    def shape(self) -> tuple[int, int]:
        return self.segment.k, self.segment.n

    @property
    def int8(self) -> bool:
        return self.segment.quant == "int8"

    @property
    def quant(self) -> str:
        return self.segment.quant

    def tree_flatten(self):
        return (self.flat, self.scales), self.segment

    @classmethod
    def tree_unflatten(cls, segment, children):
        return cls(children[0], segment, children[1])


def pack_all(weights: Iterable[jax.Array], shapes: Sequence[tuple[int, int]] | None = None, *,
             quant: str = "none") -> list[Packed]:
    """Pack (K, N) weights into one new float32 buffer; one `Packed` per weight, in order. `weights` may
    be an iterator that makes each weight when it is reached (give their `shapes` then): only one of
    them and the buffer exist at a time. With `quant="int8"`, each weight is quantized per output channel
    (`lwm_core.quantize.quantize_array`) into an int8 buffer, a quarter of the bytes, and its scales into a
    float32 array; with "int4" (every K a multiple of 32), in groups of 32 inputs
    (`quantize_array_int4`) into a uint8 buffer of int4 panels, 5/32 of float32's bytes with the scales.
    (A weight that was quantized before, dequantized, quantizes back to the same values.)

    One buffer rather than one array per weight: it is allocated here on 2 MB pages (Linux; an
    madvise(MADV_HUGEPAGE) region), and handed to JAX without a copy. With 4 KB pages a stream of weights
    crosses a page every 4 KB, where the hardware prefetchers stop (the bandwidth on either page size is in
    benchmarks/README.md#design-measurements). Also jit-able packing
    would leave each weight in an XLA buffer of its own on small pages.
    """
    if shapes is None:
        weights = list(weights)
        shapes = [w.shape for w in weights]
    if quant not in ("none", "int8", "int4"):
        raise ValueError(f"pack_all: quant={quant!r} is not none, int8 or int4")
    if quant == "int4" and any(k % GROUP for k, _ in shapes):
        raise ValueError(f"pack_all: int4 needs every K to be a multiple of {GROUP}, got {[k for k, _ in shapes]}")
    dtype = {"none": np.float32, "int8": np.int8, "int4": np.uint8}[quant]
    if quant == "int4":
        pack_one = jax.jit(pack_int4)
        sizes = [k // 2 * padded(n, ROWS) for k, n in shapes]
        scale_sizes = [k // GROUP * padded(n, ROWS) for k, n in shapes]
    else:
        pack_one = jax.jit(functools.partial(pack, dtype=dtype))
        sizes = [padded(k, COLS) * padded(n, ROWS) for k, n in shapes]
        scale_sizes = [padded(n, ROWS) for _, n in shapes]
    buffer = _host_buffer(sum(sizes) * np.dtype(dtype).itemsize).view(dtype)
    scales = np.zeros(sum(scale_sizes), np.float32) if quant != "none" else None
    segments, offset, scale_offset = [], 0, 0
    for w, shape, size, scale_size in zip(weights, shapes, sizes, scale_sizes, strict=True):
        if tuple(w.shape) != tuple(shape):
            raise ValueError(f"pack_all: weight {len(segments)} is {tuple(w.shape)}, its shape was given as {shape}")
        if quant == "int4":
            packed, packed_scales = pack_one(*quantize_array_int4(w))
            buffer[offset:offset + size] = np.asarray(packed).reshape(-1)
            scales[scale_offset:scale_offset + scale_size] = np.asarray(packed_scales).reshape(-1)
        elif quant == "int8":
            w, channel_scales = quantize_array(w)
            buffer[offset:offset + size] = np.asarray(pack_one(w)).reshape(-1)
            scales[scale_offset:scale_offset + shape[1]] = channel_scales.reshape(-1)
        else:
            buffer[offset:offset + size] = np.asarray(pack_one(w)).reshape(-1)
        segments.append(Segment(offset, *shape, scale_offset if quant != "none" else -1, quant))
        offset += size
        scale_offset += scale_size
    flat = jax.dlpack.from_dlpack(buffer)  # no copy on CPU: the array keeps `buffer` (and its mapping) alive
    scale_array = jnp.asarray(scales) if quant != "none" else None
    return [Packed(flat, segment, scale_array) for segment in segments]


def _host_buffer(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of `nbytes`, 2 MB-aligned, on transparent huge pages where the OS
    offers them (else ordinary pages: only slower); callers view it as their dtype."""
    huge = 2 << 20
    try:
        region = mmap.mmap(-1, nbytes + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (AttributeError, OSError):  # no anonymous mmap (Windows): 64-byte alignment is all the kernel needs
        raw = np.empty(nbytes + 64, np.uint8)
        start = -raw.ctypes.data % 64
        return raw[start:start + nbytes]
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    raw = np.frombuffer(region, np.uint8)
    start = -raw.ctypes.data % huge
    return raw[start:start + nbytes]


def _flat(x: jax.Array, k: int) -> jax.Array:
    """x (..., K) -> float32 (M, Kp), zero-padded to the packed K."""
    x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return jnp.pad(x2, ((0, 0), (0, padded(k, COLS) - k)))


def argmax(logits: jax.Array) -> jax.Array:
    """logits (B, V) -> (B,) int32, `jnp.argmax` (first maximum; first NaN if any) by the kernel in one pass
    (call `available()` first)."""
    out = jax.ShapeDtypeStruct(logits.shape[:1], jnp.int32)
    return jax.ffi.ffi_call(ARGMAX_TARGET, out)(logits.astype(jnp.float32))


def matvec(x: jax.Array, w: Packed) -> jax.Array:
    """x (..., K) @ w -> (..., N) float32, by the kernel (call `available()` first).

    Any number of rows works: the kernel streams the weight once per call and reads it from cache for
    the rows after the first, so it is meant for decode's few rows, not for prefill."""
    k, n = w.shape
    if x.shape[-1] != k:
        raise ValueError(f"matvec: x has {plural(x.shape[-1], 'column')}, the weight {plural(k, 'row')}")
    x2 = _flat(x, k)
    out = jax.ShapeDtypeStruct((x2.shape[0], padded(n, ROWS)), jnp.float32)
    if w.quant == "int4":
        y = jax.ffi.ffi_call(INT4_TARGET, out)(w.flat, w.scales, x2, offset=np.int64(w.segment.offset),
                                               scale_offset=np.int64(w.segment.scale_offset))
    elif w.int8:
        y = jax.ffi.ffi_call(INT8_TARGET, out)(w.flat, w.scales, x2, offset=np.int64(w.segment.offset),
                                               scale_offset=np.int64(w.segment.scale_offset))
    else:
        y = jax.ffi.ffi_call(TARGET, out)(w.flat, x2, offset=np.int64(w.segment.offset))
    return y[:, :n].reshape(*x.shape[:-1], n)


def matvec_reference(x: jax.Array, w: Packed) -> jax.Array:
    """`matvec` in plain jnp (the kernel's twin for tests): unpack the segment, then one dot. For int4 the
    input is rounded to int8 per 32 as the kernel rounds it (`quantize_input_int8`)."""
    k, n = w.shape
    if w.quant == "int4":
        return _matvec_reference_int4(x, w)
    Kp, Np = padded(k, COLS), padded(n, ROWS)
    packed = jax.lax.dynamic_slice_in_dim(w.flat, w.segment.offset, Kp * Np)
    # (Np/8, Kp/16, 8, 16) -> (Kp/16, 16, Np/8, 8) -> (Kp, Np)
    dense = packed.reshape(Np // ROWS, Kp // COLS, ROWS, COLS).transpose(1, 3, 0, 2).reshape(Kp, Np)
    y = _flat(x, k) @ dense.astype(jnp.float32)
    if w.int8:
        y = y * jax.lax.dynamic_slice_in_dim(w.scales, w.segment.scale_offset, Np)
    return y[:, :n].reshape(*x.shape[:-1], n)


def quantize_input_int8(x: jax.Array) -> jax.Array:
    """x (..., K), K a multiple of 32 -> x rounded to int8 in each 32 with its own scale (max |x| / 127), back
    in float32: what the int4 kernel multiplies its weights with (the rounding half to even of jnp.round is
    the kernel's nearbyint)."""
    g = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, GROUP)  # (..., K) -> (..., K/32, 32)
    top = jnp.max(jnp.abs(g), axis=-1, keepdims=True)
    d = top / 127
    q = jnp.clip(jnp.round(g * jnp.where(top > 0, 127 / jnp.where(top > 0, top, 1), 0)), -127, 127)
    return (q * d).reshape(x.shape)


def _matvec_reference_int4(x: jax.Array, w: Packed) -> jax.Array:
    k, n = w.shape
    C, Np = k // GROUP, padded(n, ROWS)
    packed = jax.lax.dynamic_slice_in_dim(w.flat, w.segment.offset, k // 2 * Np)
    scales = jax.lax.dynamic_slice_in_dim(w.scales, w.segment.scale_offset, C * Np)
    # (Np/8, C, 8, 16) -> (C, 16, Np/8, 8) -> (K/2, Np); scales (Np/8, C, 8) -> (C, Np)
    q = packed.reshape(Np // ROWS, C, ROWS, 16).transpose(1, 3, 0, 2).reshape(k // 2, Np)
    dense = unpack_int4(q, scales.reshape(Np // ROWS, C, ROWS).transpose(1, 0, 2).reshape(C, Np))
    y = quantize_input_int8(x.reshape(-1, k)) @ dense
    return y[:, :n].reshape(*x.shape[:-1], n)


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, *, q_slot, k_seg: jax.Array) -> jax.Array:
    """`attention.reference.cached_attention` by the kernel, float32: q (B, K, G, H), caches (B*K, S, H)
    with the new key already written at `q_slot`, k_seg (B, S) -> (B, K, G, H). Slots after `q_slot` are
    not read (the reference reads all S and masks them), so a generation that reserved room for many new
    tokens pays for the ones it has made."""
    B, K, G, H = q.shape
    out = jax.ShapeDtypeStruct((B * K, G, H), jnp.float32)
    attn = jax.ffi.ffi_call(ATTENTION_TARGET, out)(
        q.reshape(B * K, G, H).astype(jnp.float32), k_cache.astype(jnp.float32), v_cache.astype(jnp.float32),
        k_seg.astype(jnp.int32), jnp.asarray(q_slot, jnp.int32))
    return attn.reshape(B, K, G, H).astype(q.dtype)
