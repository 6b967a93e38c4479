"""The start-up probe's price of a decode step with per-request draft lengths, where the step runs (issue 20).

The probe (runtime/cost_probe.py) times uniform steps: T(bucket, k) is the target's verify of bucket * (1 + k)
tokens in the CUDA graph of (bucket, k) plus the drafter's drafting of k tokens for every request, kept apart in
the cost model's `drafting` share. A step of `batch` requests verifying B draft positions in all, the longest
request's k_i = `longest`, runs:

- uniform (B = batch * longest, every k_i equal; a batch of one always): in the uniform graph of
  (padded batch, longest), at that graph's probed T;
- ragged: in the ragged graph `ragged_step(batch, batch + B)` names (bucket, padded tokens), or eagerly at the
  batch itself; its verify priced by total tokens between the uniform steps around them (the verify share:
  T less drafting), plus drafting to the longest k_i at that bucket: a chain drafter (a draft model, an EAGLE
  head) drafts that far for every request, and an n-gram lookup's share is ~0 (vLLM's adaptive verification,
  PR #47808, prices the verify by total tokens for the same reason).

Before 2026-12-07 every step of B positions was priced at the ragged graph holding batch + B tokens, drafting
included in the interpolation. At batch 1 no ragged graph exists (one request is never ragged), so a k = 4 step
was priced at the (2, 5) graph, as two requests verifying 1.5 positions each: on an H100 (random Llama-3.2-1B
drafting for random Llama-3.1-8B) 7.6 ms against the probe's 10.7 ms for (1, 4), which real steps ran at
(10.9 ms). The adaptive policy's host-overhead fit took the 3.3 ms difference for host work of every
speculative step and carried it to batch 4, where it held k = 0 for 19 steps (docs/lab/adaptive_runs.md).
"""

from __future__ import annotations

from collections.abc import Callable

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.adaptive_allocation import step_seconds_by_tokens
from dynaspec.spec.planner import PaddedBatchFn

# Prices kept per (batch, positions, longest, drafted): a plan at batch 256 asks for up to ~1024 of them.
MAX_CACHED_PRICES = 1 << 16

RaggedStep = Callable[[int, int], "tuple[int, int] | None"]  # (batch, tokens) -> a ragged graph's (bucket, tokens)


class ProbedPrices:
    """Probed step prices by (batch, positions, longest k_i), cached (module docstring).

    cost_model: T(batch, k), k in 0..max_draft_len, with its drafting share where the probe timed it apart;
    padded_batch: None where steps run at their own batch (eager); ragged_step: None where no ragged graphs
    were captured (eager, or a policy with one k a step)."""

    def __init__(self, cost_model: StepCostModel, max_draft_len: int, padded_batch: PaddedBatchFn | None = None,
                 ragged_step: RaggedStep | None = None) -> None:
        self.cost_model = cost_model
        self.max_draft_len = max_draft_len
        self.padded_batch = padded_batch
        self.ragged_step = ragged_step
        self._cache: dict[tuple[int, int, int, bool], tuple[int, float]] = {}

    def price(self, batch: int, positions: int, longest: int | None = None, drafted: bool = False) -> tuple[int, float]:
        """(the batch bucket the step runs at, its probed seconds) for `batch` requests verifying `positions`
        draft positions in all, at most `longest` a request (None: as evenly spread as they can be, the
        largest k_i = ceil(positions / batch)); drafted: the drafts exist already, their drafting is not
        priced (a trim of drafted positions)."""
        if longest is None or positions == 0:
            longest = -(-positions // batch)
        key = (batch, positions, longest, drafted)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= MAX_CACHED_PRICES:  # batches long gone (batch x positions grows fast)
                self._cache.clear()
            cached = self._cache[key] = self._probed(batch, positions, min(longest, self.max_draft_len), drafted)
        return cached

    def _probed(self, batch: int, positions: int, longest: int, drafted: bool) -> tuple[int, float]:
        model = self.cost_model
        if positions == batch * longest:  # plain or uniform: the uniform graph of (bucket, longest)
            bucket = batch if self.padded_batch is None else self.padded_batch(batch, longest)
            cost = model.verify_cost if drafted else model.cost
            return bucket, step_seconds_by_tokens(cost, batch, positions, self.max_draft_len, self.padded_batch)
        ragged = None if self.ragged_step is None else self.ragged_step(batch, batch + positions)
        if ragged is not None:  # the ragged graph's bucket, its verify interpolated at its padded total
            bucket, tokens = ragged
            seconds = step_seconds_by_tokens(model.verify_cost, bucket, tokens - bucket, self.max_draft_len)
        else:
            bucket = batch if self.padded_batch is None else self.padded_batch(batch, longest)
            seconds = step_seconds_by_tokens(model.verify_cost, batch, positions, self.max_draft_len, self.padded_batch)
        if not drafted and model.drafting is not None:  # a chain drafts to the longest k_i for every request
            seconds += model.drafting.cost(bucket, longest)
        return bucket, seconds
