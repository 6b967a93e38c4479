"""The sweep's HBM-bandwidth floor and run metadata (`dynaspec bench`).

The HBM-bandwidth floor (CUDA only) is the time a decode step needs just to read its bytes once:
(weight bytes + batch x mean context x KV bytes per token) / measured device-to-device copy bandwidth
(read + write bytes of a 1 GiB copy), the roofline argument of Williams et al. 2009 applied to decoding.

The metadata records what was measured, where and how; its `caveats` (random weights, replayed acceptance)
reach every output.
"""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

from dynaspec.bench.sweep_settings import Line, SweepSettings
from dynaspec.spec.config import AUTO_SCHEDULE

COPY_BYTES = 1 << 30


def _cuda_index(device: torch.device) -> int:
    """The CUDA ordinal of `device` ("cuda" without an index means the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


# ------------------------------------------------------------------------------------------ floor
def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (tied weights counted once): what one decode step must read."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_token(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """K and V bytes one token occupies across all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * int(model.num_layers) * int(model.num_kv_heads) * int(model.head_dim) * element


def measure_copy_bandwidth(device: torch.device, nbytes: int = COPY_BYTES, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting read + write bytes (median of `iters` copies)."""
    if device.type != "cuda":
        raise ValueError(f"copy bandwidth is measured on a CUDA device, got {device}")
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    times.sort()
    return 2 * nbytes / times[len(times) // 2]


def floor_points(
    weight_nbytes: int, kv_nbytes_per_token: int, batch_sizes: Sequence[int], mean_context: float, bandwidth: float
) -> list[dict[str, float]]:
    """Per batch: the step time to read weights + KV once at `bandwidth`, and the tokens/s that gives
    at one token per request per step (the no-spec decode ceiling)."""
    out = []
    for batch in batch_sizes:
        step = (weight_nbytes + batch * mean_context * kv_nbytes_per_token) / bandwidth
        out.append({"batch_size": batch, "step_time_s": step, "tokens_per_s": batch / step})
    return out


def _floor(engine, settings: SweepSettings, batches: list[int], metadata: dict[str, Any], prompts=None):
    """The HBM floor of a step, per GPU: with tensor parallelism rank 0's shard of the weights and KV heads."""
    model = engine.loaded.model
    metadata["weight_bytes"] = weight_bytes(model)
    metadata["kv_bytes_per_token"] = kv_bytes_per_token(model, engine.dtype)
    mean_prompt = prompts.mean_len(max(batches)) if prompts is not None else settings.prompt_len
    mean_context = mean_prompt + settings.gen_len / 2
    metadata["floor_mean_context"] = mean_context
    if engine.device.type != "cuda":
        metadata["copy_bandwidth_bytes_per_s"] = None
        return None
    bandwidth = measure_copy_bandwidth(engine.device)
    metadata["copy_bandwidth_bytes_per_s"] = bandwidth
    return floor_points(metadata["weight_bytes"], metadata["kv_bytes_per_token"], batches, mean_context, bandwidth)


# ------------------------------------------------------------------------------------------ metadata
def _metadata(settings: SweepSettings, spec, engine, profile, lines: list[Line], prompts=None) -> dict[str, Any]:
    device = engine.device
    draft_model = getattr(spec, "speculative_model", None) if spec is not None else None
    meta = {
        "model": settings.model,
        "model_name": engine.loaded.name,
        "is_random": bool(engine.loaded.is_random),
        "drafter": None if spec is None else spec.decoding_type,
        "draft_model": draft_model,
        "draft_is_random": bool(draft_model and str(draft_model).startswith("random:")),
        "acceptance_replay": profile is not None,
        "replay_profile": profile,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(_cuda_index(device)) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(engine.dtype).removeprefix("torch."),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": settings.command_line or " ".join(sys.argv),
        "prompt_len": settings.prompt_len if prompts is None else None,
        "workload": None if prompts is None else prompts.describe(),
        "gen_len": settings.gen_len,
        "batch_sizes": sorted(settings.batch_sizes),
        "lines": [line.name for line in lines],
        "draft_len_schedule": None if spec is None or spec.draft_len_schedule is None
        else spec.draft_len_schedule if spec.draft_len_schedule == AUTO_SCHEDULE
        else {str(k): v for k, v in spec.draft_len_schedule.items()},
        "seed": settings.seed,
        "cuda_graphs": device.type == "cuda" and not settings.enforce_eager,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "torch_version": torch.__version__,
        "timing": "decode phase only: steps after every request has its first token; "
        "perf_counter from each step() call to the next, CUDA synchronized once at the end of each batch",
    }
    meta["caveats"] = caveats(meta)
    return meta


def caveats(meta: dict[str, Any]) -> list[str]:
    """Warnings every output (titles, captions, JSON) carries: random weights, replayed acceptance."""
    out = []
    if meta.get("is_random"):
        out.append(f"RANDOM WEIGHTS ({meta.get('model')}): real shapes, meaningless output")
    if meta.get("draft_is_random"):
        out.append(f"RANDOM-WEIGHT DRAFT MODEL ({meta.get('draft_model')})")
    if meta.get("acceptance_replay"):
        profile = meta.get("replay_profile") or {}
        out.append(f"ACCEPTANCE REPLAYED from profile '{profile.get('name')}', not the model's own")
    return out
