"""P(a draft is accepted | the drafter's probability of it, its position): what `draft_len_policy: adaptive`
trims drafted positions by, for drafters with a distribution (the draft model, an EAGLE head).

vLLM's adaptive verification (PR #47808 with DSpark's confidence head; #52228 with an estimate fitted online
for drafters without one; D-Cut) drafts first, scores each drafted position by its survival from the
drafter's per-position confidence and verifies the best prefix of each request under one budget. A draft
model's probability of its own token predicts whether the target agrees (EAGLE-2, Li et al. 2024, arXiv
2406.16858: a draft head's confidence approximates the acceptance rate well), but is not equal to it, so it
is calibrated online here: per draft position and confidence bin (`bins` equal bins of [0, 1]), accepted /
verified counts, halved when a cell passes `window` samples (recent steps weigh more), and smoothed toward a
prior (the request's own acceptance estimate at that position) with `prior_weight` pseudo-counts:

    p(position m, confidence c) = (accepted[m][bin(c)] + w * prior) / (verified[m][bin(c)] + w)

Conditional, as the acceptance estimator's alpha: position m is counted only when every draft before it was
accepted (a step that accepted a of d drafts verified positions 0..a, position a rejected when a < d).
"""

from __future__ import annotations

from collections.abc import Sequence


class ConfidenceCalibration:
    def __init__(self, max_draft_len: int, bins: int = 10, prior_weight: float = 8.0, window: float = 512.0) -> None:
        self.bins = bins
        self.prior_weight = prior_weight
        self.window = window
        self._accepted = [[0.0] * bins for _ in range(max_draft_len)]
        self._verified = [[0.0] * bins for _ in range(max_draft_len)]

    def _bin(self, confidence: float) -> int:
        return min(self.bins - 1, max(0, int(confidence * self.bins)))

    def observe(self, confidence: Sequence[float], accepted: int) -> None:
        """One request's verified draft: its drafts' probabilities (len = drafted) and the drafts accepted."""
        for position, value in enumerate(confidence[: len(self._verified)]):
            if position > accepted:
                break
            cell = self._bin(value)
            verified, hits = self._verified[position], self._accepted[position]
            verified[cell] += 1.0
            hits[cell] += 1.0 if position < accepted else 0.0
            if verified[cell] > self.window:
                verified[cell] /= 2.0
                hits[cell] /= 2.0

    def probability(self, position: int, confidence: float, prior: float) -> float:
        """P(accepted | drafted at `position` with this probability, every earlier draft accepted)."""
        if position >= len(self._verified):
            return prior
        cell = self._bin(confidence)
        weight = self.prior_weight
        return (self._accepted[position][cell] + weight * prior) / (self._verified[position][cell] + weight)

    def samples(self, position: int) -> float:
        """Verified positions counted at this position (all bins; after halving)."""
        return sum(self._verified[position]) if position < len(self._verified) else 0.0
