"""Measures the step-cost model T(batch, k) on the current device, for the goodput planner.

On CUDA it times replays of the captured graphs with CUDA events: the target verify graph of (bucket, k),
plus what the drafter says drafting costs (Drafter.draft_seconds: a draft model times ONE replay of its
whole-chain graph, runtime/chain_graphs.py, or k single-token steps); elsewhere it times eager forwards
of the same shapes. Inputs are padding rows in the scratch block, so probing never touches a request's KV; the
cost of attention over long contexts is therefore not included (it is small next to the weights at the
batch sizes where speculation pays, and `dynaspec tune` measures real steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch

from dynaspec.runtime.chain_graphs import DraftChainGraphs
from dynaspec.runtime.model_runner import ModelRunner
from dynaspec.runtime.cost_model import StepCostModel


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats
    begin = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - begin) / repeats


def forward_seconds(runner: ModelRunner, batch: int, k: int, repeats: int) -> float:
    """Seconds of one (batch, 1 + k)-position forward of `runner`'s model on idle inputs (those left by
    another pair would index outside the block tables): a tensor-parallel runner's step includes its
    command to the workers and the collectives."""
    return _time(runner.idle_step(batch, k), runner.device, repeats)


def chain_seconds(chain: DraftChainGraphs, batch: int, k: int, repeats: int) -> float:
    """Seconds of one replay of the (batch, k) whole-chain draft graph (eager mode: its forward), on idle
    inputs that touch no request's KV."""
    return _time(chain.idle_replay(batch, k), chain.device, repeats)


def measure_step_costs(
    target: ModelRunner,
    pairs: Iterable[tuple[int, int]],
    draft_seconds: Callable[[int, int, int], float] = lambda batch, k, repeats: 0.0,
    repeats: int = 5,
) -> StepCostModel:
    """T(batch, k) = the target's (batch, 1 + k) verify forward + draft_seconds(batch, k, repeats), the
    drafter's own measurement of drafting k tokens for `batch` requests (Drafter.draft_seconds); the drafter's
    share kept apart in the model's `drafting`."""
    model = StepCostModel(device=str(target.device))
    model.drafting = StepCostModel(device=str(target.device))
    for batch, k in sorted(set(pairs)):
        seconds = forward_seconds(target, batch, k, repeats)
        drafting = draft_seconds(batch, k, repeats)
        model.add(batch, k, seconds + drafting)
        model.drafting.add(batch, k, drafting)
    return model
