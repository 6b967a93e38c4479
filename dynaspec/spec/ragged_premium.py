"""What a ragged step costs beyond a uniform one with as many draft positions, learned online.

A ragged step (its requests verify different k_i) runs unlike a uniform one: a chain drafter drafts to the
longest k_i for every request, the drafts go to the host before the verify, the step cannot chain
(engine/chained_step.py) and it replays a ragged graph. On an H100 (Qwen2.5-Coder-1.5B and its EAGLE head,
2026-12-06) the adaptive policy's ragged steps of 192 positions at batch 64 took 5.1-6.1 ms against 3.4-4.8 ms
for its steps of 192 positions at k = 3 for every request, and at batch 16 (k <= 2) 3.16 against 2.80 ms:
~20-25 us a request both times, which the host-overhead fit (spec/step_overhead.py, keyed by batch and mean
draft length) cannot tell from a uniform step's. The adaptive policy prices its ragged allocations with this
premium and keeps the best uniform allocation where that wins (spec/adaptive.py).

Learned per request: the median over recent ragged steps of (measured - probed - the fit's prediction for a
uniform step of the same batch and mean k) / batch, recomputed against the fit in force when either changes;
a step's premium is that times its batch. 0 before any ragged step (optimistic: the first one corrects it),
and never negative (a fit that overprices a uniform step overprices the ragged one alike).
"""

from __future__ import annotations

from collections import deque
from statistics import median

from dynaspec.spec.step_overhead import StepOverheadModel


class RaggedPremium:
    """Samples of ragged steps' (batch, mean k, residual over the probe); the premium per request."""

    def __init__(self, max_samples: int = 64) -> None:
        self._samples: deque[tuple[int, float, float]] = deque(maxlen=max_samples)
        self._cached: tuple[tuple[float, ...], int, float] | None = None  # (fit coefficients, samples, per request)

    def __len__(self) -> int:
        return len(self._samples)

    def observe(self, batch: int, mean_k: float, residual_seconds: float) -> None:
        """A ragged step of `batch` requests and `mean_k` positions a request took `residual_seconds` more
        than its probed price."""
        self._samples.append((batch, mean_k, residual_seconds))

    def seconds(self, batch: int, overhead: StepOverheadModel) -> float:
        """The premium of a ragged step of `batch` requests over a uniform one, against `overhead`'s fit."""
        if not self._samples:
            return 0.0
        key = overhead.coefficients
        if self._cached is None or self._cached[0] != key or self._cached[1] != len(self._samples):
            per_request = median((residual - overhead.predict(b, k)) / b for b, k, residual in self._samples)
            self._cached = (key, len(self._samples), max(0.0, per_request))
        return self._cached[2] * batch
