"""Closed batches replayed against the adaptive policy with and without its drain rule (spec/drain.py).

A batch of 16 requests x 128 tokens, half accepting like one profile and half like another, step prices from the
H100 chat run of 2026-12-06 (Qwen2.5-Coder-1.5B and its EAGLE head: 2.07 ms plain at batch 16, 3.10 ms at k = 3),
after a warm-up batch of the same mix (bench/closed_batch_replay.py). Prints tokens/s over no speculation's.

    python scripts/lab/drain_sim.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dynaspec.bench.closed_batch_replay import (  # noqa: E402
    closed_batch_tokens_per_ms, interpolated_step_ms, replayed_adaptive_policy)
from dynaspec.spec.planner_settings import PlannerSettings  # noqa: E402

K = 4
T16_MS = [2.07, 2.51, 2.84, 3.10, 3.40]  # chat batch 16, static k medians
T1_MS = [1.85, 2.25, 2.45, 2.60, 2.75]  # batch 1
STEP_MS = interpolated_step_ms(T1_MS, T16_MS, 16)
MIXES = {
    "chat-like (0.70 / 0.25 at position 0)": [[0.70, 0.65, 0.6, 0.55], [0.25, 0.35, 0.4, 0.4]],
    "code-edit-like (0.80 / 0.60)": [[0.8, 0.75, 0.7, 0.65], [0.6, 0.55, 0.5, 0.5]],
    "alike (0.80)": [[0.8, 0.75, 0.7, 0.65]],
    "copy next to chat (0.90 / 0.10)": [[0.9, 0.9, 0.8, 0.8], [0.1, 0.1, 0.1, 0.1]],
}


def rate(tolerance: float | None, profiles: list[list[float]], seed: int, warmup: bool) -> float:
    policy = replayed_adaptive_policy(STEP_MS, 16, K, PlannerSettings(drain_tolerance=tolerance))
    return closed_batch_tokens_per_ms(policy, STEP_MS, profiles, seed, warmup=warmup)


def main() -> None:
    no_spec = 16 / T16_MS[0]
    for warmup in (True, False):
        print(f"warm-up batch first: {warmup}")
        for name, profiles in MIXES.items():
            for tolerance in (None, 0.05, 0.0):
                rates = [rate(tolerance, profiles, seed, warmup) / no_spec for seed in range(3)]
                print(f"  {name:40s} tolerance {tolerance!s:5s} x no spec: {' '.join(f'{r:.3f}' for r in rates)}"
                      f"  mean {sum(rates) / 3:.3f}")


if __name__ == "__main__":
    main()
