"""The VQGAN trainer (lwm_core/vision/train.py) and `lwm vqgan train`: the losses and the straight-through
gradients, a short run on synthetic world frames that learns (loss down, held-out PSNR up), a stopped
and resumed run that continues the same curve, the output read back by `load_vqgan`, and the command on
a tiny world with bad inputs refused in one line. All on the `tiny` preset at 16x16 frames (4x4 codes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import run_cli as _cli
from lwm_core.errors import LWMError
from lwm_core.vision import train as vt
from lwm_core.vision.config import get_vqgan_config

CONFIG = get_vqgan_config("tiny", resolution=16)  # 16x16 frames -> 4x4 codes: a step takes milliseconds
STEPS = 40
TRAIN = vt.VQGANTrainConfig(steps=STEPS, batch_size=8, lr=2e-3, warmup=4, restart_every=10, log_every=5,
                            eval_every=20, checkpoint_every=20, eval_frames=16)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _losses(path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _lines(path) if "loss" in r}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world of 5 clips of 8 frames at 32x32 (the smallest it draws; read at 16x16)."""
    from lwm_core.world import write_world

    path = str(tmp_path_factory.mktemp("vqgan-train") / "world")
    write_world(path, 5, seed=0, frames=8, size=32)
    return path


@pytest.fixture(scope="module")
def data(world):
    return vt.read_frames([world], CONFIG.resolution, eval_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A complete run of STEPS steps, and its output directory."""
    out = str(tmp_path_factory.mktemp("vqgan-train") / "run")
    result = vt.train_vqgan(CONFIG, TRAIN, data, out)
    return out, result


def test_frames_are_read_whole_and_split_by_file(data):
    assert data.files == 5 and data.eval_files == 1
    assert data.train.shape == (32, 16, 16, 3) and data.eval.shape == (8, 16, 16, 3)
    assert data.train.dtype == np.uint8
    # Held out by file: no held-out frame is a training frame.
    train_rows = {f.tobytes() for f in data.train}
    assert not any(f.tobytes() in train_rows for f in data.eval)


def test_batches_are_seeded_permutations_per_epoch():
    n, b = 10, 4
    order = np.concatenate([vt.batch_indices(s, b, n, seed=3) for s in range(5)])  # 2 epochs
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert (vt.batch_indices(2, b, n, seed=3) == order[8:12]).all()
    assert not (vt.batch_indices(0, b, n, seed=4) == order[:4]).all()


def test_losses_and_the_straight_through_gradients():
    import jax
    import jax.numpy as jnp

    from lwm_core.vision.vqgan import VQGANModel

    # One level at 8x8 frames: the smallest graph (it compiles in seconds); the terms do not care.
    config = CONFIG.replace(resolution=8, channel_mult=(1,))
    params = vt.init_state(config, TRAIN)["params"]
    pixels = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32))

    @jax.jit
    def run(p):  # the loss parts, the decoder's input and the gradient of each term alone
        total, (parts, codes, _) = vt.loss_parts(config, TRAIN, p, pixels)
        grads = jax.jacrev(lambda q: {k: v for k, v in vt.loss_parts(config, TRAIN, q, pixels)[1][0].items()
                                      if k in ("l2", "codebook", "commitment")})(p)
        recon = vt.forward(config, p, pixels)[0]
        decoded = VQGANModel(config).apply({"params": p}, codes, method=VQGANModel.decode)
        return total, parts, codes, grads, recon, decoded

    total, parts, codes, grads, recon, decoded = run(params)
    np.testing.assert_allclose(parts["l2"], np.mean((np.asarray(recon) - np.asarray(pixels)) ** 2), rtol=1e-5)
    np.testing.assert_allclose(parts["codebook"], parts["commitment"], rtol=1e-6)  # same value, other gradient
    np.testing.assert_allclose(total, parts["l1"] + parts["l2"] + parts["codebook"]
                               + config.commitment_cost * parts["commitment"], rtol=1e-6)
    # The decoder's input has the value of the codebook entries: the reconstruction is decode(codes).
    np.testing.assert_allclose(np.clip(recon, -1, 1), decoded, atol=1e-4)  # z + (e - z) rounds
    assert codes.shape == (2, 8, 8)

    def norm(tree):
        return float(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree)) ** 0.5)

    recon_grads, book_grads, commit_grads = grads["l2"], grads["codebook"], grads["commitment"]
    assert norm(recon_grads["encoder"]) > 1e-4  # straight-through: the reconstruction reaches the encoder
    assert norm(recon_grads["quantize"]) == 0.0  # ... and not the codebook
    assert norm(book_grads["quantize"]) > 0 and norm(book_grads["encoder"]) == 0.0
    assert norm(commit_grads["encoder"]) > 0 and norm(commit_grads["quantize"]) == 0.0


def test_restarts_go_to_the_outputs_the_codebook_serves_worst():
    import jax

    # 98 outputs sit on entry 0 (a flat background), two are far from every entry: the restarted entries
    # land on those two (a uniform draw would put nearly all of them on the background).
    z = np.zeros((100, 4), np.float32)
    z[17], z[60] = [3, 0, 0, 0], [0, -2, 1, 0]
    embeddings = np.zeros((8, 4), np.float32)
    embeddings[1:] = 0.1 * np.random.default_rng(0).standard_normal((7, 4))
    codes = np.zeros(100, np.int32)
    picks = np.asarray(vt.restart_picks(jax.random.key(0), z, codes, embeddings))
    assert picks.shape == (8, 4)
    assert {tuple(p) for p in picks} == {tuple(z[17]), tuple(z[60])}


def test_a_short_run_learns(run):
    out, result = run
    lines = _lines(os.path.join(out, vt.METRICS))
    evals = [r for r in lines if "eval_psnr" in r]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert [r["step"] for r in steps] == list(range(5, STEPS + 1, 5))
    assert steps[-1]["l2"] < 0.3 * steps[0]["l2"]  # reconstruction error clearly down
    assert evals[-1]["eval_psnr"] > evals[0]["eval_psnr"] + 5  # held-out PSNR clearly up (dB)
    assert evals[-1]["eval_codes_used"] >= 4 and evals[-1]["eval_perplexity"] > 2
    assert result.step == STEPS and not result.stopped and result.eval == evals[-1]


def test_resumed_run_continues_the_same_curve(run, data, tmp_path):
    out_full, _ = run
    out = str(tmp_path / "resumed")
    calls = []

    def stop_after_13():  # asked before each step: True before the 14th
        calls.append(1)
        return len(calls) > 13

    first = vt.train_vqgan(CONFIG, TRAIN, data, out, should_stop=stop_after_13)
    assert first.stopped and first.step == 13 and first.final is None
    assert json.load(open(os.path.join(out, vt.CHECKPOINT, "state.json")))["step"] == 13
    second = vt.train_vqgan(CONFIG, TRAIN, data, out)
    assert second.resumed_from == 13 and second.step == STEPS
    full, resumed = _losses(os.path.join(out_full, vt.METRICS)), _losses(os.path.join(out, vt.METRICS))
    assert list(resumed) == list(full)  # one line per logged step: nothing doubled or lost
    np.testing.assert_allclose([resumed[s] for s in full], list(full.values()), rtol=1e-4)
    # Another objective cannot resume this run.
    with pytest.raises(LWMError, match=r"train lr=0\.002.*--force"):
        vt.train_vqgan(CONFIG, vt.VQGANTrainConfig(**{**TRAIN.__dict__, "lr": 1e-3}), data, out)


def test_the_output_loads_and_round_trips_frames(run, data):
    from lwm_core import load_vqgan

    out, result = run
    vqgan = load_vqgan(out)  # the run dir: its vqgan/ inside
    assert vqgan.config == CONFIG
    pixels = vt.to_pixels(data.eval)
    codes = vqgan.encode(pixels)
    assert codes.shape == (8, 4, 4) and codes.min() >= 0 and codes.max() < CONFIG.num_embeddings
    decoded = vqgan.decode(codes)
    psnr = np.mean(10 * np.log10(4 / np.mean((decoded - pixels) ** 2, axis=(1, 2, 3))))
    np.testing.assert_allclose(psnr, result.eval["eval_psnr"], atol=0.05)


def test_train_config_is_checked():
    with pytest.raises(LWMError, match="batch_size=0"):
        vt.VQGANTrainConfig(batch_size=0)
    with pytest.raises(LWMError, match="eval_fraction=1.0"):
        vt.VQGANTrainConfig(eval_fraction=1.0)
    with pytest.raises(LWMError, match="'lrate'.*lr"):
        vt.apply_train_overrides(vt.VQGANTrainConfig(), {"lrate": "1"})
    assert vt.apply_train_overrides(vt.VQGANTrainConfig(), {"lr": "5e-4", "steps": "10"}).warmup_steps == 2
    assert get_vqgan_config("world").codes_per_side == 10


def test_cli_trains_on_a_world_and_refuses_bad_inputs(capsys, tmp_path):
    world = str(tmp_path / "world")
    code, out, err = _cli(capsys, "world", "make", "-o", world, "--clips", "3", "--frames", "8", "--size", "32")
    assert code == 0, err
    run_dir = str(tmp_path / "run")
    args = ["vqgan", "train", world, "-o", run_dir, "--preset", "tiny", "--steps", "4", "--batch-size", "8",
            "--set", "train.eval_frames=4", "--set", "train.restart_every=10", "--set", "resolution=16"]
    # The model and objective of the runs above: the compiled step is theirs (in this process).
    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    assert out.strip() == os.path.join(run_dir, "vqgan")
    assert "16 training frames, 8 held out (1 of 3 files) at 16x16" in err and "/64 codes used" in err
    config = json.load(open(os.path.join(run_dir, "vqgan", "config.json")))
    assert config["num_embeddings"] == 64 and config["resolution"] == 16
    # The run's VQGAN encodes with lwm vqgan encode -m RUN_DIR.
    codes = str(tmp_path / "codes.npz")
    code, out, err = _cli(capsys, "vqgan", "encode", os.path.join(world, "clips"), "-m", run_dir, "-o", codes)
    assert code == 0, err
    assert np.load(codes)["00000.mp4"].shape == (8, 4, 4)
    # Another config is refused in one line, before the data is read.
    code, out, err = _cli(capsys, *args, "--set", "num_embeddings=32")
    assert code == 1 and "num_embeddings=64" in err and "--force" in err and len(err.strip().splitlines()) == 1
    for bad, message in [(["--set", "train.lr=fast"], "lr='fast' is not a number"),
                         (["--set", "data.path=x"], "data.path is neither")]:
        code, out, err = _cli(capsys, *args[:4], str(tmp_path / "other"), *bad)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code, out, err = _cli(capsys, *args[:4], str(tmp_path / "notes"), "--force")
    assert code == 1 and "todo.txt" in err and (tmp_path / "notes" / "todo.txt").exists()
