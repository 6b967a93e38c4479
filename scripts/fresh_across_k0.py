"""Issue 21's freshness check on real weights (dynaspec/bench/freshness.py): for pairs of prompts, request r
drafts with the EAGLE head under the schedule {1: k, 2: 0}, a second request turns speculation off for a few
steps, then r drafts again; prints the head's acceptance before and after the plain phase and that of a run
that never stopped drafting, over the same output positions (greedy: the same tokens).

    python scripts/fresh_across_k0.py --model qwen2.5-coder-1.5b-instruct --head /tmp/qh_test --pairs 3
"""

from __future__ import annotations

import argparse

from dynaspec import EagleDecodingConfig
from dynaspec.bench.freshness import measure_freshness
from dynaspec.bench.workloads import workload
from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.train_head.prompts import prompt_token_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--head", required=True, help="EAGLE head directory")
    parser.add_argument("--workload", default="code-edit")
    parser.add_argument("--pairs", type=int, default=3, help="prompt pairs (r, the request that joins)")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    spec = EagleDecodingConfig(max_draft_len=args.k, speculative_model=args.head, draft_len_schedule={1: args.k, 2: 0})
    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, speculative_config=spec))
    prompts = [prompt_token_ids(engine.tokenizer, c) for c in workload(args.workload, 2 * args.pairs, 0)]
    totals = [0.0, 0.0, 0.0]
    drafted = [0, 0, 0]
    for i in range(args.pairs):
        fresh = measure_freshness(lambda: engine, prompts[2 * i], prompts[2 * i + 1], max_tokens=args.max_tokens)
        print(f"pair {i}: before {fresh.before:.3f}, after {fresh.after:.3f}, never stopped {fresh.never_stopped:.3f} "
              f"(drafted {fresh.drafted}; {fresh.plain_steps} plain steps)", flush=True)
        for j, (rate, count) in enumerate(zip((fresh.before, fresh.after, fresh.never_stopped), fresh.drafted)):
            totals[j] += rate * count
            drafted[j] += count
    before, after, never = (t / d if d else 0.0 for t, d in zip(totals, drafted))
    print(f"all pairs: before {before:.3f}, after {after:.3f}, never stopped {never:.3f}; after / never stopped "
          f"{after / never if never else 0:.3f}, after / before {after / before if before else 0:.3f}")


if __name__ == "__main__":
    main()
