"""Which weights prefill and decode read: the policy behind `LWM(copy_layers=..., cpu_kernels=...)`.

Three choices, fastest first:
  packed  on one float32 CPU device, lwm's C++ kernels (lwm_core.cpu_decode) read a packed copy of the
          layers and head (`llama.packed_weights`; int8 or int4 for a quantized model), made once per
          model and kept between generations;
          prefill (many rows) still runs XLA's matmuls on the plain params.
  copy    a decode-friendly copy of the layer weights (`llama.cached_layers`), made per generation and
          freed with it, where it takes at most half the free memory of the devices holding it.
  none    each layer's weights are rearranged as prefill and decode reach them: one layer's worth of
          extra memory.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lwm_core import cpu_decode
from lwm_core.config import ModelConfig
from lwm_core.errors import LWMError
from lwm_core.generate.decode import generation_layers
from lwm_core.model.llama import CachedWeights, Params, packed_weights, scanned_layers
from lwm_core.quantize import quantization


def free_host_bytes() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def layer_copy_fits(params: Params) -> bool:
    """Whether a second copy of the layer weights takes at most half the free memory where they live:
    accelerator memory from the device's own statistics, host memory (shared by all CPU devices) from the
    operating system. Devices that report nothing are assumed to have room."""
    need: dict = {}
    for array in jax.tree.leaves(scanned_layers(params)):
        for shard in array.addressable_shards:
            where = "host" if shard.device.platform == "cpu" else shard.device
            need[where] = need.get(where, 0) + shard.data.nbytes
    for where, nbytes in need.items():
        if where == "host":
            free = free_host_bytes()
        else:
            stats = where.memory_stats() or {}
            if "bytes_limit" not in stats:
                continue
            free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        if nbytes > free // 2:
            return False
    return True


def cpu_kernel_unusable(config: ModelConfig, params: Params, mesh: Mesh, dtype, *,
                        cpu_kernels: bool | None) -> str | None:
    """Why the CPU kernels cannot decode this model, or None where they can. The memory check applies to
    the default (None) only: `cpu_kernels=True` asks for them whatever the memory."""
    devices = mesh.devices
    if devices.size != 1 or devices.flat[0].platform != "cpu":
        return f"the model is on {devices.size} {devices.flat[0].platform} device(s), not one CPU"
    # quantized weights (lwm_core.quantize) are packed as they are stored, the rest must be float32
    if any(a.dtype not in (jnp.float32, jnp.int8, jnp.uint8) for a in jax.tree.leaves(params)) or dtype != jnp.float32:
        return "the weights are not float32"
    per_weight = {"none": 4, "int8": 1, "int4": 5 / 8}[quantization(params)]  # int4: 4 bits + a float per 32
    nbytes = per_weight * (config.num_params() - config.vocab_size * config.hidden_size)
    if cpu_kernels is None and nbytes > free_host_bytes() // 2:
        return f"a packed copy of {nbytes / 2**30:.1f} GiB takes more than half the free memory"
    if not cpu_decode.available():
        return cpu_decode.unavailable_reason()
    return None


class DecodeWeights:
    """The policy, with the one piece of state it keeps: the packed weights and the params they were made
    from (remade when a model's params are replaced). An `LWM` holds one."""

    def __init__(self):
        self.packed: tuple[Params, CachedWeights] | None = None

    def packed_weights(self, config: ModelConfig, params: Params, mesh: Mesh, dtype, *,
                       cpu_kernels: bool | None) -> CachedWeights | None:
        """The CPU kernels' packed weights (made on first use), or None where decode uses XLA's dots.
        cpu_kernels: True requires them (an error says why they cannot be used), False never, None where
        `cpu_kernel_unusable` finds no reason against."""
        if cpu_kernels is False:
            return None
        if self.packed is not None and self.packed[0] is params:
            return self.packed[1]  # (not re-judged: the copy itself now takes some of the free memory)
        self.packed = None  # free a copy of replaced params before judging and making the new one
        why = cpu_kernel_unusable(config, params, mesh, dtype, cpu_kernels=cpu_kernels)
        if why is not None:
            if cpu_kernels:
                raise LWMError(f"the CPU decode kernels were required (cpu_kernels=True, --cpu-kernels) but cannot be "
                               f"used: {why}; leave the default to decode with XLA where they cannot")
            return None
        self.packed = (params, packed_weights(config, params, quant=quantization(params)))
        return self.packed[1]

    def for_generation(self, config: ModelConfig, params: Params, mesh: Mesh, dtype, *,
                       copy_layers: bool | None, cpu_kernels: bool | None
                       ) -> tuple[CachedWeights | None, CachedWeights | None]:
        """(the layers prefill reads, the layers decode reads) for one generation; None: the plain params,
        rearranged one layer at a time. copy_layers None: when `layer_copy_fits`."""
        packed = self.packed_weights(config, params, mesh, dtype, cpu_kernels=cpu_kernels)
        if packed is not None:  # decode reads the packed weights; prefill (many rows) XLA's matmuls
            return None, packed
        copy = copy_layers if copy_layers is not None else layer_copy_fits(params)
        # Per-layer weights for this generation (a copy, freed with it; see llama.cached_layers), or None.
        layers = generation_layers(config, params, mesh=mesh) if copy else None
        return layers, layers
