"""k = 0 step time vs no speculation, interleaved A/B/A/B in one process with both engines alive
(rules out line-order effects of the sweep). Usage: python3 scripts/gpu_k0_ab.py [batch ...]"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import NGramDecodingConfig

batches = [int(b) for b in sys.argv[1:]] or [2, 8, 64]
common = dict(model="random:llama-3.1-8b", max_num_seqs=max(batches), max_model_len=512,
              num_kv_blocks=max(batches) * 32 + 2, max_num_batched_tokens=8192)
engines = {
    "no spec": LLMEngine(EngineConfig(**common)),
    "k=0": LLMEngine(EngineConfig(speculative_config=NGramDecodingConfig(max_draft_len=4, draft_len_schedule={1: 4, 2: 0}), **common)),
}


def decode_steps(engine: LLMEngine, batch: int, rounds: int = 48) -> list[float]:
    params = SamplingParams(temperature=0, max_tokens=rounds + 8, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"ab-{time.monotonic_ns()}-{i}", [1 + i] * 128, params)
    while any(r.num_output_tokens == 0 for r in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    while engine.has_unfinished_requests():
        engine.step()
    return times


for batch in batches:
    samples = {name: [] for name in engines}
    for _ in range(3):
        for name, engine in engines.items():
            samples[name] += decode_steps(engine, batch)
    base = statistics.median(samples["no spec"])
    k0 = statistics.median(samples["k=0"])
    print(f"batch {batch}: no spec {base * 1e3:.3f} ms, k=0 {k0 * 1e3:.3f} ms, ratio {k0 / base:.4f} "
          f"(median of {len(samples['k=0'])} steps each, interleaved x3)")
