"""The start-up probe's price of a step of `batch` requests verifying `positions` draft positions in all (issue 20).

Where the engine captured ragged verify graphs (CUDA), a step runs in the graph of (batch bucket, padded tokens)
that `ragged_step` names and is priced as the uniform steps of that bucket interpolated at the padded total;
elsewhere (eager, or no ragged graph holds it) at the uniform steps around batch + positions tokens
(spec/adaptive_allocation.step_seconds_by_tokens). Prices are cached per (batch, positions, drafted): a plan at
batch 256 asks for up to 1024 of them, every step.
"""

from __future__ import annotations

from collections.abc import Callable

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.adaptive_allocation import step_seconds_by_tokens
from dynaspec.spec.planner import PaddedBatchFn

# Probed prices kept per (batch, positions): a batch of b requests asks for b * max_draft_len + 1 of them.
MAX_CACHED_PRICES = 1 << 16


class ProbedPrices:
    """(the batch bucket a step runs at, its probed seconds) by (batch, positions), cached.

    cost_model: T(batch, k) of uniform steps; max_draft_len: the longest k it was probed at; padded_batch:
    (batch, k) -> the batch a step runs at (None: its own, eager); ragged_step: (batch, tokens) -> the ragged
    graph's (bucket, padded tokens) or None (PolicyContext.ragged_step)."""

    def __init__(self, cost_model: StepCostModel, max_draft_len: int, padded_batch: PaddedBatchFn | None = None,
                 ragged_step: Callable[[int, int], tuple[int, int] | None] | None = None) -> None:
        self.cost_model = cost_model
        self.max_draft_len = max_draft_len
        self.padded_batch = padded_batch
        self.ragged_step = ragged_step
        self._cache: dict[tuple[int, int, bool], tuple[int, float]] = {}

    def __call__(self, batch: int, positions: int, drafted: bool = False) -> tuple[int, float]:
        """(bucket, seconds) of the step; drafted: the positions exist already, the drafting is not priced
        (the verify alone, for trimming)."""
        key = (batch, positions, drafted)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= MAX_CACHED_PRICES:  # batches long gone (batch x positions grows fast)
                self._cache.clear()
            cost = self.cost_model.verify_cost if drafted else self.cost_model.cost
            cached = self._cache[key] = self._probed(batch, positions, cost)
        return cached

    def _probed(self, batch: int, positions: int, cost: Callable[[int, int], float]) -> tuple[int, float]:
        ragged = None if self.ragged_step is None or positions == 0 else self.ragged_step(batch, batch + positions)
        if ragged is not None:  # the ragged graph's bucket, interpolated at its padded total
            bucket, tokens = ragged
            return bucket, step_seconds_by_tokens(cost, bucket, tokens - bucket, self.max_draft_len)
        k_high = -(-positions // batch)
        bucket = batch if self.padded_batch is None else self.padded_batch(batch, min(k_high, self.max_draft_len))
        seconds = step_seconds_by_tokens(cost, batch, positions, self.max_draft_len, self.padded_batch)
        return bucket, seconds
