"""Write configs/data/counting.jsonl: the small synthetic corpus the CPU example config trains on.

Each line counts from a random start by a random step ("count by 3 from 14: 14 17 20 ..."): after the
first two numbers every token is predictable, so a tiny model's loss falls far below the corpus's
unigram entropy within a few hundred steps. Deterministic (seeded); rerun to regenerate.

    python scripts/make_tiny_corpus.py [OUT] [--lines N] [--seed S]
"""

import argparse
import json
import os
import random


def lines(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        step, start, count = rng.randint(1, 9), rng.randint(0, 99), rng.randint(6, 12)
        numbers = " ".join(str(start + step * i) for i in range(count))
        out.append({"text": f"count by {step} from {start}: {numbers}"})
    return out


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.path.join(here, "..", "configs", "data", "counting.jsonl"))
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        for record in lines(args.lines, args.seed):
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
