"""Batch-1 (and batch-4) decode of random:llama-3.1-8b with each choice of decode kernels, side by side (issue 5).

One engine; for each variant (models/decode_kernels.py: PDL off / on, which projections take the Triton
GEMV at one row) the model's kernels are switched, the graphs re-captured, then measured: graph replay
of the (1, 0) and (4, 0) pairs (idle inputs) and full engine steps of one request at a context of ~130-400.
The variants run in two interleaved passes (A B C ... A B C ...) so that drift on the shared host shows.
Also the greedy tokens of each variant's first 32 steps (random weights: near-ties may differ when the
GEMV sums in another order than cuBLAS) and the floor (weight bytes / copy bandwidth, as `dynaspec bench`).

Prints a table; writes $OUT/decode_kernels_ab.json. Usage: python3 scripts/gpu_decode_kernels_ab.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynaspec.bench.sweep import measure_copy_bandwidth, weight_bytes  # noqa: E402
from dynaspec.config import EngineConfig  # noqa: E402
from dynaspec.runtime.cost_probe import forward_seconds  # noqa: E402
from dynaspec.engine.engine import LLMEngine  # noqa: E402
from dynaspec.models.decode_kernels import DecodeKernels  # noqa: E402
from dynaspec.sampling_params import SamplingParams  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
ALL = frozenset({"qkv", "o_proj", "gate_up", "down"})
VARIANTS = {
    "off (cuBLAS, no PDL)": DecodeKernels(),
    "PDL, cuBLAS GEMMs": DecodeKernels(dependent_launch=True),
    "PDL + GEMV all": DecodeKernels(dependent_launch=True, gemv=ALL),
    "PDL + GEMV but down": DecodeKernels(dependent_launch=True, gemv=ALL - {"down"}),
    "PDL + GEMV qkv, o_proj": DecodeKernels(dependent_launch=True, gemv=frozenset({"qkv", "o_proj"})),
}


def measure(engine: LLMEngine, kernels: DecodeKernels, steps: int = 60) -> dict:
    runner = engine.runner
    engine.loaded.model.set_decode_kernels(kernels)
    runner.capture_graphs(engine.graph_pairs(), engine.max_blocks_per_seq, use_graphs=engine.use_graphs)
    row = {f"replay_b{b}_ms": statistics.median(forward_seconds(runner, b, 0, repeats=40) for _ in range(3)) * 1e3
           for b in (1, 4)}
    engine.add_request("r", [1] * 128, SamplingParams(temperature=0, max_tokens=40 + steps, ignore_eos=True))
    tokens = []
    for _ in range(36):
        for out in engine.step():
            tokens = out.token_ids
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        for out in engine.step():
            tokens = out.token_ids
    torch.cuda.synchronize()
    row["step_b1_ms"] = (time.perf_counter() - start) / steps * 1e3
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens = out.token_ids
    row["tokens"] = list(tokens[:32])
    return row


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    engine = LLMEngine(EngineConfig(model="random:llama-3.1-8b", max_num_seqs=4, max_model_len=1024,
                                    num_kv_blocks=256))
    bandwidth = measure_copy_bandwidth(engine.device)
    floor_ms = weight_bytes(engine.loaded.model) / bandwidth * 1e3
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e9:.0f} GB/s, floor {floor_ms:.3f} ms; "
          f"start-up kernels {engine.loaded.model.decode_kernels}")
    passes: list[dict[str, dict]] = []
    for p in range(2):
        rows = {}
        for name, kernels in VARIANTS.items():
            rows[name] = measure(engine, kernels)
            r = rows[name]
            print(f"pass {p}  {name:26s} replay b1 {r['replay_b1_ms']:.3f} ms  b4 {r['replay_b4_ms']:.3f} ms  "
                  f"step b1 {r['step_b1_ms']:.3f} ms  floor/step {floor_ms / r['step_b1_ms']:.3f}")
        passes.append(rows)
    base_tokens = passes[0]["off (cuBLAS, no PDL)"]["tokens"]
    print("\n| variant | replay b1 ms | replay b4 ms | step b1 ms | floor / step b1 | step vs off | greedy = off (32 tokens) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    summary = {}
    for name in VARIANTS:
        med = {key: statistics.mean(p[name][key] for p in passes) for key in ("replay_b1_ms", "replay_b4_ms", "step_b1_ms")}
        off = statistics.mean(p["off (cuBLAS, no PDL)"]["step_b1_ms"] for p in passes)
        same = all(p[name]["tokens"] == base_tokens for p in passes)
        summary[name] = {**med, "floor_over_step": floor_ms / med["step_b1_ms"], "same_tokens_as_off": same}
        print(f"| {name} | {med['replay_b1_ms']:.3f} | {med['replay_b4_ms']:.3f} | {med['step_b1_ms']:.3f} | "
              f"{floor_ms / med['step_b1_ms']:.3f} | {off / med['step_b1_ms']:.3f}x | {same} |")
    (OUT / "decode_kernels_ab.json").write_text(json.dumps({
        "card": torch.cuda.get_device_name(), "copy_bandwidth": bandwidth, "floor_ms": floor_ms,
        "passes": passes, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
