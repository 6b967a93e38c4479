"""How slow a request may be, per draft position, under a prior made of the recent finished requests.

The drain rule (spec/drain.py) plans a closed batch's end from each request's slow case: its acceptance one
standard deviation below the mean (AcceptanceEstimator.slow_case_alphas). Where requests differ (code-edit next to
chat: Tarone's test, spec/request_spread.py), the one-Beta prior of the per-request blend describes that spread
poorly: with a learned prior count of ~16 pseudo-trials at the pooled rate, a chat request of the Qwen pair's draft
model (0.67 at the first position, code-edit 0.93) still read ~0.74 after 15 steps, and at later positions, which
it reaches less often, the pooled rates (0.83 where it accepts 0.70). A closed batch of 16 is over in ~20 steps,
so the rule planned its slow requests as average ones and ran k = 3 where k = 2 ended the batch sooner.

Here the finished requests stand for the population (nonparametric empirical Bayes: Robbins 1956, "An empirical
Bayes approach to statistics"; Efron 2014, "Two modeling strategies for empirical Bayes estimation", Stat. Sci.
29:285-301, g-modeling). Finished request r is a component of the prior: per position j a Beta(a_rj, b_rj) with
a_rj = S_rj + p_j, b_rj = F_rj + (1 - p_j) (its successes and failures there plus one pseudo-trial of the prior
mean p_j, clipped to [PRIOR_FLOOR, 1 - PRIOR_FLOOR]), the positions independent within a component. A running
request with s_j successes and f_j failures has, by conjugacy, the posterior mixture of
Beta(a_rj + s_j, b_rj + f_j) with weights

    w_r ~ prod_j B(a_rj + s_j, b_rj + f_j) / B(a_rj, b_rj)

(B the beta function; FinishedRequestMixture.posterior computes its plug-in form), so its mean at position j is
sum_r w_r (a_rj + s_j) / (a_rj + b_rj + s_j + f_j) and its variance the mixture's (each component's plus the
spread of their means). A component is a whole request: a request whose first positions look like the chat ones
weighs the chat components, and its later positions follow theirs before it has drafted that far; with much data
of its own every component's mean nears its own rate.

The slow case (AcceptanceEstimator.slow_case_alphas) is MIXTURE_SLOW_SCALE = 0.75 posterior standard deviations
below the mean where the blend's is one: the mixture's standard deviation counts the spread between kinds of
requests, and for a request with no outcomes yet it is the population's (two kinds: ~0.16 at the first position,
the blend's ~0.1), so at one deviation every unseen request of a batch of 64 was planned as a slow chat one and
the rule ran k = 0 for whole batches where k = 2 ends them sooner. Replayed at an H100's draft-model prices, the
code-edit and chat kinds 50/50, 64 tokens a request, adaptive / the best static line at batch 16 / 64:

    closed batches after a warm-up (scripts/lab/closed_sweep_replay.py, 100 seeds)      0.980 / 0.997 before,
        0.988 / 0.990 at one deviation, 0.984 / 0.993 at 0.75;
    the sweep carried by one policy, host work injected (scripts/lab/warm_sweep_replay.py on the 12-07 16:32
        probe, 40 seeds)                                                                0.958 / 0.994 before,
        0.976 / 0.983 at one deviation, 0.983 / 0.994 at 0.75.

The n-gram and pure workloads' replays are unchanged.

The means (AcceptanceEstimator._request_alphas) take the mixture's posterior from the second position on, where a
request has drafted less: held at 16 / 64 requests (draft model, the H100's probed prices of 2026-12-07 16:32,
scripts/lab/steady_replay.py) adaptive went 0.964 / 0.962 -> 0.968 / 0.968x the per-request bound (with the 00:31
probe's prices, 0.910 / 0.947 -> 0.930 / 0.955x). The first position stays the blend's: with the mixture's there
too, a request it read as a chat one ran k = 0, where it learns nothing, and stayed there (n-gram, held at 64
requests, 24 seeds: 0.950 -> 0.937x the bound).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

# The drain rule's slow case under the mixture: this many of the posterior's standard deviations for each one the
# quantile asks (module docstring).
MIXTURE_SLOW_SCALE = 0.75
# The prior mean of a position is kept this far inside (0, 1): a component's one pseudo-trial must leave both
# outcomes possible (a profile that read 1.0 at a position would make a rejection there impossible).
PRIOR_FLOOR = 0.02


class FinishedRequestMixture:
    """The recent finished requests' outcomes per draft position, as the components of a prior (module docstring)."""

    def __init__(self, capacity: int) -> None:
        """capacity: finished requests remembered (the most recent)."""
        self._recent: deque[tuple[list[float], list[float]]] = deque(maxlen=capacity)  # (successes, trials)
        self._stacked: np.ndarray | None = None  # (C, 2, K): successes and trials, rebuilt after an add

    def add(self, successes: Sequence[float], trials: Sequence[float]) -> None:
        """A finished request's successes and trials per draft position (the same count of positions for every
        request; trials 0 where it never drafted that far)."""
        self._recent.append(([float(s) for s in successes], [float(n) for n in trials]))
        self._stacked = None

    def __len__(self) -> int:
        return len(self._recent)

    def posterior(self, prior_mean: Sequence[float], successes: Sequence[Sequence[float]],
                  failures: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation, (R, positions) arrays, of R requests given their own successes and
        failures per position ((R, positions) each); prior_mean: p_j of the components' pseudo-trial. Needs at least
        one finished request.

        The weights are the likelihood of the request's outcomes at each component's mean rate, the plug-in form of
        the beta-binomial weights of the module docstring (no log-gamma: 1.5 ms against 3.3 for 256 requests and 64
        components on a 2-core CPU; the replays' decisions and numbers the same)."""
        if self._stacked is None:
            self._stacked = np.asarray(self._recent, dtype=np.float64)
        p = np.clip(np.asarray(prior_mean, dtype=np.float64), PRIOR_FLOOR, 1.0 - PRIOR_FLOOR)  # (K,)
        a = self._stacked[:, 0] + p  # (C, K)
        strength = self._stacked[:, 1] + 1.0  # a + b
        rate = a / strength
        s = np.asarray(successes, dtype=np.float64)  # (R, K)
        f = np.asarray(failures, dtype=np.float64)
        log_weights = s @ np.log(rate).T + f @ np.log1p(-rate).T  # (R, C)
        weights = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        alpha = a[None] + s[:, None]  # (R, C, K): each component's posterior Beta(alpha, total - alpha)
        total = strength[None] + (s + f)[:, None]
        means = alpha / total
        mean = np.matmul(weights[:, None], means)[:, 0]  # (R, K)
        second = np.matmul(weights[:, None], means * (alpha + 1.0) / (total + 1.0))[:, 0]  # E[x^2] of a Beta
        return mean, np.sqrt(np.clip(second - mean * mean, 0.0, None))
