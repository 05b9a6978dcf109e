"""Causal load balance of ring attention: unmasked (query, key) pairs per device and ring step.

At each ring step every device waits for the slowest one, so the cost of a step is the *maximum* work
over devices; the figure is max/mean per step (1.0 is perfect). Contiguous shards leave the first
device nearly idle and the last one full; the zigzag layout (device i holds chunks i and 2N-1-i) evens
it out. Counted exactly from the layouts lwm uses (`lwm_core.attention.layout`).

Usage: python benchmarks/ring_balance.py [--tokens-per-device 4096] [--sp 2 4 8 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lwm_core.attention.layout import unmasked_work, zigzag_order  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens-per-device", type=int, default=1024)
    parser.add_argument("--sp", type=int, nargs="+", default=[2, 4, 8, 16])
    args = parser.parse_args()
    rows = []
    for sp in args.sp:
        length = sp * args.tokens_per_device
        for name, positions in (("contiguous", np.arange(length)), ("zigzag", zigzag_order(length, sp))):
            work = unmasked_work(positions, sp)
            per_step = work.max(0) / work.mean(0)
            # time of the whole ring ~ sum over steps of the slowest device; ideal = sum of the means
            efficiency = work.mean(0).sum() / work.max(0).sum()
            totals = work.sum(1)
            rows.append((sp, name, totals.max() / totals.mean(), per_step.max(), efficiency))
    print(f"{'sp':>3} {'layout':<11} {'device total max/mean':>22} {'worst step max/mean':>20} "
          f"{'ring efficiency':>16}")
    for sp, name, total, worst, efficiency in rows:
        print(f"{sp:>3} {name:<11} {total:>22.3f} {worst:>20.3f} {efficiency:>15.1%}")


if __name__ == "__main__":
    main()
