"""Per-request draft lengths (issue 20): the allocation over (request, position) survivals, pure functions,
and the adaptive policy's choice between ragged and uniform allocations. Costs are hand-made tables."""

from __future__ import annotations

import pytest

from dynaspec.spec.adaptive_allocation import (
    Allocation,
    allocate,
    allocation_order,
    best_uniform,
    plan_allocation,
    step_seconds_by_tokens,
    survival,
    uniform_at_longest,
)
from dynaspec.spec.policy import StepOutcome
from tests.adaptive_policies import CHAT, COPY, K, injected_policy

# --- the allocation (pure) -------------------------------------------------------------------------

def test_survival_is_the_running_product():
    assert survival([0.5, 0.5, 1.0, 0.0]) == [0.5, 0.25, 0.25, 0.0]


def test_allocation_takes_the_highest_survivals_in_order_per_request():
    survivals = [survival([0.9, 0.9, 0.9]), survival([0.5, 1.0, 1.0]), survival([0.95, 0.1, 1.0])]
    order = allocation_order(survivals)
    assert [i for i, _ in order][:4] == [2, 0, 0, 0]  # 0.95, 0.9, 0.81, 0.729
    assert [s for _, s in order] == sorted((s for _, s in order), reverse=True)  # survival only falls along a request
    assert allocate(survivals, 4) == [3, 0, 1]
    assert allocate(survivals, 0) == [0, 0, 0]
    assert allocate(survivals, 100) == [3, 3, 3]


def test_copy_heavy_request_drafts_long_and_chat_request_drafts_nothing():
    """Verify is priced (every draft position costs 10% of a plain step): the copy-heavy request's positions
    pay, the chat request's first position (5% survival) does not."""
    survivals = [survival(COPY), survival(CHAT)]
    allocation = plan_allocation(survivals, lambda positions, longest=None: 1.0 + 0.1 * positions)
    assert allocation.draft_lens == [K, 0] and allocation.ragged and allocation.budget == K
    assert allocation.expected_tokens == pytest.approx(2 + sum(survival(COPY)))
    # Free verification: every position with any survival is taken; uniform 0 vs K is no longer the choice.
    assert plan_allocation(survivals, lambda positions, longest=None: 1.0).draft_lens == [K, K]


def test_an_allocation_made_uniform_at_its_longest_draft_is_repriced_with_the_uniform_next_step():
    survivals = [survival(COPY), survival([0.6] * K), survival(CHAT)]
    price = lambda positions, longest=None: 1.0 + 0.01 * positions
    ragged = Allocation([K, 2, 0], K + 2, 3 + sum(survival(COPY)) + sum(survival([0.6] * K)[:2]), price(K + 2))
    filled = uniform_at_longest(ragged, survivals, price)
    assert filled.draft_lens == [K] * 3 and filled.budget == 3 * K and not filled.ragged
    assert filled.expected_tokens == pytest.approx(3 + sum(sum(s) for s in survivals))
    assert filled.seconds == price(3 * K) and filled.next_request is None  # every position taken
    # its next position: the uniform step one longer (every request's position 2), priced as such
    uniform = uniform_at_longest(Allocation([2, 2, 2], 6, 0.0, price(6)), survivals, price)
    assert uniform.draft_lens == [2, 2, 2] and uniform.seconds == price(6) and uniform.next_request == 0
    assert uniform.expected_tokens == pytest.approx(3 + sum(sum(s[:2]) for s in survivals))
    third = sum(s[2] for s in survivals)
    assert uniform.next_goodput == pytest.approx((uniform.expected_tokens + third) / price(9))


def test_the_policy_drafts_uniformly_where_verifying_is_nearly_free_and_ragged_where_it_costs():
    """Where verifying every position costs less than a quarter of a plain step (trim_min_saving), a ragged
    step saves next to nothing while it costs the chain drafter's on-device hand-off and chaining (on an
    H100, Qwen2.5-Coder-1.5B and its EAGLE head, 2026-12-06: adaptive's ragged steps at batch 16 took 3.16
    ms against static k = 2's 2.80 for more tokens): the allocation is filled to its longest k_i. Where
    verifying costs, the copy-heavy request drafts and the chat request does not."""
    for per_position, want in ((0.02, [K, K]), (0.1, [K, 0])):
        policy = injected_policy(per_position)
        for _ in range(30):
            policy.observe(StepOutcome(["copy", "chat"], K, drafted=[K, K], accepted=[K, 0], draft_lens=[K, K]))
        assert policy.draft_lens(2, 2, ["copy", "chat"]) == want


def test_where_verifying_is_nearly_free_a_probe_lengthens_every_request():
    """One position more for one request would make a ragged step (on the H100 of 2026-12-06, a probe beyond
    k = 3 at batch 16: 3.97 ms steps against 3.15); where verifying is nearly free, every request goes one
    further. Where verifying costs, the one request whose next position survives best does."""
    ids = ["a", "b", "c", "d"]
    cheap, dear = injected_policy(0.01, explore_every=None), injected_policy(0.05, explore_every=None)
    assert cheap.plan(4, ids).draft_lens == [3, 3, 3, 3] and dear.plan(4, ids).draft_lens == [2, 2, 1, 1]
    assert cheap.draft_lens(4, 4, ids) == [4, 4, 4, 4] and cheap.last_decision["reason"] == "probe"
    assert dear.draft_lens(4, 4, ids) == [2, 2, 2, 1] and dear.last_decision["reason"] == "probe"


def test_a_ragged_premium_is_paid_only_by_budgets_whose_draft_lengths_differ():
    survivals = [survival(COPY), survival(CHAT)]
    price = lambda positions, longest=None: 1.0 + 0.1 * positions  # noqa: E731
    cheap = plan_allocation(survivals, price, ragged_premium=0.01)
    assert cheap.draft_lens == [K, 0] and cheap.seconds == pytest.approx(price(K) + 0.01)
    dear = plan_allocation(survivals, price, ragged_premium=10.0)  # only uniform budgets are worth it
    assert not dear.ragged and dear.seconds == price(dear.budget)
    # the best uniform allocation: one k for both, its next position the uniform step one longer
    uniform = best_uniform(survivals, price)
    assert uniform.draft_lens == [K, K] and uniform.seconds == price(2 * K) and uniform.next_request is None
    tokens = lambda k: 2 + sum(survival(COPY)[:k]) + sum(survival(CHAT)[:k])  # noqa: E731
    assert uniform.goodput == pytest.approx(max(tokens(k) / price(2 * k) for k in range(K + 1)))
    steep = best_uniform(survivals, lambda positions, longest=None: 1.0 + 2.0 * positions)
    assert steep.draft_lens == [0, 0] and steep.next_request == 0  # the copy request's position 0 survives best


def test_the_policy_learns_what_a_ragged_step_costs_and_drafts_uniformly_where_that_wins():
    """On an H100 (2026-12-06, the EAGLE head for Qwen2.5-Coder-1.5B) adaptive's ragged steps of 192 positions
    at batch 64 took 5.1-6.1 ms where its uniform steps of 192 positions took 3.4-4.8: the drafter drafts to
    the longest k_i and a ragged step cannot chain. Ragged steps observed slower than their price by 0.25 s a
    request make the uniform k = K step (copy and chat both draft) the better one; a premium of 0.01 s a
    request keeps the chat request at k = 0."""
    for extra_per_request, want in ((0.25, [K, K]), (0.01, [K, 0])):
        policy = injected_policy(0.1, explore_every=None, probe_margin=None)
        ids = ["copy", "chat"]
        for _ in range(30):
            policy.observe(StepOutcome(ids, K, drafted=[K, K], accepted=[K, 0], draft_lens=[K, K],
                                       seconds=1.0 + 0.1 * 2 * K))  # uniform steps cost their probed price
        assert policy.plan(2, ids).draft_lens == [K, 0] and len(policy.ragged_premium) == 0
        for _ in range(5):
            policy.observe(StepOutcome(ids, K, drafted=[K, 0], accepted=[K, 0], draft_lens=[K, 0],
                                       seconds=1.0 + 0.1 * K + 2 * extra_per_request))
        assert len(policy.ragged_premium) == 5
        assert policy.ragged_premium.seconds(2, policy.overhead) == pytest.approx(2 * extra_per_request, abs=1e-9)
        assert policy.plan(2, ids).draft_lens == want
        assert policy.view(2)["ragged_premium_seconds"] == pytest.approx(2 * extra_per_request, abs=1e-9)
        # a probe or exploration from a uniform k = 2: one position more for everyone where that costs less
        # than a ragged step (0.2 s of verify against 0.1 s + the premium), else for the request next in line
        uniform_two = Allocation([2, 2], 4, 0.0, 1.4, next_request=0, next_goodput=1.0)
        assert policy._one_further([2, 2], uniform_two, 2) == ([3, 3] if extra_per_request > 0.1 else [3, 2])


def test_no_drafts_when_verify_cost_grows_steeply():
    survivals = [survival(COPY), survival([0.99] * K), survival(CHAT)]
    allocation = plan_allocation(survivals, lambda positions, longest=None: 1.0 + 2.0 * positions)
    assert allocation.draft_lens == [0, 0, 0] and allocation.budget == 0 and not allocation.ragged
    assert allocation.goodput == pytest.approx(3.0)


def test_step_seconds_interpolate_over_total_tokens():
    cost = lambda batch, k: 0.5 + 0.01 * batch * (1 + k) ** 2  # noqa: E731 - convex in tokens
    assert step_seconds_by_tokens(cost, 4, 0, K) == cost(4, 0)
    assert step_seconds_by_tokens(cost, 4, 8, K) == cost(4, 2)  # 4 * (1 + 2) tokens: a uniform step
    assert step_seconds_by_tokens(cost, 4, 9, K) == pytest.approx(cost(4, 2) + (cost(4, 3) - cost(4, 2)) / 4)
    assert step_seconds_by_tokens(cost, 4, 99, K) == cost(4, K)  # capped at max_draft_len
    # priced at the padded batch a CUDA graph runs (here: 8 for any k)
    assert step_seconds_by_tokens(cost, 5, 5, K, padded_batch=lambda b, k: 8) == cost(8, 1)
