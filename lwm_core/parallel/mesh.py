"""Device meshes in LWM's `mesh_dim` syntax, and the logical-axis rules that shard the model on them.

Axes are always (dp, fsdp, tp, sp): data parallel, fully-sharded data parallel, tensor parallel and
sequence parallel (ring attention). The mesh is built once by the caller and handed to the model; model
code names *logical* axes (batch, seq, embed, heads, mlp, vocab, ...) and `RULES` maps them to mesh axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lwm_core.errors import LWMError
from lwm_core.plural import plural

AXES = ("dp", "fsdp", "tp", "sp")

# Logical axis -> mesh axes. Reproduces LWM's sharding (docs/compatibility.md#meshes-and-sharding): batch
# over (dp, fsdp), the sequence over sp, parameters' model dimension over (fsdp, sp) (sp also shards weights: with ring
# attention the sp devices would otherwise hold full copies) and the heads/mlp/vocab dimension over tp.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("dp", "fsdp"),
    "seq": "sp",
    "act_embed": "tp",  # hidden states between blocks: LWM shards their width over tp
    "act_heads": "tp",
    "act_vocab": "tp",
    "embed": ("fsdp", "sp"),  # the D axis of weights
    "heads": "tp",  # the (heads x head_dim) axis of attention weights
    "mlp": "tp",
    "vocab": "tp",
    "layers": None,  # the stacked layer axis of scanned weights stays whole: scan slices it
    "norm": None,
    "cache_rows": ("dp", "fsdp", "tp"),  # a KV cache's rows: B*K, each row's kv heads (over tp, as q's heads)
    "cache_seq": "sp",
    "kv_heads": "tp",
    "head_dim": None,
}


# A KV cache (B*K, S, H): rows over the batch axes and tp, slots over sp.
CACHE_AXES = ("cache_rows", "cache_seq", None)


@dataclass(frozen=True)
class MeshConfig:
    """Mesh shape (dp, fsdp, tp, sp); at most one entry may be -1 (all remaining devices)."""

    dp: int = 1
    fsdp: int = -1
    tp: int = 1
    sp: int = 1
    plain_order: bool = False  # `!` prefix: devices in plain order instead of the topology-aware layout

    def __post_init__(self) -> None:
        dims = self.dims
        if sum(d == -1 for d in dims) > 1:
            raise LWMError(f"mesh {self.spec()} has more than one -1; at most one axis may take the rest")
        if any(d == 0 or d < -1 for d in dims):
            raise LWMError(f"mesh {self.spec()} has a non-positive size; use positive sizes or one -1")

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return (self.dp, self.fsdp, self.tp, self.sp)

    def spec(self) -> str:
        return ("!" if self.plain_order else "") + ",".join(str(d) for d in self.dims)

    def resolve(self, n_devices: int) -> tuple[int, int, int, int]:
        """The concrete shape on `n_devices`, or an error that names the numbers that do not fit."""
        known = math.prod(d for d in self.dims if d != -1)
        if -1 in self.dims:
            if n_devices % known:
                raise LWMError(
                    f"mesh {self.spec()}: the fixed axes use {known} devices, which does not divide the "
                    f"{plural(n_devices, 'available device')}; choose sizes whose product divides {n_devices}")
            return tuple(n_devices // known if d == -1 else d for d in self.dims)  # type: ignore[return-value]
        if known > n_devices:
            raise LWMError(
                f"mesh {self.spec()} needs {known} devices but {n_devices} "
                f"{'is' if n_devices == 1 else 'are'} available; make the sizes "
                f"multiply to {n_devices} or use -1 for one axis")
        return self.dims


def parse_mesh(text: str | MeshConfig | None) -> MeshConfig:
    """`1,-1,4,1`, `!1,1,-1,1` or `dp:1,fsdp:-1,tp:1,sp:1` (missing named axes are 1)."""
    if text is None:
        return MeshConfig()
    if isinstance(text, MeshConfig):
        return text
    raw = text.strip()
    plain = raw.startswith("!")
    body = raw[1:] if plain else raw
    parts = [p.strip() for p in body.split(",") if p.strip()]
    try:
        if parts and all(":" in p for p in parts):
            sizes = dict.fromkeys(AXES, 1)
            for p in parts:
                name, value = (s.strip() for s in p.split(":", 1))
                if name not in sizes:
                    raise LWMError(f"mesh {text!r}: unknown axis {name!r}; axes are {', '.join(AXES)}")
                sizes[name] = int(value)
            return MeshConfig(*sizes.values(), plain_order=plain)
        if len(parts) != 4:
            raise ValueError
        return MeshConfig(*(int(p) for p in parts), plain_order=plain)
    except ValueError as e:
        if isinstance(e, LWMError):
            raise
        raise LWMError(f"mesh {text!r} is not four integers dp,fsdp,tp,sp (e.g. 1,-1,1,1) or "
                       f"named sizes (e.g. dp:1,fsdp:-1,tp:1,sp:1)") from None


def make_mesh(spec: str | MeshConfig | None = None, devices: list | None = None) -> Mesh:
    """Build the (dp, fsdp, tp, sp) mesh over `devices` (default: all devices of all processes)."""
    config = parse_mesh(spec)
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    used = math.prod(shape)
    if used < len(devices):
        # A smaller mesh than the machine (e.g. `1,1,1,1` on 8 GPUs) runs on the first devices; with
        # several processes every device must take part, so there it is an error.
        if jax.process_count() > 1:
            raise LWMError(f"mesh {config.spec()} uses {used} of {len(devices)} devices; with "
                           f"{jax.process_count()} processes the mesh must use all devices (use -1)")
        devices = devices[:used]
    if config.plain_order:
        grid = np.array(devices, dtype=object).reshape(shape)
    else:
        from jax.experimental import mesh_utils

        try:
            grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
        except (AssertionError, NotImplementedError, ValueError):
            # No topology information for this platform/shape: fall back to plain order.
            grid = np.array(devices, dtype=object).reshape(shape)
    return Mesh(grid, AXES)


def check_uses_all_devices(spec: str | MeshConfig | None, devices: list | None = None) -> None:
    """Refuse a mesh that would leave devices idle. `make_mesh` runs a smaller mesh on the first
    devices (what tests and library users ask for); a command line that asks for `1,1,1,3` on 8
    devices has almost surely a typo, and silently running on 3 of them is the worst answer."""
    config = parse_mesh(spec)
    n = len(jax.devices() if devices is None else devices)
    used = math.prod(config.resolve(n))
    if used < n:
        raise LWMError(f"mesh {config.spec()} uses {used} of the {n} devices; make the sizes multiply to {n} "
                       f"(or use -1 for one axis), or make fewer devices visible (e.g. CUDA_VISIBLE_DEVICES)")


def single_device_mesh() -> Mesh:
    return make_mesh("1,1,1,1", [jax.devices()[0]])


def axis_size(mesh: Mesh, logical: str) -> int:
    rule = RULES[logical]
    names = (rule,) if isinstance(rule, str) else (rule or ())
    return math.prod(mesh.shape[n] for n in names)


def shard_count(spec: P, mesh: Mesh) -> int:
    """Into how many pieces `spec` splits an array on `mesh` (the product of the mesh axes it names)."""
    n = 1
    for names in spec:
        for name in ((names,) if isinstance(names, str) else (names or ())):
            n *= mesh.shape[name]
    return n


def logical_spec(axes: tuple[str | None, ...], mesh: Mesh | None = None,
                 shape: tuple[int, ...] | None = None) -> P:
    """PartitionSpec for logical axis names. With `shape`, dimensions that the mesh axes do not divide
    stay unsharded (e.g. a 1000-word vocab on tp=3) rather than failing deep inside XLA."""
    out = []
    for i, name in enumerate(axes):
        rule = RULES[name] if name is not None else None
        if rule is not None and mesh is not None:
            names = (rule,) if isinstance(rule, str) else tuple(rule)
            names = tuple(n for n in names if mesh.shape[n] > 1)
            size = math.prod(mesh.shape[n] for n in names)
            if not names or (shape is not None and shape[i] % size):
                rule = None
            else:
                rule = names[0] if len(names) == 1 else names
        out.append(rule)
    return P(*out)


def named_sharding(mesh: Mesh, axes: tuple[str | None, ...], shape: tuple[int, ...] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(axes, mesh, shape))


def put(arr: np.ndarray, mesh: Mesh, axes: tuple[str | None, ...]) -> jax.Array:
    """A host array onto the mesh by logical axes. `make_array_from_callback` works for one process and
    for many: each process fills only its own shards (every process holds the full host array)."""
    sharding = named_sharding(mesh, axes, arr.shape)
    return jax.make_array_from_callback(arr.shape, sharding, lambda index: arr[index])


def constrain(x: jax.Array, mesh: Mesh | None, axes: tuple[str | None, ...]) -> jax.Array:
    """Sharding constraint on an activation, by logical axes (a no-op without a mesh)."""
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, axes, x.shape))


def check_batch(mesh: Mesh, batch: int, seq: int | None = None) -> None:
    """Refuse shapes the mesh cannot split, naming the numbers (the original failed opaquely)."""
    data = mesh.shape["dp"] * mesh.shape["fsdp"]
    if batch % data:
        raise LWMError(
            f"batch size {batch} is not divisible by dp*fsdp = {mesh.shape['dp']}*{mesh.shape['fsdp']} = "
            f"{data}; use a batch that is a multiple of {data} or a mesh with smaller dp/fsdp")
    if seq is not None and seq % mesh.shape["sp"]:
        raise LWMError(f"sequence length {seq} is not divisible by sp = {mesh.shape['sp']}; pad the "
                       f"sequence to a multiple of {mesh.shape['sp']} or use a smaller sp")


def check_model(mesh: Mesh, num_heads: int, kv_heads: int) -> None:
    tp = mesh.shape["tp"]
    if num_heads % tp or kv_heads % tp:
        raise LWMError(f"attention heads ({num_heads} query, {kv_heads} key/value) are not divisible by "
                       f"tp = {tp}; use a tp that divides {math.gcd(num_heads, kv_heads)}")
