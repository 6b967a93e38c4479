"""Where an EAGLE step's time goes at small batch, split by graph (issue 21): the target's verify graph of
(batch, 1 + k) positions and the head's whole-chain draft graph of k, each timed alone by CUDA events over
`--repeats` replays on idle inputs (the engine's own cost probe, runtime/cost_probe.py), next to the engine's
wall step for the same k (host included). Random target weights and an untrained head of the trained head's
shape: step costs do not depend on what the weights say.

    python scripts/lab/eagle_split.py --batches 1 4 --ks 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eagle_step_profile import write_head  # noqa: E402


def wall_steps(llm, batch: int, prompt_len: int, gen_len: int) -> float:
    """Median engine step (s) decoding `gen_len` tokens for `batch` random prompts after a warm-up run."""
    from dynaspec import SamplingParams

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 30000, (prompt_len,), generator=gen).tolist() for _ in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    engine = llm.engine
    for i, p in enumerate(prompts):
        engine.add_request(f"w{i}", p, params)
    steps = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - start)
    return statistics.median(steps[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:qwen2.5-1.5b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--draft-vocab-size", type=int, default=32000)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--gen-len", type=int, default=96)
    parser.add_argument("--wall", action="store_true", help="also each k's engine wall step (one engine per k)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    from dynaspec import LLM
    from dynaspec.spec.config import EagleDecodingConfig

    head_dir = str(Path(tempfile.mkdtemp()) / "head")
    write_head(args.model, head_dir, args.draft_vocab_size)
    print(f"card: {torch.cuda.get_device_name()}")
    k_max = max(args.ks)
    spec = EagleDecodingConfig(max_draft_len=k_max, speculative_model=head_dir, draft_len_schedule={1: k_max})
    llm = LLM(model=args.model, speculative_config=spec, max_num_seqs=max(args.batches))
    pairs = [(b, k) for b in args.batches for k in args.ks]
    engine = llm.engine  # graphs for every probed (batch, k): the schedule's k alone is captured at start-up
    engine.runner.capture_graphs(pairs, engine.max_blocks_per_seq)
    engine.drafter.capture_graphs([(b, k) for b, k in pairs if k > 0], engine.max_blocks_per_seq)
    costs = engine.measure_step_costs(pairs, repeats=args.repeats)
    print("batch  k  verify_ms  chain_ms  total_ms  (probe, idle inputs)")
    for b, k in pairs:
        total = costs.cost(b, k)
        chain = 0.0 if costs.drafting is None or k == 0 else costs.drafting.cost(b, k)
        print(f"{b:5d} {k:2d} {1e3 * (total - chain):10.3f} {1e3 * chain:9.3f} {1e3 * total:9.3f}")
    del llm
    torch.cuda.empty_cache()
    if not args.wall:
        return
    print("batch  k  wall_step_ms  (engine, static k, host included)")
    for b in args.batches:
        for k in args.ks:
            spec = None if k == 0 else EagleDecodingConfig(max_draft_len=k, speculative_model=head_dir,
                                                           draft_len_schedule={1: k})
            llm = LLM(model=args.model, speculative_config=spec, max_num_seqs=b)
            print(f"{b:5d} {k:2d} {1e3 * wall_steps(llm, b, args.prompt_len, args.gen_len):12.3f}", flush=True)
            del llm
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
