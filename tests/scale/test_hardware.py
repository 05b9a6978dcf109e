"""The accelerator catalog: its figures are the published ones, names resolve, sizes parse, errors are one line."""

import pytest

from lwm_core.errors import LWMError
from lwm_core.scale.hardware import ACCELERATORS, GB, Accelerator, GiB, device_memory, find, parse_bytes

# name: (peak bf16 TFLOP/s dense, HBM bytes, HBM TB/s, link GB/s one direction, scale-out GB/s, chips per node)
PUBLISHED = {
    "tpu-v4": (275, 32 * GiB, 1.2, 45, 45, 4096),
    "tpu-v5p": (459, 95 * GB, 2.765, 100, 100, 6144),
    "tpu-v5e": (197, 16 * GB, 0.819, 50, 50, 256),
    "h100": (989, 80 * GB, 3.35, 450, 50, 8),
    "h200": (989, 141 * GB, 4.8, 450, 50, 8),
    "a100": (312, 80 * GB, 2.039, 300, 25, 8),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_figures_are_the_published_ones(name):
    acc = ACCELERATORS[name]
    tflops, hbm, hbm_tbs, link_gbs, scaleout_gbs, chips = PUBLISHED[name]
    assert acc.name == name
    assert acc.peak_flops == pytest.approx(tflops * 1e12)
    assert acc.hbm_bytes == hbm
    assert acc.hbm_bandwidth == pytest.approx(hbm_tbs * 1e12)
    assert acc.link_bandwidth == pytest.approx(link_gbs * 1e9)
    assert acc.scaleout_bandwidth == pytest.approx(scaleout_gbs * 1e9)
    assert acc.chips_per_node == chips
    assert acc.sources and all(url.startswith("https://") for url in acc.sources)


def test_link_bandwidth_is_the_published_total_split_per_direction_and_port():
    # TPU: Cloud's bidirectional per-chip ICI total / 2 directions / ports (6 on v5p's 3D torus, 4 on v5e's 2D)
    assert ACCELERATORS["tpu-v5p"].link_bandwidth == 1200e9 / 2 / 6
    assert ACCELERATORS["tpu-v5e"].link_bandwidth == 400e9 / 2 / 4
    # GPU: NVSwitch gives one peer all links; NVIDIA's total counts both directions
    assert ACCELERATORS["h100"].link_bandwidth == 900e9 / 2 == 18 * 25e9
    assert ACCELERATORS["a100"].link_bandwidth == 600e9 / 2 == 12 * 25e9
    # per-GPU InfiniBand NICs: 400 Gb/s (ConnectX-7) and 200 Gb/s (ConnectX-6), bits -> bytes
    assert ACCELERATORS["h100"].scaleout_bandwidth == 400e9 / 8
    assert ACCELERATORS["a100"].scaleout_bandwidth == 200e9 / 8


def test_nvidia_dense_flops_are_half_the_sparse_datasheet_figure():
    assert ACCELERATORS["h100"].peak_flops == pytest.approx(1979e12 / 2, rel=1e-3)
    assert ACCELERATORS["a100"].peak_flops == 624e12 / 2


@pytest.mark.parametrize("spelling, name", [
    # what jax.devices()[0].device_kind reports on each chip
    ("TPU v4", "tpu-v4"), ("TPU v5", "tpu-v5p"), ("TPU v5p", "tpu-v5p"), ("TPU v5 lite", "tpu-v5e"),
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100"),
    # what people type
    ("v5p", "tpu-v5p"), ("H100", "h100"), ("tpu_v5p", "tpu-v5p"), ("TPU-V5E", "tpu-v5e"), ("  tpu v4 ", "tpu-v4"),
    ("v4", "tpu-v4"), ("a100", "a100"), ("h200", "h200"), ("NVIDIA H100 SXM", "h100"),
])
def test_find_resolves_names_aliases_and_device_kinds(spelling, name):
    assert find(spelling) is ACCELERATORS[name]


@pytest.mark.parametrize("spelling", ["", "h900", "tpu v4 lite", "NVIDIA H100 PCIe", "tpu-v6e", "gpu", None])
def test_find_returns_none_for_what_is_not_in_the_catalog(spelling):
    # v4 lite (v4i) and the H100 PCIe card are other chips with other figures: no silent match
    assert find(spelling) is None


def test_catalog_names_are_lowercase_unique_and_keyed_by_name():
    assert set(ACCELERATORS) >= {"tpu-v4", "tpu-v5p", "tpu-v5e", "h100", "h200", "a100"}
    for key, acc in ACCELERATORS.items():
        assert key == acc.name
        assert all(alias == alias.lower() for alias in acc.aliases)


@pytest.mark.parametrize("text, size", [
    ("80GB", 80 * 10**9), ("80 GB", 80 * 10**9), ("95GiB", 95 * 2**30), ("16G", 16 * 10**9), ("16Gi", 16 * 2**30),
    ("1.5TB", 15 * 10**11), ("123456", 123456), ("512MiB", 512 * 2**20), ("2kb", 2000), (" 4 gib ", 4 * 2**30),
    ("0.5KiB", 512), ("100B", 100), ("1.5", 2),
])
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text, says", [
    ("", "cannot read"), ("eighty", "cannot read"), ("80XB", "cannot read"), ("1e9", "cannot read"),
    ("GB", "cannot read"), ("-5GB", "negative"), ("0", "0 bytes"), ("0GB", "0 bytes"), ("0.3B", "0 bytes"),
])
def test_parse_bytes_rejects_bad_sizes_in_one_line(text, says):
    with pytest.raises(LWMError) as info:
        parse_bytes(text)
    message = str(info.value)
    assert says in message and repr(text) in message and "\n" not in message
    assert "80GB" in message  # and says what to write instead


def test_device_memory_takes_an_accelerator_or_a_size():
    assert device_memory("h100") == (80 * 10**9, "NVIDIA H100 SXM: 80.0 GB (74.5 GiB) HBM per chip")
    assert device_memory("TPU v5p")[0] == 95 * 10**9
    assert device_memory("tpu-v4")[0] == 32 * 2**30
    assert device_memory("80GB") == (80 * 10**9, "80.0 GB (74.5 GiB)")
    assert device_memory("95GiB")[0] == 95 * 2**30


def test_device_memory_error_names_the_known_kinds():
    with pytest.raises(LWMError) as info:
        device_memory("h900")
    message = str(info.value)
    assert "'h900'" in message and "\n" not in message
    assert all(name in message for name in ACCELERATORS)


def test_device_memory_passes_on_what_is_wrong_with_a_size():
    with pytest.raises(LWMError, match="0 bytes"):
        device_memory("0GB")
    with pytest.raises(LWMError, match="negative"):
        device_memory("-80GB")


def _accelerator(**changes):
    figures = dict(name="x", title="X", aliases=("x1",), peak_flops=1e12, hbm_bytes=GB, hbm_bandwidth=1e12,
                   link_bandwidth=1e11, scaleout_bandwidth=1e10, chips_per_node=8, sources=("https://example.com",))
    return Accelerator(**{**figures, **changes})


@pytest.mark.parametrize("changes, says", [
    (dict(peak_flops=0), "peak_flops"), (dict(hbm_bytes=-1), "hbm_bytes"), (dict(chips_per_node=0), "chips_per_node"),
    (dict(scaleout_bandwidth=1e12), "exceeds"), (dict(aliases=("TPU X",)), "lowercase"), (dict(sources=()), "sources"),
])
def test_accelerator_validates_its_figures(changes, says):
    _accelerator()  # the baseline is valid
    with pytest.raises(LWMError, match=says):
        _accelerator(**changes)
