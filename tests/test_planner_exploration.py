"""Goodput planner on synthetic cost / acceptance tables: where it tries a k it has not measured (probes within
the margin, explorations and their budget, re-probes of stale near-ties) and where it leaves zero alone. The
argmax, regimes and hysteresis: test_planner.py."""

import random

import pytest

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.spec.catch_up import CatchUpCost
from dynaspec.spec.planner import GoodputPlanner
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import StepOutcome
from tests.test_planner import _cost, _planner, _settings


def test_probe_runs_an_unvisited_neighbour_within_the_margin_until_it_is_measured():
    cost = _cost(lambda b, k: 0.010 + 0.001 * k, ks=(0, 3, 4))
    # alpha 0.9: goodput(4) = 4.095 / 0.014 = 292.5, goodput(3) = 3.439 / 0.013 = 264.5, 9.6% below
    planner = _planner(cost, [0.9] * 4, ks=(0, 3, 4), hysteresis=0.05, probe_margin=0.10)
    ks = []
    for _ in range(4):
        ks.append(planner.draft_len(1, 1))
        assert planner.last_decision["reason"] == "probe" and planner.last_decision["held_k"] == 4
        planner.observe_step_time(1, 3, 0.008)  # k = 3 runs far faster than its probed cost
    assert ks == [3, 3, 3, 3]
    assert planner.draft_len(1, 1) == 3 and planner.last_decision["reason"] == "argmax"  # 430 tok/s: switch
    assert planner.draft_len(1, 1) == 3  # k = 4 (292.5) is not within 10% of 430: no probe back
    narrow = _planner(cost, [0.9] * 4, ks=(0, 3, 4), probe_margin=0.05)
    assert narrow.draft_len(1, 1) == 4  # 9.6% is outside a 5% margin
    assert _planner(cost, [0.9] * 4, ks=(0, 3, 4)).draft_len(1, 1) == 4  # no probe_margin: no probes
    for bad in (1.0, -0.1, True):  # validated by the settings
        with pytest.raises(ValueError, match="probe_margin"):
            PlannerSettings(probe_margin=bad)


def test_exploration_probes_the_next_k_and_learns_that_speculation_pays():
    # True acceptance 0.9 and memory-bound cost, but the profile says 0.05: the planner starts at k=0.
    cost = _cost(lambda b, k: 0.02 + 0.001 * k, batches=(1, 8), ks=(0, 2, 4))
    estimator = AcceptanceEstimator(4, profile=[0.05] * 4, prior_weight=5, ema_rate=0.2)
    planner = GoodputPlanner(cost, estimator, [0, 2, 4], _settings(hysteresis=0.05, explore_every=5))
    rng = random.Random(0)
    ks = []
    for step in range(200):
        k = planner.draft_len(4, 4)
        ks.append(k)
        if planner.last_decision["reason"] == "explore":
            held = planner.last_decision["held_k"]
            assert k == planner.candidate_ks[planner.candidate_ks.index(held) + 1]
        drafted, accepted = [k] * 4, []
        for _ in range(4):
            a = 0
            while a < k and rng.random() < 0.9:
                a += 1
            accepted.append(a)
        planner.observe_acceptance(k, drafted, accepted)
    assert ks[:4] == [0, 0, 0, 0]
    assert ks[4] == 2  # the 5th decision below the max explores the next candidate
    assert ks[-20:] == [4] * 20  # settled on the max once acceptance was seen
    assert planner.estimator.global_alphas()[0] > 0.8


def test_no_exploration_where_even_full_acceptance_cannot_pay():
    # Batch 128: a k = 2 step costs 3.5x a plain one (host-bound), so even 3 tokens per request lose.
    cost = _cost(lambda b, k: 0.006 if k == 0 else 0.021, batches=(8, 128), ks=(0, 2))
    planner = _planner(cost, [0.05, 0.05], ks=(0, 2), explore_every=5)
    assert {planner.draft_len(128, 128) for _ in range(50)} == {0}
    assert not planner.could_pay(128, 2, planner.goodputs(128)[0])
    # Batch 8 with the same acceptance: k = 2 costs 1.2x, so full acceptance would win: it explores.
    cost = _cost(lambda b, k: 0.006 if k == 0 else 0.0072, batches=(8, 128), ks=(0, 2))
    planner = _planner(cost, [0.05, 0.05], ks=(0, 2), explore_every=5)
    ks = [planner.draft_len(8, 8) for _ in range(12)]
    assert ks == [0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 2, 2]  # two steps each: the second is a clean time sample


def test_explore_budget_spaces_costly_explorations_and_leaves_cheap_ones_alone():
    """With a 1% budget: where an exploration costs little (k = 2 steps 5% slower than plain ones) it still
    happens every explore_every decisions; where it costs a lot (k = 2 steps 1.6x plain, plus a catch-up of
    two plain steps) it waits until 1% of the decisions' predicted time covers it, so explorations take
    about 1% of the time."""
    def decisions(batch: int, k2_cost: float, budget: float | None, backlog_tokens: int, steps: int) -> list[int]:
        cost = _cost(lambda b, k: 0.005 if k == 0 else k2_cost, batches=(1, 64), ks=(0, 2))
        catch_up = CatchUpCost(1e-6)
        planner = _planner(cost, [0.05, 0.05], ks=(0, 2), explore_every=64, explore_budget=budget,
                           catch_up=catch_up, backlog=lambda: (backlog_tokens, 10**6))
        return [planner.draft_len(batch, batch) for _ in range(steps)]

    # batch 1: an exploration costs 2 x 0.5 ms + 0.1 ms catch-up; 64 decisions earn 3.2 ms
    cheap = decisions(1, 0.0055, 0.01, 100, 200)
    assert cheap == decisions(1, 0.0055, None, 100, 200)
    assert [i for i, k in enumerate(cheap) if k] == [63, 64, 128, 129, 193, 194]
    costly = decisions(64, 0.008, 0.01, 10_000, 2000)  # 2 x 3 ms + 10 ms catch-up = 16 ms
    starts = [i for i, k in enumerate(costly) if k and not costly[i - 1]]
    assert costly[:320].count(2) == 0 and len(starts) >= 2
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= 16e-3 / (0.01 * 0.005) for gap in gaps), gaps  # 320 plain decisions earn 16 ms
    unbudgeted = decisions(64, 0.008, None, 10_000, 2000)
    assert unbudgeted.count(2) >= 4 * costly.count(2)  # every 65 decisions vs every ~322


def test_explore_budget_must_be_a_fraction():
    for bad in (0, 1.5, -0.1, True, "1%"):  # validated by the settings
        with pytest.raises(ValueError, match="explore_budget"):
            PlannerSettings(explore_budget=bad)


def test_exploration_off_never_leaves_zero():
    cost = _cost(lambda b, k: 0.02 + 0.001 * k, batches=(1,), ks=(0, 2))
    planner = _planner(cost, [0.05, 0.05], ks=(0, 2), explore_every=None)
    assert {planner.draft_len(1, 1) for _ in range(100)} == {0}


def test_probe_from_k0_runs_the_best_predicted_speculative_k_until_it_is_measured():
    """A bucket that never speculated predicts every speculative cell from other batch sizes: the best of
    them, within the margin of k = 0, runs until its cell is measured, then the measurement decides."""
    cost = _cost(lambda b, k: 0.010 + 0.004 * k, ks=(0, 1, 3))
    # alpha 0.5: goodput(0) = 100, goodput(1) = 1.5 / 0.014 = 107, goodput(3) = 1.875 / 0.022 = 85;
    # k = 0 is held by hysteresis (a 10% hurdle), so only the probe can try k = 1.
    planner = _planner(cost, [0.5] * 3, ks=(0, 1, 3), hysteresis=0.10, probe_margin=0.10)
    planner._current[planner.bucket(1)] = 0
    ks = []
    for _ in range(4):
        ks.append(planner.draft_len(1, 1))
        assert planner.last_decision["reason"] == "probe" and planner.last_decision["held_k"] == 0
        planner.observe_step_time(1, 1, 0.011)  # k = 1 runs faster than predicted: 136 tok/s
    assert ks == [1, 1, 1, 1]
    assert planner.draft_len(1, 1) == 1 and planner.last_decision["reason"] == "argmax"
    slow = _planner(cost, [0.5] * 3, ks=(0, 1, 3), hysteresis=0.10, probe_margin=0.10)
    slow._current[slow.bucket(1)] = 0
    assert slow.draft_len(1, 1) == 1 and slow.last_decision["reason"] == "probe"
    slow.observe_step_time(1, 1, 0.030)  # one step far slower than predicted (50 tok/s) ends the probe
    assert slow.draft_len(1, 1) == 0 and slow.last_decision["reason"] == "argmax"
    far = _planner(cost, [0.1] * 3, ks=(0, 1, 3), hysteresis=0.10, probe_margin=0.10)
    far._current[far.bucket(1)] = 0  # alpha 0.1: goodput(1) = 79, 21% below k = 0: no probe
    assert far.draft_len(1, 1) == 0 and far.last_decision["reason"] == "argmax"


def test_without_a_profile_one_early_miss_does_not_stop_drafting():
    """The engine's planner with no acceptance profile (build_goodput_planner): the pooled estimate starts at
    alpha 0.5 weighted as PlannerSettings.cold_start_trials observations. The step costs are the H200's for the
    real Qwen pair (n-gram on code-edit, batch 1: 2.5 ms plain, 3.0 ms verifying 4), where k = 3 ran 1.8x.
    One first step whose n-gram found no match (drafted 0 of 4: position 0 counts as a miss) used to set the
    estimate to 0 and keep the planner at k = 0; now it keeps drafting, and a drafter that never matches
    still drives it back to k = 0 (here within 48 steps: speculation is cheap at these costs, so k = 1 pays
    down to alpha ~0.05, and the table is recomputed every replan_every observations)."""
    from dynaspec.spec.config import NGramDecodingConfig
    from dynaspec.spec.planner import build_goodput_planner

    cost = _cost(lambda b, k: 0.0025 + 0.000125 * k, batches=(1,), ks=(0, 1, 2, 3, 4))
    # no probes or explorations here (they would try k > 0 on their own): the estimate alone decides
    planner = build_goodput_planner(NGramDecodingConfig(max_draft_len=4), cost, probe_margin=None, explore_every=None)
    assert planner.draft_len(1, 1) > 0  # the cold start drafts
    planner.observe_acceptance(4, [0], [0], ["r"])
    assert planner.draft_len(1, 1) > 0  # one miss is not alpha = 0
    for _ in range(48):
        planner.observe_acceptance(4, [0], [0], ["r"])
    assert planner.draft_len(1, 1) == 0


def _held_at_zero_then_acceptance_rises(reprobe_after, decisions=160, probe_margin=0.10):
    """Batch 1: acceptance 0.25 while the planner learns (k = 0 is best: a k = 1 step costs 1.33 plain steps
    for 1.25 tokens, a near-tie), then every draft accepted. The k of every decision after the change."""
    cost = _cost(lambda b, k: 1.0 + 0.33 * k ** 0.7, batches=(1, 2), ks=(0, 1, 2, 3))
    planner = _planner(cost, [0.25] * 3, ks=(0, 1, 2, 3), ema_rate=0.05, hysteresis=0.02, probe_margin=probe_margin,
                       reprobe_after=reprobe_after)
    after = []
    for n in range(60 + decisions):
        k = planner.draft_len(1, 1, ["r"])
        rising = n >= 60
        accepted = k if rising else (1 if k and n % 4 == 0 else 0)  # 1 in 4 first positions before
        planner.observe(StepOutcome(request_ids=["r"], draft_len=k, drafted=[k], accepted=[accepted],
                                    seconds=cost.cost(1, k)))
        if rising:
            after.append(k)
    return after


def test_a_stale_near_tie_is_probed_again_and_found():
    """A k decided against on old acceptance data is probed again after reprobe_after decisions without a
    step of it (acceptance changes along a request; at k = 0 nothing is observed): the planner finds the
    rise and follows it; without the rule it stays at k = 0 (exploration off in both)."""
    assert set(_held_at_zero_then_acceptance_rises(None)) == {0}
    after = _held_at_zero_then_acceptance_rises(32)
    first = next(i for i, k in enumerate(after) if k)
    assert first <= 40 and after[-20:] == [3] * 20  # at most reprobe_after (+ the hold) later, then the max


def test_stale_cells_far_from_the_best_are_not_probed_again():
    """The re-probe is a probe: only for a neighbour predicted within probe_margin of the k in force."""
    assert set(_held_at_zero_then_acceptance_rises(32, probe_margin=0.01)) == {0}
