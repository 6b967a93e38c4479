"""Issue 20's closed-batch sweeps replayed on the CPU: adaptive / the best static k at batch 4, 16, 64 for the
draft model and n-gram, on the code-edit + chat mix and on each pure profile (bench/closed_batch_replay.py: a
warm-up batch, then the measured one; no host work, no catch-up). Prices: H100 probes (draft model: 2026-12-07
16:32 / 2026-12-08 00:31 UTC sweeps; n-gram: 2026-12-06 21:36 UTC medians); the pooled start is the workload's
acceptance profile, as the bench configs give it. Prints one line per (drafter, mix).

    python scripts/lab/closed_sweep_replay.py --seeds 12
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dynaspec.bench.closed_batch_replay import (  # noqa: E402
    closed_batch_tokens_per_ms, interpolated_step_ms, replayed_adaptive_policy)
from dynaspec.spec.planner_settings import PlannerSettings  # noqa: E402
from dynaspec.spec.policy import DraftLenPolicy  # noqa: E402

DATA = ROOT / "dynaspec" / "bench" / "data"
PRICES_MS = {  # drafter -> batch -> T(batch, k) ms, k = 0..4
    "draft-model": {1: [5.39, 7.06, 8.16, 9.35, 10.63], 4: [5.64, 6.96, 8.48, 9.77, 11.07],
                    16: [6.02, 7.48, 8.92, 10.32, 11.94], 64: [6.32, 8.56, 10.83, 12.92, 15.87]},
    "ngram": {1: [5.57, 6.26, 6.49, 6.57, 6.6], 4: [6.22, 6.58, 6.64, 6.62, 6.55], 16: [6.51, 7.07, 7.2, 7.21, 7.52],
              64: [7.09, 8.93, 8.94, 9.37, 10.05]},
}


class Static(DraftLenPolicy):
    def __init__(self, k: int) -> None:
        self.k = k

    def draft_len(self, num_decoding, num_active, request_ids=None) -> int:
        return self.k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    args = parser.parse_args()

    def profile(drafter: str, workload: str) -> list[float]:
        return json.loads((DATA / f"acceptance_{drafter}_{workload}.json").read_text())["acceptance_per_position"]

    for drafter, prices in PRICES_MS.items():
        for mix in (("code-edit", "chat"), ("code-edit",), ("chat",)):
            profiles = [profile(drafter, w) for w in mix]
            pooled = str(DATA / f"acceptance_{drafter}_{'mixed' if len(mix) == 2 else mix[0]}.json")
            ratios = []
            for batch in (4, 16, 64):
                step = interpolated_step_ms(prices[1], prices[batch], batch)

                def rate(make) -> float:
                    return sum(closed_batch_tokens_per_ms(make(), step, profiles, seed, batch=batch, gen=64)
                               for seed in range(args.seeds)) / args.seeds

                best = max(rate(lambda: Static(k)) for k in range(5))
                adaptive = rate(lambda: replayed_adaptive_policy(step, batch, 4, PlannerSettings(), pooled))
                ratios.append(f"{batch}: {adaptive / best:.3f}")
            print(f"{drafter} {'+'.join(mix)}: adaptive / best static k at " + ", ".join(ratios))


if __name__ == "__main__":
    main()
