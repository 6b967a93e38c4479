"""Where a batch-1 decode step's time goes on the GPU: graph replay alone vs the whole engine step,
and a torch.profiler table of a few steps. Usage: python3 scripts/gpu_profile_step.py [model] [batch]"""

from __future__ import annotations

import sys
import time

import torch

from dynaspec.config import EngineConfig
from dynaspec.runtime.cost_probe import forward_seconds
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams

model = sys.argv[1] if len(sys.argv) > 1 else "random:llama-3.1-8b"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
engine = LLMEngine(EngineConfig(model=model, max_num_seqs=batch, max_model_len=1024, num_kv_blocks=64 * batch))
for i in range(batch):
    engine.add_request(f"r{i}", [1 + i] * 128, SamplingParams(temperature=0, max_tokens=300, ignore_eos=True))
for _ in range(5):
    engine.step()
torch.cuda.synchronize()
replay = forward_seconds(engine.runner, batch, 0, repeats=20)
start = time.perf_counter()
for _ in range(50):
    engine.step()
torch.cuda.synchronize()
step = (time.perf_counter() - start) / 50
print(f"{model} batch {batch}: graph replay {replay * 1e3:.2f} ms, full step {step * 1e3:.2f} ms, "
      f"overhead {(step - replay) * 1e3:.2f} ms")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
