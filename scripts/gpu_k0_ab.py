"""k = 0 step time vs no speculation, interleaved A/B/A/B in one process with both engines alive
(rules out line-order effects of the sweep).

Usage: python3 scripts/gpu_k0_ab.py [--model M] [--eagle-head DIR] [batch ...]
  default: random Llama-3.1-8B shapes with the n-gram drafter; --eagle-head: an EAGLE-3 head for --model
  (issue 21: the feature tap that keeps the head fresh across k = 0 must cost the plain steps nothing).
The speculative engine's schedule {1: 4, 2: 0} keeps every measured batch (>= 2) at k = 0.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import EagleDecodingConfig, NGramDecodingConfig

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("batches", nargs="*", type=int, default=[2, 8, 64])
parser.add_argument("--model", default="random:llama-3.1-8b")
parser.add_argument("--eagle-head", default=None, help="EAGLE-3 head directory (default: the n-gram drafter)")
args = parser.parse_args()
if any(b < 2 for b in args.batches):
    parser.error("batch sizes must be >= 2 (the schedule {1: 4, 2: 0} drafts at batch 1)")

schedule = {1: 4, 2: 0}
spec = (EagleDecodingConfig(max_draft_len=4, speculative_model=args.eagle_head, draft_len_schedule=schedule)
        if args.eagle_head else NGramDecodingConfig(max_draft_len=4, draft_len_schedule=schedule))
common = dict(model=args.model, max_num_seqs=max(args.batches), max_model_len=512,
              num_kv_blocks=max(args.batches) * 32 + 2, max_num_batched_tokens=8192)
# each engine loads its own weights (an EAGLE engine's feature tap belongs to its target)
engines = {"no spec": LLMEngine(EngineConfig(**common)), "k=0": LLMEngine(EngineConfig(speculative_config=spec, **common))}
sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # CPU: a smoke run only


def decode_steps(engine: LLMEngine, batch: int, rounds: int = 48) -> list[float]:
    params = SamplingParams(temperature=0, max_tokens=rounds + 8, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"ab-{time.monotonic_ns()}-{i}", [1 + i] * 128, params)
    while any(r.num_output_tokens == 0 for r in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        engine.step()
        sync()
        times.append(time.perf_counter() - start)
    while engine.has_unfinished_requests():
        engine.step()
    return times


drafter = f"EAGLE head {args.eagle_head}" if args.eagle_head else "n-gram"
for batch in args.batches:
    samples = {name: [] for name in engines}
    for _ in range(3):
        for name, engine in engines.items():
            samples[name] += decode_steps(engine, batch)
    base = statistics.median(samples["no spec"])
    k0 = statistics.median(samples["k=0"])
    print(f"{args.model}, {drafter}, batch {batch}: no spec {base * 1e3:.3f} ms, k=0 {k0 * 1e3:.3f} ms, "
          f"ratio {k0 / base:.4f} (median of {len(samples['k=0'])} steps each, interleaved x3)")
