"""Trimming drafts by the drafter's confidence (`draft_len_policy: adaptive`, spec/confidence_calibration.py):
the calibration learns P(accepted | the drafter's probability, position) online, the policy keeps each
request's worthwhile prefix of what was drafted, and the engine stays token-identical to no speculation."""

from __future__ import annotations

import pytest

from dynaspec.spec.confidence_calibration import ConfidenceCalibration
from dynaspec.spec.policy import StepOutcome
from tests.adaptive_policies import K, injected_policy


def test_an_empty_cell_gives_the_prior_and_data_moves_it():
    calibration = ConfidenceCalibration(3, bins=10, prior_weight=4.0)
    assert calibration.probability(0, 0.95, prior=0.3) == pytest.approx(0.3)
    for _ in range(200):  # confident drafts accepted, doubtful ones rejected
        calibration.observe([0.95], accepted=1)
        calibration.observe([0.12], accepted=0)
    assert calibration.probability(0, 0.97, prior=0.3) > 0.95
    assert calibration.probability(0, 0.11, prior=0.3) < 0.02
    assert calibration.probability(0, 0.5, prior=0.3) == pytest.approx(0.3)  # a bin with no data
    assert calibration.probability(5, 0.97, prior=0.3) == 0.3  # a position past max_draft_len


def test_only_positions_whose_earlier_drafts_were_accepted_are_counted():
    calibration = ConfidenceCalibration(3, prior_weight=1.0)
    calibration.observe([0.9, 0.9, 0.9], accepted=1)  # position 0 accepted, 1 rejected, 2 never verified
    assert [calibration.samples(j) for j in range(3)] == [1.0, 1.0, 0.0]
    assert calibration.probability(0, 0.9, prior=0.0) == pytest.approx(0.5)  # (1 + 0) / (1 + 1)
    assert calibration.probability(1, 0.9, prior=0.0) == pytest.approx(0.0)


def test_recent_steps_weigh_more():
    calibration = ConfidenceCalibration(1, prior_weight=1e-9, window=64)
    for _ in range(1000):
        calibration.observe([0.8], accepted=1)
    for _ in range(200):  # the drafter's calibration shifted: the same confidence is now rejected
        calibration.observe([0.8], accepted=0)
    assert calibration.samples(0) <= 64 and calibration.probability(0, 0.8, prior=0.5) < 0.05


def test_the_policy_keeps_the_confident_drafts_and_cuts_the_doubtful_ones():
    """Verify is priced (10% of a plain step a position): with the calibration learned, a request whose
    drafts the drafter is sure of verifies all K, one it doubts verifies none; without confidence data the
    request estimates decide (both drafts kept where both requests accept)."""
    policy = injected_policy(0.1)
    both = ["sure", "doubt"]
    for _ in range(40):  # both requests accept often (their estimates), but only the confident drafts
        policy.observe(StepOutcome(both, K, drafted=[K, K], accepted=[K, K], draft_lens=[K, K]))
    assert policy.trim_drafts(both, [K, K], [[0.97] * K, [0.11] * K]) == [K, K]  # no calibration yet
    for _ in range(300):
        policy.observe(StepOutcome(both, K, drafted=[K, K], accepted=[K, 0], draft_lens=[K, K],
                                   confidence=[[0.97] * K, [0.11] * K]))
    assert policy.trim_drafts(both, [K, K], [[0.97] * K, [0.11] * K]) == [K, 0]
    assert policy.trim_drafts(both, [2, 1], [[0.97] * 2, [0.97]]) == [2, 1]  # never past what was drafted
    assert policy.stats()["trimmed_positions"] == K


def test_drafting_is_sunk_once_drafted_so_trimming_prices_only_the_verify():
    """An EAGLE head's chain costs ~0.25 of a plain step a position whatever the batch (one head forward a
    draft step), while verifying a position costs next to nothing at a small batch. With the probe's
    drafting share known (StepCostModel.drafting), trimming neither runs (it would stop the step from
    chaining and save nothing) nor, where it runs, cuts positions for their drafting; without it, every
    cent of T counts, as before."""
    from dynaspec.runtime.cost_model import StepCostModel
    from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
    from dynaspec.spec.adaptive import AdaptivePolicy
    from dynaspec.spec.planner_settings import PlannerSettings

    def policy(split: bool, verify_per_position: float) -> AdaptivePolicy:
        costs, drafting = StepCostModel(), StepCostModel()
        for batch in (1, 2, 4, 8, 64):
            for k in range(K + 1):
                costs.add(batch, k, 1.0 + 0.25 * k + verify_per_position * batch * k)
                drafting.add(batch, k, 0.25 * k)
        costs.drafting = drafting if split else None
        return AdaptivePolicy(costs, AcceptanceEstimator(K, blend_count=1.0), K, PlannerSettings())

    cheap = policy(split=True, verify_per_position=0.001)
    assert not cheap.trims_drafts_at(1) and not cheap.trims_drafts_at(4)  # K * 4 positions: 1.6% of a step
    assert cheap.trims_drafts_at(64)  # 64 * K positions: 26% of a step
    assert policy(split=False, verify_per_position=0.001).trims_drafts_at(4)  # the drafting taken for a verify
    # where it trims (batch 64), drafts the target accepts 1 in 5 are cut for what verifying them costs (13%
    # of a step for the 64 requests' 64 positions), not for their drafting (25% more a position)
    split, whole = policy(split=True, verify_per_position=0.001), policy(split=False, verify_per_position=0.001)
    ids = [f"r{i}" for i in range(64)]
    for p in (split, whole):
        for step in range(60):  # every request's drafts accepted 1 step in 5
            accepted = [int((i + step) % 5 == 0) for i in range(64)]
            p.observe(StepOutcome(ids, 1, drafted=[1] * 64, accepted=accepted, draft_lens=[1] * 64))
    limits, confidence = [1] * 64, [[0.5]] * 64
    # verifying the 64 positions: 6.4% more time for ~20% more tokens; with their drafting: 31% more
    assert sum(split.trim_drafts(ids, limits, confidence)) == 64
    assert sum(whole.trim_drafts(ids, limits, confidence)) == 0


def test_trimming_stops_where_trimmed_steps_take_longer_than_verifying_everything():
    """A trimmed step reads the drafter's confidences on the host between drafting and verifying, which
    costs the overlap of host and GPU work: where its steps (StepOutcome.planned: the k_i before the trim)
    take at least what the untrimmed step is priced at, trimming stops at that batch and below, and the
    allocations are replanned; where they take less, it goes on. The samples price the trimming only: the
    host-overhead fit, which prices the allocation, learns from untrimmed steps."""
    slow, fast = injected_policy(0.1), injected_policy(0.1)
    ids = [f"r{i}" for i in range(8)]
    for policy in (slow, fast):
        policy.settings = policy.settings.model_copy(update={"trim_min_saving": 0.0})
        assert policy.trims_drafts_at(8) and policy.trims_drafts_at(4)
    untrimmed = slow.step_seconds(8, 8 * K)  # 1 + 0.1 * 8 * K seconds: no overhead learned
    for step in range(3):
        for policy, seconds in ((slow, untrimmed + 0.2), (fast, untrimmed - 0.2)):
            policy.allocation(8, ids)
            policy.observe(StepOutcome(ids, K, drafted=[1] * 8, accepted=[1] * 8, draft_lens=[1] * 8,
                                       planned=[K] * 8, seconds=seconds))
        if step < 2:
            assert slow.trims_drafts_at(8)  # one or two slow steps are no verdict
    assert not slow.trims_drafts_at(8) and not slow.trims_drafts_at(4) and not slow.trims_drafts_at(2)
    assert slow.stats()["no_trimming_up_to_batch"] == 8 and not slow._tables
    assert fast.trims_drafts_at(8) and fast.stats()["no_trimming_up_to_batch"] == 0
    assert len(slow.overhead) == len(fast.overhead) == 0


def test_trimming_stops_where_it_keeps_every_draft():
    """A trim that keeps every draft paid the confidence read (and a chained step) for nothing: after
    `trim_verdict_steps` such trims in a row at a batch, trimming stops there and below, without a time verdict;
    one trim that cut something resets the count, and so does nothing a trim made before the calibration had
    data (it keeps what the estimates planned)."""
    policy = injected_policy(0.1)
    policy.settings = policy.settings.model_copy(update={"trim_min_saving": 0.0})
    ids = [f"r{i}" for i in range(8)]
    for _ in range(40):  # every request accepts every draft: nothing is worth cutting
        policy.observe(StepOutcome(ids, K, drafted=[K] * 8, accepted=[K] * 8, draft_lens=[K] * 8))
    sure, doubtful = [[0.97] * K] * 8, [[0.01] * K] * 8
    for _ in range(2 * policy.settings.trim_verdict_steps):  # an uninformed calibration: no verdict
        assert policy.trim_drafts(ids, [K] * 8, sure) == [K] * 8
    assert policy.trims_drafts_at(8)
    for _ in range(300):
        policy.calibration.observe([0.01] * K, accepted=0)
        policy.calibration.observe([0.97] * K, accepted=K)
    assert policy.trim_drafts(ids, [K] * 8, sure) == [K] * 8
    assert sum(policy.trim_drafts(ids, [K] * 8, doubtful)) < 8 * K  # cut: the count starts again
    for step in range(policy.settings.trim_verdict_steps):
        assert policy.trims_drafts_at(8)
        assert policy.trim_drafts(ids, [K] * 8, sure) == [K] * 8
    assert not policy.trims_drafts_at(8) and not policy.trims_drafts_at(4)
    assert policy.stats()["no_trimming_up_to_batch"] == 8


def test_trimming_prices_the_verify_alone_not_the_host_overhead():
    """Once drafted, a step pays its host work (drafting, the confidence read, committing) whatever the trim
    keeps: a learned per-step overhead of 3 s must not make verifying nothing look 3 s cheaper. Verifying
    costs 0.1 s a position here and every draft is accepted: everything is kept."""
    policy = injected_policy(0.1)
    ids = [f"r{i}" for i in range(4)]
    for _ in range(40):
        policy.observe(StepOutcome(ids, K, drafted=[K] * 4, accepted=[K] * 4, draft_lens=[K] * 4))
    for batch, k in ((1, 1), (2, 1), (4, 1), (4, 2), (8, 2)):  # every speculative step 3 s over its probe
        policy.overhead.add(batch, k, 3.0)
    policy.overhead.refit_if_due()
    assert policy.step_seconds(4, 4) > policy.step_seconds(4, 0) + 2.5
    assert policy.trim_drafts(ids, [K] * 4, [[0.9] * K] * 4) == [K] * 4
