"""The goodput planner at batch 1 on acceptance that changes along a request, with and without the re-probe
rule (PlannerSettings.reprobe_after): no engine, the policy fed step outcomes drawn from a per-position
acceptance and the H100 step times of the Qwen2.5-Coder-1.5B + EAGLE head run (docs/results.md, 2026-12-06).
Prints mean tokens per ms over seeds for each acceptance scenario (plain decode: 1 / T(1, 0)).

Usage: python scripts/simulate_reprobe.py [--seeds 12] [--requests 3] [--gen-len 128]
"""

from __future__ import annotations

import argparse
import random
import statistics
from types import SimpleNamespace

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.planner import build_goodput_planner
from dynaspec.spec.policy import StepOutcome

STEP_MS = [1.73, 2.31, 2.62, 2.85, 3.11, 3.34, 3.54]  # median real steps at k = 0..6, batch 1
PROBED_SHARE = 0.85  # the start-up probe times graph replays only: below the real step
LATER = [0.62, 0.5, 0.55, 0.45, 0.3, 0.3]  # the head's conditional acceptance per position on code-edit


def run(seed: int, reprobe_after: int | None, early_tokens: int, early_alpha: float, requests: int, gen_len: int) -> float:
    cost = StepCostModel()
    for k, ms in enumerate(STEP_MS):
        cost.add(1, k, ms * 1e-3 * PROBED_SHARE)
    spec = SimpleNamespace(max_draft_len=len(STEP_MS) - 1, max_concurrency=None, goodput_hysteresis=0.02,
                           acceptance_profile=None)
    planner = build_goodput_planner(spec, cost)
    planner.settings = planner.settings.model_copy(update={"reprobe_after": reprobe_after})
    rng = random.Random(seed)
    seconds = tokens = 0.0
    for r in range(requests):
        rid, position = f"r{r}", 0
        while position < gen_len:
            k = planner.draft_len(1, 1, [rid])
            alphas = [early_alpha] * len(LATER) if position < early_tokens else LATER
            accepted = 0
            while accepted < k and rng.random() < alphas[accepted]:
                accepted += 1
            step = STEP_MS[k] * 1e-3 * rng.uniform(0.97, 1.05)
            planner.observe(StepOutcome(request_ids=[rid], draft_len=k, drafted=[k], accepted=[accepted],
                                        draft_lens=[k], seconds=step))
            position += accepted + 1
            seconds += step
            tokens += accepted + 1
        planner.release(rid)
    return tokens / seconds / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--gen-len", type=int, default=128)
    args = parser.parse_args()
    print(f"plain decode: {1 / STEP_MS[0]:.3f} tokens a ms")
    for early_tokens, early_alpha in ((30, 0.3), (0, 0.3), (args.gen_len, 0.3), (args.gen_len, 0.05)):
        means = []
        for reprobe in (None, 32):
            runs = [run(s, reprobe, early_tokens, early_alpha, args.requests, args.gen_len) for s in range(args.seeds)]
            means.append(statistics.mean(runs))
        print(f"acceptance {early_alpha} for the first {early_tokens} tokens, then the head's: "
              f"without re-probe {means[0]:.3f}, with {means[1]:.3f} tokens a ms")


if __name__ == "__main__":
    main()
