"""The drain rule's model of a closed batch's end (spec/drain.py) against closed batches replayed with static k, at a
recorded draft-model sweep's probed prices plus injected host work (as scripts/lab/warm_sweep_replay.py), issue 20.

For each batch and k: tokens/s the model predicts from the profiles' true rates (no rate uncertainty), the same
without the draws' spread, the same without the shrinking batch (every step at the full batch's price), and the
replayed static line (mean of `--seeds`).

    python scripts/lab/drain_model_check.py docs/lab/data/adaptive_draft_sweep_h100_2026-12-07_0823.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dynaspec.bench.adaptive_bound import recorded_cost_model  # noqa: E402
from dynaspec.bench.closed_batch_replay import closed_batch_tokens_per_ms  # noqa: E402
from dynaspec.runtime.cuda_graphs import BATCH_BUCKETS  # noqa: E402
from dynaspec.spec import drain  # noqa: E402
from dynaspec.spec.adaptive_allocation import survival  # noqa: E402
from dynaspec.spec.replay import load_acceptance  # noqa: E402
from dynaspec.spec.schedule_policy import SchedulePolicy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path, help="a recorded draft-model sweep's bench.json (its probe)")
    parser.add_argument("--profiles", default="acceptance_draft-model_code-edit,acceptance_draft-model_chat")
    parser.add_argument("--batches", default="4,16,64,128")
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--max-draft-len", type=int, default=4)
    parser.add_argument("--host-ms", type=float, default=0.35)
    parser.add_argument("--host-us-per-request", type=float, default=20.0)
    parser.add_argument("--plain-host-ms", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    recorded = recorded_cost_model(args.bench_json)
    k_max = recorded.measured_max_draft_len(args.max_draft_len)
    profiles = [load_acceptance(name) for name in args.profiles.split(",")]

    def step_ms(batch: int, draft_lens: list[int]) -> float:  # uniform steps only here
        k = max(draft_lens)
        bucket = next(b for b in BATCH_BUCKETS if b >= batch)
        host = args.plain_host_ms if k == 0 else args.host_ms + args.host_us_per_request * 1e-3 * batch
        return recorded.cost(bucket, k) * 1e3 + host

    def predicted(batch: int, k: int, spread: bool, shrink: bool) -> float:
        survivals = [survival(profiles[i % len(profiles)][:k_max]) for i in range(batch)]
        full = step_ms(batch, [k])

        def price(b: int, positions: int, longest: int) -> float:
            return (step_ms(b, [longest]) if shrink else full) * 1e-3

        with_spread = drain.expected_last_end
        if not spread:  # the draws' spread (and the rates' uncertainty) left out: the last request ends at its mean
            drain.expected_last_end = lambda means, spreads, counts=None: max(means, default=0.0)
        try:
            seconds = drain.drain_seconds([k] * batch, survivals, survivals, [args.gen] * batch, price)
        finally:
            drain.expected_last_end = with_spread
        return batch * args.gen / seconds

    print("| batch | k | model | model, no draw spread | model, no shrinking | replayed static k | model / replayed |")
    print("|---|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        for k in range(k_max + 1):
            static = SchedulePolicy.from_schedule({1: k}, k_max)
            replayed = sum(closed_batch_tokens_per_ms(static, step_ms, profiles, seed, batch, args.gen)
                           for seed in range(args.seeds)) / args.seeds * 1e3
            model = predicted(batch, k, True, True)
            print(f"| {batch} | {k} | {model:,.0f} | {predicted(batch, k, False, True):,.0f} | "
                  f"{predicted(batch, k, True, False):,.0f} | {replayed:,.0f} | {model / replayed:.3f} |")


if __name__ == "__main__":
    main()
