"""Host-overhead model of real steps, and the planner using it for cells it has not run."""

import pytest

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.planner import GoodputPlanner
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.step_overhead import StepOverheadModel

MIN_OBSERVED_STEPS = PlannerSettings().min_observed_steps
# No hysteresis, exploration, probes or explore budget; a fresh goodput table per observation.
UNIT = PlannerSettings(hysteresis=0.0, explore_every=None, replan_every=1, probe_margin=None, explore_budget=None)

BATCHES = (1, 8, 64, 256)
KS = (0, 1, 2, 3, 4)


def _true_residual(batch: int, k: int) -> float:
    return 2e-4 + 1e-4 * (k > 0) + 2e-5 * k + 1e-5 * batch + 5e-5 * batch * (k > 0) + 3e-6 * batch * k


def test_fit_recovers_per_step_per_request_speculation_and_draft_token_costs():
    model = StepOverheadModel()
    assert model.predict(64, 4) == 0.0 and model.coefficients == (0.0,) * 6  # no samples yet
    for batch in (1, 8, 64, 256):
        for k in (0, 2, 4):
            model.add(batch, k, _true_residual(batch, k))
    assert model.coefficients == pytest.approx((2e-4, 1e-4, 2e-5, 1e-5, 5e-5, 3e-6), rel=1e-6)
    assert model.predict(128, 3) == pytest.approx(_true_residual(128, 3), rel=1e-6)
    assert model.predict(128, 1) == pytest.approx(_true_residual(128, 1), rel=1e-6)  # k never observed
    base, per_position = model.speculative_line(128)  # what the adaptive policy prices budgets with
    assert base + per_position * 128 * 2.5 == pytest.approx(model.predict(128, 2.5), rel=1e-12)


def test_one_slow_step_does_not_bend_the_fit():
    """A one-off 65 ms step (n-gram catch-up of every prompt) among normal ones: the cell medians decide."""
    model = StepOverheadModel()
    for batch in (1, 8, 64, 256):
        for k in (0, 2, 4):
            for _ in range(3):
                model.add(batch, k, _true_residual(batch, k))
    model.add(64, 2, 0.065)
    assert model.predict(128, 1) == pytest.approx(_true_residual(128, 1), rel=1e-6)
    assert model.predict(1, 4) == pytest.approx(_true_residual(1, 4), rel=1e-6)


def test_a_step_timed_before_its_gpu_work_ran_is_left_out():
    """The H100 case (2026-12-06): the first overlapped step of a ramp to batch 4, timed launch to launch at
    0.4 ms against a probed 1.93 ms, the only sample of its cell (batch 2). Kept in a least-squares fit, it bends it (here
    a per-step term of -0.16 ms, a per-draft-position term 1.9x the true one; on the H100 a speculative step at
    batch 4 was priced at 3.2 ms of host work, 0.4 ms measured, and the adaptive policy ran k = 0 through a
    phase where static k = 4 ran 1.47x no spec). Left out, the fit is the one without it. A step merely
    faster than its probe (noise) is a sample."""
    probed = 1.93e-3

    def observed(model: StepOverheadModel, with_probe: bool) -> StepOverheadModel:
        for _ in range(4):
            for batch, k, residual in [(1, 3, 4.1e-4), (1, 4, 4.3e-4), (1, 5, 4.5e-4), (4, 2, 4.2e-4),
                                       (4, 0, 1.6e-4), (1, 0, 1.0e-4)]:
                assert model.add(batch, k, residual, (probed + 2e-4 * k) if with_probe else None)
        return model

    clean, guarded, unguarded = (observed(StepOverheadModel(), True) for _ in range(3))
    assert guarded.add(2, 0, 0.397e-3 - probed, probed) is False  # 21% of its probe: cut short
    assert guarded.coefficients == clean.coefficients
    unguarded.add(2, 0, 0.397e-3 - probed)  # without the probed price (a caller that does not pass it)
    # the robust fit (huber_fit) weighs that lone cell down on its own: without it, a per-step term of -0.16 ms
    assert unguarded.coefficients[0] > 0 and unguarded.predict(4, 4) == pytest.approx(clean.predict(4, 4), rel=0.02)
    assert clean.add(4, 0, -0.3e-3, probed)  # 84% of the probe: noise, kept
    cells = {(c["batch"], c["k"]): c for c in guarded.cells()}  # what a report shows of the fit
    assert (2, 0) not in cells and cells[(4, 0)] == {"batch": 4, "k": 0, "median_seconds": 1.6e-4, "samples": 4}


def test_a_short_step_pairs_with_its_long_neighbour():
    """The H100 case (2026-12-07 16:32 UTC, the draft model at batch 128): two back-to-back k = 1 steps read 19.7
    and 4.7 ms against a probed 10.5, the first stretched by host work that delayed its end while the second's
    GPU work ran. The pair is one sample at their mean residual, whichever comes first; a short step beside a
    step of another (batch, k) is still left out."""
    probed = 10.5e-3
    long_first = StepOverheadModel()
    assert long_first.add(128, 1, 19.7e-3 - probed, probed)
    assert long_first.add(128, 1, 4.7e-3 - probed, probed) is False
    short_first = StepOverheadModel()
    assert short_first.add(128, 1, 4.7e-3 - probed, probed) is False
    assert short_first.add(128, 1, 19.7e-3 - probed, probed)
    for model in (long_first, short_first):
        assert model.cells() == [{"batch": 128, "k": 1, "median_seconds": pytest.approx(1.7e-3), "samples": 1}]
    apart = StepOverheadModel()
    assert apart.add(128, 0, 0.5e-3, 7e-3)
    assert apart.add(128, 1, 4.7e-3 - probed, probed) is False  # beside a plain step: not its pair
    assert apart.add(64, 1, 3e-3, probed)  # nor the next step's at another batch
    assert apart.add(128, 1, 2e-3, probed)  # a short step pairs with the very next sample only
    assert {(c["batch"], c["k"]): c["median_seconds"] for c in apart.cells()} == {
        (128, 0): 0.5e-3, (64, 1): 3e-3, (128, 1): 2e-3}


def test_prediction_is_never_negative():
    model = StepOverheadModel(min_samples=1)
    model.add(8, 0, -1e-3)  # a step faster than the probe (noise)
    assert model.predict(8, 0) == 0.0


def test_the_fit_follows_new_cells_at_once_and_old_cells_every_refit_every_samples():
    model = StepOverheadModel(min_samples=1, refit_every=4)
    model.add(8, 0, 1e-3)
    assert model.predict(8, 0) == pytest.approx(1e-3)
    model.add(8, 2, 5e-3)  # a new cell: refit before the next prediction
    assert model.predict(8, 2) == pytest.approx(5e-3)
    for _ in range(2):  # known cell, fewer than refit_every new samples: the fit stands
        model.add(8, 2, 9e-3)
    assert model.predict(8, 2) == pytest.approx(5e-3)
    model.add(8, 2, 9e-3)
    model.add(8, 2, 9e-3)  # the 4th new sample: refit (median of that cell is now 9e-3)
    assert model.predict(8, 2) == pytest.approx(9e-3)


def test_a_new_plain_cell_waits_for_refit_every_and_refit_if_due_fits_ahead_of_predictions():
    """A closed batch's tail has a new batch size every step: new k = 0 cells join the fit every
    refit_every samples, not one refit per step; refit_if_due lets a caller with idle time fit early."""
    model = StepOverheadModel(min_samples=1, refit_every=3)
    model.add(8, 2, 5e-3)
    before = model.coefficients
    model.add(100, 0, 1e-3)  # new plain cell: the fit stands
    assert model.coefficients == before
    model.add(90, 0, 1e-3)
    model.refit_if_due()  # not due yet: nothing changes
    assert model.coefficients == before
    model.add(80, 0, 1e-3)  # the 3rd new sample: due
    model.refit_if_due()
    assert model._coef is not None and model.coefficients != before
    model.add(16, 3, 7e-3)  # a new speculative cell: due at once
    assert model._coef is None
    model.refit_if_due()
    assert model._coef is not None


def _probe() -> StepCostModel:
    """A probe that sees only memory-bound graph replays: 10 ms whatever the batch and k."""
    model = StepCostModel()
    for b in BATCHES:
        for k in KS:
            model.add(b, k, 0.010)
    return model


def _real_seconds(batch: int, k: int) -> float:
    """What real steps take: the graph plus host work of 30 us per request on speculative steps and
    40 us per request per drafted token."""
    return 0.010 + 3e-5 * batch * (k > 0) + 4e-5 * batch * k


def test_planner_corrects_cells_it_has_not_run_from_the_steps_it_has():
    alphas = [0.6] * 4
    planner = GoodputPlanner(_probe(), AcceptanceEstimator(4, profile=alphas), KS, UNIT)
    assert planner.best_k(256) == 4  # the probe alone: drafting looks free
    for batch in (8, 64):
        for k in (0, 2, 4):
            for _ in range(MIN_OBSERVED_STEPS):
                planner.observe_step_time(batch, k, _real_seconds(batch, k))
    # Never ran k = 1, 3: the learned overhead prices them.
    for k in KS:
        assert planner.step_seconds(64, k) == pytest.approx(_real_seconds(64, k), rel=1e-6)
    # Never ran batch 256: priced as batch 64 (never above the truth), until a step there is seen.
    for k in KS:
        assert planner.step_seconds(256, k) == pytest.approx(_real_seconds(64, k), rel=1e-6)
        assert planner.step_seconds(256, k) <= _real_seconds(256, k)
    planner.observe_step_time(256, 4, _real_seconds(256, 4))  # one step: believed at once, and 256 is seen
    for k in KS:
        assert planner.step_seconds(256, k) == pytest.approx(_real_seconds(256, k), rel=1e-6)

    def true_goodput(k: int) -> float:
        expected = sum(0.6**j for j in range(1, k + 1))
        return (expected + 1) * 256 / _real_seconds(256, k)

    assert planner.best_k(256) == max(KS, key=true_goodput) != 4


def test_observed_cells_use_their_median():
    planner = GoodputPlanner(_probe(), AcceptanceEstimator(4, profile=[0.5] * 4), KS, UNIT)
    for seconds in (0.020, 0.021, 0.019, 0.050):  # one slow outlier
        planner.observe_step_time(8, 2, seconds)
    assert planner.step_seconds(8, 2) == pytest.approx(0.0205)


def test_a_slow_first_step_is_believed_at_once_and_k0_gets_no_overhead_term():
    planner = GoodputPlanner(_probe(), AcceptanceEstimator(4, profile=[0.5] * 4), KS, UNIT)
    for batch in (8, 64):
        for k in (2, 4):
            for _ in range(MIN_OBSERVED_STEPS):
                planner.observe_step_time(batch, k, _real_seconds(batch, k))
    assert planner.overhead.coefficients[0] + 256 * planner.overhead.coefficients[3] > 0  # speculative cells only:
    assert planner.overhead.predict(256, 0) == 0.0  # not read as a plain step's residual, no plain step seen
    assert planner.step_seconds(256, 0) == pytest.approx(0.010)  # and the planner prices k = 0 at the probe
    prior = planner.step_seconds(256, 1)
    planner.observe_step_time(256, 1, 3 * prior)  # one step, much slower than predicted: believed
    assert planner.step_seconds(256, 1) == pytest.approx(3 * prior)
    planner.observe_step_time(256, 3, 0.5 * planner.step_seconds(256, 3))  # faster: the prior stands
    assert planner.step_seconds(256, 3) > planner.observed.measured(256, 3)


def test_unvisited_k_inherits_what_the_fit_missed_on_its_bucket():
    planner = GoodputPlanner(_probe(), AcceptanceEstimator(4, profile=[0.5] * 4), KS, UNIT)
    for _ in range(MIN_OBSERVED_STEPS):  # batch 8: real steps as modelled; the fit learns them
        for k in (0, 2, 4):
            planner.observe_step_time(8, k, _real_seconds(8, k))
    before = planner.step_seconds(64, 3)
    for _ in range(MIN_OBSERVED_STEPS):  # batch 64: k = 2 and 4 run 5 ms slower than anything predicts
        for k in (2, 4):
            planner.observe_step_time(64, k, planner._prior(64, k) + 0.005)
    miss = planner._bucket_miss(64, 3)
    assert miss > 0.003
    assert planner.step_seconds(64, 3) == pytest.approx(planner._prior(64, 3) + miss)
    assert planner.step_seconds(64, 3) > before
    # Other buckets: only their own cells' misses (batch 8's are small), none of batch 64's 5 ms.
    assert abs(planner._bucket_miss(8, 3)) < 0.001
    assert planner.step_seconds(8, 3) == pytest.approx(planner._prior(8, 3) + planner._bucket_miss(8, 3))
    assert planner.step_seconds(64, 0) == pytest.approx(0.010)  # k = 0 never inherits a speculative miss


def test_terms_the_cells_cannot_identify_stay_zero():
    """Steps at k = 4 only (batches 1 and 4): the fit is a + b * batch, flat in k, not a minimum-norm split
    that puts most of the slope on the per-drafted-token term and prices k = 4 far above k = 1 (at batch 16,
    beyond the batches seen, as at batch 4)."""
    model = StepOverheadModel(min_samples=1)
    for _ in range(4):
        model.add(1, 4, 0.0003)
        model.add(4, 4, 0.0006)
    a, f, d, b, spec, c = model.coefficients
    assert f == d == spec == c == 0.0
    assert a == pytest.approx(0.0002) and b == pytest.approx(0.0001)
    assert model.predict(3, 4) == pytest.approx(model.predict(3, 1)) == pytest.approx(0.0005)
    assert model.predict(16, 4) == pytest.approx(model.predict(16, 1)) == pytest.approx(0.0006)
    model.add(4, 1, 0.0003)  # a second k at batch 4 identifies a draft-length term: the per-step one first
    a, f, d, b, spec, c = model.coefficients
    assert (a, f, d, b, spec, c) == pytest.approx((-0.0002, 0.0, 0.0001, 0.0001, 0.0, 0.0), abs=1e-12)
    for batch, k, seconds in ((1, 4, 0.0003), (4, 4, 0.0006), (4, 1, 0.0003)):
        assert model.predict(batch, k) == pytest.approx(seconds)


def test_per_request_terms_stay_nonnegative_when_nearby_ks_disagree_by_noise():
    """Cells at k = 3 and 4 only (batches 1-16), k = 4 a little cheaper than k = 3 by noise: the free fit
    gives a negative per-drafted-token term and prices k = 1 above k = 4 at batch 64; the constrained one
    puts the cost on the per-request speculative term and never makes a shorter draft dearer."""
    import numpy as np

    cells = {(1, 0): 1e-4, (4, 0): 1e-4, (16, 0): 1e-4,
             (1, 3): 1.7e-4, (1, 4): 1.6e-4, (4, 3): 3.9e-4, (4, 4): 3.4e-4, (16, 3): 1.15e-3, (16, 4): 0.98e-3}
    keys = np.asarray(list(cells), dtype=float)
    features = np.stack([np.ones(len(keys)), keys[:, 0], keys[:, 0] * (keys[:, 1] > 0), keys[:, 0] * keys[:, 1]], 1)
    free_fit = np.linalg.lstsq(features, np.asarray(list(cells.values())), rcond=None)[0]
    assert free_fit[3] < 0  # the premise: unconstrained, k = 1 would cost more than k = 4
    model = StepOverheadModel(min_samples=1)
    for (batch, k), seconds in cells.items():
        model.add(batch, k, seconds)
    a, f, d, b, spec, c = model.coefficients
    assert min(f, d, b) >= 0 and spec > 0 and c == 0.0
    assert model.predict(64, 1) <= model.predict(64, 4)
    assert model.predict(16, 4) == pytest.approx(1.065e-3, rel=0.15)  # still fits the cells it saw


# The H100 run of 2026-12-06 (the EAGLE head for Qwen2.5-Coder-1.5B, code-edit): real minus probed step
# seconds by (batch, k), median steps of each static line.
H100_RESIDUALS = {
    (1, 0): 0.03e-3, (1, 1): 0.26e-3, (1, 2): 0.25e-3, (1, 3): 0.30e-3, (1, 4): 0.31e-3,
    (4, 0): 0.13e-3, (4, 1): 0.21e-3, (4, 2): 0.24e-3, (4, 3): 0.28e-3, (4, 4): 0.29e-3,
    (16, 0): 0.10e-3, (16, 1): 0.26e-3, (16, 2): 0.35e-3, (16, 3): 0.44e-3, (16, 4): 0.50e-3,
    (64, 0): 0.22e-3, (64, 1): 0.86e-3, (64, 2): 0.69e-3, (64, 3): 0.87e-3, (64, 4): 0.91e-3,
}


def test_steps_seen_at_batch_1_only_do_not_price_larger_batches_per_request():
    """From batch-1 steps alone a speculative step's extra 0.26-0.31 ms cannot be split between per step
    and per request. Read per request (the fit before) it priced batch 16 at ~4 ms, above any gain, and
    the policies ran k = 0 there for good; read per step it is at most as wrong as the growth it has not
    seen, and the first steps at the new batch correct it."""
    model = StepOverheadModel(min_samples=1)
    for (batch, k), residual in H100_RESIDUALS.items():
        if batch == 1:
            model.add(batch, k, residual)
    for batch in (4, 16):
        for k in (1, 2, 3, 4):
            assert model.predict(batch, k) == pytest.approx(H100_RESIDUALS[batch, k], abs=0.25e-3)
    for (batch, k), residual in H100_RESIDUALS.items():  # every cell seen: within 0.2 ms of each
        if batch > 1:
            model.add(batch, k, residual)
    for (batch, k), residual in H100_RESIDUALS.items():
        assert model.predict(batch, k) == pytest.approx(residual, abs=0.2e-3)


def test_a_speculative_step_beyond_the_batches_seen_is_priced_as_at_the_largest_seen():
    """adaptive on the H100 (2026-12-06, the EAGLE head, code-edit): speculative steps at batches 1, 2 and 4
    only, the residual a little larger at 4. Fitted, that growth became a per-drafted-token term that
    priced 6.7 ms of host work at batch 16 and k = 6, and the policy ran k = 0 at batch 16 for all 128
    steps where static k = 2 ran 1.25x no spec. Beyond the batches seen, the largest one's residual
    holds; below it, the fit stands; the first speculative step at a new batch moves the bound."""
    model = StepOverheadModel(min_samples=1)
    seen = {(1, 3): 0.80e-3, (1, 4): 0.82e-3, (2, 3): 0.86e-3, (4, 3): 0.95e-3, (4, 4): 1.00e-3, (4, 5): 1.08e-3}
    for batch in (1, 2, 4, 16, 64):
        model.add(batch, 0, 0.1e-3)
    for (batch, k), residual in seen.items():
        model.add(batch, k, residual)
    assert model.coefficients[5] > 0  # the per-drafted-token term the growth from batch 1 to 4 fits
    for batch in (16, 64, 256):
        for k in (1, 3, 6):
            assert model.predict(batch, k) == pytest.approx(model.predict(4, k), rel=1e-9)
            assert model.predict(batch, k) < 1.3e-3
    base, per_position = model.speculative_line(16)  # ragged budgets: the same prices per mean k
    assert base + per_position * 16 * 2.5 == pytest.approx(model.predict(4, 2.5), rel=1e-9)
    assert model.predict(2, 3) < model.predict(4, 3)  # within the batches seen: the fit
    model.add(16, 3, 0.9e-3)  # a step at batch 16: 16 is now seen
    assert model.predict(16, 3) == pytest.approx(0.9e-3, abs=0.1e-3)


def test_a_cell_of_many_steps_outweighs_cells_of_one():
    """The H100 case (2026-12-06, deterministic code-edit batch 4): plain steps at batch 4 measured 0.16 ms over
    their probe in 127 samples, and single steps at other batches (a ramp, a tail) sat far off that line. One
    median per cell, equally weighted, priced the batch-4 plain step at ~1 ms; weighted by samples, the fit
    runs through the cell that 127 steps agree on and still through the well-sampled speculative cells."""
    model = StepOverheadModel(min_samples=1)
    for _ in range(127):
        model.add(4, 0, 0.16e-3)
    model.add(2, 0, 1.2e-3)  # single steps, off the line
    model.add(13, 0, -0.3e-3)
    for _ in range(12):
        model.add(4, 4, 0.45e-3)
    assert model.predict(4, 0) == pytest.approx(0.16e-3, abs=0.03e-3)
    assert model.predict(4, 4) == pytest.approx(0.45e-3, abs=0.03e-3)
    cells = {(c["batch"], c["k"]): c["samples"] for c in model.cells()}
    assert cells[(4, 0)] == 127 and cells[(2, 0)] == 1


def test_a_lone_eager_step_does_not_bend_the_fit():
    """The H100 run of 2026-12-06 (the EAGLE head for Qwen2.5-Coder-1.5B, adaptive, code-edit): its fit's cells at
    the end of batch 64, among them the only step at k = 7 (eager, 55 ms). In least squares that cell made a
    per-draft-position term of 1.8 ms and a per-step one of -6.2 ms, and priced a step at batch 64 and k = 3
    3.7 ms above its probe; under Huber's loss the fit is the one without that cell."""
    import numpy as np

    cells = [(1, 3, 0.607, 25), (1, 4, 0.751, 30), (1, 5, 0.644, 8), (2, 3, 0.320, 7), (2, 4, 0.210, 2),
             (3, 3, 0.403, 1), (3, 4, 0.419, 4), (3, 5, 0.677, 1), (3, 6, 0.608, 1), (3, 7, 50.17, 1),
             (4, 3, 0.290, 4), (4, 4, 0.219, 54), (4, 5, 0.461, 2), (6, 4, 0.502, 2), (7, 3, 0.364, 3),
             (8, 3, 0.452, 2), (11, 3, 0.625, 2), (14, 3, 0.840, 3), (16, 3, 0.430, 53), (16, 4, 0.611, 1),
             (22, 2, 0.451, 1), (23, 2, 1.324, 1), (34, 2, 1.749, 1), (48, 1, 1.246, 2), (64, 2, 0.696, 15)]

    def fitted(keep) -> StepOverheadModel:
        model = StepOverheadModel(max_samples=1000, min_samples=1)
        for batch, k, ms, samples in filter(keep, cells):
            for _ in range(samples):
                model.add(batch, k, ms * 1e-3)
        return model

    everything, without = fitted(lambda c: True), fitted(lambda c: c[1] != 7)
    for batch, k in ((1, 3), (4, 4), (16, 3), (64, 1), (64, 3)):
        assert everything.predict(batch, k) == pytest.approx(without.predict(batch, k), abs=0.05e-3)
        assert everything.predict(batch, k) < 1.0e-3
    features = np.asarray([[1.0, 1.0, k, b, b, b * k] for b, k, _, _ in cells])
    least_squares = np.linalg.lstsq(features, np.asarray([ms * 1e-3 for *_, ms, _ in cells]), rcond=None)[0]
    assert features[-1] @ least_squares > 2e-3  # the premise: unweighted least squares prices (64, 2) > 2 ms


def test_plain_steps_are_priced_at_their_own_residual_once_seen():
    """The adaptive policy prices a plain step at its probe plus the plain steps' measured residual (H100,
    2026-12-06: 0.16 ms at batch 4 over 127 steps), as speculative steps pay theirs; before any plain step is
    seen, nothing (from speculative cells alone the per-step term carries speculative work)."""
    model = StepOverheadModel(min_samples=1)
    for _ in range(8):
        model.add(4, 3, 0.5e-3)
        model.add(4, 4, 0.55e-3)
    assert model.predict(4, 3) == pytest.approx(0.5e-3) and model.predict(4, 0) == 0.0
    for _ in range(30):
        model.add(4, 0, 0.16e-3)
    assert model.predict(4, 0) == pytest.approx(0.16e-3, abs=0.01e-3)
    assert model.predict(4, 3) == pytest.approx(0.5e-3, abs=0.02e-3)


def test_a_term_fixed_at_zero_makes_room_for_the_next_identifiable_one():
    """Cells at batch 4 (k = 4, many steps) and at batch 128 (k = 1, one step): the per-draft-position term comes
    before the per-request one and fits negative (the smaller k has the larger residual). Fixed at 0 alone, it left
    a per-step term that priced batch 128 at batch 4's host work (a replay of an H100's prices, 2026-12-07: 0.39 ms
    against 2.86); the per-request term now takes its place and fits both cells."""
    model = StepOverheadModel()
    for _ in range(241):
        model.add(4, 4.0, 0.00038)
    model.add(128, 1.0, 0.00286)
    assert model.predict(128, 2) == pytest.approx(0.00286, rel=0.02)
    assert model.predict(4, 4) == pytest.approx(0.00038, rel=0.02)
    a, f, d, b, s, c = model.coefficients
    assert d == 0.0 and b == pytest.approx(20e-6, rel=0.05)
