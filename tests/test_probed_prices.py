"""Probed step prices where the step runs (spec/probed_prices.py, issue 20): uniform steps at their uniform
graph, ragged ones by total tokens plus drafting to the longest k_i; and what that spares the adaptive policy's
host-overhead fit."""

from __future__ import annotations

import pytest

from dynaspec.engine.graph_keys import ragged_keys
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.runtime.ragged_graphs import RaggedKeys, token_buckets
from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import StepOutcome
from dynaspec.spec.probed_prices import ProbedPrices

K = 4
BUCKETS = (1, 2, 4, 8)
VERIFY_PER_TOKEN, DRAFT_STEP = 0.0001, 0.0012  # a draft model's chain step costs 1.2 ms at any batch here


def _verify(batch: int, k: int) -> float:
    return 0.0054 + VERIFY_PER_TOKEN * batch * (1 + k)


def _costs(drafting_apart: bool = True) -> StepCostModel:
    """T(batch, k) = verify + k chain steps, as the probe measures a draft model (runtime/cost_probe.py)."""
    costs = StepCostModel()
    costs.drafting = StepCostModel() if drafting_apart else None
    for batch in BUCKETS:
        for k in range(K + 1):
            costs.add(batch, k, _verify(batch, k) + DRAFT_STEP * k)
            if costs.drafting is not None:
                costs.drafting.add(batch, k, DRAFT_STEP * k)
    return costs


def _engine_ragged_graphs():
    """The engine's ragged graphs' lookup for these buckets (engine/graph_keys.py: none of one request)."""
    return RaggedKeys(ragged_keys([(b, k) for b in BUCKETS for k in range(K + 1)], K, 4096)).lookup


def test_the_engine_captures_no_ragged_graph_for_one_request():
    assert token_buckets(1, K)  # a bucket of one would have token buckets...
    assert _engine_ragged_graphs()(1, 1 + K) == (2, 5)  # ...but the engine captures none: the lookup falls to 2


def test_a_batch_of_one_is_priced_at_its_uniform_graph_not_at_a_ragged_graph_of_two():
    """On an H100 (2026-12-07, random Llama-3.2-1B drafting for random Llama-3.1-8B) a k = 4 step at batch 1 was
    priced at the (2, 5) ragged graph, 7.6 ms, against the probe's 10.7 ms for (1, 4) that real steps ran at."""
    prices = ProbedPrices(_costs(), K, ragged_step=_engine_ragged_graphs())
    for k in range(K + 1):
        assert prices.price(1, k)[1] == pytest.approx(_verify(1, k) + DRAFT_STEP * k)
        assert prices.price(1, k, longest=k) == prices.price(1, k)


def _padded(batch: int, k: int) -> int:
    """The uniform CUDA graph's bucket (the engine's _graph_batch)."""
    return next(b for b in BUCKETS if b >= batch)


def test_a_uniform_step_between_buckets_is_priced_at_the_padded_uniform_graph_it_runs_in():
    """A closed batch's tail runs at every batch size: 3 requests at k = 3 run the (4, 3) graph. Priced at the
    ragged graph holding their 12 tokens, (4, 12), they cost T(4, 2), a verify and a chain step too little: in the
    08:23 UTC draft-model sweep (H100) the adaptive fit's cells at batches 3-19 off the buckets read 2.0-5.1 ms over
    their price, at the buckets 2, 4, 8, 16 0.4-1.1 ms."""
    prices = ProbedPrices(_costs(), K, padded_batch=_padded, ragged_step=_engine_ragged_graphs())
    assert _engine_ragged_graphs()(3, 12) == (4, 12)
    assert prices.price(3, 9) == (4, pytest.approx(_verify(4, 3) + 3 * DRAFT_STEP))
    assert prices.price(5, 20) == (8, pytest.approx(_verify(8, 4) + 4 * DRAFT_STEP))


def test_a_ragged_step_pays_its_verify_by_tokens_and_drafting_to_its_longest_draft():
    prices = ProbedPrices(_costs(), K, ragged_step=_engine_ragged_graphs())
    # [4, 0]: 2 requests verify 2 + 4 tokens in the (2, 6) graph = the uniform (2, 2) verify; the chain drafts 4 steps
    bucket, seconds = prices.price(2, 4, longest=4)
    assert bucket == 2 and seconds == pytest.approx(_verify(2, 2) + 4 * DRAFT_STEP)
    # [2, 2]: uniform, the (2, 2) graph, 2 draft steps
    assert prices.price(2, 4, longest=2)[1] == pytest.approx(_verify(2, 2) + 2 * DRAFT_STEP)
    # drafts that exist already (a trim): the verify alone
    assert prices.price(2, 4, longest=4, drafted=True)[1] == pytest.approx(_verify(2, 2))
    # without the probe's drafting share (a tune file): T interpolated by tokens, drafting inside
    flat = ProbedPrices(_costs(drafting_apart=False), K, ragged_step=_engine_ragged_graphs())
    assert flat.price(2, 4, longest=4)[1] == pytest.approx(_verify(2, 2) + 2 * DRAFT_STEP)


def _policy() -> AdaptivePolicy:
    return AdaptivePolicy(_costs(), AcceptanceEstimator(K), K, PlannerSettings(explore_every=None),
                          ragged_step=_engine_ragged_graphs())


def test_batch_one_steps_at_their_probed_price_leave_no_host_overhead_for_batch_four():
    """Real k = 4 steps at batch 1 that take what the probe said teach the overhead fit nothing; priced at the
    ragged graph of two, they taught it 3.3 ms a speculative step, which priced batch 4's steps as much too high
    and held k = 0 there (H100, 2026-12-07 09:52 UTC, the draft-model sweep)."""
    policy = _policy()
    real = _verify(1, K) + DRAFT_STEP * K + 0.0002  # 0.2 ms of host work
    policy.observe(StepOutcome(["p"], 0, drafted=[0], accepted=[0], draft_lens=[0], seconds=_verify(1, 0) + 0.0002))
    for _ in range(17):
        policy.observe(StepOutcome(["a"], K, drafted=[K], accepted=[K], draft_lens=[K], seconds=real))
    assert policy.step_seconds(1, K) == pytest.approx(real, abs=1e-5)
    assert policy.step_seconds(4, 4 * K) == pytest.approx(_verify(4, K) + DRAFT_STEP * K + 0.0002, abs=1e-4)
    assert policy.plan(4, ["w", "x", "y", "z"]).draft_lens == [K] * 4  # acceptance 1.0 so far: draft to the end
