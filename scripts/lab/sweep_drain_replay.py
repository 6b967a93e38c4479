"""Issue 20's closed-batch sweep replayed on the adaptive policy, CPU only: how its drain rule would play out at the
H100 sweep's step prices (2026-12-06 21:36 UTC, random Llama-3.1-8B bf16, n-gram; each static line's median step
at batch 1, 4, 16, 64), half the requests replaying the code-edit n-gram profile and half the chat one, 64 tokens
each, with and without a warm-up batch (bench/closed_batch_replay.py). Host overheads are not modelled: this is the
rule's choice of draft lengths, not the engine. Prints tokens/s over no speculation's per seed.

    python scripts/lab/sweep_drain_replay.py --tolerance 0.05
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dynaspec.bench.closed_batch_replay import (  # noqa: E402
    closed_batch_tokens_per_ms, interpolated_step_ms, replayed_adaptive_policy)
from dynaspec.spec.planner_settings import PlannerSettings  # noqa: E402

STEP_MS = {  # batch -> median step ms at k = 0..4 (H100 sweep, 2026-12-06 21:36 UTC)
    1: [5.57, 6.26, 6.49, 6.57, 6.6], 4: [6.22, 6.58, 6.64, 6.62, 6.55], 16: [6.51, 7.07, 7.2, 7.21, 7.52],
    64: [7.09, 8.93, 8.94, 9.37, 10.05],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    data = ROOT / "dynaspec" / "bench" / "data"
    profiles = [json.loads((data / f"acceptance_ngram_{w}.json").read_text())["acceptance_per_position"]
                for w in ("code-edit", "chat")]
    for batch in (4, 16, 64):
        step = interpolated_step_ms(STEP_MS[1], STEP_MS[batch], batch)
        no_spec = batch / step(batch, [0] * batch)
        for warmup in (True, False):
            rates = [closed_batch_tokens_per_ms(
                replayed_adaptive_policy(step, batch, 4, PlannerSettings(drain_tolerance=args.tolerance)), step,
                profiles, seed, batch=batch, gen=64, warmup=warmup) / no_spec for seed in range(args.seeds)]
            print(f"batch {batch:3d} warm-up {warmup!s:5s} x no spec: {' '.join(f'{r:.3f}' for r in rates)}"
                  f"  mean {sum(rates) / len(rates):.3f}")


if __name__ == "__main__":
    main()
