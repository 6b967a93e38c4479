"""Per-position acceptance estimates (global and per request) and the expected accepted length of k drafts.

Verification accepts a prefix of the draft (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding", arXiv 2211.17192), so what matters per draft position j (0-based) is the
CONDITIONAL acceptance alpha_j = P(position j accepted | positions 0..j-1 accepted). The expected number
of accepted drafts of a chain of k is then

    E[accepted | k] = sum_{j=1..k} prod_{i=0..j-1} alpha_i

which for a constant alpha is Leviathan et al.'s alpha (1 - alpha^k) / (1 - alpha) (their expected
tokens per step, (1 - alpha^(k+1)) / (1 - alpha), is this plus the one token the target always adds).
SmartSpec (Liu et al. 2024, arXiv 2406.14066) plans with the same quantity, estimated online.

What one request-step tells: with d drafted and a accepted, positions 0..a-1 were accepted and, when
a < d, position a was rejected; later positions are unobserved. When the step's k is passed and the
drafter proposed fewer than k tokens (d < k) that were all accepted, position d counts as rejected: the
slot was paid for (a uniform step verifies 1 + k positions) and produced no token, which is what an
n-gram drafter that finds no match costs.

Update rule, for an estimate v with weight w (pseudo-observations so far) at one position, and a step
that observed s accepted out of n trials there:

    r = max(n / (w + n), ema_rate);   v <- v + r * (s / n - v);   w <- w + n

i.e. a running mean while few observations exist (the warm-start profile counts as `prior_weight`
observations; with no profile the first step sets v), then an exponential moving average that moves
`ema_rate` of the way toward each new step's rate (memory ~ 1 / ema_rate steps). With one observation
per step, a prior_weight >= 1 / ema_rate - 1 is that plain EMA from the first step; a smaller one lets
early data count more; a step pooling many requests (n >> w) outweighs the profile at once. The global
estimate takes one update per step with the step's pooled counts; a request's own estimate one per step
it drafted in.

With `memory_trials` = M the global estimate's floor is per trial instead of per step: a step pooling n
trials moves it r = max(n / (w + n), 1 - (1 - 1/M)^n) of the way, as an EMA over single trials with
memory M would. A per-step memory of 20 steps makes the estimate rest on 20 trials at batch 1 and 5,000
at batch 256 (a rare acceptance then reads ~0 at batch 1); a memory in trials gives every batch size the
same evidence (the goodput planner's: PlannerSettings.estimate_memory_trials; docs/lab/planner_history.md).

Per-request blending: a request with n own observations at position j (capped at 1 / request_ema_rate,
an EMA's effective sample size) is estimated as (n * own_j + blend_count * global_j) / (n + blend_count),
so a new request follows the global estimate and a long one its own history. That is the posterior mean
of a beta-binomial model with blend_count as the prior's strength; with `learn_blend_count` it is learned
from how much finished requests' rates differ (spec/request_spread.py): small when workloads mix, large
(the global estimate) when requests are alike.

The prior mean of a request (what the blend shrinks towards, and a new request's whole estimate) is, with
`learn_blend_count`, the mean of finished requests' own estimates, one vote a request, not the global
estimate: the global estimate weighs requests by their trials, so requests that live longer count more, and in
speculation those are the ones that accept less (length-biased sampling, the inspection paradox). A closed
batch shows it plainly: its last steps hold only its slowest requests, so the next batch's requests start at
their rate. Replayed at an H100's prices (the draft-model sweep of 2026-12-07, code-edit and chat requests 50/50,
first-position rates 0.93 and 0.67), the global estimate read 0.68 when the batch of 64 started, every request
looked like a chat request, and the adaptive policy ran k = 0 to the end (0.95x the best static k); with the
mean of requests, 0.98-0.99x (scripts/lab/warm_sweep_replay.py, 3-8 seeds). Until `MIN_REQUESTS` requests
finished (and at positions fewer of them reached) the global estimate stands in.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from functools import lru_cache
from statistics import NormalDist
from typing import Any

from dynaspec.spec.acceptance_profile import load_acceptance_profile
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.request_spread import MIN_REQUESTS, RECENT_REQUESTS, RequestSpread


def expected_accepted_length(alphas: Sequence[float], k: int) -> float:
    """sum_{j=1..k} prod_{i<j} alphas[i]: expected accepted drafts of a chain of k (Leviathan et al. 2023);
    k <= len(alphas)."""
    total, survive = 0.0, 1.0
    for alpha in alphas[:k]:
        survive *= alpha
        total += survive
    return total


def _cumulative(alphas: Sequence[float]) -> list[float]:
    """[E[accepted | k] for k = 0..len(alphas)]."""
    out, total, survive = [0.0], 0.0, 1.0
    for alpha in alphas:
        survive *= alpha
        total += survive
        out.append(total)
    return out


# Steps of a request's outcomes kept before they are folded into its EMA even if nobody reads it.
MAX_UNFOLDED_STEPS = 64


class _PositionEMA:
    """Estimate and weight per draft position; see the module docstring for the update rule."""

    __slots__ = ("values", "weights", "rate", "memory_trials")

    def __init__(
        self, size: int, rate: float, prior: Sequence[float] | None, prior_weight: float,
        memory_trials: int | None = None,
    ) -> None:
        self.rate = rate
        self.memory_trials = memory_trials
        self.values: list[float | None] = [None] * size
        self.weights: list[float] = [0.0] * size
        if prior is not None:
            for j in range(size):
                # A profile shorter than max_draft_len: later positions repeat its last value.
                self.values[j] = prior[min(j, len(prior) - 1)]
                self.weights[j] = prior_weight

    def update(self, j: int, successes: int, trials: int) -> None:
        self.add(j, successes / trials, trials)

    def add(self, j: int, rate: float, trials: int = 1) -> None:
        """A rate observed over `trials` trials at position j (the update rule of the module docstring)."""
        value = self.values[j]
        if value is None:
            self.values[j] = rate
        else:
            if self.memory_trials is None:
                floor = self.rate
            else:  # as much weight per trial as an EMA over single trials with that memory
                floor = 1.0 - (1.0 - 1.0 / self.memory_trials) ** trials
            r = max(trials / (self.weights[j] + trials), floor)
            self.values[j] = value + r * (rate - value)
        self.weights[j] += trials


def _outcomes(drafted: int, accepted: int, k: int | None) -> list[bool]:
    """Observed outcome per position 0.. (True accepted) for one request-step (module docstring)."""
    outcomes = [True] * accepted
    if accepted < drafted or (k is not None and drafted < k):
        outcomes.append(False)
    return outcomes


class AcceptanceEstimator:
    """Online alpha_j per draft position, global and per request, warm-started from a profile."""

    def __init__(
        self,
        max_draft_len: int,
        profile: Sequence[float] | None = None,
        prior_weight: float = 20.0,
        ema_rate: float = 0.05,
        request_ema_rate: float = 0.2,
        blend_count: float = 4.0,
        initial_alpha: float = 0.5,
        memory_trials: int | None = None,
        learn_blend_count: bool = False,
        cold_start_trials: float = 0.0,
    ) -> None:
        """
        max_draft_len: positions estimated (0..max_draft_len-1).
        profile: warm-start alphas (e.g. load_acceptance_profile()); shorter lists repeat the last value.
        prior_weight: how many observations the profile counts for, per position (> 0).
        ema_rate: the global EMA's step rate once warm, in (0, 1].
        request_ema_rate: the same for each request's own estimate, in (0, 1].
        blend_count: own observations at which a request's estimate weighs as much as the global (> 0).
        initial_alpha: alpha of a position that neither the profile nor any observation covers; also a
            request-free default that lets the planner try speculation once before it has data.
        memory_trials: when set, the global EMA's memory is this many trials instead of 1 / ema_rate
            steps: a step of n trials moves it 1 - (1 - 1 / memory_trials)^n of the way (module docstring).
        learn_blend_count: re-estimate blend_count from the spread of finished requests' first-position
            rates (spec/request_spread.py); blend_count is the value until enough requests finished.
        cold_start_trials: without a profile, the global estimate starts at initial_alpha weighted as this
            many observations (0: the first step sets it; see PlannerSettings.cold_start_trials).
        """
        self.max_draft_len = max_draft_len
        self.prior_weight = float(prior_weight)
        self.ema_rate = float(ema_rate)
        self.request_ema_rate = float(request_ema_rate)
        self.blend_count = float(blend_count)
        self.initial_alpha = float(initial_alpha)
        self.profile = None if profile is None else [float(p) for p in profile]
        self.memory_trials = memory_trials
        self._spread = RequestSpread(self.blend_count) if learn_blend_count else None
        # the mean of finished requests' own estimates, one vote a request (module docstring)
        self._finished = _PositionEMA(max_draft_len, 1.0 / RECENT_REQUESTS, None, 0.0) if learn_blend_count else None
        self._prior: list[float] | None = None  # request_prior_alphas(), cached
        self._prior_curve: list[float] | None = None
        if self.profile is None and cold_start_trials > 0:
            self._global = _PositionEMA(max_draft_len, self.ema_rate, [self.initial_alpha], cold_start_trials,
                                        memory_trials)
        else:
            self._global = _PositionEMA(max_draft_len, self.ema_rate, self.profile, self.prior_weight, memory_trials)
        self._requests: dict[Hashable, _PositionEMA] = {}
        self._unfolded: dict[Hashable, list[list[bool]]] = {}  # request -> outcomes of steps not folded yet
        self._global_curve: list[float] | None = None
        self._request_curves: dict[Hashable, list[float]] = {}

    # ----------------------------------------------------------------- updates
    def update(self, request_id: Hashable | None, drafted: int, accepted: int, k: int | None = None) -> None:
        """One request's outcome as one step (request_id None: global estimate only)."""
        self.update_step(None if request_id is None else [request_id], [drafted], [accepted], k)

    def update_step(
        self,
        request_ids: Sequence[Hashable] | None,
        drafted: Sequence[int],
        accepted: Sequence[int],
        k: int | None = None,
    ) -> None:
        """One engine step: per decoding request its drafted and accepted counts (SpecStats.record's lists).

        request_ids None updates only the global estimate. k (the step's draft length), when given,
        makes a short all-accepted draft count as a rejection at its end (module docstring).
        """
        assert len(drafted) == len(accepted), "one drafted and one accepted count per request"
        per_request = [_outcomes(d, a, k) for d, a in zip(drafted, accepted)]

        successes = [0] * self.max_draft_len
        trials = [0] * self.max_draft_len
        for outcomes in per_request:
            for j, ok in enumerate(outcomes):
                trials[j] += 1
                successes[j] += ok
        changed = False
        for j in range(self.max_draft_len):
            if trials[j]:
                self._global.update(j, successes[j], trials[j])
                changed = True
        if changed:
            self._global_curve = self._prior = self._prior_curve = None
            self._request_curves.clear()  # blended curves depend on the global estimate
        if request_ids is None:
            return
        unfolded = self._unfolded
        for request_id, outcomes in zip(request_ids, per_request):
            if outcomes:  # folded into the request's EMA when it is read (_request_ema): same result, and
                pending = unfolded.setdefault(request_id, [])  # a step costs an append per request
                pending.append(outcomes)
                if len(pending) >= MAX_UNFOLDED_STEPS:  # bounded memory for requests never read
                    self._request_ema(request_id)

    def _request_ema(self, request_id: Hashable) -> _PositionEMA | None:
        """The request's EMA with every step recorded so far folded in (None: no outcomes yet)."""
        steps = self._unfolded.pop(request_id, None)
        ema = self._requests.get(request_id)
        if steps:
            if ema is None:
                ema = self._requests[request_id] = _PositionEMA(self.max_draft_len, self.request_ema_rate, None, 0.0)
            for outcomes in steps:
                for j, ok in enumerate(outcomes):
                    ema.update(j, int(ok), 1)
        return ema

    def release(self, request_id: Hashable) -> None:
        """Forget a finished / aborted request (unknown ids are ignored); with learn_blend_count, its
        first-position rate joins the spread first."""
        if self._spread is not None:
            ema = self._request_ema(request_id)
            if ema is not None and ema.values[0] is not None:
                self._spread.add(ema.values[0], min(ema.weights[0], 1.0 / self.request_ema_rate))
                for j, value in enumerate(ema.values):
                    if value is not None:
                        self._finished.add(j, value)
                self._prior = self._prior_curve = None
                self._request_curves.clear()  # blended curves depend on the prior (mean and count)
        self._requests.pop(request_id, None)
        self._unfolded.pop(request_id, None)
        self._request_curves.pop(request_id, None)

    def follow_batch(self, batch: int) -> None:
        """A decode step of `batch` requests: with learn_blend_count, the window of finished requests the spread is
        learned from covers the batch (spec/request_spread.py)."""
        if self._spread is not None:
            self._spread.follow_batch(batch)

    # ----------------------------------------------------------------- estimates
    def global_alphas(self) -> list[float]:
        """Global alpha_j; an uncovered position repeats the previous one (initial_alpha for position 0)."""
        result: list[float] = []
        for value in self._global.values:
            if value is None:
                value = result[-1] if result else self.initial_alpha
            result.append(value)
        return result

    def request_prior_alphas(self) -> list[float]:
        """A request's prior alpha_j (module docstring): the mean of finished requests' own estimates where at least
        MIN_REQUESTS reached the position, else the global estimate."""
        if self._prior is None:
            pooled = self.global_alphas()
            finished = self._finished
            self._prior = pooled if finished is None else [
                value if value is not None and count >= MIN_REQUESTS else pooled_value
                for value, count, pooled_value in zip(finished.values, finished.weights, pooled)]
        return self._prior

    def alphas(self, request_id: Hashable | None = None) -> list[float]:
        """alpha_j for a request (its estimate blended with the prior of a request), or the global ones."""
        if request_id is None:
            return self.global_alphas()
        base = self.request_prior_alphas()
        ema = self._request_ema(request_id)
        return base if ema is None else self._blend(ema, base)

    def slow_case_alphas(self, request_id: Hashable | None, quantile: float,
                         alphas: Sequence[float] | None = None) -> list[float]:
        """alphas() with each position's rate at the `quantile` (0 < quantile < 1) of its posterior in the
        blend's beta-binomial model: mean alphas()[j], strength n_j + m (n_j: the request's own trials at
        position j, capped as in the blend; m: the prior count), by the normal approximation, within [0, the
        mean]. Where requests differ (m learned small) and this one is barely observed, that is far below its mean;
        where they are alike, or it has drafted for a while, close to it. The drain rule (spec/drain.py) asks
        for one standard deviation below the mean (quantile Phi(-1)), its rate's share of a request's spread.
        Every position is lowered, not the first alone: a request slow at the first is slow further on where
        workloads differ (the Qwen pair's draft model: code-edit 0.93, 1.00, 0.96, 1.00 a position, chat 0.67,
        0.79, 0.70, 0.80). With the first alone the slow case overrated long drafts for a chat request (k = 4
        survivals 0.67, 0.61, 0.53, 0.50 at the pooled rates further on, against 0.67, 0.53, 0.37, 0.30), and
        the drain rule ran k = 3-4 where k = 2 ended a closed batch of 16 sooner (H200, 2026-12-07; replayed,
        paired by seed over 100 seeds: 0.951-0.955 -> 0.965-0.971x the best static line at 16; n-gram's replays
        unchanged, its chat requests' rates after a first match being high). alphas: alphas(request_id) where the
        caller has them (or their first positions: as many come back)."""
        alphas = self.alphas(request_id) if alphas is None else alphas
        ema = None if request_id is None else self._request_ema(request_id)
        z, prior, cap = _normal_quantile(quantile), self.effective_blend_count, 1.0 / self.request_ema_rate
        slow = []
        for j, mean in enumerate(alphas):
            own = 0.0 if ema is None or ema.values[j] is None else min(ema.weights[j], cap)
            low = mean + z * math.sqrt(mean * (1.0 - mean) / (own + prior + 1.0))
            slow.append(min(mean, max(0.0, low)))
        return slow

    @property
    def effective_blend_count(self) -> float:
        """The blend_count in use: learned from finished requests with learn_blend_count, else as given."""
        return self.blend_count if self._spread is None else self._spread.prior_count

    def _blend(self, ema: _PositionEMA, base: list[float]) -> list[float]:
        cap, prior = 1.0 / self.request_ema_rate, self.effective_blend_count
        blended = []
        for value, weight, g in zip(ema.values, ema.weights, base):
            if value is None:
                blended.append(g)
            else:
                n = weight if weight < cap else cap
                blended.append((n * value + prior * g) / (n + prior))
        return blended

    def observations(self, request_id: Hashable | None = None) -> list[float]:
        """Observations (plus the profile's pseudo-count for the global) per position."""
        if request_id is None:
            return list(self._global.weights)
        ema = self._request_ema(request_id)
        return list(ema.weights) if ema is not None else [0.0] * self.max_draft_len

    def _curve(self, request_id: Hashable | None, base: list[float] | None = None) -> list[float]:
        """[E[accepted | k] for k = 0..max_draft_len] of a request (a request without observations: the prior of a
        request; None: the global estimate), cached."""
        if request_id is None:
            if self._global_curve is None:
                self._global_curve = _cumulative(self.global_alphas())
            return self._global_curve
        ema = self._request_ema(request_id)
        if ema is None:
            if self._prior_curve is None:
                self._prior_curve = _cumulative(self.request_prior_alphas())
            return self._prior_curve
        curve = self._request_curves.get(request_id)
        if curve is None:
            blended = self._blend(ema, self.request_prior_alphas() if base is None else base)
            curve = self._request_curves[request_id] = _cumulative(blended)
        return curve

    def expected_accepted_all(self, request_ids: Sequence[Hashable] | None = None) -> list[float]:
        """[E[accepted | k] for k = 0..max_draft_len], averaged over request_ids (global when None/empty)."""
        if not request_ids:
            return list(self._curve(None))
        base = self.request_prior_alphas()
        totals = [0.0] * (self.max_draft_len + 1)
        for request_id in request_ids:
            for k, value in enumerate(self._curve(request_id, base)):
                totals[k] += value
        return [t / len(request_ids) for t in totals]

    def expected_accepted(self, k: int, request_ids: Sequence[Hashable] | None = None) -> float:
        """E[accepted | k] = sum_{j=1..k} prod_{i<j} alpha_i, averaged over request_ids (global if None)."""
        return self.expected_accepted_all(request_ids)[k]

    def to_profile(self) -> dict[str, Any]:
        """The global estimate as a profile JSON object (load_acceptance_profile reads it back)."""
        return {"acceptance_per_position": self.global_alphas()}

    @property
    def num_tracked_requests(self) -> int:
        return len(self._requests.keys() | self._unfolded.keys())

    def __repr__(self) -> str:
        alphas = ", ".join(f"{a:.3f}" for a in self.global_alphas())
        return f"AcceptanceEstimator(global=[{alphas}], requests={self.num_tracked_requests})"


def planning_estimator(max_draft_len: int, acceptance_profile: str | None, settings: PlannerSettings) -> AcceptanceEstimator:
    """The estimator the goodput planner and the adaptive policy plan with: warm-started from the acceptance
    profile (a path) when the config names one, else from initial_alpha as settings.cold_start_trials
    observations; the other knobs from `settings` (spec/planner_settings.PlannerSettings)."""
    return AcceptanceEstimator(
        max_draft_len, profile=None if acceptance_profile is None else load_acceptance_profile(acceptance_profile),
        memory_trials=settings.estimate_memory_trials, request_ema_rate=settings.request_ema_rate,
        blend_count=settings.request_blend_count, learn_blend_count=True, cold_start_trials=settings.cold_start_trials,
    )


@lru_cache(maxsize=8)
def _normal_quantile(quantile: float) -> float:
    """Phi^-1(quantile), computed once per quantile (the drain rule asks it for every request of every plan)."""
    return NormalDist().inv_cdf(quantile)
