"""LWM streaming msgpack checkpoints: the real fixture, byte compatibility with Flax, round trips, errors."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import flax.serialization as fs
import ml_dtypes
import msgpack
import numpy as np
import pytest

from helpers import REFERENCE as FIXTURE
from lwm_core.checkpoint.streaming import (
    LOAD_KINDS,
    iter_checkpoint,
    iter_records,
    parse_load_spec,
    write_flax_params,
    write_records,
)
from lwm_core.errors import LWMError

BF16 = np.dtype(ml_dtypes.bfloat16)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality (NaNs included), with dtype and shape."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def flax_records(path: Path) -> dict[tuple[str, ...], object]:
    """The independent reference: msgpack.Unpacker + flax.serialization.msgpack_restore, as LWM reads."""
    with open(path, "rb") as f:
        return {tuple(k): fs.msgpack_restore(v) for k, v in msgpack.Unpacker(f, max_buffer_size=0)}


def record_bytes(key: list[str], value) -> bytes:
    """One record exactly as the original StreamingCheckpointer writes it."""
    return msgpack.packb([key, fs.to_bytes(value)])


def rng_array(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return rng.integers(-1000 if dtype.kind == "i" else 0, 1000, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    return rng.standard_normal(shape).astype(dtype)


def error_text(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text  # user-facing errors are one line
    return text


# ---------------------------------------------------------------------------------------------------
# The real checkpoint written by the original LWM code


def test_fixture_keys_shapes_and_values_match_flax():
    cfg = json.loads((FIXTURE / "config.json").read_text())
    L, D, F, V = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    layer = ("transformer", "h", "scan_decoder")
    expected = {
        ("transformer", "wte", "embedding"): (V, D),
        ("transformer", "ln_f", "kernel"): (D,),
        ("lm_head", "kernel"): (D, V),
        layer + ("attention_norm", "kernel"): (L, D),
        layer + ("ffn_norm", "kernel"): (L, D),
        **{layer + ("attention", w, "kernel"): (L, D, D) for w in ("wq", "wk", "wv", "wo")},
        layer + ("feed_forward", "w1", "kernel"): (L, D, F),
        layer + ("feed_forward", "w2", "kernel"): (L, F, D),
        layer + ("feed_forward", "w3", "kernel"): (L, D, F),
    }
    got = dict(iter_checkpoint("params", FIXTURE / "params"))
    assert {k: v.shape for k, v in got.items()} == expected
    assert all(v.dtype == BF16 for v in got.values())
    ref = flax_records(FIXTURE / "params")
    assert ref.keys() == got.keys()
    for key, value in got.items():
        assert same(value, ref[key]), key
    assert float(np.abs(got[("lm_head", "kernel")].astype(np.float32)).sum()) > 0


def test_fixture_rewrites_byte_for_byte(tmp_path):
    out = tmp_path / "params"
    write_records(out, iter_records(FIXTURE / "params"))
    assert out.read_bytes() == (FIXTURE / "params").read_bytes()


# ---------------------------------------------------------------------------------------------------
# Writing: byte compatibility with the original writer and with Flax


@pytest.mark.parametrize(
    "value",
    [
        rng_array((6,), np.int8),  # a 16-byte payload: msgpack's fixext 16
        rng_array((3, 5), BF16),  # ext 8 / bin 8
        rng_array((300,), np.float32),  # ext 16 / bin 16
        rng_array((17000,), np.float32),  # ext 32 / bin 32
        rng_array((2, 3, 4), np.int32),
        np.array(3.5, np.float32),  # 0-d array: ExtType 1 with shape []
        np.float32(2.5),  # numpy scalar: ExtType 3
        np.zeros((0, 4), BF16),
        rng_array((4, 3), np.float64).T,  # not C-contiguous: written in C order, as tobytes('C')
        7,  # a plain int step
    ],
    ids=["fixext16", "bf16", "ext16", "ext32", "int32", "0d", "npscalar", "empty", "transposed", "int"],
)
def test_record_bytes_equal_original_writer(tmp_path, value):
    out = tmp_path / "params"
    write_records(out, [(["a", "b"], value)])
    assert out.read_bytes() == record_bytes(["a", "b"], value)


@pytest.mark.parametrize("chunk_bytes", [1000, 1024])
def test_chunked_bytes_equal_flax_chunking(tmp_path, monkeypatch, chunk_bytes):
    # Flax chunks at module-level MAX_CHUNK_SIZE; lowering it gives the reference for small arrays.
    monkeypatch.setattr(fs, "MAX_CHUNK_SIZE", chunk_bytes)
    arrays = [rng_array((7, 61), np.float32), rng_array((1234,), BF16), rng_array((3, 50, 7), np.int32)]
    out = tmp_path / "params"
    write_records(out, [([f"k{i}"], a) for i, a in enumerate(arrays)], chunk_bytes=chunk_bytes)
    assert out.read_bytes() == b"".join(record_bytes([f"k{i}"], a) for i, a in enumerate(arrays))


def test_write_read_round_trip_all_dtypes_and_chunking(tmp_path):
    arrays = {
        ("bf16",): rng_array((4, 8), BF16),
        ("f32",): rng_array((5, 3), np.float32),
        ("i32",): rng_array((9,), np.int32),
        ("u8",): rng_array((2, 2), np.uint8),
        ("bool",): rng_array((5,), np.bool_),
        ("f16",): rng_array((3,), np.float16),
        ("zero_d",): np.array(-1.25, BF16),
        ("nan",): np.array([np.nan, -np.inf, -0.0], np.float32),
        ("chunked", "bf16"): rng_array((3, 7, 71), BF16),  # 2982 bytes: chunks of 500, 500, ..., 491
        ("chunked", "f32"): rng_array((13, 77), np.float32),  # 4004 bytes: last chunk 1 element
        ("exact",): rng_array((250,), np.float32),  # exactly chunk_bytes: not chunked
        ("empty",): np.zeros((3, 0), np.float32),
    }
    out = tmp_path / "params"
    write_records(out, arrays.items(), chunk_bytes=1000)
    got = dict(iter_checkpoint("params", out))
    assert got.keys() == arrays.keys()
    for key, value in arrays.items():
        assert same(got[key], value), key

    # Flax reads our chunked records (msgpack_restore unchunks) and exactly-1000-byte ones unchunked.
    with open(out, "rb") as f:
        raw = {tuple(k): v for k, v in msgpack.Unpacker(f, max_buffer_size=0)}
    for key, value in arrays.items():
        assert same(fs.msgpack_restore(raw[key]), value), key
    for key in [("chunked", "bf16"), ("chunked", "f32")]:
        doc = msgpack.unpackb(raw[key], ext_hook=fs._msgpack_ext_unpack, raw=False)
        assert doc["__msgpack_chunked_array__"] is True
        assert len(doc["chunks"]) == -(-arrays[key].nbytes // 1000)
        assert same(fs._unchunk(doc), arrays[key])
    assert isinstance(msgpack.unpackb(raw[("exact",)]), msgpack.ExtType)


def test_iter_records_returns_raw_values(tmp_path):
    out = tmp_path / "params"
    write_records(out, [(["step"], 12), (["scalar"], np.int32(4)), (["w"], np.ones(3, np.float32))])
    got = dict(iter_records(out))
    assert got[("step",)] == 12 and type(got[("step",)]) is int
    assert got[("scalar",)] == 4 and isinstance(got[("scalar",)], np.int32)  # ExtType 3, as Flax returns it
    assert same(got[("w",)], np.ones(3, np.float32))


# ---------------------------------------------------------------------------------------------------
# Load kinds


def write_trainstate(path: Path) -> dict[tuple[str, ...], np.ndarray]:
    params = {
        ("transformer", "wte", "embedding"): rng_array((10, 4), np.float32, 1),
        ("lm_head", "kernel"): rng_array((4, 10), np.float32, 2),
    }
    records = [(["step"], np.array(3, np.int32))]
    records += [(["params", "params", *k], v) for k, v in params.items()]
    records += [(["opt_state", "1", "0", "mu", "params", *k], np.zeros_like(v)) for k, v in params.items()]
    write_records(path, records)
    return params


@pytest.mark.parametrize("kind", ["trainstate", "trainstate_params"])
def test_trainstate_kinds_select_params_and_strip_prefix(tmp_path, kind):
    params = write_trainstate(tmp_path / "ts")
    got = dict(iter_checkpoint(kind, tmp_path / "ts"))
    assert got.keys() == params.keys()
    for key, value in params.items():
        assert same(got[key], value)
    assert len(list(iter_records(tmp_path / "ts"))) == 5  # step + 2 params + 2 optimizer records


def test_trainstate_skips_other_records_unread(tmp_path):
    # The optimizer state is skipped with a seek, so even a corrupt opt_state record does not matter.
    good = record_bytes(["params", "params", "w"], np.ones(2, np.float32))
    bad = msgpack.packb([["opt_state", "mu"], b"\xc1\xc1\xc1"])
    (tmp_path / "ts").write_bytes(bad + good)
    assert same(dict(iter_checkpoint("trainstate_params", tmp_path / "ts"))[("w",)], np.ones(2, np.float32))
    with pytest.raises(LWMError, match="corrupt record: record 0 \\(key opt_state/mu\\)"):
        list(iter_records(tmp_path / "ts"))


def test_params_kind_refuses_a_trainstate_file(tmp_path):
    # Documented behaviour: params:: of a train state stops at its first train-state record with the fix.
    write_trainstate(tmp_path / "ts")
    with pytest.raises(LWMError) as e:
        list(iter_checkpoint("params", tmp_path / "ts"))
    assert f"load it as trainstate_params::{tmp_path / 'ts'}" in error_text(e)
    assert "record key step" in str(e.value)


def test_trainstate_kind_refuses_a_params_file():
    with pytest.raises(LWMError) as e:
        list(iter_checkpoint("trainstate_params", FIXTURE / "params"))
    assert f"load it as params::{FIXTURE / 'params'}" in error_text(e)


def test_trainstate_without_params_records(tmp_path):
    write_records(tmp_path / "ts", [(["step"], np.array(1, np.int32))])
    with pytest.raises(LWMError, match="no records under params/params"):
        list(iter_checkpoint("trainstate", tmp_path / "ts"))


def flax_tree() -> dict:
    return {
        "transformer": {"wte": {"embedding": rng_array((6, 4), BF16)}, "ln_f": {"kernel": rng_array((4,), BF16)}},
        "lm_head": {"kernel": rng_array((4, 6), np.float32)},
    }


def flatten(tree: dict, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
    return out


def test_flax_params_round_trip_and_bytes_equal_flax(tmp_path):
    tree = flax_tree()
    write_flax_params(tmp_path / "fp", tree)
    assert (tmp_path / "fp").read_bytes() == fs.msgpack_serialize(tree)
    got = dict(iter_checkpoint("flax_params", tmp_path / "fp"))
    assert got.keys() == flatten(tree).keys()
    for key, value in flatten(tree).items():
        assert same(got[key], value)


def test_flax_params_unwraps_params_and_reads_flax_chunks(tmp_path, monkeypatch):
    tree = flax_tree()
    monkeypatch.setattr(fs, "MAX_CHUNK_SIZE", 16)  # Flax itself chunks every array here
    (tmp_path / "fp").write_bytes(fs.msgpack_serialize({"params": tree}))
    got = dict(iter_checkpoint("flax_params", tmp_path / "fp"))
    assert got.keys() == flatten(tree).keys()
    for key, value in flatten(tree).items():
        assert same(got[key], value)


def test_kind_mismatch_between_flax_blob_and_streaming_file(tmp_path):
    write_flax_params(tmp_path / "fp", flax_tree())
    with pytest.raises(LWMError) as e:
        list(iter_checkpoint("params", tmp_path / "fp"))
    assert "is not an LWM streaming msgpack checkpoint (byte 0:" in error_text(e)
    assert f"flax_params::{tmp_path / 'fp'}" in str(e.value)
    with pytest.raises(LWMError) as e:
        list(iter_checkpoint("flax_params", FIXTURE / "params"))
    assert "is not a Flax msgpack checkpoint (byte 0:" in error_text(e)
    assert f"params::{FIXTURE / 'params'}" in str(e.value)


# ---------------------------------------------------------------------------------------------------
# Load specs


def test_parse_load_spec():
    assert parse_load_spec("params::/x/params") == ("params", "/x/params")
    assert parse_load_spec("trainstate_params::rel/ts") == ("trainstate_params", "rel/ts")
    assert parse_load_spec("flax_params::a::b") == ("flax_params", "a::b")
    assert parse_load_spec("/x/params") is None
    assert parse_load_spec("/x/odd::name") is None  # "::" inside a plain path is not a kind
    with pytest.raises(LWMError) as e:
        parse_load_spec("weights::/x")
    assert "'weights'" in error_text(e) and all(k + "::" in str(e.value) for k in LOAD_KINDS)
    with pytest.raises(LWMError, match="no path"):
        parse_load_spec("params::")
    with pytest.raises(LWMError, match="unknown checkpoint kind 'weights'"):
        iter_checkpoint("weights", FIXTURE / "params")


# ---------------------------------------------------------------------------------------------------
# Reading errors


def test_missing_directory_and_empty_raise_when_called(tmp_path):
    with pytest.raises(LWMError) as e:
        iter_checkpoint("params", tmp_path / "nope")  # raised at the call, before iteration
    assert error_text(e) == f"checkpoint file {tmp_path / 'nope'} does not exist; check the path or download it"
    with pytest.raises(LWMError, match="is a directory"):
        iter_records(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(LWMError, match="is empty"):
        iter_checkpoint("flax_params", tmp_path / "empty")


def test_truncated_file_names_record_key_and_offsets(tmp_path):
    a, b = rng_array((10,), np.float32), rng_array((50,), BF16)
    first = record_bytes(["a"], a)
    second = record_bytes(["x", "b"], b)
    value = fs.to_bytes(b)
    offset = len(first) + len(second) - len(value)  # where record 1's value starts
    data = first + second
    (tmp_path / "t").write_bytes(data[:-7])
    with pytest.raises(LWMError) as e:
        list(iter_checkpoint("params", tmp_path / "t"))
    assert error_text(e) == (
        f"checkpoint {tmp_path / 't'} is truncated: record 1 (key x/b) needs {len(value)} bytes at offset "
        f"{offset} but the file ends at {len(data) - 7}; re-download it"
    )
    (tmp_path / "t").write_bytes(data[: len(first) + 2])  # cut inside record 1's key
    with pytest.raises(LWMError, match=r"is truncated: record 1 \(key unknown\)"):
        list(iter_records(tmp_path / "t"))


def test_truncated_first_record_is_detected_before_any_yield(tmp_path):
    data = (FIXTURE / "params").read_bytes()[:100_000]
    (tmp_path / "t").write_bytes(data)
    it = iter_checkpoint("params", tmp_path / "t")
    with pytest.raises(LWMError, match=r"truncated: record 0 \(key lm_head/kernel\) needs 512028 bytes at offset 22"):
        next(it)


@pytest.mark.parametrize(
    "prefix, garbage, detail",
    [
        (b"", b"hello world, not a checkpoint", "byte 0: expected a record"),
        (b"", b"\x80\x02}q\x00.", "byte 0: expected a record"),  # a pickle
        (b"", b"\x92\x05", "byte 1: expected the record's key path"),
        (b"", b"\x92\x91\xa1a\x05", "byte 4: expected the value of a as msgpack bin"),
        (record_bytes(["w"], np.ones(2, np.float32)), b"\xc1junk", "byte {n}: byte 0xc1 is never used"),
    ],
    ids=["text", "pickle", "no-key", "no-bin", "after-a-record"],
)
def test_garbage_is_not_a_checkpoint(tmp_path, prefix, garbage, detail):
    (tmp_path / "g").write_bytes(prefix + garbage)
    with pytest.raises(LWMError) as e:
        list(iter_records(tmp_path / "g"))
    detail = detail.format(n=len(prefix))  # the offset of the first bad byte
    assert f"{tmp_path / 'g'} is not an LWM streaming msgpack checkpoint ({detail}" in error_text(e)


def test_corrupt_record_value(tmp_path):
    value = fs.to_bytes(np.ones(3, np.float32))
    cases = {
        "stray": msgpack.packb([["w"], value + b"\x00"]),  # nested document ends before its bin
        "short": msgpack.packb([["w"], msgpack.packb(msgpack.ExtType(1, msgpack.packb([[3], "float32", b"\0" * 8])))]),
        "ext": msgpack.packb([["w"], msgpack.packb(msgpack.ExtType(9, b"xx"))]),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LWMError) as e:
            list(iter_checkpoint("params", tmp_path / name))
        assert f"checkpoint {tmp_path / name} has a corrupt record: record 0 (key w)" in error_text(e), name


@pytest.mark.parametrize("name", ["object", "float128x", "V16"])
def test_unknown_dtype(tmp_path, name):
    doc = msgpack.packb(msgpack.ExtType(1, msgpack.packb([[2], name, b"\0" * 16])))
    (tmp_path / "d").write_bytes(msgpack.packb([["w"], doc]))
    with pytest.raises(LWMError) as e:
        list(iter_checkpoint("params", tmp_path / "d"))
    assert f"record 0 (key w) has unknown dtype {name!r}" in error_text(e)


# ---------------------------------------------------------------------------------------------------
# Atomic writes


def test_failed_write_leaves_nothing(tmp_path):
    def records():
        yield ["a"], np.ones(1000, np.float32)
        raise RuntimeError("gather failed")

    with pytest.raises(RuntimeError, match="gather failed"):
        write_records(tmp_path / "params", records())
    assert os.listdir(tmp_path) == []

    (tmp_path / "params").write_bytes(b"old")  # an existing checkpoint survives a failed overwrite
    with pytest.raises(RuntimeError):
        write_records(tmp_path / "params", records())
    with pytest.raises(TypeError):
        write_flax_params(tmp_path / "params", {"a": {1: np.ones(2)}})
    assert os.listdir(tmp_path) == ["params"] and (tmp_path / "params").read_bytes() == b"old"


def test_write_errors(tmp_path):
    with pytest.raises(LWMError, match="does not exist; create it first"):
        write_records(tmp_path / "missing" / "params", [])
    with pytest.raises(LWMError, match="is a directory"):
        write_records(tmp_path, [])
    with pytest.raises(TypeError, match="non-empty sequence of strings"):
        write_records(tmp_path / "p", [("lm_head/kernel", np.ones(2))])
    with pytest.raises(LWMError, match="dtype object is not supported"):
        write_records(tmp_path / "p", [(["w"], np.array([None, 1], dtype=object))])
    assert os.listdir(tmp_path) == []


def test_written_file_is_not_private(tmp_path):
    # The temp file is created honouring the umask, unlike mkstemp's 0600.
    write_records(tmp_path / "p", [(["w"], np.ones(2))])
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o666 & ~umask


def test_bytesio_reference_helper_is_consistent():
    # Guards the test's own reference: the fixture really is a concatenation of [key, bin] records.
    data = (FIXTURE / "params").read_bytes()
    unpacker = msgpack.Unpacker(io.BytesIO(data), max_buffer_size=0)
    assert sum(1 for _ in unpacker) == 12
