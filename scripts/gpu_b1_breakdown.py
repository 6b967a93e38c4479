"""Where the batch-1 decode graph of random:llama-3.1-8b spends its time, and what each M = 1 GEMM path costs.

1. Copy bandwidth (the floor's reference, `measure_copy_bandwidth`).
2. Engine at batch 1 (128-token prompt): graph replay, full step, and the kernels inside 10 profiled steps
   (CUPTI traces kernels launched by a graph replay), summed per kernel name per step; the gap is the
   replay time minus the summed kernel time (launch latency and tails between dependent kernels).
3. Each Llama-3.1-8B linear at M = 1 (qkv, o_proj, gate_up, down, lm_head) through F.linear (today's
   path), torch.mv (cuBLAS gemv), F.linear with bf16 reduced-precision reductions off and F.linear with
   torch's preferred BLAS library set to cuBLAS and to cuBLASLt; every timing is
   a CUDA graph replaying a loop over weight copies that together exceed 4x L2 (so they come from HBM),
   median of 10 replays; the kernels each path launches are listed once.

Prints everything; writes $OUT/b1_breakdown.json. Usage: python3 scripts/gpu_b1_breakdown.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynaspec.bench.sweep import measure_copy_bandwidth  # noqa: E402
from dynaspec.config import EngineConfig  # noqa: E402
from dynaspec.runtime.cost_probe import forward_seconds  # noqa: E402
from dynaspec.engine.engine import LLMEngine  # noqa: E402
from dynaspec.sampling_params import SamplingParams  # noqa: E402
from scripts.gpu_attention_check import graph_time as replayed_seconds  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
SHAPES = {  # op -> (N, K) of its weight
    "qkv": (6144, 4096),
    "o_proj": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
L2_MARGIN_BYTES = 4 * 60 * 2**20


def kernel_table(prof, steps: int) -> list[tuple[str, float, float]]:
    """(kernel name, us per step, launches per step) of the CUDA kernels in `prof`, most time first."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            total[event.name] += event.device_time
            count[event.name] += 1
    return sorted(((n, total[n] / steps, count[n] / steps) for n in total), key=lambda r: -r[1])


def engine_breakdown() -> dict:
    engine = LLMEngine(EngineConfig(model="random:llama-3.1-8b", max_num_seqs=1, max_model_len=1024, num_kv_blocks=64))
    engine.add_request("r0", [1] * 128, SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
    replay = forward_seconds(engine.runner, 1, 0, repeats=50)
    start = time.perf_counter()
    for _ in range(50):
        engine.step()
    torch.cuda.synchronize()
    step = (time.perf_counter() - start) / 50
    steps = 10
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    table = kernel_table(prof, steps)
    kernel_us = sum(us for _, us, _ in table)
    print(f"batch 1: graph replay {replay * 1e3:.3f} ms, step {step * 1e3:.3f} ms, "
          f"kernels {kernel_us / 1e3:.3f} ms per step, gaps {replay * 1e3 - kernel_us / 1e3:.3f} ms")
    for name, us, n in table[:30]:
        print(f"{us:9.1f} us {n:6.1f}x  {name[:110]}")
    return {"replay_ms": replay * 1e3, "step_ms": step * 1e3, "kernel_ms": kernel_us / 1e3,
            "kernels": [{"name": n, "us_per_step": us, "launches_per_step": c} for n, us, c in table]}


def graph_time(call, copies: list[torch.Tensor], x: torch.Tensor) -> float:
    """Seconds per call of `call(x, w)`, replayed over `copies` in one CUDA graph (median of 10 replays)."""
    return replayed_seconds([partial(call, x, w) for w in copies])


def kernels_of(call, x: torch.Tensor, w: torch.Tensor) -> list[str]:
    call(x, w)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        call(x, w)
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def linear_default(x, w):
    return F.linear(x, w)


def linear_mv(x, w):
    return torch.mv(w, x[0])[None]


def linear_no_reduced(x, w):
    flag = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        return F.linear(x, w)
    finally:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = flag


def linear_on(library: str):
    """F.linear with torch's preferred BLAS library set to `library` ("cublas" or "cublaslt") for the call:
    the two may pick different kernels (e.g. one without the split-K reduce o_proj and down pay)."""

    def call(x, w):
        previous = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library(library)
        try:
            return F.linear(x, w)
        finally:
            torch.backends.cuda.preferred_blas_library(previous)

    return call


PATHS = {"F.linear": linear_default, "torch.mv": linear_mv, "F.linear no bf16 reduced": linear_no_reduced,
         "F.linear cublas": linear_on("cublas"), "F.linear cublaslt": linear_on("cublaslt")}


def linear_paths(bandwidth: float) -> dict:
    results = {}
    for op, (n, k) in SHAPES.items():
        nbytes = n * k * 2
        copies = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
                  for _ in range(max(2, -(-L2_MARGIN_BYTES // nbytes)))]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        reference = F.linear(x.float(), copies[0].float())
        row = {}
        for label, call in PATHS.items():
            error = ((call(x, copies[0]).float() - reference).abs().max() / reference.abs().max()).item()
            seconds = graph_time(call, copies, x)
            row[label] = {"us": seconds * 1e6, "bytes_per_s": nbytes / seconds, "vs_copy": nbytes / seconds / bandwidth,
                          "rel_error": error, "kernels": kernels_of(call, x, copies[0])}
            print(f"{op:8s} {label:26s} {seconds * 1e6:8.2f} us  {nbytes / seconds / 1e9:6.0f} GB/s "
                  f"({nbytes / seconds / bandwidth:.2f} x copy)  err {error:.1e}  {row[label]['kernels']}")
        results[op] = row
        del copies
        torch.cuda.empty_cache()
    return results


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    bandwidth = measure_copy_bandwidth(torch.device("cuda"))
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)")
    report = {"card": torch.cuda.get_device_name(), "copy_bandwidth": bandwidth}
    report["linears"] = linear_paths(bandwidth)
    (OUT / "b1_breakdown.json").write_text(json.dumps(report, indent=1))
    report["engine"] = engine_breakdown()
    (OUT / "b1_breakdown.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
