"""Rematerialisation in training: `dots_attention` keeps each attention kernel's output (the backward runs
the kernel's forward once, not twice) and changes no gradient, on one device and on a ring; `remat = auto`
keeps it where the step fits a device's memory and recomputes where it does not, and `lwm train --dry-run`
says which it chose."""

import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, lwm
from lwm_core import cpu_decode
from lwm_core.config import get_config
from lwm_core.model.llama import forward, init_params
from lwm_core.parallel.mesh import make_mesh
from lwm_core.train import plan as planning

POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_attention", "none")


def _loss(config, mesh, ids, segments):
    def loss(params):
        logits = forward(config, params, ids, segment_ids=segments, mesh=mesh, remat=True)
        return jnp.mean(jax.nn.log_softmax(logits)[:, :-1, 7])
    return loss


def _case(**overrides):
    config = get_config("tiny", num_key_value_heads=2, **overrides)
    params = init_params(config, jax.random.key(3))
    ids = jax.random.randint(jax.random.key(4), (2, 64), 0, config.vocab_size)
    segments = jnp.asarray(np.repeat([[1] * 40 + [2] * 24], 2, axis=0))  # two packed examples per row
    return config, params, ids, segments


def _same_gradients(grads: dict):
    first = jax.tree.leaves(grads["nothing_saveable"])
    for policy, tree in grads.items():
        for a, b in zip(first, jax.tree.leaves(tree)):
            assert float(jnp.abs(a - b).max()) <= 1e-5 * max(1.0, float(jnp.abs(a).max())), policy


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")),
                    reason="no C++ compiler to build lwm's CPU kernels")
def test_dots_attention_runs_the_fused_kernel_once():
    assert cpu_decode.available(), cpu_decode.unavailable_reason()  # a broken build fails here, not skips
    config, params, ids, segments = _case(attention="auto")
    grads, kernels = {}, {}
    for policy in POLICIES:
        loss = _loss(config.replace(remat=policy), None, ids, segments)
        text = str(jax.make_jaxpr(jax.grad(loss))(params))
        kernels[policy] = len(re.findall(cpu_decode.FLASH_TARGET + r"\b", text))  # the forward's, not the backward's
        grads[policy] = jax.jit(jax.grad(loss))(params)
    assert kernels["dots_attention"] == kernels["none"] == 1, kernels
    assert kernels["nothing_saveable"] == kernels["dots_with_no_batch_dims_saveable"] == 2, kernels
    _same_gradients(grads)


def test_dots_attention_on_a_ring_changes_no_gradient():
    config, params, ids, segments = _case(attention="auto", query_chunk_size=16, key_chunk_size=16)
    mesh = make_mesh("1,1,2,4")
    grads, sends = {}, {}
    for policy in POLICIES:
        grad = jax.grad(_loss(config.replace(remat=policy), mesh, ids, segments))
        sends[policy] = str(jax.make_jaxpr(grad)(params)).count("ppermute")  # ring steps, forward and backward
        grads[policy] = jax.jit(grad)(params)
    assert sends["dots_attention"] == sends["none"] < sends["nothing_saveable"], sends  # no second forward ring
    _same_gradients(grads)


def test_auto_keeps_what_fits_and_recomputes_what_does_not():
    config = get_config("tiny").replace(remat="auto")
    mesh = make_mesh("1,1,1,1", devices=jax.local_devices()[:1])

    def need(policy, seq_len):
        return sum(planning.step_memory(config.replace(remat=policy), mesh, 4, seq_len).values())

    kept = need("dots_attention", 1024)
    assert kept > need("dots_with_no_batch_dims_saveable", 1024) > need("nothing_saveable", 1024)
    budget = planning.AUTO_BUDGET
    assert planning.choose_remat(config, mesh, 4, 1024, memory=kept / budget) == "dots_attention"
    assert planning.choose_remat(config, mesh, 4, 1024, memory=kept / budget * 0.99) == \
        "dots_with_no_batch_dims_saveable"
    assert planning.choose_remat(config, mesh, 4, 1024, memory=1e3) == "nothing_saveable"
    assert planning.choose_remat(config.replace(remat="none"), mesh, 4, 1024, memory=1e3) == "none"
    # This machine's memory is known; the process's CPU devices (8 here) share it.
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert jax.local_device_count() == 8
    assert 2**30 < planning.device_memory(mesh) * 8 <= ram


def test_a_7b_plan_recomputes_at_long_context():
    """LWM-7B with FSDP over 8 devices of 80 GB: one 32K-token sequence a step fits (~35 GB) only if
    recomputed, since keeping the products would add ~106 GB; at 2K tokens they take ~7 GB and are kept."""
    config = get_config("7b").replace(max_sequence_length=32768)
    mesh = make_mesh("1,8,1,1")

    def need(policy, seq_len):
        return sum(planning.step_memory(config.replace(remat=policy), mesh, 8, seq_len, "bfloat16").values())

    budget = planning.AUTO_BUDGET * 80e9
    assert need("nothing_saveable", 32768) < budget < need("dots_with_no_batch_dims_saveable", 32768)
    assert planning.choose_remat(config, mesh, 8, 32768, "bfloat16", memory=80e9) == "nothing_saveable"
    assert need("dots_attention", 2048) < budget
    assert planning.choose_remat(config, mesh, 8, 2048, "bfloat16", memory=80e9) == "dots_attention"


def test_dry_run_says_what_auto_chose(cli_env, tmp_path):
    run = ["train", str(ROOT / "configs/cpu-tiny.toml"), "--dry-run", "--run-dir", str(tmp_path / "run")]
    roomy = " ".join(lwm(cli_env, *run, "--device-memory", "80GB").stdout.split())
    assert "remat auto: dots_attention (the step fits in 50% of a device's 74.51 GiB)" in roomy, roomy
    assert re.search(r"saved by remat dots_attention [\d.]+ [MG]iB", roomy)
    tight = lwm(cli_env, *run, "--set", "model.remat=nothing_saveable")
    assert tight.returncode == 0, tight.stderr
    assert re.search(r"remat\s+nothing_saveable\s", tight.stdout), tight.stdout
