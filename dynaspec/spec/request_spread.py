"""How much requests differ in acceptance: the prior strength of a request's own estimate, learned.

A request's acceptance at a draft position is estimated as (n * own + m * pooled) / (n + m)
(spec/acceptance_estimator.py, per-request blending): its own rate over n trials, shrunk towards the
pooled rate by m pseudo-trials. That is the posterior mean of a beta-binomial model whose requests draw
their acceptance p_i from a Beta with mean `pooled` and m = a + b; the right m depends on the workload:

* requests alike (one workload): their own rates differ by binomial noise only, m should be large, and a
  short run of rejections must not move one request's estimate (at k = 0 a request drafts and learns
  nothing, so a small m can freeze it there);
* requests unlike (code-edit next to chat): m should be small, so a request follows its own rate within
  a few steps (the pooled estimate at concurrency 1 is the previous requests').

`RequestSpread` estimates m from finished requests with the method-of-moments estimator of the
intra-class correlation rho = 1 / (m + 1) of Kleinman (1973, "Proportions with extraneous variance:
single and independent samples", JASA 68:46-54), unweighted form: with rates r_i over n_i trials,
their mean p, sample variance S^2 and mean 1/n_i,

    rho = (S^2 - p (1 - p) mean(1/n)) / (p (1 - p) (1 - mean(1/n))),    m = 1 / rho - 1,

clamped to [MIN_PRIOR_COUNT, MAX_PRIOR_COUNT]. With a handful of requests that estimate is noisy, so
it is used only when Tarone's test
(1979, "Testing the goodness of fit of the binomial distribution", Biometrika 66:585-590) finds the
requests more different than binomial noise allows,

    Z = (sum (s_i - n_i p)^2 / (p (1 - p)) - sum n_i) / sqrt(2 sum n_i (n_i - 1))  >  OVERDISPERSION_Z

(p the pooled rate); otherwise, as when rho <= 0, m is MAX_PRIOR_COUNT, i.e. the pooled estimate. Until
MIN_REQUESTS requests with MIN_TRIALS trials each finished, the configured default holds. The
measurements behind this design: docs/lab/planner_history.md.

The window of finished requests follows the batch: at least WINDOW_BATCHES batches' worth (the batch a decaying peak
of the steps' decoding requests, `follow_batch`), never fewer than RECENT_REQUESTS. Fast requests finish more often
than slow ones (a code-edit request at 2.5 tokens a step leaves 2.5x as often as a chat one at 1), and requests
that started together leave together, so a window shorter than a turnover of the batch can hold one kind only: the
test then finds no spread, the blend pools every request, and the batch runs a uniform k until the slow ones
finish and the spread shows again. Held at 128 requests (n-gram, code-edit and chat 50/50, the H100's probed prices,
scripts/lab/steady_replay.py) a window of 64 cycled so: 28 of 105 steps ran k = 1 for every request, and adaptive
ran 0.918x the per-request bound; with the window following the batch, 0.948x (64 requests: 0.950 -> 0.964x; the
draft model's profiles at 128: 0.940 -> 0.949x; closed-batch replays unchanged).
"""

from __future__ import annotations

import math
from collections import deque

# Finished requests remembered (the most recent ones), at least.
RECENT_REQUESTS = 64
# ... and at least this many batches' worth of them (module docstring).
WINDOW_BATCHES = 2
# Per step, the batch the window follows falls this share of the way from its peak towards the step's batch.
PEAK_DECAY = 1.0 / 64
# Requests needed before the learned prior count replaces the default. Tarone's test guards against reading
# noise as spread, so a few requests suffice where they differ: a closed batch of 4 (two copy-heavy, two chat)
# teaches it from its warm-up batch; with 8 required, the default (32 pseudo-trials of the pooled 0.24) held
# the chat requests' estimate at ~0.13 after 27 rejections and they drafted 4 to the end (tests/test_drain.py).
MIN_REQUESTS = 4
# Trials a request needs at the position to count (fewer say too little about its rate).
MIN_TRIALS = 4
# One-sided 1% point of the standard normal: Tarone's statistic above it means requests differ.
OVERDISPERSION_Z = 2.326
# Bounds of the learned prior count (pseudo-trials of the pooled rate).
MIN_PRIOR_COUNT = 1.0
MAX_PRIOR_COUNT = 1024.0


class RequestSpread:
    """The spread of finished requests' acceptance rates at one draft position, as a prior count m."""

    def __init__(self, default_prior_count: float) -> None:
        """default_prior_count: m (> 0) until MIN_REQUESTS requests finished."""
        self.default = float(default_prior_count)
        self._recent: deque[tuple[float, float]] = deque(maxlen=RECENT_REQUESTS)  # (rate, trials)
        self._prior_count: float | None = None
        self._peak_batch = 0.0

    def follow_batch(self, batch: int) -> None:
        """One step of `batch` decoding requests: the window covers WINDOW_BATCHES x the batch's decaying peak."""
        self._peak_batch = max(float(batch), self._peak_batch * (1.0 - PEAK_DECAY))
        size = max(RECENT_REQUESTS, int(WINDOW_BATCHES * self._peak_batch))
        if size != self._recent.maxlen:
            kept = len(self._recent)
            self._recent = deque(self._recent, maxlen=size)
            if len(self._recent) < kept:  # the oldest left the window
                self._prior_count = None

    def add(self, rate: float, trials: float) -> None:
        """A finished request's acceptance rate (in [0, 1]) over `trials` trials (ignored below MIN_TRIALS)."""
        if trials >= MIN_TRIALS:
            self._recent.append((float(rate), float(trials)))
            self._prior_count = None

    @property
    def num_requests(self) -> int:
        return len(self._recent)

    @property
    def prior_count(self) -> float:
        """m: the learned prior count, or the default before MIN_REQUESTS requests."""
        if self._prior_count is None:
            self._prior_count = self._estimate()
        return self._prior_count

    def _estimate(self) -> float:
        n = len(self._recent)
        if n < MIN_REQUESTS:
            return self.default
        rates = [r for r, _ in self._recent]
        mean = sum(rates) / n
        spread = mean * (1.0 - mean)
        if spread <= 0.0:  # every request accepted all or nothing: alike
            return MAX_PRIOR_COUNT
        if not self._overdispersed():
            return MAX_PRIOR_COUNT
        variance = sum((r - mean) ** 2 for r in rates) / (n - 1)
        inverse_trials = sum(1.0 / t for _, t in self._recent) / n
        rho = (variance - spread * inverse_trials) / (spread * (1.0 - inverse_trials))
        if rho <= 1.0 / (MAX_PRIOR_COUNT + 1.0):
            return MAX_PRIOR_COUNT
        return max(MIN_PRIOR_COUNT, min(MAX_PRIOR_COUNT, 1.0 / rho - 1.0))

    def _overdispersed(self) -> bool:
        """Tarone's Z (module docstring) above OVERDISPERSION_Z."""
        trials = sum(t for _, t in self._recent)
        pooled = sum(r * t for r, t in self._recent) / trials
        spread = pooled * (1.0 - pooled)
        if spread <= 0.0:
            return False
        pairs = sum(t * (t - 1.0) for _, t in self._recent)
        if pairs <= 0.0:
            return False
        statistic = sum((r * t - t * pooled) ** 2 for r, t in self._recent) / spread - trials
        return statistic / math.sqrt(2.0 * pairs) > OVERDISPERSION_Z
