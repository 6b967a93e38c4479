"""The draft-model sweep replayed on the CPU with one adaptive policy carried from batch to batch, as `dynaspec bench`
carries an engine: the adaptive policy's prices before c025994 (every step of B positions at the ragged graph
holding batch + B tokens, drafting interpolated with it) against after (spec/probed_prices.py: where the step runs),
issue 20.

Step times ("the GPU"): a uniform step at its padded graph bucket costs the recorded probe's T(bucket, k) plus host
work (`--host-ms` + `--host-us-per-request` x batch + `--host-us-per-drafted-token` x drafted positions when
speculative; plain steps `--plain-host-ms`); a ragged step
its verify by total tokens at the engine's ragged graph (buckets of two or more) plus drafting to its longest k_i
(`--draft-step-ms` a chain step, the probe's drafting share: 1.22-1.29 ms on an H100 at batch 1-4, 2026-12-07) plus
the same host work. The policy is given the probe (T, and the drafting share apart) and learns the rest online.
Each point: a warm-up batch, then the measured closed batch, `--gen` tokens a request, code-edit and chat
acceptance replayed per request; tokens/s of the measured batch, mean of `--seeds`.

    python scripts/lab/warm_sweep_replay.py docs/lab/data/adaptive_draft_sweep_h100_2026-12-07_0823.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dynaspec.bench.adaptive_bound import recorded_cost_model  # noqa: E402
from dynaspec.bench.closed_batch_replay import closed_batch_tokens_per_ms  # noqa: E402
from dynaspec.engine.graph_keys import ragged_keys  # noqa: E402
from dynaspec.runtime.cost_model import StepCostModel  # noqa: E402
from dynaspec.runtime.cuda_graphs import BATCH_BUCKETS  # noqa: E402
from dynaspec.runtime.ragged_graphs import RaggedKeys  # noqa: E402
from dynaspec.spec.acceptance_estimator import planning_estimator  # noqa: E402
from dynaspec.spec.adaptive import AdaptivePolicy  # noqa: E402
from dynaspec.spec.adaptive_allocation import step_seconds_by_tokens  # noqa: E402
from dynaspec.spec.planner_settings import PlannerSettings  # noqa: E402
from dynaspec.spec.probed_prices import ProbedPrices  # noqa: E402
from dynaspec.spec.replay import load_acceptance  # noqa: E402
from dynaspec.spec.schedule_policy import SchedulePolicy  # noqa: E402


class PricesBeforeFix(ProbedPrices):
    """The pricing before c025994: every step of B > 0 positions at the ragged graph holding batch + B tokens
    (else the uniform steps around them at the padded batch), T interpolated with its drafting."""

    def _probed(self, batch: int, positions: int, longest: int, drafted: bool) -> tuple[int, float]:
        cost = self.cost_model.verify_cost if drafted else self.cost_model.cost
        ragged = None if self.ragged_step is None or positions == 0 else self.ragged_step(batch, batch + positions)
        if ragged is not None:
            bucket, tokens = ragged
            return bucket, step_seconds_by_tokens(cost, bucket, tokens - bucket, self.max_draft_len)
        k_high = -(-positions // batch)
        bucket = batch if self.padded_batch is None else self.padded_batch(batch, min(k_high, self.max_draft_len))
        return bucket, step_seconds_by_tokens(cost, batch, positions, self.max_draft_len, self.padded_batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path, help="a recorded draft-model sweep's bench.json (its probe)")
    parser.add_argument("--profiles", default="acceptance_draft-model_code-edit,acceptance_draft-model_chat")
    parser.add_argument("--batches", default="1,4,16,64,128")
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--max-draft-len", type=int, default=4)
    parser.add_argument("--draft-step-ms", type=float, default=1.25)
    parser.add_argument("--host-ms", type=float, default=0.35)
    parser.add_argument("--host-us-per-request", type=float, default=20.0)
    parser.add_argument("--plain-host-ms", type=float, default=0.1)
    parser.add_argument("--host-us-per-drafted-token", type=float, default=0.0,
                        help="host work per drafted position (the n-gram drafter's: ~5.8 us on an H200, 2026-12-07)")
    parser.add_argument("--prior", default="dynaspec/bench/data/acceptance_draft-model_mixed.json",
                        help="the estimator's acceptance_profile (bench/adaptive_draft_model_mixed.yaml's)")
    parser.add_argument("--drain-tolerance", type=float, default=PlannerSettings().drain_tolerance,
                        help="< 0: no drain rule")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-seed", type=Path, default=None,
                        help="also write each seed's after / best static line per batch here (JSON): run two trees "
                             "on the same seeds and compare them paired by seed")
    args = parser.parse_args()
    recorded = recorded_cost_model(args.bench_json)
    k_max = recorded.measured_max_draft_len(args.max_draft_len)
    batches = [int(b) for b in args.batches.split(",")]
    buckets = [b for b in BATCH_BUCKETS if b <= max(batches)]
    probe = StepCostModel()  # the probe at every graph bucket, the drafting share apart
    probe.drafting = StepCostModel()
    for bucket in buckets:
        for k in range(k_max + 1):
            probe.add(bucket, k, recorded.cost(bucket, k))
            probe.drafting.add(bucket, k, args.draft_step_ms * 1e-3 * k)
    ragged_step = RaggedKeys(ragged_keys([(b, k) for b in buckets for k in range(k_max + 1)], k_max, 1 << 20)).lookup

    def padded(batch: int, k: int) -> int:
        return next(b for b in buckets if b >= batch)

    truth = ProbedPrices(probe, k_max, padded, ragged_step)

    def step_ms(batch: int, draft_lens: list[int]) -> float:
        longest, positions = max(draft_lens), sum(draft_lens)
        host = args.plain_host_ms if longest == 0 else (
            args.host_ms + args.host_us_per_request * 1e-3 * batch + args.host_us_per_drafted_token * 1e-3 * positions)
        return truth.price(batch, positions, longest)[1] * 1e3 + host

    profiles = [load_acceptance(name) for name in args.profiles.split(",")]

    def adaptive(prices_class) -> AdaptivePolicy:
        settings = PlannerSettings(drain_tolerance=None if args.drain_tolerance < 0 else args.drain_tolerance)
        estimator = planning_estimator(k_max, str(ROOT / args.prior) if args.prior else None, settings)
        policy = AdaptivePolicy(probe, estimator, k_max, settings, padded, ragged_step)
        policy.prices = prices_class(probe, k_max, padded, ragged_step)
        return policy

    rows: dict[int, dict[str, float]] = {}
    per_seed: dict[int, list[float]] = {}
    for seed in range(args.seeds):
        lines = {"before": adaptive(PricesBeforeFix), "after": adaptive(ProbedPrices)}  # carried across batches
        for batch in batches:
            row = rows.setdefault(batch, {})
            rates = {}
            for k in range(k_max + 1):
                rates[f"k={k}"] = closed_batch_tokens_per_ms(SchedulePolicy.from_schedule({1: k}, k_max), step_ms,
                                                             profiles, seed, batch, args.gen)
            for name, policy in lines.items():
                rates[name] = closed_batch_tokens_per_ms(policy, step_ms, profiles, seed, batch, args.gen)
            for name, rate in rates.items():
                row[name] = row.get(name, 0.0) + rate * 1e3 / args.seeds
            per_seed.setdefault(batch, []).append(rates["after"] / max(rates[f"k={k}"] for k in range(k_max + 1)))
    if args.per_seed is not None:
        args.per_seed.write_text(json.dumps({str(batch): ratios for batch, ratios in per_seed.items()}))
    names = [f"k={k}" for k in range(k_max + 1)] + ["before", "after"]
    print("| batch | " + " | ".join(names) + " | before / best static | after / best static |")
    print("|---" * (len(names) + 3) + "|")
    for batch, row in rows.items():
        best = max(row[f"k={k}"] for k in range(k_max + 1))
        print(f"| {batch} | " + " | ".join(f"{row[n]:,.0f}" for n in names)
              + f" | {row['before'] / best:.3f} | {row['after'] / best:.3f} |")


if __name__ == "__main__":
    main()
