"""The price probe (spec/price_probe.py): where k = 0 wins only by a speculative price read off too few steps near
the batch, the adaptive policy speculates two steps to measure it. Costs and step seconds are injected (no clock).

The scenario is the H100 draft-model sweep of 2026-12-07 in small: speculative steps at batch 1 run 4 ms over their
probe (one plain step 0.4 ms), so the host-overhead fit prices every speculative step 4 ms over its probe; at batch 4
the real residual is 0.4 ms, where speculation pays 1.4x."""

from __future__ import annotations

import random

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.acceptance_estimator import planning_estimator
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import StepOutcome
from dynaspec.spec.price_probe import PriceProbe
from dynaspec.spec.step_overhead import StepOverheadModel

K = 2
ALPHA = 0.5  # every request accepts each draft position with this probability (given the ones before)


def probed(batch: int, k: int) -> float:
    return 0.005 + 0.0005 * k


def residual_at_batch_1(k: int) -> float:
    return 0.004 if k else 0.0004


def _policy(residual_at_4, price_probe: PriceProbe | None = None) -> tuple[AdaptivePolicy, list[str]]:
    """The policy after batch 1, then 60 decisions at batch 4 with that residual(k); returns it and the reasons."""
    costs = StepCostModel()
    for batch in range(1, 9):
        for k in range(K + 1):
            costs.add(batch, k, probed(batch, k))
    settings = PlannerSettings(explore_every=None, drain_tolerance=None, replan_every=4)
    policy = AdaptivePolicy(costs, planning_estimator(K, None, settings), K, settings)
    if price_probe is not None:
        policy.price_probe = price_probe
    rng = random.Random(0)

    def step(ids: list[str], residual) -> str:
        lens = policy.draft_lens(len(ids), len(ids), ids)
        accepted = []
        for k in lens:
            a = 0
            while a < k and rng.random() < ALPHA:
                a += 1
            accepted.append(a)
        top = max(lens)
        policy.observe(StepOutcome(ids, top, drafted=list(lens), accepted=accepted, draft_lens=list(lens),
                                   seconds=probed(len(ids), top) + residual(top)))
        policy.refresh(len(ids), ids)
        return policy.last_decision["reason"] if top or policy.last_decision["reason"] != "allocate" else "k=0"

    policy.observe(StepOutcome(["p"], 0, drafted=[0], accepted=[0], draft_lens=[0],
                               seconds=probed(1, 0) + residual_at_batch_1(0)))
    for _ in range(16):
        step(["a"], residual_at_batch_1)
    policy.release("a")
    return policy, [step(["r0", "r1", "r2", "r3"], residual_at_4) for _ in range(60)]


def test_the_fit_from_batch_1_holds_k0_at_batch_4_without_the_probe():
    """The failure the rule mends: priced 4 ms over its probe, a speculative step at batch 4 loses to k = 0 and
    nothing measures it again (exploration off)."""
    policy, reasons = _policy(lambda k: 0.0004 if k else 0.00015, PriceProbe(min_samples=0))
    assert reasons == ["k=0"] * 60
    assert policy.overhead.predict(4, 2) > 0.003


def test_a_price_probe_measures_the_speculative_price_at_a_new_batch_and_speculation_follows():
    policy, reasons = _policy(lambda k: 0.0004 if k else 0.00015)
    assert reasons[:2] == ["price-probe"] * 2
    assert reasons.count("price-probe") == 2  # once for this neighbourhood of batches
    assert reasons[-40:].count("allocate") == 40  # speculating: its steps at batch 4 taught the fit
    assert policy.overhead.predict(4, 2) < 0.002
    assert policy.view(4)["price_probed_batches"][-1] == 4


def test_where_the_probe_confirms_the_price_k0_holds_and_it_is_not_probed_again():
    """At batch 4 speculation really costs 4 ms more: two probe steps, then k = 0, and no probe at batches 3, 5
    or 8 (within a factor 2 of one probed)."""
    policy, reasons = _policy(lambda k: 0.004 if k else 0.00015)
    assert reasons[:2] == ["price-probe"] * 2 and reasons[2:] == ["k=0"] * 58
    for batch in (3, 5, 8):
        ids = [f"x{batch}_{i}" for i in range(batch)]
        assert policy.draft_lens(batch, batch, ids) == [0] * batch
        assert policy.last_decision["reason"] == "allocate"


def test_the_probe_counts_speculative_samples_within_its_span():
    overhead = StepOverheadModel(min_samples=1)
    for _ in range(3):
        overhead.add(4, 2.0, 0.001)
    overhead.add(16, 2.0, 0.001)
    overhead.add(1, 0.0, 0.0001)
    assert overhead.speculative_samples_near(4, 2.0) == 3
    assert overhead.speculative_samples_near(8, 2.0) == 4
    assert overhead.speculative_samples_near(64, 2.0) == 0
    probe = PriceProbe(min_samples=4)
    assert probe.due(8, overhead) is False and probe.due(4, overhead) is True
    probe.start(4)
    assert probe.running and probe.due(6, overhead) is False
