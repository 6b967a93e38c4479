"""The goodput planner's neighbour probe (spec/planner_rules.probe_candidate) for the adaptive policy's uniform
allocations: a uniform k next to the one in force runs until the host-overhead fit has seen it.

The adaptive policy prices a step at the start-up probe plus its host-overhead fit (spec/step_overhead.py). Host work
grows with the drafted positions (the n-gram drafter's indexing, verification, the commit: on an H200, 2026-12-07,
random Llama-3.1-8B at batch 64, steps of k = 1..4 ran 2.30, 2.68, 3.12 and 3.40 ms over their probe, ~6 us a drafted
position), but a fit whose speculative cells all share one mean k cannot tell that from work per request, so it
prices every k at the host work of the k it ran, and at a near tie the k in force wins: in the same run (pure
code-edit replay at 64) adaptive ran uniform k = 4 throughout in 12.3 ms steps, where the goodput line settled on
k = 3 in 10.4 ms steps and ran 1.04x its tokens a second; adaptive's fit, k = 4 cells only, priced k = 3 0.37 ms too
high. The goodput planner runs an unvisited neighbour predicted within `probe_margin` of the k in force until its
(bucket, k) cell holds `min_observed_steps` real steps; so does this, for a uniform allocation at k >= 1: the uniform
allocation at k - 1 or k + 1 (1..max_draft_len), with fewer than min_observed_steps uniform steps at the batch bucket
its step runs at, until that bucket or a larger one has them at two k's: a second k at a batch is what the fit
lacked (refitted on that run's cells plus a k = 3 cell at 64 alone, it put 5.7 us on each drafted token and priced
k = 3 3.11 ms over the probe, as measured), and a smaller batch's host work per position is smaller, so a closed
batch's tail, which passes through every bucket below it, probes none of them.

Only where the start-up probe timed no drafting (a drafter that drafts on the host, n-gram; or costs from a tune
file): a chain drafter's drafting is in the probe's price, and its greedy steps chain (engine/chained_step.py), the
next launched before the host verifies this one, so their host work per position hides behind the GPU (the same H200
run, the draft model at 64: k = 3 and k = 4 steps 2.2 and 1.3 ms over their probe, no per-position term), and the
probe would only cost its steps (replayed on an H100's draft-model prices: 0.96-0.98x the best static line at 4-64
with it, 0.97-1.00x without)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec import planner_rules as rules
from dynaspec.spec.planner_settings import PlannerSettings


class NeighbourProbe:
    """Real uniform steps per (batch bucket, k), and the probe rule over them."""

    def __init__(self, max_draft_len: int, settings: Callable[[], PlannerSettings],
                 bucket: Callable[[int, int], int] = lambda batch, k: batch,
                 drafting: StepCostModel | None = None) -> None:
        """settings: the owner's, read when asked (tests replace them in place); bucket(batch, k): the batch bucket
        a uniform step of k runs at (its CUDA graph's); drafting: the start-up probe's drafting share
        (StepCostModel.drafting; None: not measured apart)."""
        self.max_draft_len = max_draft_len
        self.settings = settings
        self.bucket = bucket
        self.drafting = drafting
        self._steps: Counter[tuple[int, int]] = Counter()  # (bucket, k) -> real uniform steps

    def observed(self, batch: int, k: int) -> None:
        """A real uniform step of k > 0 at this batch, timed or not."""
        self._steps[(self.bucket(batch, k), k)] += 1

    def unvisited(self, batch: int, k: int) -> bool:
        """Whether k's bucket at this batch has fewer than min_observed_steps real uniform steps at k."""
        return self._steps[(self.bucket(batch, k), k)] < self.settings().min_observed_steps

    def candidate(self, batch: int, held: int, goodputs: Callable[[], Mapping[int, float]]) -> int | None:
        """The neighbour of the uniform k in force (`held`; 0: none) to run at this batch (None: none). goodputs():
        predicted goodput of every uniform k, asked only where a neighbour may run (it prices a uniform allocation
        per k)."""
        settings = self.settings()
        if held == 0 or settings.probe_margin is None:
            return None
        if self.drafting is not None and self.drafting.cost(self.bucket(batch, held), held) > 0.0:
            return None  # the probe timed the drafting: a chain drafter, whose steps chain (module docstring)
        neighbours = [k for k in (held - 1, held + 1) if 1 <= k <= self.max_draft_len]
        if not neighbours or self._two_ks_seen(self.bucket(batch, held)):
            return None
        return rules.probe_candidate(held, goodputs(), [], lambda k: self._steps[(self.bucket(batch, k), k)],
                                     settings.probe_margin, settings.min_observed_steps)

    def _two_ks_seen(self, bucket: int) -> bool:
        """Whether this bucket or a larger one has min_observed_steps uniform steps at two k's: the fit can price
        the positions there, and host work per position is smaller at a smaller batch."""
        need = self.settings().min_observed_steps
        ks: dict[int, set[int]] = {}
        for (seen_at, k), steps in self._steps.items():
            if seen_at >= bucket and steps >= need:
                ks.setdefault(seen_at, set()).add(k)
        return any(len(seen) >= 2 for seen in ks.values())
