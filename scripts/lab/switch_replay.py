"""The adaptive policy's switch from k = 0 at a closed batch's first decode step, at an H100's probed prices: the
gain the drain rule predicts (Allocation.drain_gain, at the requests' mean rates) and the one the tokens left at
the allocation's tokens a second predict, against the draft model's catch-up on every prompt (spec/switch_hold.py).

Prices: the probed T(batch, k) of random Llama-3.2-1B drafting for random Llama-3.1-8B (H100, 2026-12-07 16:32
and 2026-12-08 00:31 UTC sweeps, docs/lab/data/adaptive_draft_sweep_h100_*.json) and the 00:31 run's catch-up
price (9.35 ms + 4.41 us a token). Acceptance: the Qwen pair's code-edit and chat draft-model profiles, half the
requests each, after a warm-up batch at k = 4 that taught the policy how much requests differ. CPU only.

    python scripts/lab/switch_replay.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dynaspec.bench.closed_batch_replay import KeyedDraws  # noqa: E402
from dynaspec.runtime.cost_model import StepCostModel  # noqa: E402
from dynaspec.spec.acceptance_estimator import planning_estimator  # noqa: E402
from dynaspec.spec.adaptive import AdaptivePolicy  # noqa: E402
from dynaspec.spec.catch_up import CatchUpCost  # noqa: E402
from dynaspec.spec.planner_settings import PlannerSettings  # noqa: E402
from dynaspec.spec.policy import StepOutcome  # noqa: E402

PROBED_MS = {  # batch -> T(batch, k) ms, k = 0..4 (H100; 64 and 128 from the 00:31 run)
    1: [5.39, 7.06, 8.16, 9.35, 10.63], 4: [5.64, 6.96, 8.48, 9.77, 11.07], 16: [6.02, 7.48, 8.92, 10.32, 11.94],
    64: [6.32, 8.56, 10.83, 12.92, 15.87], 128: [7.07, 10.47, 15.19, 18.76, 23.25],
    256: [8.73, 16.31, 26.18, 31.21, 40.1],
}
PROMPT_TOKENS = 129  # the bench's 128-token prompts and the first generated token: the drafter's backlog a request


def first_decision(batch: int, gen: int, profiles: list[list[float]]) -> str:
    costs = StepCostModel()
    for b, row in PROBED_MS.items():
        for k, ms in enumerate(row):
            costs.add(b, k, ms / 1e3)
    settings = PlannerSettings()
    behind, left = batch * PROMPT_TOKENS, batch * gen
    policy = AdaptivePolicy(costs, planning_estimator(4, None, settings), 4, settings,
                            catch_up=CatchUpCost(4.41e-6, fixed_seconds=9.35e-3), backlog=lambda: (behind, left))
    draws = KeyedDraws(0)
    warm = [f"w{i}" for i in range(batch)]
    for step in range(12):  # a draft of 4 at each of 12 positions a request (not its accepted path: a warm-up)
        accepted = [draws.accepted(rid, profiles[i % 2], step * 5, 4) for i, rid in enumerate(warm)]
        policy.observe(StepOutcome(warm, 4, drafted=[4] * batch, accepted=accepted, draft_lens=[4] * batch))
    for rid in warm:
        policy.release(rid)
    policy.observe(StepOutcome(warm[:1], 0, seconds=PROBED_MS[1][0] / 1e3))  # the prefill phase ran plain
    ids = [f"r{i}" for i in range(batch)]
    planned = policy.plan(batch, ids, [gen] * batch)
    rate_gain = left * (policy.step_seconds(batch, 0) / batch - 1.0 / planned.goodput)
    draft_lens = policy.draft_lens(batch, batch, ids, remaining=[gen] * batch)
    return (f"| {batch} | {gen} | {sorted(set(planned.draft_lens))} | {planned.drain_gain * 1e3:.1f} | "
            f"{rate_gain * 1e3:.1f} | {policy.catch_up.seconds(behind) * 1e3:.1f} | "
            f"{policy.last_decision['reason']} {sorted(set(draft_lens))} |")


def main() -> None:
    data = ROOT / "dynaspec" / "bench" / "data"
    profiles = [json.loads((data / f"acceptance_draft-model_{w}.json").read_text())["acceptance_per_position"]
                for w in ("code-edit", "chat")]
    print("| batch | tokens | planned k_i | drain gain ms | rate gain ms | catch-up ms | decision |")
    print("|---|---|---|---|---|---|---|")
    for batch, gen in ((16, 64), (64, 64), (128, 64), (128, 256), (256, 64)):
        print(first_decision(batch, gen, profiles))


if __name__ == "__main__":
    main()
