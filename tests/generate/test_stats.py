"""What `LWM.generate(..., stats=)` reports (lwm_core.generate.decode.GenerationStats): the counts of the
call, and setup, prefill and decode seconds that are positive and fit inside the call's wall time."""

import time

import numpy as np
import pytest

import lwm_core
from lwm_core.generate.decode import GenerationStats, bucket


@pytest.fixture(scope="module")
def model():
    return lwm_core.load_model("random:tiny", mesh="1,1,1,1")


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 512, n).tolist() for n in lengths]


@pytest.mark.parametrize("cpu_kernels", [False, None], ids=["xla", "default"])
def test_stats_count_the_call_and_time_parts_of_it_without_changing_the_tokens(model, cpu_kernels):
    model = lwm_core.LWM(model.config, model.params, mesh=model.mesh, dtype=model.dtype, cpu_kernels=cpu_kernels)
    prompts = _prompts([37, 100, 5])
    plain = model.generate(prompts, 12)  # also compiles: the timed call below times no compilation
    stats = GenerationStats()
    start = time.perf_counter()
    timed = model.generate(prompts, 12, stats=stats)
    wall = time.perf_counter() - start
    np.testing.assert_array_equal(timed, plain)
    assert (stats.rows, stats.prompt_tokens, stats.padded_tokens, stats.new_tokens) == \
        (3, 142, 3 * bucket(100), timed.shape[1])
    assert stats.padded_tokens == 3 * 128
    assert stats.setup_seconds > 0 and stats.prefill_seconds > 0 and stats.decode_seconds > 0
    assert stats.setup_seconds + stats.prefill_seconds + stats.decode_seconds <= wall
    assert stats.prefill_tokens_per_s == pytest.approx(142 / stats.prefill_seconds)
    assert stats.decode_tokens_per_s == pytest.approx(3 * (timed.shape[1] - 1) / stats.decode_seconds)


def test_one_prompt_and_a_refilled_stats_object(model):
    stats = GenerationStats()
    model.generate(_prompts([300])[0], 20, stats=stats)
    first = (stats.rows, stats.prompt_tokens, stats.padded_tokens, stats.new_tokens)
    assert first[:3] == (1, 300, 512) and 1 <= first[3] <= 20
    # a second call replaces every field, counts and seconds alike
    tokens = model.generate(_prompts([10, 20], seed=1), 1, stats=stats)
    assert (stats.rows, stats.prompt_tokens, stats.padded_tokens, stats.new_tokens) == (2, 30, 128, 1)
    assert tokens.shape == (2, 1)
    assert stats.prefill_seconds > 0 and stats.decode_tokens_per_s is None  # one token: nothing decoded


def test_a_fresh_stats_object_has_no_speeds():
    stats = GenerationStats()
    assert stats.prefill_tokens_per_s is None and stats.decode_tokens_per_s is None
