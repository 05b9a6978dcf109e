"""What a compiled program does per step, read from XLA's optimised HLO text: matmul FLOPs and the
collectives (kind, count, bytes each device sends), with every loop counted as many times as it runs.

Why not `Compiled.cost_analysis()`: XLA's cost analysis counts a while loop's body once, and a train
step is loops inside loops (the scan over layers, gradient accumulation, the ring's steps, blockwise
attention's chunks): for LWM-7B at 128K tokens it reports ~1% of the FLOPs. The optimised HLO names
each loop's trip count (`known_trip_count`), so walking the call graph from the entry computation,
multiplying by trip counts, gives the figures of one step. A loop whose count XLA does not know (the
decode loop runs until a traced limit) counts once: its figures are per iteration.

Bytes per collective are what one device sends over its links with the usual ring/bidirectional
algorithms (n devices in the group, b bytes of the full result): all-gather b(n-1)/n, reduce-scatter
the input's b(n-1)/n, all-reduce 2b(n-1)/n, all-to-all b(n-1)/n, collective-permute b (0 where every
device sends to itself). Groups of one device move nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5, "s2": 0.25, "u2": 0.25}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def array_bytes(shape: str) -> float:
    """Bytes of an HLO shape string: an array `f32[4,8]{1,0}` or a tuple of them."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _BYTES:
            total += _BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


@dataclass
class Collective:
    kind: str
    count: float = 0.0  # executions per step
    bytes: float = 0.0  # bytes one device sends per step


@dataclass
class Profile:
    """Per device, per step (per loop iteration where XLA does not know a loop's count)."""

    flops: float = 0.0  # dot FLOPs (2 per multiply-add)
    collectives: dict[str, Collective] = field(default_factory=dict)
    unknown_loops: int = 0  # while loops of unknown trip count (counted once)
    # bytes per step by (kind, the jax operation that made it: the op_name XLA keeps as metadata)
    sources: dict[tuple[str, str], float] = field(default_factory=dict)

    def add(self, other: Profile, times: float = 1.0) -> None:
        self.flops += other.flops * times
        self.unknown_loops += other.unknown_loops
        for key, sent in other.sources.items():
            self.sources[key] = self.sources.get(key, 0.0) + sent * times
        for kind, c in other.collectives.items():
            mine = self.collectives.setdefault(kind, Collective(kind))
            mine.count += c.count * times
            mine.bytes += c.bytes * times

    def max_with(self, other: Profile) -> None:
        """Elementwise max: of a conditional's branches one runs; take the costliest."""
        self.flops = max(self.flops, other.flops)
        self.unknown_loops = max(self.unknown_loops, other.unknown_loops)
        for kind, c in other.collectives.items():
            mine = self.collectives.setdefault(kind, Collective(kind))
            mine.count, mine.bytes = max(mine.count, c.count), max(mine.bytes, c.bytes)
        for key, sent in other.sources.items():
            self.sources[key] = max(self.sources.get(key, 0.0), sent)

    def largest(self, n: int = 5) -> list[tuple[str, str, float]]:
        """The `n` (kind, jax operation, bytes per step) that send the most."""
        top = sorted(self.sources.items(), key=lambda item: -item[1])[:n]
        return [(kind, where, sent) for (kind, where), sent in top]

    @property
    def collective_bytes(self) -> float:
        return sum(c.bytes for c in self.collectives.values())


@dataclass
class _Instr:
    name: str
    shape: str
    op: str
    rest: str  # operands and attributes


def _split_computations(text: str) -> tuple[dict[str, list[_Instr]], dict[str, dict[str, str]], str]:
    """-> (instructions by computation, parameter shapes by computation, entry computation's name)."""
    comps: dict[str, list[_Instr]] = {}
    params: dict[str, dict[str, str]] = {}
    entry, current = "", None
    for line in text.splitlines():
        head = _HEADER.match(line)
        if head:
            current = head.group(2)
            comps[current], params[current] = [], {}
            if head.group(1):
                entry = current
            for p in re.finditer(r"([\w.\-]+):\s*((?:\([^)]*\))|(?:[a-z]+[0-9a-z]*\[[0-9,]*\](?:\{[^}]*\})?))",
                                 head.group(3)):
                params[current][p.group(1)] = p.group(2)
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append(_Instr(m.group(1), m.group(2), m.group(3), m.group(4)))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, params, entry


def _group_size(rest: str, devices: int) -> int:
    """Devices per replica group of a collective's attributes."""
    m = re.search(r"replica_groups=\{(\{[^}]*\})", rest)
    if m:
        return len([x for x in m.group(1).strip("{}").split(",") if x.strip()])
    m = re.search(r"replica_groups=\[([0-9,]+)\]<=", rest)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
    if m:
        sizes = dict(re.findall(r"'?([\w]+)'?=(\d+)", m.group(1)))
        names = re.findall(r"'?([\w]+)'?", m.group(2))
        return math.prod(int(sizes[n]) for n in names if n in sizes) if names else devices
    return devices  # no groups: all devices


def _dot_flops(instr: _Instr, shapes: dict[str, str]) -> float:
    lhs = re.match(r"\s*%?([\w.\-]+)", instr.rest)
    contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instr.rest)
    if not lhs or lhs.group(1) not in shapes:
        return 0.0
    dims = _dims(shapes[lhs.group(1)])
    k = math.prod(dims[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
    return 2.0 * math.prod(_dims(instr.shape)) * k


def profile(text: str, devices: int) -> Profile:
    """The per-step `Profile` of one device of a compiled SPMD program (`Compiled.as_text()`), on a
    mesh of `devices` devices (the group of a collective that names none)."""
    comps, params, entry = _split_computations(text)
    memo: dict[str, Profile] = {}

    def walk(name: str) -> Profile:
        if name in memo:
            return memo[name]
        memo[name] = Profile()  # (recursion guard: HLO has no recursion)
        out = Profile()
        shapes = dict(params.get(name, {}))
        by_name = {instr.name: instr for instr in comps.get(name, [])}
        for instr in comps.get(name, []):
            shapes[instr.name] = instr.shape
            op = instr.op[:-len("-start")] if instr.op.endswith("-start") else instr.op
            if op == "dot":
                out.flops += _dot_flops(instr, shapes)
            elif op in COLLECTIVES:
                sent = _sent_bytes(op, instr, shapes, devices) * _narrowing(instr, by_name, comps, params)
                c = out.collectives.setdefault(op, Collective(op))
                c.count += 1
                c.bytes += sent
                key = (op, _op_name(instr.rest))
                out.sources[key] = out.sources.get(key, 0.0) + sent
            if instr.op == "while":
                trip = _TRIP.search(instr.rest)
                body = Profile()
                for kind, callee in _CALLS.findall(instr.rest):
                    if kind in ("body", "condition"):
                        body.add(walk(callee))
                if trip is None:
                    out.unknown_loops += 1
                out.add(body, int(trip.group(1)) if trip else 1)
            elif instr.op == "conditional":
                branches = _BRANCHES.search(instr.rest)
                names = ([b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches else
                         [c for k, c in _CALLS.findall(instr.rest) if k.endswith("_computation")])
                costliest = Profile()
                for b in names:
                    costliest.max_with(walk(b))
                out.add(costliest)
            else:
                for kind, callee in _CALLS.findall(instr.rest):
                    if kind in ("calls", "to_apply") and op not in COLLECTIVES and op != "reduce" and \
                            not op.startswith("reduce-window") and op not in ("sort", "scatter", "map",
                                                                              "select-and-scatter"):
                        out.add(walk(callee))
        memo[name] = out
        return out

    return walk(entry)


def _narrowing(instr: _Instr, by_name: dict[str, _Instr], comps: dict[str, list[_Instr]],
               params: dict[str, dict[str, str]]) -> float:
    """XLA:CPU runs bfloat16 (and float16) collectives in float32: it converts the operand up, sends,
    and converts back. GPUs and TPUs send the data at its own width, so a collective whose operand was
    widened by a convert counts at the narrower width (the ratio of the two)."""
    operand = re.match(r"\s*%?([\w.\-]+)", instr.rest)
    source = by_name.get(operand.group(1)) if operand else None
    if source is None:
        return 1.0
    wide = _itemsize(source.shape)
    if source.op == "convert":
        inner = re.match(r"\s*%?([\w.\-]+)", source.rest)
        narrow = _itemsize(by_name[inner.group(1)].shape) if inner and inner.group(1) in by_name else wide
    elif source.op == "fusion":
        called = _CALLS.search(source.rest)
        fused = comps.get(called.group(2), []) if called else []
        root = fused[-1] if fused else None
        sizes = [_itemsize(shape) for shape in params.get(called.group(2), {}).values()] if called else []
        narrow = min(sizes) if root is not None and root.op == "convert" and sizes else wide
    else:
        return 1.0
    return min(narrow / wide, 1.0) if wide else 1.0


def _itemsize(shape: str) -> float:
    m = _ARRAY.search(shape)
    return _BYTES.get(m.group(1), 0) if m else 0


def _op_name(rest: str) -> str:
    """The jax operation an instruction came from, without jit's and the transformations' nesting
    (`jit(train_step)/while/body/.../btd,df->btf/dot_general` -> `btd,df->btf/dot_general`)."""
    m = re.search(r'op_name="([^"]*)"', rest)
    if not m:
        return "?"
    parts = [p for p in m.group(1).split("/") if p and not re.match(
        r"^(jit\(.*\)|while|body|cond|closed_call|checkpoint|rematted_computation|jvp\(.*\)|transpose\(.*\)|"
        r"shard_map|branch_\d+_fun|cond_fun|body_fun|remat)$", p)]
    return "/".join(parts[-2:]) if parts else m.group(1).split("/")[-1]


def _sent_bytes(op: str, instr: _Instr, shapes: dict[str, str], devices: int) -> float:
    if op == "collective-permute":
        pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", instr.rest)
        if pairs and all(a == b for a, b in re.findall(r"\{(\d+),(\d+)", pairs.group(0))):
            return 0.0
        return _result_bytes(instr)
    n = _group_size(instr.rest, devices)
    if n <= 1:
        return 0.0
    share = (n - 1) / n
    if op == "reduce-scatter":
        return _result_bytes(instr) * n * share
    if op == "all-reduce":
        return 2 * _result_bytes(instr) * share
    return _result_bytes(instr) * share  # all-gather, all-to-all


def _result_bytes(instr: _Instr) -> float:
    shape = instr.shape
    if instr.op.endswith("-start") and shape.startswith("("):
        # an async start's result is (operands..., results...): the results are the second half
        parts = _ARRAY.findall(shape)
        half = parts[len(parts) // 2:]
        return sum(_BYTES.get(d, 0) * math.prod(int(x) for x in s.split(",") if x) for d, s in half)
    return array_bytes(shape)
