"""A load switch replayed on the adaptive policy (no model, CPU): a steady batch of 4 requests, then one of 128, with
a recorded GPU's probed step costs plus a given host cost per request of a speculative step (which the probe does
not see and the policy learns online). Prints the draft lengths of the first steps at 128 and tokens/s there: how
long the policy speculates at a batch its host-overhead fit has never seen (spec/step_overhead.py extrapolates).

    python scripts/lab/phase_switch_replay.py --costs-from adaptive-code-edit/bench.json --host-us 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynaspec.bench.adaptive_bound import recorded_cost_model
from dynaspec.bench.closed_batch_replay import replayed_adaptive_policy, steady_batch_tokens_per_ms
from dynaspec.spec.adaptive_allocation import step_seconds_by_tokens
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.replay import load_acceptance

K = 4
SPECULATIVE_STEP_HOST_MS = 0.3  # per speculative step, besides the per-request cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs-from", type=Path, required=True, help="a bench.json with a goodput line")
    parser.add_argument("--host-us", type=float, default=20.0, help="host microseconds a request of a speculative step")
    parser.add_argument("--profiles", default="acceptance_ngram_code-edit,acceptance_ngram_chat")
    args = parser.parse_args()
    costs = recorded_cost_model(args.costs_from)
    profiles = [load_acceptance(name) for name in args.profiles.split(",")]
    steps: list[tuple[int, int]] = []  # (batch, largest k_i)

    def probed_ms(batch: int, draft_lens: list[int]) -> float:
        return step_seconds_by_tokens(costs.cost, batch, sum(draft_lens), K) * 1e3

    def real_ms(batch: int, draft_lens: list[int]) -> float:
        steps.append((batch, max(draft_lens)))
        host = args.host_us * 1e-3 * batch + SPECULATIVE_STEP_HOST_MS if max(draft_lens) > 0 else 0.0
        return probed_ms(batch, draft_lens) + host

    policy = replayed_adaptive_policy(probed_ms, 128, K, PlannerSettings())
    steady_batch_tokens_per_ms(policy, real_ms, profiles, 0, 4, warmup_requests=8, measured_requests=24)
    start = len(steps)
    rate = steady_batch_tokens_per_ms(policy, real_ms, profiles, 1, 128, warmup_requests=0, measured_requests=256)
    at_128 = [k for batch, k in steps[start:] if batch == 128]
    print("largest k_i of the first 40 steps at 128:", at_128[:40])
    print(f"speculative steps at 128: {sum(k > 0 for k in at_128)} of {len(at_128)}; {rate * 1e3:,.0f} tok/s there")


if __name__ == "__main__":
    main()
