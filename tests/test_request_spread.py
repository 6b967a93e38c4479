"""The learned prior count of a request's acceptance estimate (beta-binomial method of moments)."""

from __future__ import annotations

import math
import random

import pytest

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.spec.request_spread import MAX_PRIOR_COUNT, MIN_PRIOR_COUNT, MIN_REQUESTS, MIN_TRIALS, RequestSpread


def _binomial_rate(rng: random.Random, p: float, n: int) -> float:
    return sum(rng.random() < p for _ in range(n)) / n


def test_default_until_enough_requests_and_short_ones_do_not_count():
    spread = RequestSpread(8.0)
    for i in range(MIN_REQUESTS - 1):
        spread.add(float(i % 2), 50)  # all or nothing: as different as requests get
    assert spread.num_requests == MIN_REQUESTS - 1 and spread.prior_count == 8.0
    spread.add(1.0, 50)
    assert spread.prior_count == MIN_PRIOR_COUNT
    short = RequestSpread(8.0)
    for _ in range(3 * MIN_REQUESTS):
        short.add(1.0, MIN_TRIALS - 1)
    assert short.num_requests == 0 and short.prior_count == 8.0


def test_alike_requests_give_a_large_count_and_mixed_workloads_a_small_one():
    rng = random.Random(0)
    alike, mixed = RequestSpread(8.0), RequestSpread(8.0)
    for i in range(64):
        n = rng.randint(20, 120)
        alike.add(_binomial_rate(rng, 0.3, n), n)
        mixed.add(_binomial_rate(rng, 0.53 if i % 2 else 0.03, n), n)
    assert alike.prior_count >= 100  # binomial noise only: the pooled rate is the best guess
    assert MIN_PRIOR_COUNT <= mixed.prior_count <= 4  # two workloads: a request's own rate matters
    same = RequestSpread(8.0)
    for _ in range(MIN_REQUESTS):
        same.add(1.0, 10)
    assert same.prior_count == MAX_PRIOR_COUNT


def test_the_estimator_learns_how_far_a_request_follows_its_own_rate():
    """After finished requests of two workloads, a new request's estimate leaves the pooled one within a
    few rejections; with a fixed count it stays near the pooled estimate for many more."""
    learned = AcceptanceEstimator(1, profile=[0.5], request_ema_rate=1 / 64, blend_count=8, learn_blend_count=True)
    fixed = AcceptanceEstimator(1, profile=[0.5], request_ema_rate=1 / 64, blend_count=8)
    assert learned.effective_blend_count == 8 == fixed.effective_blend_count
    rng = random.Random(1)
    for est in (learned, fixed):
        for i in range(16):
            p = 0.55 if i % 2 else 0.02
            for _ in range(40):
                est.update(f"r{i}", 1, int(rng.random() < p))
            est.release(f"r{i}")
    assert learned.effective_blend_count < 3 and fixed.effective_blend_count == 8
    for est in (learned, fixed):
        for _ in range(5):
            est.update("new", 1, 0)
    pooled = learned.global_alphas()[0]
    assert learned.alphas("new")[0] < 0.4 * pooled < fixed.alphas("new")[0]


def test_a_handful_of_alike_requests_rarely_looks_mixed():
    """Tarone's overdispersion test guards the noisy moment estimate: 8 alike requests give a count below
    32 in at most a few of 200 draws (the moment estimate alone: about one in ten)."""
    rng = random.Random(2)
    low = 0
    for _ in range(200):
        spread = RequestSpread(32.0)
        for _ in range(MIN_REQUESTS):
            n = rng.randint(4, 60)
            spread.add(_binomial_rate(rng, 0.15, n), n)
        low += spread.prior_count < 32
    assert low <= 6


def _estimator_after(first_position_rates: list[float], steps: int = 24):
    """A planning estimator (as the adaptive policy's) after one finished request per rate, each drafting one
    position a step for `steps` steps at that acceptance (deterministic counts)."""
    from dynaspec.spec.acceptance_estimator import planning_estimator
    from dynaspec.spec.planner_settings import PlannerSettings

    estimator = planning_estimator(4, None, PlannerSettings())
    for n, rate in enumerate(first_position_rates):
        rid = f"done{n}"
        for step in range(steps):
            accepted = int((step + 1) * rate) - int(step * rate)
            estimator.update_step([rid], [1], [accepted], 1)
        estimator.release(rid)
    return estimator


def test_the_slow_case_of_an_unseen_request_follows_how_much_finished_requests_differed():
    """spec/drain.py plans a draining batch for each request's slow case (quantile 1 / (batch + 1) of its posterior
    first-position rate). Requests that differed (copy next to chat): an unseen request's slow case is ~0; requests
    alike: within a few points of the mean; a request seen for a while: near its own rate."""
    quantile = 1 / 17
    mixed = _estimator_after([0.95, 0.05] * 8)
    assert mixed.effective_blend_count < 4
    assert mixed.slow_case_alphas("new", quantile)[0] < 0.1 < 0.3 < mixed.alphas("new")[0]
    alike = _estimator_after([0.5] * 16)
    assert alike.alphas("new")[0] - 0.05 < alike.slow_case_alphas("new", quantile)[0] <= alike.alphas("new")[0]
    for _ in range(40):
        mixed.update_step(["seen"], [1], [1], 1)
    own = mixed.alphas("seen")[0]
    assert own > 0.9 and mixed.slow_case_alphas("seen", quantile)[0] > own - 0.15
    # positions it never verified keep the unseen request's width: each below its mean
    deeper, deeper_mean = mixed.slow_case_alphas("seen", quantile)[1:], mixed.alphas("seen")[1:]
    assert all(low < mean for low, mean in zip(deeper, deeper_mean))


def test_the_slow_case_lowers_every_position_as_a_slow_workload_is_slower_further_on():
    """The Qwen pair's draft model: a chat request is slower than a code-edit one at every position, not the first
    alone. After a closed batch of each (outcomes drawn from their per-position rates), an unseen request's slow
    case at k = 4 is near a chat request's survival, where the pooled rates past the first position put it
    over 0.1 higher (0.41 against 0.30 here; spec/drain.py plans a closed batch's end on it: too high, it ran
    k = 3-4 where k = 2 ended sooner)."""
    from dynaspec.spec.acceptance_estimator import planning_estimator
    from dynaspec.spec.adaptive_allocation import survival
    from dynaspec.spec.planner_settings import PlannerSettings

    code_edit, chat = [0.93, 1.0, 0.96, 1.0], [0.67, 0.79, 0.70, 0.80]
    rng = random.Random(0)
    estimator = planning_estimator(4, None, PlannerSettings())
    for n in range(16):
        rates, rid = (code_edit, chat)[n % 2], f"done{n}"
        for _ in range(20):  # k = 4 steps: accepted up to the first rejection
            accepted = next((j for j, rate in enumerate(rates) if rng.random() >= rate), 4)
            estimator.update_step([rid], [4], [accepted], 4)
        estimator.release(rid)
    chat_survival = survival(chat)[3]
    slow = estimator.slow_case_alphas("new", 0.1587)
    first_alone = survival([slow[0], *estimator.alphas("new")[1:]])[3]
    assert abs(survival(slow)[3] - chat_survival) < 0.1 < first_alone - chat_survival


def test_a_new_request_is_taken_for_the_mean_of_finished_requests_not_of_their_trials():
    """Length-biased sampling: a closed batch's copy requests (0.9 a draft) end early and its chat requests (0.1)
    run on alone, so the pooled estimate, trial-weighted and recent, ends near the chat rate; the next request is
    as likely to be either, and its prior is the requests' mean (spec/acceptance_estimator.py). Before MIN_REQUESTS
    finished, and without learning from finished requests, the pooled estimate stands in."""
    rng = random.Random(0)
    learned = AcceptanceEstimator(1, profile=[0.5], request_ema_rate=1 / 64, learn_blend_count=True,
                                  memory_trials=64)
    fixed = AcceptanceEstimator(1, profile=[0.5], request_ema_rate=1 / 64, memory_trials=64)
    for est in (learned, fixed):
        for batch in range(2):
            ids = [f"b{batch}r{i}" for i in range(8)]
            steps = {rid: (15 if i % 2 == 0 else 60) for i, rid in enumerate(ids)}  # copy requests end first
            for step in range(60):
                live = [rid for rid in ids if steps[rid] > step]
                accepted = [int(rng.random() < (0.9 if int(rid[-1]) % 2 == 0 else 0.1)) for rid in live]
                est.update_step(live, [1] * len(live), accepted)
                for rid in ids:
                    if steps[rid] == step + 1:
                        est.release(rid)
            if batch == 0 and est is learned:
                assert est.request_prior_alphas() != est.global_alphas()  # 8 finished: the prior has its own mean
    pooled = learned.global_alphas()[0]
    assert pooled < 0.2  # the chat requests' tail
    assert 0.4 < learned.request_prior_alphas()[0] < 0.6 and 0.4 < learned.alphas("unseen")[0] < 0.6
    assert fixed.request_prior_alphas() == fixed.global_alphas() and fixed.alphas("unseen")[0] < 0.2
    early = AcceptanceEstimator(1, profile=[0.5], learn_blend_count=True)
    for i in range(MIN_REQUESTS - 1):
        early.update(f"r{i}", 1, 1)
        early.release(f"r{i}")
    assert early.request_prior_alphas() == early.global_alphas()


def test_the_window_of_finished_requests_follows_the_batch():
    """At least RECENT_REQUESTS, else WINDOW_BATCHES x the batch's decaying peak: at 128 the window keeps 256
    finished requests; back at batch 4 it shrinks towards RECENT_REQUESTS as the peak decays, dropping the oldest
    (and re-learning from those left)."""
    from dynaspec.spec.request_spread import PEAK_DECAY, RECENT_REQUESTS, WINDOW_BATCHES

    spread = RequestSpread(8.0)
    for i in range(400):
        spread.add(0.9 if i < 200 else 0.1, 20)
    assert spread.num_requests == RECENT_REQUESTS and spread.prior_count == MAX_PRIOR_COUNT  # the last 64: all 0.1
    spread.follow_batch(128)
    for i in range(400):
        spread.add(0.9 if i % 2 else 0.1, 20)
    assert spread.num_requests == WINDOW_BATCHES * 128 and spread.prior_count < 4  # two kinds: a small count
    steps = 0
    while spread.num_requests > RECENT_REQUESTS:
        spread.follow_batch(4)
        steps += 1
    peak_for_window = RECENT_REQUESTS / WINDOW_BATCHES
    assert steps == pytest.approx(math.log(peak_for_window / 128) / math.log(1 - PEAK_DECAY), abs=2)
