"""Steady batches replayed on the policies with a recorded GPU's probed step costs (no model, CPU): does the
adaptive policy reach issue 20's bound where its prices are right? (bench/closed_batch_replay.py,
steady_batch_tokens_per_ms; the bound: bench/adaptive_bound.py.) Host work and prefill steps are left out, so
this isolates the policy's choices from what an engine adds.

    python scripts/lab/steady_replay.py --costs-from adaptive-code-edit/bench.json [--batches 16,64,128,256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynaspec.bench.adaptive_bound import bound_at, recorded_cost_model
from dynaspec.bench.closed_batch_replay import replayed_adaptive_policy, steady_batch_tokens_per_ms
from dynaspec.spec.acceptance_estimator import planning_estimator
from dynaspec.spec.adaptive_allocation import step_seconds_by_tokens
from dynaspec.spec.planner import GoodputPlanner
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.replay import load_acceptance
from dynaspec.spec.schedule_policy import SchedulePolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs-from", type=Path, required=True, help="a bench.json with a goodput line")
    parser.add_argument("--profiles", default="acceptance_ngram_code-edit,acceptance_ngram_chat")
    parser.add_argument("--batches", default="16,64,128,256")
    parser.add_argument("--max-draft-len", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    costs = recorded_cost_model(args.costs_from)
    k_max = costs.measured_max_draft_len(args.max_draft_len)
    profiles = [load_acceptance(name) for name in args.profiles.split(",")]

    def step_ms(batch: int, draft_lens: list[int]) -> float:
        return step_seconds_by_tokens(costs.cost, batch, sum(draft_lens), k_max) * 1e3

    print("| concurrency | bound: uniform | bound: per request | static k (best) | goodput | adaptive "
          "| adaptive / goodput | adaptive / bound per request |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batches.split(",")]:
        bound = bound_at(batch, profiles, k_max,
                         lambda b, positions: step_seconds_by_tokens(costs.cost, b, positions, k_max))

        def rate(make) -> float:
            return sum(steady_batch_tokens_per_ms(make(), step_ms, profiles, seed, batch) * 1e3
                       for seed in range(args.seeds)) / args.seeds

        settings = PlannerSettings()
        static = {k: rate(lambda k=k: SchedulePolicy.from_schedule({1: k}, k_max)) for k in range(k_max + 1)}
        best = max(static, key=static.get)
        goodput = rate(lambda: GoodputPlanner(costs, planning_estimator(k_max, None, settings), range(k_max + 1),
                                              settings))
        adaptive = rate(lambda: replayed_adaptive_policy(step_ms, batch, k_max, settings))
        print(f"| {batch} | {bound['uniform_tokens_per_s']:,.0f} | {bound['per_request_tokens_per_s']:,.0f} "
              f"| k={best} ({static[best]:,.0f}) | {goodput:,.0f} | {adaptive:,.0f} | {adaptive / goodput:.3f} "
              f"| {adaptive / bound['per_request_tokens_per_s']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
