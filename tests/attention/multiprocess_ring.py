"""Helper run by tests/attention/test_ring.py: ring attention with 8 devices spread over `n` processes.

usage: multiprocess_ring.py PORT N_PROCESSES PROCESS_ID OUT_DIR
"""

import os
import sys

port, n, pid, out_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // n}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if n > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from lwm_core.attention.layout import inverse, zigzag_order  # noqa: E402
from lwm_core.attention.ring import ring_attention  # noqa: E402
from lwm_core.parallel.mesh import make_mesh, put  # noqa: E402

assert jax.device_count() == 8, jax.devices()
B, T, N, K, H = 2, 64, 4, 2, 8
r = np.random.default_rng(0)  # every process makes the same global arrays
q, k, v = (r.normal(size=(B, T, h, H)).astype(np.float32) for h in (N, K, K))
seg = np.repeat([[1] * 40 + [2] * 24], B, 0).astype(np.int32)
mesh = make_mesh("1,2,1,4")
perm = zigzag_order(T, 4)
axes = ("batch", "seq", "act_heads", None)
args = [put(np.ascontiguousarray(x[:, perm]), mesh, axes) for x in (q, k, v)]
f = jax.jit(lambda q, k, v, s: ring_attention(q, k, v, mesh=mesh, positions=perm, segment_ids=s, q_chunk=4,
                                              k_chunk=8))
out = f(*args, put(np.ascontiguousarray(seg[:, perm]), mesh, ("batch", "seq")))
full = np.asarray(multihost_utils.process_allgather(out, tiled=True))[:, inverse(perm)]
if pid == 0:
    np.save(os.path.join(out_dir, f"ring_{n}proc.npy"), full)
