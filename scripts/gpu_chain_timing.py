"""Draft-model propose() on the GPU: the whole-chain graph (one replay) vs the step-by-step graphs (a
two-position first step + k - 1 single-token steps, a host read after each), wall-clock per propose in
the steady state (catch-up of one token). Random-weight presets, so only the timings mean anything.

Usage: python3 scripts/gpu_chain_timing.py [target preset] [draft preset] [max batch]
"""

from __future__ import annotations

import sys
import time

import torch

from dynaspec.config import EngineConfig
from dynaspec.runtime.cost_probe import chain_seconds
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import DraftTargetDecodingConfig

target = sys.argv[1] if len(sys.argv) > 1 else "random:qwen2.5-1.5b"
draft = sys.argv[2] if len(sys.argv) > 2 else "random:qwen2.5-0.5b"
max_batch = int(sys.argv[3]) if len(sys.argv) > 3 else 16
max_k = 5
spec = DraftTargetDecodingConfig(max_draft_len=max_k, speculative_model=draft, draft_len_policy="goodput")
started = time.perf_counter()
engine = LLMEngine(EngineConfig(model=target, max_num_seqs=max_batch, max_model_len=1024, num_kv_blocks=4096,
                                speculative_config=spec))
print(f"engine start-up (load, capture, probe): {time.perf_counter() - started:.1f} s; "
      f"{len(engine.drafter.chain.graphs)} chain graphs")
drafter = engine.drafter
params = SamplingParams(temperature=0.0, max_tokens=900, ignore_eos=True)


def propose_ms(requests, k: int, repeats: int = 20) -> float:
    drafter.propose(requests, k)  # the catch-up settles to one token
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(repeats):
        drafter.propose(requests, k)  # ends with a device-to-host copy: synchronous
    return (time.perf_counter() - begin) / repeats * 1e3


print(f"{'batch':>5} {'k':>2} {'steps ms':>9} {'chain ms':>9} {'speed-up':>8} {'chain replay ms':>15}")
for batch in [b for b in (1, 4, 16, 32, 64) if b <= max_batch]:
    for i in range(batch):
        engine.add_request(f"b{batch}-{i}", [1 + (7 * i) % 1000] * 64, params)
    while any(r.is_prefilling or r.num_output_tokens == 0 for r in engine.requests.values()):
        engine.step()
    requests = list(engine.requests.values())
    for request in requests:  # slots for the k positions a propose writes (the scheduler's reservation)
        engine.block_manager.ensure_slots(request, request.num_tokens + max_k)
    for k in range(1, max_k + 1):
        chain, drafter.chain = drafter.chain, None
        steps = propose_ms(requests, k)
        drafter.chain = chain
        chained = propose_ms(requests, k)
        bucket, _ = chain.lookup(batch, k)
        replay = chain_seconds(chain, bucket, k, 20) * 1e3
        print(f"{batch:>5} {k:>2} {steps:>9.3f} {chained:>9.3f} {steps / chained:>7.2f}x {replay:>15.3f}")
    for request_id in list(engine.requests):
        engine.abort_request(request_id)
