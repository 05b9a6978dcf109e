"""The compiled programs on 8 simulated devices: no replication added by XLA's partitioner ("involuntary
full rematerialization", read from XLA's own log), and the figures a dry run prints (memory, FLOPs,
collectives) as XLA compiled them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REFERENCE
from lwm_core.config import apply_overrides, load_config_file
from lwm_core.model.llama import forward
from lwm_core.parallel.mesh import make_mesh, named_sharding
from lwm_core.scale import programs
from lwm_core.train.config import load_run_config
from lwm_core.train.plan import Plan, memory_estimate

MESHES = ["1,2,1,4", "1,1,2,4", "2,1,1,4"]


def _config(vision: bool):
    config = load_config_file(str(REFERENCE / "config.json"))
    return apply_overrides(config, {"vision": True, "vision_vocab_size": 512}) if vision else config


def _plan(config, mesh, *sets):
    run = load_run_config(None, ["train.seq_len=64", "train.batch_size=4", "data.path=unused.jsonl", *sets])
    return Plan(run, config, None, mesh, 0, 0.0, memory_estimate(config, run, mesh), None)


def _forward(config, mesh, vision: bool):
    params = programs.abstract_params(config, mesh, jnp.float32)
    ids = jax.ShapeDtypeStruct((4, 64), jnp.int32, sharding=named_sharding(mesh, ("batch", "seq"), (4, 64)))
    masks = jax.ShapeDtypeStruct((4, 64), jnp.bool_, sharding=ids.sharding) if vision else None
    fn = jax.jit(functools.partial(forward, config, mesh=mesh, mode="all" if vision else "text"))
    return programs.compile_program("forward", fn, params, ids, vision_masks=masks)


@pytest.mark.parametrize("vision", [False, True], ids=["text", "vision"])
@pytest.mark.parametrize("mesh_spec", MESHES)
def test_no_replication_by_the_partitioner(mesh_spec, vision):
    jax.clear_caches()  # a program compiled earlier in this process would not be compiled (or logged) again
    mesh = make_mesh(mesh_spec)
    config = _config(vision)
    for program in (_forward(config, mesh, vision), programs.train_step(_plan(config, mesh))):
        assert program.warnings == (), (program.name, program.warnings)
        assert program.peak > 0 and program.profile.flops > 0


@pytest.mark.parametrize("mesh_spec", MESHES)
def test_generation_without_replication(mesh_spec):
    """Prefill (a ring over sp) and a decode step with the sp-sharded cache, two rows of a vision model."""
    jax.clear_caches()
    config = _config(vision=True).replace(query_chunk_size=32, key_chunk_size=32)
    for program in programs.inference_programs(config, make_mesh(mesh_spec), programs.Inference(2, 100, 16)):
        assert program.warnings == (), (program.name, program.warnings)


def test_the_log_capture_sees_a_replication():
    """What the embedding lookup compiled to before it gathered its table's width: the same gather from
    a table sharded over (fsdp, sp) with ids split over (batch, seq). The check above must be able to fail."""
    jax.clear_caches()
    mesh = make_mesh("1,2,1,4")
    table = jax.ShapeDtypeStruct((1000, 256), jnp.float32, sharding=named_sharding(mesh, (None, "embed"), (1000, 256)))
    ids = jax.ShapeDtypeStruct((4, 64), jnp.int32, sharding=named_sharding(mesh, ("batch", "seq"), (4, 64)))

    def lookup(table, ids):
        x = jnp.take(table, ids, axis=0)
        return jax.lax.with_sharding_constraint(x, named_sharding(mesh, ("batch", "seq", None), x.shape))

    program = programs.compile_program("lookup", jax.jit(lookup), table, ids)
    assert program.warnings and "Involuntary full rematerialization" in program.warnings[0]


def test_compiled_figures_of_the_train_step():
    """The tiny train step on 1,2,2,2: FLOPs within reach of the model's count (forward + backward + the
    rematerialised forward), weights all-gathered over fsdp x sp, the ring's collective-permutes, and
    the estimate of `lwm train --dry-run` within 25% of XLA's peak."""
    from lwm_core.config import get_config
    from lwm_core.train.step import flops_per_token

    config = get_config("tiny", vocab_size=4096, max_sequence_length=1024)
    mesh = make_mesh("1,2,2,2")
    plan = _plan(config, mesh, "train.seq_len=128", "train.batch_size=8")
    step = programs.train_step(plan)
    model = flops_per_token(config, 128) * 8 * 128 / mesh.size
    assert model < step.profile.flops < 2.5 * model
    kinds = step.profile.collectives
    assert {"all-gather", "collective-permute"} <= set(kinds) and all(c.bytes > 0 for c in kinds.values())
    estimate = sum(plan.memory.values())
    np.testing.assert_allclose(estimate, step.peak, rtol=0.25)


@pytest.mark.parametrize("mesh_spec", ["1,8,1,1", "1,2,2,2"])
def test_gradients_through_fsdp_gathers_equal_one_device(reference, mesh_spec):
    """The layer weights' gathers carry their own gradient rule (a reduce-scatter onto the weights'
    sharding): the gradients on a mesh are one device's, the FFN's chunk loop included."""
    from lwm_core.data.packing import Batch
    from lwm_core.loading import load
    from lwm_core.train.step import token_losses

    config = reference["config"].replace(mlp_chunk_size=16, query_chunk_size=16, key_chunk_size=16)
    ids = np.asarray(reference["ids"][:, :64], np.int32)
    R, T = ids.shape[0] * 2, ids.shape[1]
    ids = np.concatenate([ids, ids[:, ::-1]])[:R]
    zeros = np.zeros((R, T), bool)
    batch = Batch(ids, np.roll(ids, -1, axis=1), np.ones((R, T), np.float32), np.ones((R, T), np.int32),
                  np.broadcast_to(np.arange(T, dtype=np.int32), (R, T)), zeros, zeros)

    def grads(mesh_spec):
        params = load(f"params::{reference['params']}", config=config, mesh=mesh_spec, dtype=jnp.float32).params
        mesh = make_mesh(mesh_spec)
        loss = lambda p: jnp.sum(token_losses(config, p, batch, mesh=mesh)[0])  # noqa: E731
        return jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(params))

    want, got = grads("1,1,1,1"), grads(mesh_spec)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        # float32 sums in another order: within 1e-4 of the leaf's scale (a wrong gather is off by ~100%)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
