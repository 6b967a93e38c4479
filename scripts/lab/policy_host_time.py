"""Host time of the adaptive policy's own hooks a step (draft_lens + observe + refresh), no model: a steady batch
replaying the n-gram code-edit profile at prices interpolated from an H100's probe (issue 20: the mixed sweep's
batch-1 point ran adaptive's steps 0.03 ms longer than static k = 4's at the same k).

    python scripts/lab/policy_host_time.py 1 4 64
"""

from __future__ import annotations

import argparse
import random
import time

from dynaspec.bench.closed_batch_replay import interpolated_step_ms, replayed_adaptive_policy
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import StepOutcome
from dynaspec.spec.replay import load_acceptance

# T(1, k) and T(256, k), ms, k = 0..4: random Llama-3.1-8B on an H100 (2026-12-07 probes, rounded)
STEP_MS = interpolated_step_ms([4.1, 4.5, 4.55, 4.6, 4.66], [9.0, 15.7, 19.1, 19.8, 20.9], 256)


def microseconds_a_step(batch: int, steps: int, profile: list[float]) -> float:
    policy = replayed_adaptive_policy(STEP_MS, 256, 4, PlannerSettings())
    rng = random.Random(0)
    ids = [f"r{i}" for i in range(batch)]
    spent = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        draft_lens = policy.draft_lens(batch, batch, ids)
        spent += time.perf_counter() - start
        accepted = []
        for k in draft_lens:
            a = 0
            while a < k and rng.random() < profile[a]:
                a += 1
            accepted.append(a)
        outcome = StepOutcome(ids, max(draft_lens), drafted=list(draft_lens), accepted=accepted,
                              draft_lens=list(draft_lens), seconds=STEP_MS(batch, list(draft_lens)) / 1e3)
        start = time.perf_counter()
        policy.observe(outcome)
        policy.refresh(batch, ids)
        spent += time.perf_counter() - start
    return spent / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batches", type=int, nargs="+")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    profile = load_acceptance("acceptance_ngram_code-edit")
    for batch in args.batches:
        print(f"batch {batch}: {microseconds_a_step(batch, args.steps, profile):.1f} us a step")


if __name__ == "__main__":
    main()
