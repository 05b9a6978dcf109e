"""`--dry-run` of lwm train, lwm chat and lwm needle eval as a user plans with it: a fixed mesh is simulated,
--compile prints what XLA compiled beside the estimate, --device-memory refuses what does not fit, and
nothing is written or read from stdin."""

import re

import pytest

from helpers import lwm


def _gib(text: str) -> float:
    value, unit = text.split()
    return float(value) * (2**30 if unit == "GiB" else 2**20)


def test_train_plan_of_cpu_tiny_on_8_simulated_devices(cli_env, tmp_path):
    out = lwm(cli_env, "train", "configs/cpu-tiny.toml", "--mesh", "1,2,2,2", "--dry-run", "--compile",
              "--device-memory", "80GB", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # the table wraps at the console's width
    assert "dp=1, fsdp=2, tp=2, sp=2 (8 devices, simulated)" in text
    estimate = _gib(re.search(r"memory per device ~([\d.]+ [MG]iB)", text).group(1))
    peak = _gib(re.search(r"train step \(compiled\) peak ([\d.]+ [MG]iB) per device", text).group(1))
    assert abs(estimate - peak) <= 0.25 * peak, (estimate, peak)
    assert "collective-permute" in text and "all-gather" in text  # the ring over sp, FSDP's gathers
    assert "replication by the partitioner: none" in text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, code, expect", [
    (["train", "configs/cpu-tiny.toml", "--compile"], 2, "--compile plans a run; add --dry-run"),
    (["chat", "--device-memory", "80GB", "hi"], 2, "--device-memory plans a run; add --dry-run"),
    (["train", "configs/cpu-tiny.toml", "--dry-run", "--device-memory", "lots"], 2, "lots"),
    (["train", "configs/cpu-tiny.toml", "--dry-run", "--mesh", "1,2,2,2", "--device-memory", "1MB"], 1,
     "the plan does not fit: the train step (estimate) needs"),
    (["chat", "-m", "random:tiny", "--dry-run", "--max-new-tokens", "5000"], 1, "leave no room for a prompt"),
    (["needle", "eval", "--hf", "x", "--ctx", "1K", "--dry-run", "-o", "out"], 2, "--dry-run plans lwm's own"),
])
def test_refusals_are_one_line(cli_env, args, code, expect):
    out = lwm(cli_env, *args)
    assert out.returncode == code, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert expect in " ".join(out.stderr.split()), out.stderr
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("error: ")


def test_chat_and_needle_eval_plans(cli_env, tmp_path):
    out = lwm(cli_env, "chat", "-m", "random:tiny", "--mesh", "1,1,2,4", "--dry-run", "--compile",
              "--max-new-tokens", "64", input="not read")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "(8 devices, simulated)" in text and "KV cache of" in text
    assert re.search(r"prefill \(compiled\) peak [\d.]+ [MG]iB", text) and "decode step (compiled)" in text
    assert text.count("replication by the partitioner: none") == 2
    results = tmp_path / "results"
    out = lwm(cli_env, "needle", "eval", "-m", "random:tiny", "--ctx", "256,512", "--mesh", "1,2,1,4",
              "--dry-run", "-o", str(results))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "lwm needle eval: a plan" in text and "448 prompt tokens" in text  # 512 less the 64-token answer
    assert not results.exists()


def test_a_release_is_planned_without_downloading_it(cli_env, tmp_path):
    """Offline, with an empty hub cache: the plan of a released model comes from its card."""
    env = dict(cli_env, HF_HUB_CACHE=str(tmp_path / "hub"))
    out = lwm(env, "needle", "eval", "-m", "LargeWorldModel/LWM-Text-Chat-1M-Jax", "--ctx", "1M", "--mesh",
              "1,1,4,64", "--dry-run", "-o", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "(256 devices, simulated)" in text and "1,048,512 prompt tokens" in text and "kv cache 2.00 GiB" in text


def _weights(text: str) -> float:
    return _gib(re.search(r"weights ([\d.]+ [MG]iB)", text).group(1))


def test_quantized_weights_are_planned_as_stored(cli_env, tmp_path):
    """--quantize plans the weights as they will be held: int8 a byte, int4 half of one, and their scales;
    the compiled programs take them so (XLA dequantizes inside the dot)."""
    env = dict(cli_env, HF_HUB_CACHE=str(tmp_path / "hub"))
    base = ["needle", "eval", "-m", "LargeWorldModel/LWM-Text-Chat-1M-Jax", "--ctx", "32K", "--dry-run",
            "-o", str(tmp_path / "out")]
    weights = {}
    for mode in ("none", "int8", "int4"):
        out = lwm(env, *base, *(("--quantize", mode) if mode != "none" else ()))
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.split())
        assert (f"weights {mode}" in text) == (mode != "none")
        weights[mode] = _weights(text)
    # 6.74B parameters, 2 bytes each in bfloat16. Quantized: the 131M-entry embedding table stays bfloat16,
    # the rest takes 1 byte (int8; a float32 scale per output channel) or 1/2 + 4/32 (int4's group scales).
    assert 12.5 < weights["none"] / 2**30 < 12.6, weights
    assert 0.505 < weights["int8"] / weights["none"] < 0.515, weights
    assert 0.32 < weights["int4"] / weights["none"] < 0.33, weights
    out = lwm(cli_env, "chat", "-m", "random:tiny", "--mesh", "1,1,2,4", "--dry-run", "--compile",
              "--quantize", "int4", "--max-new-tokens", "64", input="not read")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "weights int4" in text and "decode step (compiled)" in text
    assert text.count("replication by the partitioner: none") == 2
