"""Closed batches replayed on the adaptive policy with a recorded run's probed prices plus a host residual, CPU only:
whether its choice of draft lengths reproduces a GPU sweep's at large batch (issue 20, the draft-model sweep of
2026-12-07 08:23 UTC). Each step costs the probe's T at its total tokens plus, for a speculative step, `--step-ms`
and `--drafted-us` per drafted position (the adaptive line's fitted residual: planner_view.overhead_coefficients),
which the policy learns online as on the GPU (it is given the probe alone). Static k lines and adaptive at two
`drain_max_batch` values, tokens/s, mean of `--seeds`:

    python scripts/lab/closed_residual_replay.py adaptive-draft/bench.json \\
        --profiles acceptance_draft-model_code-edit,acceptance_draft-model_chat --batches 64,128,256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dynaspec.bench.adaptive_bound import recorded_cost_model  # noqa: E402
from dynaspec.bench.closed_batch_replay import closed_batch_tokens_per_ms, replayed_adaptive_policy  # noqa: E402
from dynaspec.spec.adaptive_allocation import step_seconds_by_tokens  # noqa: E402
from dynaspec.spec.planner_settings import PlannerSettings  # noqa: E402
from dynaspec.spec.replay import load_acceptance  # noqa: E402
from dynaspec.spec.schedule_policy import SchedulePolicy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path, help="a dynaspec bench run's bench.json (its probed costs)")
    parser.add_argument("--profiles", default="acceptance_draft-model_code-edit,acceptance_draft-model_chat")
    parser.add_argument("--batches", default="64,128,256")
    parser.add_argument("--gen", type=int, default=64, help="tokens each request generates")
    parser.add_argument("--max-draft-len", type=int, default=4)
    parser.add_argument("--step-ms", type=float, default=1.7, help="host ms a speculative step pays beyond the probe")
    parser.add_argument("--drafted-us", type=float, default=8.6, help="host us a drafted position adds")
    parser.add_argument("--drain-max-batch", default="64,256")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    costs = recorded_cost_model(args.bench_json)
    k_max = costs.measured_max_draft_len(args.max_draft_len)
    profiles = [load_acceptance(name) for name in args.profiles.split(",")]

    def probe_ms(batch: int, draft_lens: list[int]) -> float:
        return step_seconds_by_tokens(costs.cost, batch, sum(draft_lens), k_max) * 1e3

    def real_ms(batch: int, draft_lens: list[int]) -> float:
        spec = max(draft_lens) > 0
        return probe_ms(batch, draft_lens) + (args.step_ms + args.drafted_us * 1e-3 * sum(draft_lens) if spec else 0.0)

    def rate(make, batch: int) -> float:
        return sum(closed_batch_tokens_per_ms(make(), real_ms, profiles, seed, batch, args.gen)
                   for seed in range(args.seeds)) / args.seeds * 1e3

    limits = [int(b) for b in args.drain_max_batch.split(",")]
    print("| batch | " + " | ".join(f"k={k}" for k in range(k_max + 1)) + " | "
          + " | ".join(f"adaptive (drain_max_batch {m})" for m in limits) + " | adaptive / best static |")
    print("|---" * (k_max + 2 + len(limits) + 1) + "|")
    for batch in [int(b) for b in args.batches.split(",")]:
        static = [rate(lambda k=k: SchedulePolicy.from_schedule({1: k}, k_max), batch) for k in range(k_max + 1)]
        adaptive = [rate(lambda m=m: replayed_adaptive_policy(probe_ms, batch, k_max,
                                                              PlannerSettings(drain_max_batch=m)), batch)
                    for m in limits]
        print(f"| {batch} | " + " | ".join(f"{v:,.0f}" for v in static) + " | "
              + " | ".join(f"{v:,.0f}" for v in adaptive) + " | "
              + " / ".join(f"{v / max(static):.3f}" for v in adaptive) + " |", flush=True)


if __name__ == "__main__":
    main()
