"""lwm_core.needle.hf: a directory that `lwm convert jax2hf` writes gives, run by transformers, the JAX
model's greedy replies row by row (EOS stops included), and the refusals come before any work."""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import REFERENCE  # noqa: E402
from lwm_core.errors import LWMError  # noqa: E402
from lwm_core.needle import eval as needle_eval  # noqa: E402
from lwm_core.needle import make as making  # noqa: E402
from lwm_core.needle.config import MakeConfig  # noqa: E402
from lwm_core.needle.haystack import read_haystack  # noqa: E402
from lwm_core.needle.hf import check_hf_rows, load_hf, resolve_hf  # noqa: E402

# Random weights with std 0.05 rather than the default 0.02: the logits spread more, so that greedy
# choices are decided by margins (smallest top-2 gap ~1e-3 on these rows) far above the float32
# differences between XLA and torch (~1e-6): equal replies are then a check, not luck. (With 0.02 the
# replies also agree, but the smallest gap is ~1e-4.) The reference fixture of the original LWM code
# cannot serve here: its vocabulary of 1000 is smaller than any tokenizer a needle prompt is encoded
# with (the refusal is tested below).
INIT = 0.05
BATCH_TOKENS = 4096  # one batch of all six rows, 256- and 512-token prompts: left padding (and one compile)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch on one thread here: beside XLA's threads on a busy 2-core machine, its default two OpenMP
    threads wait on each other and run these batches 10-100x slower (the backend leaves the default)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_hf(directory, model):
    """What `lwm convert jax2hf -m random:tiny --dtype fp32` writes (tokenizer.model included)."""
    from lwm_core.checkpoint import hf, loader

    hf.write_hf_dir(str(directory), model.config, loader.host_arrays(model.params), dtype="float32",
                    tokenizer_path=model.tokenizer.path)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import lwm_core

    model = lwm_core.load_model("random:tiny", mesh="1,1,1,1", overrides={"initializer_range": INIT})
    config = MakeConfig(tasks=("single",), ctx=(256, 512), depths=(0.0, 50.0, 100.0), max_new_tokens=24)
    rows = list(making.make_rows(config, model.tokenizer, read_haystack("prose")))
    directory = _write_hf(tmp_path_factory.mktemp("hf") / "tiny", model)
    # A checkpoint's own generation settings, which a cross-check must not pick up (all of them change
    # greedy replies: sampling, and penalties on tokens already in the prompt or the reply).
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": True, "temperature": 5.0,
         "top_k": 50, "repetition_penalty": 3.0, "no_repeat_ngram_size": 2, "min_new_tokens": 24}))
    return model, rows, directory


def _run(generate, rows):
    return {r["id"]: r for batch in needle_eval.run(generate, rows, BATCH_TOKENS) for r in batch}


def test_jax_and_transformers_give_the_same_replies_and_stop_at_eos_alike(tiny, tmp_path):
    import lwm_core

    model, rows, directory = tiny
    backend = load_hf(directory)
    assert (backend.max_context, backend.tokenizer_id) == (1024, rows[0]["tokenizer"])
    assert str(backend.dtype) == "torch.float32"
    backend.check_rows(rows)
    needle_eval.check_rows(rows, max_context=backend.max_context, tokenizer_id=backend.tokenizer_id,
                           model=str(directory))
    ours = _run(lambda b: needle_eval.generate_batch(model, b), rows)
    theirs = _run(backend.generate_batch, rows)
    assert len(ours) == len(rows) == 6
    for id, row in ours.items():
        assert theirs[id]["response"] == row["response"], id
        assert set(theirs[id]) == set(row)
        assert {k: v for k, v in theirs[id].items() if k not in ("seconds", "prefill_tokens_per_s")} == \
            {k: v for k, v in row.items() if k not in ("seconds", "prefill_tokens_per_s")}
        assert theirs[id]["prefill_tokens_per_s"] > 0 and theirs[id]["seconds"] > 0
    assert len({r["response"] for r in ours.values()}) > 1  # the rows do not all say the same

    # EOS: the EOS column of the head becomes twice the column of a token row 0 emits (as its 4th),
    # so that a row stops where it would have emitted that token (or one near it in logit). The rows of
    # a batch then stop at different steps, and each reply is the start of its reply without the change.
    ids = model.tokenizer.encode(rows[0]["prompt"])
    with torch.inference_mode():
        emitted = backend.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    x, eos = int(emitted[0, -1]), model.config.eos_token_id
    kernel = model.params["lm_head"]["kernel"]  # (D, V)
    params = {**model.params, "lm_head": {"kernel": kernel.at[:, eos].set(2 * kernel[:, x])}}
    stopping = lwm_core.LWM(model.config, params, mesh=model.mesh, dtype=model.dtype, tokenizer=model.tokenizer)
    backend = load_hf(_write_hf(tmp_path / "eos", stopping))
    ours_eos = _run(lambda b: needle_eval.generate_batch(stopping, b), rows)
    theirs_eos = _run(backend.generate_batch, rows)
    lengths = {}
    for id, row in ours_eos.items():
        assert theirs_eos[id]["response"] == row["response"], id
        assert ours[id]["response"].startswith(row["response"]), id
        lengths[id] = len(model.tokenizer.encode(row["response"])) if row["response"] else 0
    assert lengths[rows[0]["id"]] <= 3 and len(set(lengths.values())) > 1, lengths


def test_refusals_name_the_problem(tiny, tmp_path, monkeypatch):
    _, rows, directory = tiny
    backend = load_hf(directory)
    other = [dict(rows[0], tokenizer="sha256:0123456789abcdef")]
    with pytest.raises(LWMError, match=f"row {rows[0]['id']} was counted with tokenizer sha256:0123456789abcdef, "
                                       f"but .*tokenizer.model is {backend.tokenizer_id}; pass the tokenizer"):
        backend.check_rows(other)
    with pytest.raises(LWMError, match=f"row {rows[0]['id']} needs 1001 \\+ 24 tokens, more than the context of "
                                       f".*tiny \\(1024\\)"):
        backend.check_rows([dict(rows[0], length=1001)])
    with pytest.raises(LWMError, match="dtype 'int8' is not one of float32, bfloat16, float16"):
        load_hf(directory, dtype="int8")
    assert load_hf(directory, dtype="bf16").model.dtype == torch.bfloat16
    with pytest.raises(LWMError, match="does not exist; check the path"):
        load_hf(tmp_path / "nowhere")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2",
                                                                "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(LWMError, match="is not LlamaForCausalLM"):
        load_hf(tmp_path / "gpt2")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((directory / name).read_bytes())
    with pytest.raises(LWMError, match="has no tokenizer.model; pass the sentencepiece tokenizer.model"):
        load_hf(bare)
    # the reference checkpoint (vocabulary 1000) with the shipped tokenizer (4096 ids)
    from lwm_core.checkpoint import hf, loader

    source = loader.resolve(f"params::{REFERENCE / 'params'}")
    reference = tmp_path / "reference"
    hf.write_hf_dir(str(reference), source.config, loader.records(source), dtype="float32",
                    tokenizer_path=str(directory / "tokenizer.model"))
    with pytest.raises(LWMError, match="has 4096 ids but .* a vocabulary of 1000; pass the tokenizer of this model"):
        load_hf(reference)
    # the checks before the weights need no torch (--tokenizer given as a directory holding tokenizer.model)
    config, tokenizer = resolve_hf(bare, tokenizer=directory)
    assert (config, tokenizer.path) == (backend.config, str(directory / "tokenizer.model"))
    assert load_hf(bare, resolved=(config, tokenizer)).tokenizer_id == backend.tokenizer_id
    check_hf_rows(rows, bare, (config, tokenizer))
    with pytest.raises(LWMError, match=f"row {rows[0]['id']} was counted with tokenizer sha256:0123456789abcdef"):
        check_hf_rows(other, bare, (config, tokenizer))
    for name in ("torch", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)  # `import torch` raises ImportError
        assert resolve_hf(directory)[1].path == backend.tokenizer.path
        with pytest.raises(LWMError, match=r"^running a Hugging Face directory needs torch and transformers: "
                                           r"pip install 'lwm\[torch\]'$"):
            load_hf(directory)
        monkeypatch.undo()
