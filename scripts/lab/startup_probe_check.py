"""Whether the start-up probe's T(batch, k) agrees between engines built the same way (issue 20, CUDA only).

On an H100 (2026-12-07 08:23 UTC sweep, random Llama-3.2-1B drafting for random Llama-3.1-8B) the goodput line's
probe priced a k = 4 step at batch 1 at 10.71 ms and the adaptive line's, built the same way a minute before, at
~7.6 ms (its planner view: 3.3 ms of fitted host overhead on 10.9 ms steps), about 0.78 ms less a draft position, as
if its drafting had been priced at k single-token forwards (0.66 ms each) instead of one whole-chain replay (1.44 ms
a step). This builds engines as `dynaspec bench` does (dynaspec/bench/sweep.py), one after the other, records
what each start-up probe measured (LLMEngine.measure_step_costs) and prints T and its drafting share at the given
batches and k's, so a probe that differs between engines shows with its drafting share.

    python scripts/lab/startup_probe_check.py --policies adaptive,goodput,adaptive --batches 1,2,4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dynaspec.bench.sweep import _build_engine  # noqa: E402
from dynaspec.bench.sweep_settings import Line, SweepSettings  # noqa: E402
from dynaspec.engine.engine import LLMEngine  # noqa: E402
from dynaspec.spec.config import DraftTargetDecodingConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--draft-model", default="random:llama-3.2-1b")
    parser.add_argument("--policies", default="adaptive,goodput,adaptive")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--max-batch", type=int, default=256, help="the bench's largest batch (graph buckets)")
    parser.add_argument("--max-draft-len", type=int, default=4)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    probes = []
    measure = LLMEngine.measure_step_costs

    def recorded(self, pairs, repeats=5):
        model = measure(self, pairs, repeats)
        probes.append(model)
        return model

    LLMEngine.measure_step_costs = recorded
    settings = SweepSettings(model=args.model, prompt_len=128, gen_len=64)
    batches = [int(b) for b in args.batches.split(",")]
    ks = range(args.max_draft_len + 1)
    print("| engine | policy | " + " | ".join(f"T({b}, {k}) ms (drafting)" for b in batches for k in ks) + " |")
    print("|---" * (2 + len(batches) * len(ks)) + "|")
    for n, policy in enumerate(args.policies.split(",")):
        spec = DraftTargetDecodingConfig(speculative_model=args.draft_model, max_draft_len=args.max_draft_len,
                                         draft_len_policy=policy)
        before = len(probes)
        engine = _build_engine(settings, Line(name=policy, kind="schedule", k=None, speculative_config=spec),
                               args.max_batch, args.max_draft_len, 128)
        model = probes[before] if len(probes) > before else None
        cells = []
        for b in batches:
            for k in ks:
                total = model.measured(b, k) if model is not None else None
                drafting = model.drafting.measured(b, k) if model is not None else None
                cells.append("-" if total is None else f"{total * 1e3:.2f} ({(drafting or 0) * 1e3:.2f})")
        print(f"| {n} | {policy} | " + " | ".join(cells) + " |", flush=True)
        engine.shutdown()
        del engine
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
