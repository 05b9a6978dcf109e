"""The scale plan: LWM-7B training steps (text, and vision-text) at 32K, 128K and 1M tokens per sequence,
compiled for meshes of 64 and 256 simulated devices, and what they predict on TPU v4, TPU v5p and H100
pods.

Per configuration it compiles the real train step (`lwm_core.scale.programs.train_step`, what `lwm train`
runs) and reads, per device: XLA's memory (peak), the matmul FLOPs of one step and the bytes each
collective sends (from the optimised HLO, loops counted as often as they run). From those and each
target's published figures (lwm_core/scale/hardware.py, cited in docs/scale.md):

  compute   = HLO FLOPs / peak bf16 FLOP/s (the program's own FLOPs: rematerialisation included, and the
              fully masked tiles XLA:CPU's attention computes, which the Pallas kernels skip: an upper
              bound on compute time)
  ring      = collective-permute bytes / the link to the next sp device (NVLink inside an 8-GPU node
              when sp <= 8, else the node's network; ICI on TPUs)
  fsdp      = all-gather + all-reduce + reduce-scatter bytes / the link the fsdp x sp group spans
  step      = max(compute, ring, fsdp): everything overlapped (ring attention and FSDP are designed for
              it); MFU = model FLOPs (6 x params + causal attention, per token) / (step x peak)
  overlap   = RingAttention's condition for hiding a ring step: the per-device block c = seq / sp must be
              at least F / B tokens (F peak FLOP/s, B bytes/s to the next device; Liu et al. 2023, sec. 3)

Meshes: sp = seq / 16K tokens per device (at most all devices), fsdp the rest (one row per fsdp rank),
tp = 1: 64 devices -> 32K: 1,32,1,2; 128K: 1,8,1,8; 1M: 1,1,1,64; 256 devices -> 4x the rows (4M tokens
per step, LWM's text batch). The FFN is not chunked below a device's 16K tokens (mlp_chunk_size = 16K):
its weight gradients are then reduced once per layer, not once per chunk (each chunk's are summed over
the devices where the chunk loop makes them; chunks of 4K on 1,8,1,8 sent twice the fsdp bytes).

Usage: python benchmarks/scale_plan.py [--devices 64 256] [--seq 32K 128K 1M] [--json FILE]
Each device count runs in a child process (jax fixes its device count at start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCK = 16384  # tokens of the sequence per sp device
TARGETS = ("tpu-v4", "tpu-v5p", "h100")


def mesh_for(devices: int, seq: int) -> tuple[int, int, int, int]:
    sp = max(1, min(devices, seq // BLOCK))
    return (1, devices // sp, 1, sp)


def compile_all(devices: int, lengths: list[int]) -> list[dict]:
    """In a process started with `devices` simulated devices: every (model, length) train step."""
    from lwm_core.scale.programs import train_step
    from lwm_core.train.config import load_run_config
    from lwm_core.train.plan import prepare

    out = []
    for vision in (False, True):
        for seq in lengths:
            mesh = mesh_for(devices, seq)
            rows = mesh[0] * mesh[1]
            sets = [f"mesh={','.join(map(str, mesh))}", "model.init=random:7b", "model.vocab_size=32000",
                    f"model.max_sequence_length={seq}", "model.attention=ring", "model.remat=nothing_saveable",
                    "model.query_chunk_size=2048", "model.key_chunk_size=4096", f"model.mlp_chunk_size={BLOCK}",
                    f"model.vision={str(vision).lower()}", f"train.seq_len={seq}", f"train.batch_size={rows}",
                    "train.dtype=bfloat16", "optimizer.moments_dtype=bfloat16", "data.path=unused.jsonl"]
            if vision:
                sets.append("data.kind=vision_text")
            plan = prepare(load_run_config(None, sets), dry_run=True)
            step = train_step(plan)
            collectives = {c.kind: c.bytes for c in step.profile.collectives.values()}
            out.append({"model": "LWM-7B vision-text" if vision else "LWM-7B text", "seq": seq, "devices": devices,
                        "mesh": mesh, "tokens": rows * seq, "peak": step.peak, "estimate": sum(plan.memory.values()),
                        "hlo_flops": step.profile.flops,
                        "model_flops": plan.flops_per_token * rows * seq / devices,
                        "collectives": collectives, "warnings": list(step.warnings),
                        "compile_s": step.seconds, "config": plan.config.num_params()})
            print(f"  compiled {out[-1]['model']} {seq} on {mesh} in {step.seconds:.1f} s", file=sys.stderr,
                  flush=True)
    return out


def predict(row: dict, target) -> dict:
    """Step time and MFU of one compiled plan on one target (all figures per device)."""
    dp, fsdp, tp, sp = row["mesh"]
    node = target.chips_per_node
    ring_bw = target.link_bandwidth if sp <= node else target.scaleout_bandwidth
    fsdp_bw = target.link_bandwidth if fsdp * sp <= node else target.scaleout_bandwidth
    c = row["collectives"]
    compute = row["hlo_flops"] / target.peak_flops
    ring = c.get("collective-permute", 0.0) / ring_bw
    gather = sum(c.get(k, 0.0) for k in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all")) / fsdp_bw
    step = max(compute, ring, gather)
    block = row["seq"] // sp
    min_block = target.peak_flops / ring_bw  # tokens (FLOP/s over bytes/s; RingAttention's c >= F/B)
    return {"compute": compute, "ring": ring, "fsdp": gather, "step": step,
            "mfu": row["model_flops"] / (step * target.peak_flops), "block": block, "min_block": min_block,
            "hbm_fits": row["peak"] <= target.hbm_bytes}


def _length(text: str) -> int:
    units = {"K": 1024, "M": 1024**2}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seq", nargs="+", default=["32K", "128K", "1M"])
    parser.add_argument("--json", help="write the compiled figures and predictions to this file")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a child: this many devices
    args = parser.parse_args()
    lengths = [_length(s) for s in args.seq]
    if args.worker:
        json.dump(compile_all(args.worker, lengths), sys.stdout)
        return
    rows = []
    for devices in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        child = subprocess.run([sys.executable, __file__, "--worker", str(devices), "--seq", *args.seq],
                               env=env, stdout=subprocess.PIPE, text=True, check=True)
        rows += json.loads(child.stdout)

    from lwm_core.scale.hardware import find

    targets = [find(name) for name in TARGETS]
    for row in rows:
        row["predicted"] = {t.name: predict(row, t) for t in targets}
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("\nCompiled (XLA:CPU, simulated devices), per device per step:")
    print(f"{'model':<19} {'seq':>5} {'dev':>4} {'mesh':<11} {'peak':>9} {'estimate':>9} {'HLO/model FLOPs':>15} "
          f"{'permute GB':>10} {'gather+reduce GB':>16} {'replication':>11}")
    for r in rows:
        c = r["collectives"]
        fsdp = sum(c.get(k, 0.0) for k in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all"))
        print(f"{r['model']:<19} {r['seq'] // 1024:>4}K {r['devices']:>4} {','.join(map(str, r['mesh'])):<11} "
              f"{_size(r['peak']):>9} {_size(r['estimate']):>9} "
              f"{r['hlo_flops'] / r['model_flops']:>15.2f} {c.get('collective-permute', 0) / 1e9:>10.1f} "
              f"{fsdp / 1e9:>16.1f} {len(r['warnings']) or 'none':>11}")
    print("\nPredicted (all collectives overlapped with compute; MFU on model FLOPs):")
    print(f"{'model':<19} {'seq':>5} {'dev':>4} " + " ".join(
        f"{t.name + ' step s / MFU / block:min':>34}" for t in targets))
    for r in rows:
        cells = []
        for t in targets:
            p = r["predicted"][t.name]
            mark = "" if p["hbm_fits"] else " (HBM!)"
            cells.append(f"{p['step']:>8.2f} / {p['mfu']:>5.1%} / {p['block'] // 1024}K:{p['min_block'] / 1024:.1f}K"
                         f"{mark}")
        print(f"{r['model']:<19} {r['seq'] // 1024:>4}K {r['devices']:>4} " + " ".join(f"{c:>34}" for c in cells))


if __name__ == "__main__":
    main()
