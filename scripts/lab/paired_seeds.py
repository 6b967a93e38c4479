"""Two `warm_sweep_replay.py --per-seed` files (the same seeds, two trees) compared paired by seed: per batch the
mean of each, the mean difference and its standard error (issue 20: a policy change's effect on the closed-batch
replays is a percent or two, under the seed-to-seed spread of a few percent).

    python scripts/lab/paired_seeds.py old.json new.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    old, new = json.loads(args.old.read_text()), json.loads(args.new.read_text())
    print("| batch | old | new | new - old | standard error | seeds |")
    print("|---|---|---|---|---|---|")
    for batch in old:
        diffs = [n - o for o, n in zip(old[batch], new[batch])]
        error = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        print(f"| {batch} | {statistics.mean(old[batch]):.3f} | {statistics.mean(new[batch]):.3f} | "
              f"{statistics.mean(diffs):+.4f} | {error:.4f} | {len(diffs)} |")


if __name__ == "__main__":
    main()
