"""bench-50m training on CPU: lwm's train step against the same AdamW step in torch (HF `LlamaForCausalLM`).

bench-50m (benchmarks/README.md: vocab 32000, hidden 512, intermediate 1376, 8 layers, 8 heads, float32,
random weights from seed 0) is built by lwm and exported to HF with `lwm_core.checkpoint.hf.to_hf`
(`cpu_vs_hf.build_lwm` / `build_hf`), so both sides start from the same weights. The batch is
`--rows` (4) packed rows of `--seq` (1024) random tokens, one example per row (segment ids 1, positions
0..T-1, loss weights 1), as `lwm train` hands it to the step: a `lwm_core.data.Batch` of (A, R, T)
arrays with A = 1 (no accumulation).

- lwm: `lwm_core.train.step.train_step` jitted as `lwm_core.train.loop.train` jits it (state donated;
  on one device without shardings, mesh None: with a 1-device mesh every `constrain` is a no-op
  anyway), `make_optimizer(OptimizerConfig())` (clip to global norm 1, AdamW with LWM's warmup +
  cosine schedule, decay on matrices only), the model config's defaults for training at 1024 tokens:
  `attention = auto`, which `attention.dispatch.choose` turns into lwm's fused CPU attention kernel
  (`attention.cpu_flash`; with `--attention-impl jax`, `causal_block_attention`: dense attention per
  256-row query block against its causal prefix, for a row longer than `query_chunk_size` (512) and at
  most 8192 tokens); the FFN unchunked (`mlp_chunk_size` 1024 >= T); each block rematerialised with
  `remat = auto`, which on this machine keeps the weight products' and the attention's outputs
  (`dots_attention`: the step fits in half the host's memory many times over) and recomputes the rest.
- torch: HF forward, next-token cross entropy (mean over the batch's tokens, what lwm's loss is with
  all weights 1), `loss.backward()`, `clip_grad_norm_(1.0)`, `torch.optim.AdamW` with the same lr (set
  from lwm's schedule at every step), betas, eps and weight decay on the same parameters (matrices and
  the LM head, not norms or the embedding table), `zero_grad(set_to_none=True)`.

Both sides take one warm-up step from the same weights on the same batch (lwm's compiles its step): their
losses must agree (and the gradient norms are shown). Then `--reps` timed steps each, interleaved (lwm,
torch, lwm, torch, ...) so drift on a shared machine hits both alike; medians. Every step is a real
update, with the lr schedule stretched over these few steps (warming up to 3e-4), so the losses after
the last step are compared too: that checks the two optimizers agree.

`--breakdown` adds to the same rounds the forward loss alone and forward + backward (no optimizer) on
both sides, and lwm's step with other rematerialisation policies (none; nothing_saveable, which recomputes
the whole forward; dots_with_no_batch_dims_saveable, which recomputes the attention), to show where the
step's time goes.

Usage: python benchmarks/train_vs_torch.py [--reps 5] [--threads N] [--breakdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from types import SimpleNamespace

from cpu_vs_hf import build_hf, build_lwm, interleaved, roofline_probes


def make_batch(config, rows: int, seq: int):
    """One (A=1, R, T) batch of packed rows, each a single example of T+1 random tokens; numpy arrays."""
    import numpy as np

    from lwm_core.data import Batch

    rng = np.random.default_rng(0)
    # Avoid EOS/BOS/pad so the rows are ordinary text-like ids.
    tokens = rng.integers(3, config.vocab_size, size=(1, rows, seq + 1)).astype(np.int32)
    ones = np.ones((1, rows, seq), np.int32)
    positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (1, rows, seq)).copy()
    no_vision = np.zeros((1, rows, seq), bool)
    return Batch(inputs=tokens[..., :-1], targets=tokens[..., 1:], loss_weights=ones.astype(np.float32),
                 segment_ids=ones, positions=positions, input_vision_masks=no_vision,
                 target_vision_masks=no_vision)


class LwmTrainer:
    """lwm's train step, jitted as `lwm_core.train.loop.train` does (one device, no shardings)."""

    def __init__(self, config, params, batch, optimizer, steps: int):
        import jax
        import jax.numpy as jnp

        from lwm_core.train.config import TrainConfig
        from lwm_core.train.optimizer import make_optimizer, schedule
        from lwm_core.train.step import LossWeights, TrainState, train_step

        self.config = config
        tx = make_optimizer(optimizer, steps)
        self.schedule = schedule(optimizer, steps)
        defaults = TrainConfig()  # loss weights as `lwm train` passes them (a text model ignores them)
        self.weights = LossWeights(text=defaults.text_loss_weight, vision=defaults.vision_loss_weight)
        # Our own copy of the weights (the step donates its state; --breakdown keeps reading the originals).
        # The whole state is committed to the device, as the step returns it: a state still on `load_model`'s
        # 1-device mesh, or uncommitted, would recompile the step at its second call (as `lwm train` does
        # not: its state is placed with the step's out_shardings).
        params = jax.tree.map(jnp.copy, params)
        self.state = jax.device_put(TrainState(jnp.int32(0), params, jax.jit(tx.init)(params),
                                               jax.random.key_data(jax.random.key(0))), jax.devices()[0])
        self.batch = jax.tree.map(jnp.asarray, batch)
        self.step_fn = jax.jit(functools.partial(train_step, config=config, tx=tx, schedule=self.schedule,
                                                 weights=self.weights, mesh=None, dtype=jnp.float32),
                               donate_argnums=0)
        self.optimizer, self.steps = optimizer, steps
        self.history: list[dict[str, float]] = []  # metrics of every step taken

    def step(self) -> None:
        import jax

        self.state, metrics = self.step_fn(self.state, self.batch)
        # The loop reads the metrics after a logged step (log_every = 1 by default), which waits for it.
        self.history.append({k: float(v) for k, v in jax.device_get(metrics).items()})


class TorchTrainer:
    """The same step in torch: HF forward, cross entropy, backward, clip, AdamW (lr from lwm's schedule)."""

    def __init__(self, peer, batch, optimizer, schedule, impl: str):
        import torch

        self.model = peer.train()
        self.inputs = torch.from_numpy(batch.inputs[0]).long()
        self.targets = torch.from_numpy(batch.targets[0]).long()
        self.schedule = schedule
        # lwm decays matrices only (`decay_mask`): not norms, not the embedding table; the LM head is decayed.
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if "norm" in name or "embed_tokens" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": optimizer.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=float(schedule(0)), betas=(optimizer.b1, optimizer.b2),
                                     eps=optimizer.eps, foreach=impl == "foreach", fused=impl == "fused")
        self.clip = optimizer.clip_norm
        self.history: list[dict[str, float]] = []

    def loss(self):
        import torch.nn.functional as F

        logits = self.model(input_ids=self.inputs).logits  # (R, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), self.targets.flatten())

    def step(self) -> None:
        import torch

        loss = self.loss()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        for group in self.opt.param_groups:
            group["lr"] = float(self.schedule(len(self.history)))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.history.append({"loss": loss.item(), "grad_norm": norm.item()})


def clocked(fn, log: list):
    """`fn`, appending (wall seconds, CPU seconds of this process, minor page faults) of each call to `log`:
    CPU / wall says how many of the cores a step got (about 2 when nothing else runs; less when other jobs
    take some); the faults count the fresh pages it touched (each mapped and zeroed by the kernel: a step's
    new buffers cost ~0.5-1 us a 4 KB page)."""
    import resource

    def run():
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        log.append((time.perf_counter() - wall, time.process_time() - cpu,
                    resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return run


REMATS = ("none", "nothing_saveable", "dots_with_no_batch_dims_saveable")  # --breakdown's other policies


def breakdown(lwm: LwmTrainer, tor: TorchTrainer, params) -> dict:
    """Timed pieces for `--breakdown`: the forward loss alone and forward + backward (no optimizer) on
    each side, and lwm's whole step with other `remat` policies. None of them changes the trainers' weights."""
    import jax
    import jax.numpy as jnp
    import torch

    from lwm_core.train.step import loss_totals, micro_loss

    micro = jax.tree.map(lambda x: x[0], lwm.batch)
    totals = loss_totals(lwm.batch)

    def loss_fn(config, p):
        return micro_loss(config, p, micro, totals, lwm.weights, mesh=None, dtype=jnp.float32)[0]

    fwd = jax.jit(functools.partial(loss_fn, lwm.config))
    fwd_bwd = jax.jit(jax.value_and_grad(functools.partial(loss_fn, lwm.config)))
    policies = {f"lwm step, remat {policy}": LwmTrainer(lwm.config.replace(remat=policy), params, lwm.batch,
                                                        lwm.optimizer, lwm.steps).step
                for policy in REMATS}

    def torch_fwd():
        with torch.no_grad():
            tor.loss()

    def torch_fwd_bwd():
        tor.loss().backward()
        tor.model.zero_grad(set_to_none=True)

    return {"lwm forward": lambda: jax.block_until_ready(fwd(params)),
            "lwm forward+backward": lambda: jax.block_until_ready(fwd_bwd(params)),
            **policies,
            "torch forward": torch_fwd,
            "torch forward+backward": torch_fwd_bwd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", "--steps", dest="reps", type=int, default=3,
                        help="timed steps per side after the warm-up step (medians reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--rows", type=int, default=4, help="rows per batch")
    parser.add_argument("--seq", type=int, default=1024, help="tokens per row")
    parser.add_argument("--adamw", choices=("fused", "foreach"), default="fused",
                        help="torch AdamW implementation (fused: ~3x faster than foreach on 2 cores, 0.06 s a step)")
    parser.add_argument("--attention-impl", choices=("auto", "jax"), default="auto",
                        help="auto: lwm's fused CPU attention kernel (one CPU device); jax: attention in plain JAX")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time forward and forward+backward alone on both sides, and lwm's step "
                             "without remat (about 3x the run time)")
    parser.add_argument("--trace", metavar="DIR", default=None,
                        help="after timing, write a JAX profile of one lwm step to DIR (perfetto_trace.json.gz "
                             "opens in ui.perfetto.dev; op names map to the HLO's op_name metadata)")
    args = parser.parse_args()

    import jax
    import torch

    from lwm_cli import _malloc
    from lwm_core.parallel.mesh import make_mesh
    from lwm_core.train.config import OptimizerConfig
    from lwm_core.train.plan import choose_remat
    from lwm_core.train.step import flops_per_token

    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    print(f"jax {jax.__version__} ({jax.default_backend()}, {len(jax.devices())} device), torch {torch.__version__}"
          f" ({torch.get_num_threads()} threads), {os.cpu_count()} cores; load average {load[0]:.2f}",
          file=sys.stderr)
    print(_malloc.describe(os.environ), file=sys.stderr)
    model = build_lwm(SimpleNamespace(prefill=args.seq))  # context max(4096, seq)
    config = dataclasses.replace(model.config, attention_impl=args.attention_impl)
    peer = build_hf(model)
    batch = make_batch(config, args.rows, args.seq)
    steps = 1 + args.reps  # the schedule's length: the warm-up step and the timed ones

    lwm = LwmTrainer(config, model.params, batch, OptimizerConfig(), steps)
    tor = TorchTrainer(peer, batch, OptimizerConfig(), lwm.schedule, args.adamw)
    chosen = choose_remat(config, make_mesh("1,1,1,1"), args.rows, args.seq)  # what the step's forward takes
    print(f"lwm: attention {config.attention} (query/key chunks {config.query_chunk_size}/{config.key_chunk_size}), "
          f"mlp_chunk_size {config.mlp_chunk_size}, remat {config.remat} ({chosen}); torch: attention "
          f"{peer.config._attn_implementation}, AdamW {args.adamw}", file=sys.stderr)
    pieces = breakdown(lwm, tor, model.params) if args.breakdown else {}

    # `interleaved` first calls each once: that warm-up step (lwm's compiles) is the one both sides take
    # from the same weights, whose losses must agree. Then `reps` rounds: lwm, torch, [pieces], ...
    clocks: dict[str, list] = {"lwm": [], "torch": []}
    t = interleaved({"lwm": clocked(lwm.step, clocks["lwm"]), "torch": clocked(tor.step, clocks["torch"]),
                     **pieces}, args.reps)
    load.append(os.getloadavg()[0])
    a, b = lwm.history[0], tor.history[0]
    diff = abs(a["loss"] - b["loss"])
    print(f"first step: loss lwm {a['loss']:.6f} torch {b['loss']:.6f} (|diff| {diff:.1e}); "
          f"grad norm lwm {a['grad_norm']:.6f} torch {b['grad_norm']:.6f}")
    # The norms differ by ~1e-4 relative although every gradient agrees to ~2e-6: torch's float32 norm of a
    # large tensor (clip_grad_norm_) reads low (lm_head: 0.35387 vs 0.35485 in float64); lwm's matches
    # the float64 norm of torch's gradients (1.580270).
    a, b = lwm.history[-1], tor.history[-1]
    print(f"step {len(tor.history)} (lr {float(lwm.schedule(len(tor.history) - 1)):.1e}): loss lwm {a['loss']:.6f} "
          f"torch {b['loss']:.6f} (|diff| {abs(a['loss'] - b['loss']):.1e})")
    if not diff < 1e-4:
        raise SystemExit("lwm and torch disagree on the first loss: the timings compare different steps")
    if args.trace:
        with jax.profiler.trace(args.trace, create_perfetto_trace=True):
            lwm.step()
        print(f"profile of one lwm step: {args.trace}", file=sys.stderr)

    # The machine's limit: sgemm FLOP/s (cpu_vs_hf's jitted 2048^3 matmul) over the training FLOPs per token
    # `lwm train` reports MFU with (6 x matmul weights + causal attention, no remat recompute).
    sgemm_probe = roofline_probes(SimpleNamespace(bw_mb=64))[1]
    sgemm = 2 * 2048**3 / interleaved(sgemm_probe, args.reps)["roof sgemm"]
    roof = sgemm / flops_per_token(config, args.seq)

    # ---- figures
    tokens = args.rows * args.seq
    print(f"\nload average {load[0]:.2f} at the start, {load[1]:.2f} at the end ({os.cpu_count()} cores, shared: "
          f"other jobs slow both sides)")
    for name, log in clocks.items():  # [0] is the warm-up step
        print(f"{name} steps: " + ", ".join(f"{w:.2f} s ({c / w:.1f} cores, {f / 1e3:.0f}K faults)"
                                            for w, c, f in log[1:])
              + f"; median {t[name]:.2f} s")
    if pieces:
        print(f"\n{'breakdown (medians)':<50} {'s':>7} {'tok/s':>7}")
        for name in ("lwm forward", "lwm forward+backward", "lwm", *(f"lwm step, remat {p}" for p in REMATS),
                     "torch forward", "torch forward+backward", "torch"):
            label = {"lwm": "lwm step", "torch": "torch step"}.get(name, name)
            print(f"{label:<50} {t[name]:>7.2f} {tokens / t[name]:>7.0f}")
    lwm_rate, torch_rate = tokens / t["lwm"], tokens / t["torch"]
    ratio, bar = lwm_rate / torch_rate, 1.0  # benchmarks/README.md
    print(f"\nsgemm {sgemm / 1e9:.0f} GFLOP/s over {flops_per_token(config, args.seq) / 1e6:.0f} MFLOP per token "
          f"-> roofline {roof:.0f} train tok/s")
    print(f"\n{'figure':<34} {'lwm':>7} {'peer':>7} {'':5} {'ratio':>6}  {'bar':>7}  met")
    figure = f"train tok/s ({args.rows} x {args.seq}, AdamW)"
    print(f"{figure:<34} {lwm_rate:>7.1f} {torch_rate:>7.1f} torch {ratio:>6.2f}  {f'>= {bar:g}x':>7}  "
          f"{'yes' if ratio >= bar else 'NO'}")
    print(f"{'train tok/s vs roofline':<34} {lwm_rate:>7.1f} {roof:>7.1f} roof  {lwm_rate / roof:>6.2f}  {'-':>7}  -")


if __name__ == "__main__":
    from lwm_cli import _malloc

    _malloc.reexec()  # glibc's allocator as the `lwm` command runs with it
    main()
