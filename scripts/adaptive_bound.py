"""Issue 20's bound on the GPU: probe the verify cost (uniform and ragged graphs) of a model with the adaptive
policy's own start-up probe, then compute what per-request draft lengths can gain over the best uniform k and
over no speculation at each concurrency for replayed acceptance profiles mixed evenly, and over a trace of
phases (by default bench-trace's diurnal day: --trace-phases, --requests-per-phase, --gen-len);
bench/adaptive_bound.py.

    python scripts/adaptive_bound.py --model random:llama-3.1-8b --out $OUT/bound

or from the probed costs a recorded `dynaspec bench` run kept (its goodput line's planner view), on any machine:
ragged steps are then priced between the uniform steps around their total tokens, not at a ragged graph's padding.

    python scripts/adaptive_bound.py --costs-from bench.json --out bound
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynaspec.bench.adaptive_bound import (bound_markdown, bound_table, recorded_cost_model, trace_bound,
                                           trace_bound_markdown)
from dynaspec.spec.adaptive_allocation import step_seconds_by_tokens
from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.replay import load_acceptance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--profiles", default="acceptance_ngram_code-edit,acceptance_ngram_chat")
    parser.add_argument("--batches", default="1,4,16,64,128,256")
    parser.add_argument("--max-draft-len", type=int, default=4)
    parser.add_argument("--trace-phases", default="1,2,4,128,256,128,4,2,1")
    parser.add_argument("--requests-per-phase", default="9,16,25,256,256,256,25,16,9")
    parser.add_argument("--gen-len", type=int, default=128, help="tokens a request generates in the trace")
    parser.add_argument("--costs-from", type=Path, help="a bench.json with a goodput line: its probed costs, no model")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    phases = [int(c) for c in args.trace_phases.split(",")]
    tokens_per_phase = [int(n) * args.gen_len for n in args.requests_per_phase.split(",")]
    if len(tokens_per_phase) != len(phases):
        parser.error(f"--requests-per-phase needs one count per phase ({len(phases)}), got {len(tokens_per_phase)}")
    max_draft_len = args.max_draft_len
    if args.costs_from is not None:
        cost_model = recorded_cost_model(args.costs_from)
        max_draft_len = cost_model.measured_max_draft_len(max_draft_len)

        def step_seconds(batch: int, positions: int) -> float:
            return step_seconds_by_tokens(cost_model.cost, batch, positions, max_draft_len)
    else:
        spec = NGramDecodingConfig(max_draft_len=max_draft_len, draft_len_policy="adaptive")
        engine = LLMEngine(EngineConfig(model=args.model, max_num_seqs=max(batches + phases), speculative_config=spec))
        policy = engine.policy  # its probed T(batch, k) and the ragged graphs' padded pricing
        cost_model, step_seconds, max_draft_len = policy.cost_model, policy.step_seconds, policy.max_draft_len
    profiles = [load_acceptance(name) for name in args.profiles.split(",")]
    rows = bound_table(batches, profiles, max_draft_len, step_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    day = trace_bound(phases, tokens_per_phase, profiles, max_draft_len, step_seconds)
    costs = {str(b): {str(k): cost_model.cost(b, k) for k in range(max_draft_len + 1)}
             for b in sorted(set(batches + phases))}
    result = {"model": args.model, "costs_from": None if args.costs_from is None else str(args.costs_from),
              "profiles": args.profiles, "rows": rows,
              "trace": {"phases": phases, "tokens_per_phase": tokens_per_phase, **day}, "probed_step_seconds": costs}
    (args.out / "bound.json").write_text(json.dumps(result, indent=2))
    table = bound_markdown(rows) + "\n\nTrace " + args.trace_phases + ":\n\n" + trace_bound_markdown(day)
    (args.out / "bound.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
