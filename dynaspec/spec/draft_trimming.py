"""Trimming drafts by the drafter's confidence: `draft_len_policy: adaptive`'s step between drafting and
verifying, for drafters with a distribution (the draft model, an EAGLE head).

Trimming by the drafter's confidence (drafters with a distribution: the draft model, an EAGLE head;
vLLM's #47808 / #52228): once the k_i are drafted, each drafted position's survival is recomputed from the
drafter's probability of that draft, calibrated online per position (spec/confidence_calibration.py, smoothed
toward the request's own estimate), and the same budget search over the drafted positions keeps the best
prefix of each request's draft (never more than drafted, so lossless as any shorter draft). Steps that
probe or explore are not trimmed (they verify on purpose what the estimates doubt). Once drafted, a
position's drafting is sunk: trimming prices only verifying (the probed T less the drafter's share,
StepCostModel.verify_cost), and runs only at batches where verifying every position costs at least
`trim_min_saving` (a quarter) of a plain step more than verifying none, and of at least `trim_min_batch`
requests (2): a small batch's verify is a weight read whatever its few rows, so trimming saves next to
nothing there, while the host's read of the confidences between drafting and verifying, and the chained
steps it rules out (engine/chained_step.py), cost ~0.5 ms a step (H100, Qwen2.5-Coder-1.5B, 2026-12-06:
adaptive's k = 4 steps 3.6 ms against static k = 4's 3.1 ms). Priced with the drafting, trimming counted the
head's draft steps (most of the probed T's ~0.25 ms a k at batch 4 on that H100) as the price of verifying,
and cut positions that verify nearly for free. Trimming prices the verify alone: the step's host work (the
drafting, the confidence read, the commit) is paid whatever the trim keeps; priced with the learned host
overhead, verifying nothing looked ~3 ms cheaper than verifying anything at batch 64 and every draft was cut
while the step still paid for them (H100, 2026-12-06: 14 steps of 6.3 ms that verified nothing, against static
k = 3's 4.3 ms). And trimming stops at a batch (and below) once `trim_verdict_steps` trimmed steps there took,
in the median, at least the price of the untrimmed step (DraftTrimming.judge: StepOutcome.planned holds the k_i
before the trim); their times price the trim, not the host-overhead fit. It stops there too once
`trim_verdict_steps` trims in a row at a batch kept every draft with the calibration informed (as many position-0
samples as its bins' prior weights: before that a trim keeps what the estimates planned, and says nothing): such
steps paid the confidence read and lost their chaining for nothing, and the time verdict needs a price to compare
with, which a host-overhead fit that overprices the untrimmed step never gives (H100, 2026-12-07 08:50 UTC, the
draft-model sweep at batch 64 from a cold engine: nine unchained k = 4 steps of 20 ms kept every draft, the fit
priced them at 27 ms, and trimming stayed on; static k = 3 chained ran 14.5 ms steps).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from statistics import median

from dynaspec.spec.adaptive_allocation import Pricing, plan_allocation, survival
from dynaspec.spec.confidence_calibration import ConfidenceCalibration
from dynaspec.spec.planner_settings import PlannerSettings


class DraftTrimming:
    """The calibration, the trim of one step's drafts, and the verdict on whether trimming pays per batch."""

    def __init__(self, max_draft_len: int, settings: Callable[[], PlannerSettings]) -> None:
        """settings: the owner's (trim_min_batch, trim_verdict_steps), read when asked."""
        self.calibration = ConfidenceCalibration(max_draft_len)  # P(accepted | the drafter's probability)
        self.settings = settings
        self.trimmed_positions = 0  # drafted positions `kept` left unverified
        self.no_trim_up_to = 0  # trimming measured not to pay at this batch: none up to it (judge)
        self._excess: dict[int, deque[float]] = {}  # batch -> trimmed steps' seconds over the untrimmed price
        self._kept_all: dict[int, int] = {}  # batch -> trims in a row there that kept every draft

    def applies_at(self, batch: int, verify_is_cheap: Callable[[int], bool]) -> bool:
        """From `trim_min_batch` requests on, below no verdict against it, where verifying every position is
        not nearly free (verify_is_cheap: the owner's probed test, module docstring)."""
        if batch <= self.no_trim_up_to or batch < self.settings().trim_min_batch:
            return False
        return not verify_is_cheap(batch)

    def kept(self, alphas: Sequence[Sequence[float]], limits: Sequence[int], confidence: Sequence[Sequence[float]],
             verify_seconds: Pricing) -> list[int]:
        """Per request, the prefix of its draft worth verifying: survival from each drafted position's
        calibrated probability (alphas: the request's acceptance estimate, the calibration's prior), the
        budget search over verify_seconds(positions, longest) (the verify alone), never more than limits[i]."""
        survivals = [
            survival([self.calibration.probability(j, p, own[min(j, len(own) - 1)]) for j, p in enumerate(drafted[:limit])])
            for own, limit, drafted in zip(alphas, limits, confidence)
        ]
        kept = [min(k, limit) for k, limit in zip(plan_allocation(survivals, verify_seconds).draft_lens, limits)]
        self.trimmed_positions += sum(limits) - sum(kept)
        self._count_kept_all(len(limits), sum(kept) == sum(limits))
        return kept

    def _count_kept_all(self, batch: int, kept_all: bool) -> None:
        """`trim_verdict_steps` trims in a row at a batch that kept every draft, the calibration informed, stop
        trimming there and below (module docstring)."""
        if not kept_all:
            self._kept_all.pop(batch, None)
            return
        calibration = self.calibration
        if calibration.samples(0) < calibration.bins * calibration.prior_weight:
            return
        self._kept_all[batch] = self._kept_all.get(batch, 0) + 1
        if self._kept_all[batch] >= self.settings().trim_verdict_steps:
            self.no_trim_up_to = max(self.no_trim_up_to, batch)
            self._kept_all.clear()

    def observe(self, confidence: Sequence[Sequence[float]], drafted: Sequence[int], accepted: Sequence[int]) -> None:
        """A verified step: each request's drafted probabilities and how many of its drafts were accepted."""
        for drafted_p, n, a in zip(confidence, drafted, accepted):
            self.calibration.observe(drafted_p[:n], a)

    def judge(self, batch: int, excess_seconds: float) -> bool:
        """A trimmed step took excess_seconds over the price of the step untrimmed (its planned positions all
        verified: probe + host overhead, which learns from untrimmed steps only). Once the median of the last
        `trim_verdict_steps` or more is not below 0, trimming stops at this batch and every smaller one (a
        smaller batch's verify saves less); True then (the owner replans)."""
        steps = self.settings().trim_verdict_steps
        excess = self._excess.setdefault(batch, deque(maxlen=2 * steps))
        excess.append(excess_seconds)
        if len(excess) >= steps and median(excess) >= 0.0:
            self.no_trim_up_to = max(self.no_trim_up_to, batch)
            self._excess.clear()
            return True
        return False
