"""Monte Carlo of the goodput planner at batch 1 when consecutive requests come from different workloads:
the pooled acceptance estimate against one that blends each request's own acceptance in.

At concurrency 1 one request decodes at a time, so a pooled estimate (ESTIMATE_MEMORY_TRIALS trials) is
the last requests' acceptance: after a chat request (n-gram drafts almost never accepted) it holds k = 0
through the next code-edit request (drafts accepted 53% at the first position), where it drafts and learns
nothing but an exploration's trial every ~40 steps. (The H200 diurnal traces of 2026-11-27 15:44 and 16:01
ran k = 0 on ~500 of ~1,000 steps of their concurrency-1 phases, 0.78-0.89 x static k = 4 there.)

The real GoodputPlanner and AcceptanceEstimator decide; the GPU is replaced by the batch-1 medians of the
15:51 H200 sweep (random:llama-3.1-8b: k = 0 4.08 ms, k = 1..4 5.00 / 4.95 / 5.00 / 5.11 ms, fed back with
1% noise). Requests replay acceptance_ngram_code-edit or acceptance_ngram_chat (per-position conditional
acceptance) with probability `--code-share`, 64-192 tokens each; the estimate is warm-started from the
mix, as `dynaspec bench-trace` does. Printed: tokens/s of each policy over `--requests` requests against
static k = 0 and k = 4 and against an oracle that knows each request's workload (k = 4 on code-edit, k = 0
on chat), mean of `--runs` seeds.

    PYTHONPATH=. python scripts/sim_planner_request_mix.py [--code-share 0.5] [--requests 40] [--runs 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.planner import ESTIMATE_MEMORY_TRIALS, EXPLORE_BUDGET, PROBE_MARGIN, REPLAN_EVERY, GoodputPlanner
from dynaspec.spec.replay import load_acceptance

STEP_MS = [4.08, 5.00, 4.95, 5.00, 5.11]  # k = 0..4, batch 1, H200 15:51 sweep medians


@dataclass(frozen=True)
class Mix:
    """The simulated workload: per-position acceptance of the two kinds of request, and how they mix."""

    code: tuple[float, ...]  # the code-edit profile (or --code-alphas)
    chat: tuple[float, ...]
    code_share: float
    requests: int

    def warm_start(self) -> list[float]:
        """The profiles mixed by share, as `dynaspec bench-trace` warm-starts the estimate."""
        return [self.code_share * c + (1 - self.code_share) * h for c, h in zip(self.code, self.chat)]


def accepted(rng: random.Random, k: int, alphas: Sequence[float]) -> int:
    """Drafts accepted of k: position j with probability alphas[j] once the earlier ones were."""
    a = 0
    while a < k and rng.random() < alphas[a]:
        a += 1
    return a


def workload(seed: int, mix: Mix) -> list[tuple[tuple[float, ...], int]]:
    """Per request: its profile and its length in tokens."""
    rng = random.Random(seed)
    return [(mix.code if rng.random() < mix.code_share else mix.chat, rng.randint(64, 192)) for _ in range(mix.requests)]


def planner_run(seed: int, mix: Mix, per_request: dict | None) -> float:
    """per_request: AcceptanceEstimator settings of the per-request blend, or None for the pooled estimate."""
    rng = random.Random(seed + 1_000_003)
    cost = StepCostModel()
    for k, ms in enumerate(STEP_MS):
        cost.add(1, k, ms / 1e3)
    estimator = AcceptanceEstimator(4, profile=mix.warm_start(), memory_trials=ESTIMATE_MEMORY_TRIALS, **(per_request or {}))
    planner = GoodputPlanner(cost, estimator, range(5), explore_every=64, replan_every=REPLAN_EVERY,
                             probe_margin=PROBE_MARGIN, explore_budget=EXPLORE_BUDGET)
    made, seconds = 0, 0.0
    for n, (alphas, length) in enumerate(workload(seed, mix)):
        ids = [f"r{n}"] if per_request is not None else None
        done = 0
        while done < length:
            k = min(planner.draft_len(1, 1, ids), length - done - 1)
            a = accepted(rng, k, alphas)
            if k:
                planner.observe(k, [k], [a], ids)
            step = STEP_MS[k] / 1e3 * (1.0 + rng.gauss(0.0, 0.01))
            planner.observe_step_time(1, k, step)
            done, seconds = done + a + 1, seconds + step
        made += done
        planner.release(f"r{n}")
    return made / seconds


def fixed_run(seed: int, mix: Mix, k_for) -> float:
    """Tokens per second when each request runs k_for(its profile)."""
    rng = random.Random(seed + 1_000_003)
    made, seconds = 0, 0.0
    for alphas, length in workload(seed, mix):
        done = 0
        while done < length:
            k = min(k_for(alphas), length - done - 1)
            a = accepted(rng, k, alphas)
            done, seconds = done + a + 1, seconds + STEP_MS[k] / 1e3
        made += done
    return made / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-share", type=float, default=0.5)
    parser.add_argument("--code-alphas", default=None, help="replace the code-edit profile: comma-separated alphas")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--request-ema-rates", default="0.2,0.015625", help="AcceptanceEstimator request_ema_rate values")
    parser.add_argument("--blend-counts", default="4,8,16", help="AcceptanceEstimator blend_count values")
    args = parser.parse_args()
    code = [float(x) for x in args.code_alphas.split(",")] if args.code_alphas else load_acceptance("acceptance_ngram_code-edit")
    mix = Mix(tuple(code), tuple(load_acceptance("acceptance_ngram_chat")), args.code_share, args.requests)
    seeds = range(args.runs)
    rows = {
        "static k = 0": lambda s: fixed_run(s, mix, lambda a: 0),
        "static k = 4": lambda s: fixed_run(s, mix, lambda a: 4),
        "oracle (k = 4 on code-edit, 0 on chat)": lambda s: fixed_run(s, mix, lambda a: 4 if a is mix.code else 0),
        "goodput, pooled estimate": lambda s: planner_run(s, mix, None),
    }
    for rate in (float(x) for x in args.request_ema_rates.split(",")):
        for blend in (float(x) for x in args.blend_counts.split(",")):
            settings = {"request_ema_rate": rate, "blend_count": blend}
            rows[f"goodput, per-request rate {rate:g} learned from {blend:g}"] = (
                lambda s, settings={**settings, "learn_blend_count": True}: planner_run(s, mix, settings))
            rows[f"goodput, per-request rate {rate:g} blend {blend:g}"] = (
                lambda s, settings=settings: planner_run(s, mix, settings))
    results = {name: statistics.mean(fn(s) for s in seeds) for name, fn in rows.items()}
    oracle = results["oracle (k = 4 on code-edit, 0 on chat)"]
    print(f"code-edit share {args.code_share}, {args.requests} requests of 64-192 tokens, {args.runs} runs")
    for name, tps in results.items():
        print(f"  {name:<48} {tps:7.1f} tok/s  {tps / oracle:5.3f} x oracle")


if __name__ == "__main__":
    main()
