"""The finished requests' mixture (spec/request_mixture.py): a request's posterior acceptance per draft position, and
the slow case the drain rule plans with where requests differ. Acceptance draws are seeded; no clock is read."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.special import betaln

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.spec.request_mixture import FinishedRequestMixture

CODE_EDIT, CHAT = [0.93, 1.0, 0.96, 1.0], [0.67, 0.79, 0.70, 0.80]  # the Qwen pair's draft model per position
SLOW_QUANTILE = 0.15865525393145707  # Phi(-1): the drain rule's one standard deviation below the mean


def _exact_posterior(stored, prior, s, f):
    """The posterior mean and sd of the mixture-of-Betas prior by its exact beta-binomial weights (module docstring)."""
    p = np.clip(np.asarray(prior), 0.02, 0.98)
    a = np.array([[sj + pj for sj, pj in zip(succ, p)] for succ, _ in stored])
    b = np.array([[nj - sj + 1 - pj for sj, nj, pj in zip(succ, trials, p)] for succ, trials in stored])
    log_w = (betaln(a + s, b + f) - betaln(a, b)).sum(axis=1)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    means = (a + s) / (a + b + s + f)
    variances = means * (1 - means) / (a + b + s + f + 1)
    mean = w @ means
    return mean, np.sqrt(w @ (variances + (means - mean) ** 2))


def test_the_posterior_approximates_the_exact_mixture_update():
    """Components with a few dozen trials each: the plug-in weights give the exact beta-binomial posterior's mean
    and standard deviation within 0.015 (0.011 the worst, a request half-way between the two kinds), for requests
    with no, little and much data."""
    rng = np.random.default_rng(0)
    mixture, stored = FinishedRequestMixture(64), []
    for r in range(24):
        rates = CODE_EDIT if r % 2 else CHAT
        trials = rng.integers(20, 60, 4).astype(float)
        successes = [float(rng.binomial(int(n), q)) for n, q in zip(trials, rates)]
        mixture.add(successes, trials)
        stored.append((successes, trials))
    prior = [0.8, 0.9, 0.83, 0.9]
    own = np.array([[0, 0, 0, 0], [3, 1, 0, 0], [2, 2, 1, 0], [40, 30, 20, 10], [5, 4, 3, 2]], dtype=float)
    misses = np.array([[0, 0, 0, 0], [2, 1, 1, 0], [0, 0, 1, 1], [4, 1, 2, 0], [5, 4, 3, 2]], dtype=float)
    means, sds = mixture.posterior(prior, own, misses)
    for row in range(len(own)):
        mean, sd = _exact_posterior(stored, prior, own[row], misses[row])
        assert np.abs(means[row] - mean).max() < 0.015 and np.abs(sds[row] - sd).max() < 0.015, (row, means[row], mean)


def test_a_request_with_no_data_reads_the_components_mean_and_spread():
    mixture = FinishedRequestMixture(8)
    mixture.add([9.0], [10.0])  # (9 + 0.5) / 11
    mixture.add([1.0], [10.0])  # (1 + 0.5) / 11
    mean, sd = mixture.posterior([0.5], [[0.0]], [[0.0]])
    components = np.array([9.5, 1.5]) / 11
    second = components * (components * 11 + 1) / 12  # E[x^2] of Beta(a, b): m (a + 1) / (a + b + 1)
    assert mean[0, 0] == pytest.approx(components.mean())
    assert sd[0, 0] == pytest.approx(math.sqrt(second.mean() - components.mean() ** 2))


def test_much_data_of_its_own_outweighs_every_component():
    """No finished request accepted near 0.5; a request that accepted 500 of 1,000 reads 0.5, not a component."""
    mixture = FinishedRequestMixture(8)
    for _ in range(4):
        mixture.add([19.0], [20.0])
        mixture.add([1.0], [20.0])
    mean, sd = mixture.posterior([0.5], [[500.0]], [[500.0]])
    assert abs(mean[0, 0] - 0.5) < 0.02 and sd[0, 0] < 0.03


def _estimator_after(finished_rates: list[list[float]], requests: int, seed: int = 0) -> AcceptanceEstimator:
    """A planning estimator whose `requests` finished requests each drafted 4 for 24 steps, request r accepting
    position j with finished_rates[r % len(finished_rates)][j] given the ones before it."""
    rng = random.Random(seed)
    estimator = AcceptanceEstimator(4, profile=[0.8, 0.9, 0.83, 0.9], learn_blend_count=True, request_ema_rate=1 / 64,
                                    blend_count=32.0)
    for r in range(requests):
        rates = finished_rates[r % len(finished_rates)]
        for _ in range(24):
            accepted = 0
            while accepted < 4 and rng.random() < rates[accepted]:
                accepted += 1
            estimator.update_step([f"done{r}"], [4], [accepted], 4)
        estimator.release(f"done{r}")
    return estimator


def test_where_requests_differ_a_chat_like_start_lowers_the_slow_case_at_every_position():
    """After 16 code-edit and chat requests, a request that accepted 3 of its first 6 first positions (and drafted no
    further) is planned like a chat one at positions it never reached: its slow case there is 0.62-0.73 (0.75 of the
    mixture's deviations below its mean), where the one-Beta blend kept it at the pooled rates less one spread
    (0.71-0.81; tests/test_drain.py replays what that costs a closed batch). A code-edit-like start (6 of 6) keeps
    its slow case near the code-edit rates, 0.84-0.92 (the blend: 0.71-0.81 after the first position, as the
    chat-like one's)."""
    estimator = _estimator_after([CODE_EDIT, CHAT], 16)
    assert estimator._spread.requests_differ
    for accepted in (1, 0, 1, 0, 1, 1):
        estimator.update_step(["chat-like"], [1], [accepted], 1)
    for _ in range(6):
        estimator.update_step(["copy-like"], [1], [1], 1)
    chat_like = estimator.slow_case_alphas("chat-like", SLOW_QUANTILE)
    copy_like = estimator.slow_case_alphas("copy-like", SLOW_QUANTILE)
    assert chat_like[0] < 0.63 and max(chat_like[1:]) < 0.74, chat_like
    assert copy_like[0] > 0.85 and min(copy_like[1:]) > 0.82, copy_like



def test_where_requests_differ_a_request_s_later_positions_follow_the_kind_its_first_ones_show():
    """The means: the first position stays the blend's (a request read as slow there would be held at k = 0 and learn
    nothing more), the later ones, which a request reaches less often, come from the mixture: a chat-like start reads
    chat rates further on (0.84 / 0.75 / 0.85; the blend: the pooled 0.90 / 0.83 / 0.90), a copy-like one code-edit
    rates (0.97 / 0.92 / 0.97). Held at 16 / 64 requests (draft model, the H100's probed prices,
    scripts/lab/steady_replay.py) adaptive went 0.964 / 0.962 -> 0.968 / 0.968x the per-request bound."""
    estimator = _estimator_after([CODE_EDIT, CHAT], 16)
    for accepted in (1, 0, 1, 0, 1, 1):
        estimator.update_step(["chat-like"], [1], [accepted], 1)
    for _ in range(6):
        estimator.update_step(["copy-like"], [1], [1], 1)
    def blend(request_id):
        return estimator._blend(estimator._request_ema(request_id), estimator.request_prior_alphas())

    chat_like, copy_like = estimator.alphas("chat-like"), estimator.alphas("copy-like")
    assert chat_like[0] == blend("chat-like")[0] and copy_like[0] == blend("copy-like")[0]
    assert all(a < b - 0.05 for a, b in zip(chat_like[1:], blend("chat-like")[1:])), (chat_like, blend("chat-like"))
    assert all(a > b + 0.05 for a, b in zip(copy_like[1:], blend("copy-like")[1:])), (copy_like, blend("copy-like"))
    curve = estimator.expected_accepted_all(["chat-like"])  # the goodput planner's curves: the same alphas
    assert curve[3] == pytest.approx(chat_like[0] * (1 + chat_like[1] * (1 + chat_like[2])))


def test_where_requests_are_alike_the_slow_case_is_the_one_beta_blend_s():
    """Every finished request accepts 0.8: Tarone's test finds no spread, and the slow case stays the blend's, each
    position one standard deviation of Beta(mean, n + m) below its mean."""
    estimator = _estimator_after([[0.8, 0.8, 0.8, 0.8]], 16)
    assert not estimator._spread.requests_differ
    for accepted in (1, 0, 1):
        estimator.update_step(["r"], [2], [accepted], 2)
    alphas, prior = estimator.alphas("r"), estimator.effective_blend_count
    own = [min(w, 64.0) for w in estimator.observations("r")]
    expected = [min(a, max(0.0, a - math.sqrt(a * (1 - a) / (n + prior + 1)))) if n else
                min(a, max(0.0, a - math.sqrt(a * (1 - a) / (prior + 1)))) for a, n in zip(alphas, own)]
    assert estimator.slow_case_alphas("r", SLOW_QUANTILE) == pytest.approx(expected)
