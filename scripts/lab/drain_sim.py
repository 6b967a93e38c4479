"""Closed batches replayed against the adaptive policy with and without its drain rule (spec/drain.py).

A batch of 16 requests x 128 tokens, half accepting like one profile and half like another, step costs
T(batch, k) from the H100 chat run of 2026-12-06 (Qwen2.5-Coder-1.5B and its EAGLE head: 2.07 ms plain at
batch 16, 3.10 ms at k = 3), acceptance drawn per request and position. A warm-up batch of the same mix runs
first (as `dynaspec bench` warms up), so finished requests have taught the policy how much requests differ
(spec/request_spread.py). Prints tokens/s over no speculation's for each tolerance and seed.

    python scripts/lab/drain_sim.py
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dynaspec.runtime.cost_model import StepCostModel  # noqa: E402
from dynaspec.spec.acceptance_estimator import planning_estimator  # noqa: E402
from dynaspec.spec.adaptive import AdaptivePolicy  # noqa: E402
from dynaspec.spec.planner_settings import PlannerSettings  # noqa: E402
from dynaspec.spec.policy import StepOutcome  # noqa: E402

K = 4
T16_MS = [2.07, 2.51, 2.84, 3.10, 3.40]  # chat batch 16, static k medians
T1_MS = [1.85, 2.25, 2.45, 2.60, 2.75]  # batch 1


def step_ms(batch: int, draft_lens: list[int]) -> float:
    """T(batch, k) interpolated between batch 1 and 16; a ragged step by its positions between k = 0 and max."""
    def uniform(k: int) -> float:
        return T1_MS[k] + (T16_MS[k] - T1_MS[k]) * (batch - 1) / 15
    top = max(draft_lens)
    if top == 0 or len(set(draft_lens)) == 1:
        return uniform(top)
    return uniform(0) + (uniform(top) - uniform(0)) * sum(draft_lens) / (batch * top)


def closed_batches(tolerance: float | None, profiles: list[list[float]], seed: int, batch: int = 16,
                   gen: int = 128, warmup: bool = True) -> float:
    """Tokens per ms of the last (measured) batch; request i accepts position j with profiles[i % len][j]."""
    costs = StepCostModel()
    for b in range(1, batch + 1):
        for k in range(K + 1):
            costs.add(b, k, step_ms(b, [k] * b) / 1e3)
    settings = PlannerSettings(drain_tolerance=tolerance)
    policy = AdaptivePolicy(costs, planning_estimator(K, None, settings), K, settings)
    rng = random.Random(seed)
    for round_ in (0, 1) if warmup else (1,):
        alphas = {f"b{round_}r{i}": profiles[i % len(profiles)] for i in range(batch)}
        left = {rid: gen for rid in alphas}
        ms = 0.0
        while left:
            ids = list(left)
            draft_lens = policy.draft_lens(len(ids), len(ids), ids, remaining=[left[r] for r in ids])
            accepted = []
            for rid, k in zip(ids, draft_lens):
                a = 0
                while a < k and rng.random() < alphas[rid][a]:
                    a += 1
                accepted.append(a)
            seconds = step_ms(len(ids), draft_lens) / 1e3
            policy.observe(StepOutcome(ids, max(draft_lens), drafted=list(draft_lens), accepted=accepted,
                                       draft_lens=list(draft_lens), seconds=seconds))
            policy.refresh(len(ids), ids)
            ms += seconds * 1e3
            for rid, a in zip(ids, accepted):
                left[rid] -= 1 + a
                if left[rid] <= 0:
                    del left[rid]
                    policy.release(rid)
    return gen * batch / ms


def main() -> None:
    no_spec = 16 / T16_MS[0]
    mixes = {
        "chat-like (0.70 / 0.25 at position 0)": [[0.70, 0.65, 0.6, 0.55], [0.25, 0.35, 0.4, 0.4]],
        "code-edit-like (0.80 / 0.60)": [[0.8, 0.75, 0.7, 0.65], [0.6, 0.55, 0.5, 0.5]],
        "alike (0.80)": [[0.8, 0.75, 0.7, 0.65]],
        "copy next to chat (0.90 / 0.10)": [[0.9, 0.9, 0.8, 0.8], [0.1, 0.1, 0.1, 0.1]],
    }
    for name, profiles in mixes.items():
        for tolerance in (None, 0.05, 0.0):
            rates = [closed_batches(tolerance, profiles, seed) / no_spec for seed in range(3)]
            print(f"{name:40s} tolerance {tolerance!s:5s} x no spec: {' '.join(f'{r:.3f}' for r in rates)}"
                  f"  mean {sum(rates) / 3:.3f}")


if __name__ == "__main__":
    main()
