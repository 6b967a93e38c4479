"""Issue 20's bound on the GPU: probe the verify cost (uniform and ragged graphs) of a model with the adaptive
policy's own start-up probe, then compute what per-request draft lengths can gain over the best uniform k and
over no speculation at each concurrency for replayed acceptance profiles mixed evenly (bench/adaptive_bound.py).

    python scripts/adaptive_bound.py --model random:llama-3.1-8b --out $OUT/bound
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynaspec.bench.adaptive_bound import bound_markdown, bound_table
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
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    spec = NGramDecodingConfig(max_draft_len=args.max_draft_len, draft_len_policy="adaptive")
    engine = LLMEngine(EngineConfig(model=args.model, max_num_seqs=max(batches), speculative_config=spec))
    policy = engine.policy  # its probed T(batch, k) and the ragged graphs' padded pricing
    profiles = [load_acceptance(name) for name in args.profiles.split(",")]
    rows = bound_table(batches, profiles, policy.max_draft_len, policy.step_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    costs = {str(b): {str(k): policy.cost_model.cost(b, k) for k in range(policy.max_draft_len + 1)} for b in batches}
    (args.out / "bound.json").write_text(json.dumps({"model": args.model, "profiles": args.profiles, "rows": rows,
                                                     "probed_step_seconds": costs}, indent=2))
    table = bound_markdown(rows)
    (args.out / "bound.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
