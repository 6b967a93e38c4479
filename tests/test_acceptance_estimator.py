"""Acceptance estimator: prefix observations, warm start, EMA rate, per-request blending, expectations."""

import json
import random

import pytest

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator, expected_accepted_length
from dynaspec.spec.acceptance_profile import load_acceptance_profile


def test_expected_accepted_length_matches_leviathan_closed_form():
    for alpha in (0.0, 0.3, 0.8, 1.0):
        for k in range(0, 7):
            closed = k if alpha == 1.0 else alpha * (1 - alpha**k) / (1 - alpha)
            assert expected_accepted_length([alpha] * 6, k) == pytest.approx(closed)
    # Per-position: 0.9 + 0.9*0.5 + 0.9*0.5*0.2
    assert expected_accepted_length([0.9, 0.5, 0.2], 3) == pytest.approx(0.9 + 0.45 + 0.09)


def test_expected_accepted_matches_monte_carlo_of_prefix_acceptance():
    alphas = [0.9, 0.7, 0.6, 0.3]
    rng = random.Random(0)
    trials = 40000
    total = 0
    for _ in range(trials):
        for alpha in alphas:
            if rng.random() >= alpha:
                break
            total += 1
    est = AcceptanceEstimator(4, profile=alphas)
    assert est.expected_accepted(4) == pytest.approx(total / trials, abs=0.02)


def test_prefix_observation_semantics():
    est = AcceptanceEstimator(4)
    # drafted 4, accepted 2: positions 0, 1 accepted, 2 rejected, 3 unobserved.
    est.update(None, drafted=4, accepted=2)
    assert est.observations() == [1, 1, 1, 0]
    alphas = est.global_alphas()
    assert alphas[:3] == [1.0, 1.0, 0.0]
    assert alphas[3] == 0.0  # unobserved: repeats the previous position's estimate
    # all accepted: no rejection observed, the next position stays unobserved
    est2 = AcceptanceEstimator(4)
    est2.update(None, drafted=2, accepted=2)
    assert est2.observations() == [1, 1, 0, 0]


def test_short_draft_counts_as_rejection_when_k_given():
    est = AcceptanceEstimator(4)
    # k=4 but the drafter proposed only 1 token, accepted: position 1 yields nothing -> rejected.
    est.update(None, drafted=1, accepted=1, k=4)
    assert est.observations() == [1, 1, 0, 0]
    assert est.global_alphas()[:2] == [1.0, 0.0]
    # nothing proposed at all at k=2: position 0 counts as rejected
    est.update(None, drafted=0, accepted=0, k=2)
    assert est.observations() == [2, 1, 0, 0]
    # k=0 steps observe nothing
    est.update(None, drafted=0, accepted=0, k=0)
    assert est.observations() == [2, 1, 0, 0]


def test_warm_start_from_profile_and_pseudo_count():
    est = AcceptanceEstimator(4, profile=[0.8, 0.6], prior_weight=10, ema_rate=0.01)
    assert est.global_alphas() == [0.8, 0.6, 0.6, 0.6]  # shorter profile: last value repeated
    assert est.observations() == [10, 10, 10, 10]
    # one rejection at position 0 counts as 1 of 11 observations: 0.8 -> 0.8 * 10 / 11
    est.update(None, drafted=1, accepted=0)
    assert est.global_alphas()[0] == pytest.approx(0.8 * 10 / 11)


def test_ema_moves_at_documented_rate_once_warm():
    rate = 0.1
    est = AcceptanceEstimator(1, profile=[0.5], prior_weight=1000, ema_rate=rate)
    value = 0.5
    for step in range(30):
        est.update(None, drafted=1, accepted=1)
        value += rate * (1.0 - value)  # r = max(1/(w+1), rate) = rate with w >= 1000
        assert est.global_alphas()[0] == pytest.approx(value)
    # After n steps of all-accepted, the gap to 1 shrank by (1 - rate)^n.
    assert 1.0 - est.global_alphas()[0] == pytest.approx(0.5 * (1 - rate) ** 30)


def test_warm_up_is_a_running_mean_then_ema():
    est = AcceptanceEstimator(1, ema_rate=0.25)  # no profile
    outcomes = [1, 0, 1, 1]
    for step, ok in enumerate(outcomes, start=1):
        est.update(None, drafted=1, accepted=ok)
        if step <= 4:  # 1/step >= 0.25: running mean
            assert est.global_alphas()[0] == pytest.approx(sum(outcomes[:step]) / step)
    before = est.global_alphas()[0]
    est.update(None, drafted=1, accepted=0)  # 1/5 < 0.25: EMA step of 0.25
    assert est.global_alphas()[0] == pytest.approx(before * 0.75)


def test_global_update_pools_one_step():
    est = AcceptanceEstimator(2, profile=[0.5, 0.5], prior_weight=1000, ema_rate=0.1)
    # 4 requests this step: position 0 accepted by 3 of 4, position 1 by 1 of 3 observed.
    est.update_step(None, drafted=[2, 2, 2, 2], accepted=[2, 1, 0, 0])
    # position 0: 2 of 4 accepted (requests with a >= 1) -> rate 0.5; position 1: 1 of 2 -> 0.5
    assert est.global_alphas() == pytest.approx([0.5, 0.5])
    est.update_step(None, drafted=[2, 2, 2, 2], accepted=[2, 2, 1, 1])
    # position 0: 4/4 -> 0.5 + 0.1 * 0.5; position 1: 2/4 -> stays 0.5
    assert est.global_alphas() == pytest.approx([0.55, 0.5])


def test_per_request_blending_with_global():
    est = AcceptanceEstimator(2, profile=[0.5, 0.5], ema_rate=0.05, request_ema_rate=0.1, blend_count=4)
    # Each step "copy" accepts both drafts and "chat" rejects the first: the global position 0 stays 0.5.
    for _ in range(2):
        est.update_step(["copy", "chat"], drafted=[2, 2], accepted=[2, 0])
    g = est.global_alphas()[0]
    assert g == pytest.approx(0.5)
    # 2 own observations, blended with blend_count=4 pseudo-observations of the global estimate.
    assert est.alphas("copy")[0] == pytest.approx((2 * 1.0 + 4 * g) / 6)
    assert est.alphas("chat")[0] == pytest.approx((2 * 0.0 + 4 * g) / 6)
    # "chat" never reached position 1: its own estimate there is the global one.
    assert est.alphas("chat")[1] == est.global_alphas()[1]
    # many observations: the own estimate dominates, its weight capped at 1/request_ema_rate = 10
    for _ in range(100):
        est.update_step(["copy", "chat"], drafted=[2, 2], accepted=[2, 0])
    g = est.global_alphas()[0]
    assert est.alphas("copy")[0] == pytest.approx((10 * 1.0 + 4 * g) / 14)
    assert est.alphas("chat")[0] == pytest.approx((10 * 0.0 + 4 * g) / 14)
    # an unknown request follows the global estimate; expected_accepted averages across requests
    assert est.alphas("new") == est.global_alphas()
    e_copy = expected_accepted_length(est.alphas("copy"), 2)
    e_chat = expected_accepted_length(est.alphas("chat"), 2)
    e_new = expected_accepted_length(est.global_alphas(), 2)
    assert e_copy > e_new > e_chat
    assert est.expected_accepted(2, ["copy", "new"]) == pytest.approx((e_copy + e_new) / 2)
    assert est.expected_accepted(2, ["copy", "chat"]) == pytest.approx((e_copy + e_chat) / 2)
    assert est.expected_accepted(2) == pytest.approx(e_new)
    # release forgets the request
    est.release("copy")
    assert est.num_tracked_requests == 1
    assert est.expected_accepted(2, ["copy"]) == pytest.approx(e_new)
    est.release("never-seen")  # ignored


def test_expected_accepted_all_is_consistent():
    est = AcceptanceEstimator(3, profile=[0.9, 0.5, 0.2])
    est.update("a", 3, 1)
    all_ks = est.expected_accepted_all(["a"])
    assert len(all_ks) == 4 and all_ks[0] == 0.0
    for k in range(4):
        assert all_ks[k] == pytest.approx(est.expected_accepted(k, ["a"]))
    assert all_ks == sorted(all_ks)  # more drafts never lower the expectation


def test_initial_alpha_before_any_data():
    est = AcceptanceEstimator(3, initial_alpha=0.6)
    assert est.global_alphas() == [0.6, 0.6, 0.6]


def test_load_profile_and_to_profile_round_trip(tmp_path):
    est = AcceptanceEstimator(3, profile=[0.9, 0.7, 0.4])
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"name": "copy-heavy", **est.to_profile()}))
    assert load_acceptance_profile(path) == [0.9, 0.7, 0.4]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[0.5]", "must be a JSON object with 'acceptance_per_position'"),
        ('{"acceptance_per_position": []}', "must be a non-empty list"),
        ('{"acceptance_per_position": [0.5, 1.5]}', r"acceptance_per_position\[1\] must be in \[0, 1\], got 1.5"),
        ('{"acceptance_per_position": [0.5, "x"]}', r"acceptance_per_position\[1\] must be a number"),
        ("{oops", "is not valid JSON"),
    ],
)
def test_load_profile_errors(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_acceptance_profile(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_acceptance_profile(tmp_path / "nope.json")


def test_memory_in_trials_gives_batch_1_the_evidence_of_a_large_batch():
    """A rare first-position acceptance (2.6%, chat) at one request per step: an EMA with a 20-step memory
    rests on 20 trials and mostly reads ~0; one with a 256-trial memory stays near the true rate, and a step
    of 256 trials moves it as far as 256 single-trial steps would."""
    rng = random.Random(5)
    steps = AcceptanceEstimator(1, profile=[0.026], prior_weight=20, ema_rate=0.05)
    trials = AcceptanceEstimator(1, profile=[0.026], prior_weight=20, memory_trials=256)
    low_steps = low_trials = 0
    for _ in range(4000):
        accepted = int(rng.random() < 0.026)
        steps.update_step(None, [1], [accepted], 1)
        trials.update_step(None, [1], [accepted], 1)
        low_steps += steps.global_alphas()[0] < 0.013
        low_trials += trials.global_alphas()[0] < 0.013
    assert low_steps > 1500 and low_trials < 400
    big, single = (AcceptanceEstimator(1, profile=[0.5], prior_weight=10_000, memory_trials=256) for _ in range(2))
    big.update_step(None, [1] * 256, [1] * 256, 1)
    for _ in range(256):
        single.update_step(None, [1], [1], 1)
    assert big.global_alphas()[0] == pytest.approx(single.global_alphas()[0], abs=1e-9) == pytest.approx(0.816, abs=1e-3)


def test_request_estimates_folded_lazily_equal_eager_ones():
    """Per-request outcomes are folded into the request's EMA when read (or every MAX_UNFOLDED_STEPS
    steps): reading after every step or only at the end gives the same estimate."""
    rng = random.Random(11)
    eager, lazy = (AcceptanceEstimator(3, profile=[0.5] * 3) for _ in range(2))
    for _ in range(150):
        accepted = [rng.randint(0, 3) for _ in range(2)]
        for est in (eager, lazy):
            est.update_step(["a", "b"], [3, 3], accepted, 3)
        eager.alphas("a"), eager.alphas("b")
    for rid in ("a", "b"):
        assert lazy.alphas(rid) == pytest.approx(eager.alphas(rid), abs=1e-12)
        assert lazy.observations(rid) == eager.observations(rid)
    assert len(lazy._unfolded.get("a", [])) < 64
