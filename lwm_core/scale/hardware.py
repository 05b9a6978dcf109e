"""The accelerators the scale plan targets: per-chip compute, memory, memory bandwidth and interconnect, each
figure from the vendor's published specification (the URLs are in `Accelerator.sources`), and the parsing of
memory sizes (`80GB`, `95GiB`) or accelerator names (`h100`) given on a command line.

What each figure means (the plan divides by them, so the conventions matter more than the digits):

- `peak_flops` is dense bf16 FLOP/s per chip. NVIDIA prints Tensor Core figures "with sparsity" (2:4
  structured sparsity doubles them); dense is half of the printed number. Google's TPU figures are dense.
- `hbm_bytes` is the capacity as published: GB = 1e9 bytes, GiB = 2**30 (Google writes GiB for v4).
  Where a page is ambiguous we take the smaller reading, so a plan that fits the figure fits the chip.
- `link_bandwidth` is what one chip can send to ONE ring neighbour in ONE direction over the fast
  interconnect, which is what a ring step (`ppermute` of a key/value block) is limited by:
  - TPU: ICI is a torus of point-to-point links, and a ring along one mesh axis reaches each neighbour
    over one link. Google publishes the bidirectional total per chip over all its ports, so one link in
    one direction is that total / 2 (directions) / ports (6 for the 3D tori of v4/v5p, 4 for v5e's 2D).
    A ring that sends both ways (half the block to each side) gets twice this; we do not assume it.
  - GPU: NVLink goes through NVSwitch, so all of a GPU's links reach any one peer: one neighbour gets
    the whole per-direction bandwidth, the published bidirectional total / 2 (H100: 18 NVLink-4 links of
    25 GB/s each way = 450 GB/s; NVIDIA prints 900 GB/s for both directions together).
- `scaleout_bandwidth` is bytes/s per chip per direction once a ring leaves the fast domain: for GPU pods
  the InfiniBand NIC each GPU owns in an HGX/DGX node (400 Gb/s = 50 GB/s on H100/H200, 200 Gb/s = 25 GB/s
  on A100); for TPUs the same as `link_bandwidth`, because inside a slice every hop is ICI.
- `chips_per_node` is the size of that fast domain: 8 GPUs per HGX node; for TPUs the largest slice one
  ICI domain spans (beyond it, multislice traffic crosses the data-center network, which this catalog
  does not model: plan one slice per ring).

The RingAttention paper's overlap condition uses a different bandwidth (per chip, over all links: its
Table 2 lists 268 GB/s for TPU v4, about 6 links x 45 GB/s); docs/scale.md compares the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from lwm_core.errors import LWMError

GB = 10**9
GiB = 2**30


@dataclass(frozen=True)
class Accelerator:
    """One accelerator chip and the domain it is networked in (see the module docstring for the conventions)."""

    name: str  # canonical lowercase name, e.g. "tpu-v5p"
    title: str  # how people write it, e.g. "TPU v5p"
    aliases: tuple[str, ...]  # lowercase spellings, including what jax.devices()[0].device_kind reports on it
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes: int  # high-bandwidth memory per chip, bytes
    hbm_bandwidth: float  # HBM bytes/s per chip
    link_bandwidth: float  # bytes/s to one ring neighbour, one direction, over ICI / NVLink
    scaleout_bandwidth: float  # bytes/s per chip per direction across nodes (GPU NIC) or within a TPU slice
    chips_per_node: int  # chips in one fast (ICI / NVLink) domain
    sources: tuple[str, ...]  # where the figures come from

    def __post_init__(self):
        for figure in ("peak_flops", "hbm_bytes", "hbm_bandwidth", "link_bandwidth", "scaleout_bandwidth",
                       "chips_per_node"):
            if not getattr(self, figure) > 0:
                raise LWMError(f"accelerator {self.name!r}: {figure} = {getattr(self, figure)!r} must be positive")
        if self.scaleout_bandwidth > self.link_bandwidth:
            raise LWMError(f"accelerator {self.name!r}: scaleout_bandwidth {self.scaleout_bandwidth:g} exceeds "
                           f"link_bandwidth {self.link_bandwidth:g}; the slow network cannot be the faster one")
        bad = [alias for alias in (self.name, *self.aliases) if alias != alias.lower()]
        if bad:
            raise LWMError(f"accelerator {self.name!r}: names must be lowercase, got {bad}")
        if not self.sources:
            raise LWMError(f"accelerator {self.name!r} has no sources; cite where its figures come from")


# Google Cloud's per-chip figures; the per-link split is the scaling book's ICI table (it agrees with
# Cloud's totals divided over the ports for v5p and v5e, and is the only published per-link v4 figure).
_SCALING_BOOK_TPUS = "https://jax-ml.github.io/scaling-book/tpus/"
_SCALING_BOOK_GPUS = "https://jax-ml.github.io/scaling-book/gpus/"
_DGX_H100_H200 = "https://docs.nvidia.com/dgx/dgxh100-user-guide/introduction-to-dgxh100.html"

TPU_V4 = Accelerator(
    name="tpu-v4",
    title="TPU v4",
    aliases=("tpu v4", "v4", "tpuv4"),
    peak_flops=275e12,  # "275 teraflops (bf16 or int8)" per chip
    hbm_bytes=32 * GiB,  # "32 GiB" HBM2
    hbm_bandwidth=1200e9,  # "1200 GBps"
    # Cloud's v4 page gives no per-chip ICI figure; the scaling book lists 4.5e10 bytes/s one way per link
    # (9e10 both ways), 6 links per chip in the 3D torus.
    link_bandwidth=45e9,
    scaleout_bandwidth=45e9,  # a v4 pod is one ICI domain
    chips_per_node=4096,  # "TPU Pod size 4096 chips"
    sources=("https://cloud.google.com/tpu/docs/v4", _SCALING_BOOK_TPUS),
)

TPU_V5P = Accelerator(
    name="tpu-v5p",
    title="TPU v5p",
    # JAX has reported v5p as "TPU v5" (Pallas' chip-version table, MaxText's device tables); newer
    # releases may spell it "TPU v5p". Both are here.
    aliases=("tpu v5p", "tpu v5", "v5p", "tpuv5p"),
    peak_flops=459e12,  # "459 TFLOPs" bf16 per chip
    # "95 GB" in the key-specifications table (a newer table heads the column GiB): the smaller reading.
    hbm_bytes=95 * GB,
    hbm_bandwidth=2765e9,  # "2765 GBps"
    # "Bidirectional inter-chip interconnect (ICI) bandwidth (per chip) 1200 GBps" over the 6 ports of the
    # 3D torus: 1200 / 2 / 6 = 100 GB/s per link per direction (the scaling book's 1e11).
    link_bandwidth=100e9,
    scaleout_bandwidth=100e9,
    chips_per_node=6144,  # "the largest job that can be scheduled is a 96 cube (6144 chip) job"; pod 8960
    sources=("https://cloud.google.com/tpu/docs/v5p", "https://docs.cloud.google.com/tpu/docs/v5p-training",
             _SCALING_BOOK_TPUS),
)

TPU_V5E = Accelerator(
    name="tpu-v5e",
    title="TPU v5e",
    aliases=("tpu v5 lite", "tpu v5e", "v5e", "v5litepod", "tpuv5e"),
    peak_flops=197e12,  # "197 TFLOPs" bf16 per chip
    hbm_bytes=16 * GB,  # "16 GB"
    hbm_bandwidth=819e9,  # "819 GBps"
    # "Bidirectional ICI bandwidth (per chip) 400 GBps", "ICI ports per chip 4" (2D torus):
    # 400 / 2 / 4 = 50 GB/s per link per direction (the scaling book's 5e10).
    link_bandwidth=50e9,
    scaleout_bandwidth=50e9,
    chips_per_node=256,  # "TPU Pod size 256 chips", 16x16
    sources=("https://docs.cloud.google.com/tpu/docs/v5e", _SCALING_BOOK_TPUS),
)

H100 = Accelerator(
    name="h100",
    title="NVIDIA H100 SXM",
    # device_kind of the SXM part; the PCIe and NVL cards (other clocks, memory, links) are not this target.
    aliases=("nvidia h100 80gb hbm3", "h100 sxm", "h100-sxm", "h100-sxm5", "h100-80gb", "nvidia h100"),
    peak_flops=989e12,  # datasheet "BFLOAT16 Tensor Core 1,979 teraFLOPS" is with sparsity; dense is half
    hbm_bytes=80 * GB,  # "80GB" HBM3
    hbm_bandwidth=3.35e12,  # "3.35TB/s"
    link_bandwidth=450e9,  # "NVLink 900GB/s" counts both directions: 18 links x 25 GB/s each way
    scaleout_bandwidth=50e9,  # DGX H100: one ConnectX-7 400 Gb/s InfiniBand port per GPU
    chips_per_node=8,
    sources=("https://www.nvidia.com/en-us/data-center/h100/",
             "https://resources.nvidia.com/en-us-gpu-resources/h100-datasheet-24306", _DGX_H100_H200,
             _SCALING_BOOK_GPUS),
)

H200 = Accelerator(
    name="h200",
    title="NVIDIA H200 SXM",
    aliases=("nvidia h200", "h200 sxm", "h200-sxm", "h200-141gb"),
    peak_flops=989e12,  # the same GH100 compute as H100 SXM: "1,979 TFLOPS" with sparsity
    hbm_bytes=141 * GB,  # "141GB" HBM3e
    hbm_bandwidth=4.8e12,  # "4.8TB/s"
    link_bandwidth=450e9,  # "NVLink 900GB/s" both directions
    scaleout_bandwidth=50e9,  # DGX H200: one ConnectX-7 400 Gb/s port per GPU, as DGX H100
    chips_per_node=8,
    sources=("https://www.nvidia.com/en-us/data-center/h200/", _DGX_H100_H200, _SCALING_BOOK_GPUS),
)

A100 = Accelerator(
    name="a100",
    title="NVIDIA A100 80GB SXM",
    aliases=("nvidia a100-sxm4-80gb", "a100-sxm4-80gb", "a100-80gb", "a100 80gb", "a100 sxm", "a100-sxm"),
    peak_flops=312e12,  # "BFLOAT16 Tensor Core 312 TFLOPS" dense (624 with sparsity)
    hbm_bytes=80 * GB,  # "80GB HBM2e"
    hbm_bandwidth=2039e9,  # "2,039 GB/s" (SXM; the PCIe card has 1,935)
    link_bandwidth=300e9,  # "NVLink 600GB/s" both directions: 12 NVLink-3 links x 25 GB/s each way
    scaleout_bandwidth=25e9,  # DGX A100: one ConnectX-6 200 Gb/s HDR InfiniBand port per GPU
    chips_per_node=8,
    sources=("https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
             "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
             "https://docs.nvidia.com/dgx/dgxa100-user-guide/introduction-to-dgxa100.html", _SCALING_BOOK_GPUS),
)

ACCELERATORS: dict[str, Accelerator] = {acc.name: acc for acc in (TPU_V4, TPU_V5P, TPU_V5E, H100, H200, A100)}


def _key(text: str) -> str:
    """The form names are compared in: lowercase, runs of spaces, `_` and `-` as one `-` ("TPU_v5p" -> "tpu-v5p")."""
    return re.sub(r"[\s_\-]+", "-", text.strip().lower())


def _index(accelerators: dict[str, Accelerator]) -> dict[str, Accelerator]:
    index: dict[str, Accelerator] = {}
    for acc in accelerators.values():
        for spelling in (acc.name, acc.title, *acc.aliases):
            other = index.setdefault(_key(spelling), acc)
            if other is not acc:  # a bug in the table above, not a user error
                raise ValueError(f"{spelling!r} names both {other.name} and {acc.name}")
    return index


_BY_KEY = _index(ACCELERATORS)


def find(name: str) -> Accelerator | None:
    """The accelerator a name, title or alias means (case, spaces, `_` and `-` ignored), or None."""
    return _BY_KEY.get(_key(name)) if isinstance(name, str) else None


# Decimal units are powers of 1000, binary ones (with `i`) powers of 1024; a bare K/M/G/T/P is decimal, as
# in Kubernetes quantities ("16G" = 16e9, "16Gi" = 16 GiB). Units are case-insensitive and mean bytes.
_UNITS = {
    "": 1,
    "b": 1,
    **{f"{letter}{suffix}": 1000**power for power, letter in enumerate("kmgtp", 1) for suffix in ("", "b")},
    **{f"{letter}i{suffix}": 1024**power for power, letter in enumerate("kmgtp", 1) for suffix in ("", "b")},
}
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)$")
_SIZE_EXAMPLES = "e.g. 80GB, 80 GB, 95GiB, 16G, 1.5TB or 123456 (bytes)"


def parse_bytes(text: str) -> int:
    """A memory size -> bytes: "80GB" -> 80e9, "95GiB" -> 95 * 2**30, "16G" -> 16e9, "123456" -> 123456."""
    spec = text.strip().lower() if isinstance(text, str) else ""
    match = _SIZE.match(spec)
    if spec.startswith("-") and _SIZE.match(spec[1:].strip()):
        raise LWMError(f"memory size {text!r} is negative; give a positive size, {_SIZE_EXAMPLES}")
    if match is None or match.group(2) not in _UNITS:
        raise LWMError(f"cannot read {text!r} as a memory size; write a number and an optional unit, {_SIZE_EXAMPLES}")
    # Decimal, not float: "1.5TB" or "0.1GiB" is multiplied out exactly, then rounded once to whole bytes.
    value = Decimal(match.group(1)) * _UNITS[match.group(2)]
    size = int(value.to_integral_value(rounding=ROUND_HALF_UP))
    if size <= 0:
        raise LWMError(f"memory size {text!r} is {size} bytes; give a positive size, {_SIZE_EXAMPLES}")
    return size


def describe_bytes(size: int) -> str:
    """A byte count for people: "95.0 GB (88.5 GiB)"."""
    return f"{size / GB:.1f} GB ({size / GiB:.1f} GiB)"


def device_memory(spec: str) -> tuple[int, str]:
    """Per-device memory from a size ("80GB") or an accelerator name ("h100", "tpu-v5p") -> (bytes, description)."""
    acc = find(spec)
    if acc is not None:
        return acc.hbm_bytes, f"{acc.title}: {describe_bytes(acc.hbm_bytes)} HBM per chip"
    looks_like_size = isinstance(spec, str) and re.match(r"^\s*[-+]?[0-9.]", spec) is not None
    try:
        size = parse_bytes(spec)
    except LWMError:
        if looks_like_size:  # "0GB", "-5GB", "80XB": the size's own message says what is wrong with it
            raise
        kinds = ", ".join(ACCELERATORS)
        raise LWMError(f"device memory {spec!r} is neither a size ({_SIZE_EXAMPLES}) nor a known accelerator "
                       f"({kinds})") from None
    return size, describe_bytes(size)
