"""Monte Carlo of the goodput planner at batch 1 with chat-like acceptance: how often a run of it lands
below 0.98 x the best static line, and how often the best static line itself does.

The real GoodputPlanner and AcceptanceEstimator decide; what the GPU would do is replaced by numbers
measured on an NVIDIA H200 (docs/benchmarks.md, 2026-11-27 runs 15-16, random:llama-3.1-8b, batch 1):
the probed graph seconds the planner starts from, and each static line's median real step (the step
time fed back, with 1% Gaussian noise). Drafts are accepted at the first position with probability
`a1` and always after it, as the chat profile (`acceptance_ngram_chat`: 2 of 77 first positions, then
1.0) replays them. A run generates `--tokens` tokens (the sweep's 4 batches of 64: warm-up + 3 rounds).

    PYTHONPATH=. python scripts/sim_planner_batch1.py [--a1 0.026,0.036,0.01,0] [--hysteresis 0.05,0.02]
"""

from __future__ import annotations

import argparse
import random
import statistics

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.planner import EXPLORE_BUDGET, ESTIMATE_MEMORY_TRIALS, PROBE_MARGIN, REPLAN_EVERY, GoodputPlanner

PROBED_MS = [4.517, 4.497, 4.504, 4.512, 4.593]  # k = 0..4: the planner's probed seconds, run 16
REAL_MS = [4.58, 4.78, 4.78, 4.82, 4.93]  # k = 0..4: static lines' median real steps, runs 15-16
PROFILE = [0.026, 1.0, 1.0, 1.0]  # acceptance_ngram_chat's acceptance_per_position, rounded
EXPLORE_EVERY = 64  # build_goodput_planner's default, what the engine's planner uses


def accepted(rng: random.Random, k: int, a1: float) -> int:
    """Drafts accepted of k: the first with probability a1, every later one when the first was."""
    return k if k and rng.random() < a1 else 0


def planner_run(seed: int, a1: float, hysteresis: float, prior_weight: float, tokens: int) -> float:
    """Tokens per second of one run of the planner."""
    rng = random.Random(seed)
    cost = StepCostModel()
    for k, ms in enumerate(PROBED_MS):
        cost.add(1, k, ms / 1e3)
    estimator = AcceptanceEstimator(4, profile=PROFILE, prior_weight=prior_weight, memory_trials=ESTIMATE_MEMORY_TRIALS)
    planner = GoodputPlanner(cost, estimator, range(5), hysteresis=hysteresis, explore_every=EXPLORE_EVERY,
                             replan_every=REPLAN_EVERY, probe_margin=PROBE_MARGIN, explore_budget=EXPLORE_BUDGET)
    made, seconds = 0, 0.0
    while made < tokens:
        k = planner.draft_len(1, 1)
        a = accepted(rng, k, a1)
        if k:
            planner.observe(k, [k], [a])
        step = REAL_MS[k] / 1e3 * (1.0 + rng.gauss(0.0, 0.01))
        planner.observe_step_time(1, k, step)
        made, seconds = made + a + 1, seconds + step
    return made / seconds


def static_run(seed: int, a1: float, k: int, tokens: int) -> float:
    """Tokens per second of one run at a fixed k."""
    rng = random.Random(seed)
    made, seconds = 0, 0.0
    while made < tokens:
        made, seconds = made + accepted(rng, k, a1) + 1, seconds + REAL_MS[k] / 1e3
    return made / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a1", default="0.026,0.036,0.01,0", help="first-position acceptances, comma-separated")
    parser.add_argument("--hysteresis", default="0.05,0.02", help="planner hysteresis values, comma-separated")
    parser.add_argument("--prior-weight", type=float, default=20.0, help="AcceptanceEstimator prior_weight")
    parser.add_argument("--tokens", type=int, default=256, help="tokens a run generates")
    parser.add_argument("--runs", type=int, default=400, help="runs (seeds) per setting")
    args = parser.parse_args()
    for a1 in (float(x) for x in args.a1.split(",")):
        means = {k: statistics.mean(static_run(s, a1, k, args.tokens) for s in range(args.runs)) for k in range(5)}
        best_k = max(means, key=means.get)
        best = means[best_k]
        own = sum(static_run(s, a1, best_k, args.tokens) < 0.98 * best for s in range(args.runs)) / args.runs
        print(f"a1 = {a1}: best static k = {best_k}, {best:.1f} tok/s on average (no spec {means[0]:.1f}); "
              f"a run of that static line is below 0.98 x its own mean in {own:.0%} of runs")
        for h in (float(x) for x in args.hysteresis.split(",")):
            ratios = [planner_run(s, a1, h, args.prior_weight, args.tokens) / best for s in range(args.runs)]
            below = sum(r < 0.98 for r in ratios) / len(ratios)
            print(f"  hysteresis {h}: planner / best static mean {statistics.mean(ratios):.3f}, below 0.98 in {below:.0%} of runs")


if __name__ == "__main__":
    main()
