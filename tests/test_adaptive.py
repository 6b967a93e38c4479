"""Per-request draft lengths (issue 20): the adaptive policy with injected costs and acceptance, and the
scheduler's per-request caps (the allocation: test_adaptive_allocation.py; the engine:
test_adaptive_engine.py). No timing assertions: step costs are hand-made tables."""

from __future__ import annotations

import json

import pytest

from dynaspec import NGramDecodingConfig, SamplingParams
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.acceptance_estimator import AcceptanceEstimator, planning_estimator
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.catch_up import CatchUpCost
from dynaspec.spec.policies import build_policy
from dynaspec.spec.policy import DraftLenPolicy, PolicyContext, StepOutcome
from dynaspec.spec.schedule_policy import SchedulePolicy
from dynaspec.spec.stats import SpecStats
from tests.adaptive_policies import K, injected_costs, injected_policy

# --- the policy, with injected costs and acceptance ------------------------------------------------

def test_policy_learns_per_request_acceptance_from_its_own_draft_lengths():
    policy = injected_policy(0.1)
    for _ in range(30):  # "copy" accepts everything it drafts, "chat" nothing
        policy.observe(StepOutcome(["copy", "chat"], K, drafted=[K, K], accepted=[K, 0], draft_lens=[K, K]))
    assert policy.draft_lens(2, 2, ["copy", "chat"]) == [K, 0]
    assert policy.draft_len(2, 2, ["copy", "chat"]) == K
    assert policy.stats()["planner_decision"]["draft_lens"] == {"0": 1, str(K): 1}
    # A step of k = K where "copy" was allowed 2 positions, both accepted: no rejection is read at its
    # position 2 (never verified), as it would be at the step's k.
    before = policy.estimator.observations("copy")[2]
    policy.observe(StepOutcome(["copy", "chat", "new"], K, drafted=[2, 1, K], accepted=[2, 0, 0], draft_lens=[2, 1, K]))
    assert policy.estimator.observations("copy")[2] == before
    assert policy.estimator.alphas("copy")[0] > 0.9 > 0.1 > policy.estimator.alphas("chat")[0]


def test_plan_prices_each_budget_as_step_seconds_does():
    """plan() looks the host-overhead fit up once per plan; the allocation's predicted seconds are
    step_seconds(batch, B*) with the fit in force (here: real steps slower than probed, by batch and k)."""
    policy = injected_policy(0.01)
    ids = ["copy", "chat"]
    for step in range(40):  # real steps cost 0.3 s + 0.05 s per drafted position more than probed
        k = step % (K + 1)
        policy.observe(StepOutcome(ids, k, drafted=[k, k], accepted=[k, 0], draft_lens=[k, k],
                                   seconds=1.0 + 0.01 * 2 * k + (0.3 + 0.05 * 2 * k if k else 0.0)))
    assert policy.overhead.predict(2, 2) > 0.3
    allocation = policy.plan(2, ids)
    assert allocation.budget > 0
    assert allocation.seconds == pytest.approx(policy.step_seconds(2, allocation.budget), rel=1e-12)


def test_policy_stays_off_where_verify_is_expensive_and_explores_now_and_then():
    """Unbudgeted, every explore_every-th decision explores; with explore_budget an exploration waits until
    the decisions since the last one earned its extra step time (here: a position costs 10x a step)."""
    ids = ["a", "b", "c"]
    budgeted = injected_policy(10.0, explore_every=5)  # default explore_budget: 1% of each decision's step time
    assert not any(any(budgeted.draft_lens(3, 3, ids)) for _ in range(12))
    policy = injected_policy(10.0, explore_every=5, explore_budget=None)
    decisions = [policy.draft_lens(3, 3, ids) for _ in range(12)]
    explored = [i for i, d in enumerate(decisions) if any(d)]
    assert explored == [4, 5, 10, 11]  # two steps every explore_every-th decision, one position
    assert all(sum(decisions[i]) == 1 for i in explored)
    assert policy.stats()["planner_decision"]["reason"] == "explore"
    assert injected_policy(10.0, max_concurrency=2).draft_lens(3, 3, ids) == [0, 0, 0]


def test_cold_start_probes_a_position_priced_just_above_its_prior():
    """The real Qwen2.5-Coder pair at batch 1 (H100, 2026-12-06): T(1, 0) 4.5 ms, T(1, 1) 7.2 ms, so k = 1 pays
    above alpha 0.59; the cold-start prior (alpha 0.5) sits just below it. The policy verifies the unseen
    position for a few steps (a probe), learns the real acceptance and keeps it; without the probe rule it
    holds k = 0. A position far from paying is not probed."""
    from dynaspec.spec.planner_settings import PlannerSettings

    def policy(probe_margin):
        costs = StepCostModel()
        for k in range(K + 1):
            costs.add(1, k, 0.0045 + 0.0027 * k)
        settings = PlannerSettings(cold_start_trials=4.0, probe_margin=probe_margin, explore_every=None)
        estimator = AcceptanceEstimator(K, blend_count=1.0, cold_start_trials=4.0)
        return AdaptivePolicy(costs, estimator, K, settings)

    assert [policy(None).draft_lens(1, 1, ["r"]) for _ in range(3)] == [[0]] * 3
    probing = policy(0.10)
    assert probing.plan(1, ["r"]).budget == 0
    assert probing.draft_lens(1, 1, ["r"]) == [1] and probing.last_decision["reason"] == "probe"
    for _ in range(6):  # the target accepts every draft
        k = probing.draft_lens(1, 1, ["r"])[0]
        probing.observe(StepOutcome(["r"], k, drafted=[k], accepted=[k], draft_lens=[k], seconds=0.0045 + 0.0027 * k))
    assert probing.plan(1, ["r"]).budget >= 1 and probing.draft_lens(1, 1, ["r"])[0] >= 1
    costly = policy(0.10)
    costly.cost_model.add(1, 1, 0.02)  # a position costs 3.4 plain steps: no probe
    assert costly.draft_lens(1, 1, ["r"]) == [0]


def test_a_position_not_verified_for_reprobe_after_decisions_is_probed_again():
    """Batch 1, a near-tie (a position costs 33% of a plain step): the request's drafts are accepted 1 in 4
    while the policy learns, and it holds k = 0; then every draft is accepted. With reprobe_after the
    position, no longer verified, is probed again and the rise found; without, k = 0 stays (exploration
    off in both)."""
    from dynaspec.spec.planner_settings import PlannerSettings

    def after_the_rise(reprobe_after):
        costs = StepCostModel()
        for k in range(K + 1):
            costs.add(1, k, 1.0 + 0.33 * k)
        settings = PlannerSettings(explore_every=None, reprobe_after=reprobe_after, replan_every=1)
        policy = AdaptivePolicy(costs, planning_estimator(K, None, settings), K, settings)  # the engine's estimator
        decided = []
        for n in range(200):
            k = policy.draft_lens(1, 1, ["r"])[0]
            rising = n >= 60
            accepted = k if rising else (1 if k and n % 4 == 0 else 0)
            policy.observe(StepOutcome(["r"], k, drafted=[k], accepted=[accepted], draft_lens=[k],
                                       seconds=1.0 + 0.33 * k))
            if rising:
                decided.append(k)
        return decided

    assert set(after_the_rise(None)) == {0}
    decided = after_the_rise(32)
    assert next(i for i, k in enumerate(decided) if k) <= 40 and decided[-20:] == [K] * 20


def test_refresh_computes_off_the_critical_path_and_draft_lens_reuses_it():
    policy = injected_policy(0.1, replan_every=3)
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    policy.refresh(2, ["x", "y"])
    assert len(calls) == 1
    policy.draft_lens(2, 2, ["x", "y"])
    policy.draft_lens(2, 2, ["x", "y"])
    assert len(calls) == 1  # reused
    for _ in range(3):
        policy.observe(StepOutcome(["x", "y"], 1, drafted=[1, 1], accepted=[1, 0], draft_lens=[1, 1]))
    policy.refresh(2, ["x", "y"])
    assert len(calls) == 2  # due after replan_every observations


def test_a_new_composition_takes_the_latest_plans_draft_lengths_until_refresh_plans_it():
    """In serving the batch changes almost every step, and refresh() plans the batch of the step that runs, so the
    next decision met a new composition and planned it on the critical path (a closed batch of 256 on the dev CPU:
    140 of 145 plans there). It now takes the latest plan's k_i for the requests they share, and refresh() plans it;
    a composition sharing too few requests is planned where it is asked."""
    policy = injected_policy(0.1, explore_every=None, probe_margin=None)
    ids = [f"r{i}" for i in range(8)]
    copy_half = [K if i % 2 == 0 else 0 for i in range(8)]  # the even requests copy, every draft accepted
    for _ in range(20):
        policy.observe(StepOutcome(ids, K, drafted=[K] * 8, accepted=copy_half, draft_lens=[K] * 8))
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    planned = policy.draft_lens(8, 8, ids)
    assert len(calls) == 1 and planned[0] > 0 and planned[1] == 0  # ragged: the copy half drafts
    shrunk = ids[1:]  # r0 finished
    assert policy.draft_lens(7, 7, shrunk) == planned[1:] and len(calls) == 1  # not planned on the critical path
    assert policy.last_decision["reason"] == "provisional"  # the step log says so
    policy.refresh(7, shrunk)
    assert len(calls) == 2  # refresh() plans it while the step runs
    policy.draft_lens(7, 7, shrunk)
    assert len(calls) == 2
    joined = shrunk + ["new"]  # a request no plan knew, next to a ragged plan: k = 0 until planned
    assert policy.draft_lens(8, 8, joined)[-1] == 0 and len(calls) == 2
    policy.draft_lens(4, 4, ["n1", "n2", "n3", "r2"])  # shares one request in four: planned
    assert len(calls) == 3


def test_a_request_joining_a_uniform_plan_gets_its_draft_length():
    """A uniform step stays uniform (it can chain, and pays no ragged premium): where verifying is nearly free the
    plan drafts K for everyone, and a request joining gets K too until refresh() plans the batch."""
    policy = injected_policy(0.0001, explore_every=None, probe_margin=None)
    ids = [f"r{i}" for i in range(8)]
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    assert policy.draft_lens(8, 8, ids) == [K] * 8
    assert policy.draft_lens(8, 8, ids[1:] + ["new"]) == [K] * 8 and len(calls) == 1


def test_a_speculative_step_far_above_its_price_voids_the_plans():
    """The host overhead at a batch above any speculative one seen is priced as at the largest one seen: on an H100
    (2026-12-07, the diurnal trace's ramp to concurrency 128) a plan of k = 4 for every request held for 17 steps of
    19-29 ms against ~8 ms plain, until replan_every observations made it due. A step over SURPRISED (1.5) times
    its price now voids the plans; one within the noise does not."""
    policy = injected_policy(0.001, explore_every=None, probe_margin=None)  # verifying nearly free: K for everyone
    ids = [f"r{i}" for i in range(8)]
    step = dict(drafted=[K] * 8, accepted=[K] * 8, draft_lens=[K] * 8)
    policy.observe(StepOutcome(ids, K, **step))  # every position verified once: no replan for a first sight below
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    assert policy.draft_lens(8, 8, ids) == [K] * 8 and len(calls) == 1
    price = policy.step_seconds(8, 8 * K)
    policy.observe(StepOutcome(ids, K, seconds=1.3 * price, **step))
    policy.draft_lens(8, 8, ids)
    assert len(calls) == 1  # within the noise: the plan stands until replan_every
    policy.observe(StepOutcome(ids, K, seconds=3.0 * policy.step_seconds(8, 8 * K), **step))
    policy.draft_lens(8, 8, ids)
    assert len(calls) == 2  # the same requests: replanned where asked


def test_a_new_composition_after_voided_plans_is_not_planned_on_the_critical_path():
    """After a step over its price voids the plans, a composition no plan knows (a request finished) still takes
    the latest plan's k_i for one decision, and refresh() plans it (allocation_tables.AllocationTables.clear)."""
    policy = injected_policy(0.001, explore_every=None, probe_margin=None)
    ids = [f"r{i}" for i in range(8)]
    step = dict(drafted=[K] * 8, accepted=[K] * 8, draft_lens=[K] * 8)
    policy.observe(StepOutcome(ids, K, **step))
    planned = policy.draft_lens(8, 8, ids)
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    policy.observe(StepOutcome(ids, K, seconds=3.0 * policy.step_seconds(8, 8 * K), **step))  # voids the plans
    assert policy.draft_lens(7, 7, ids[1:]) == planned[1:] and not calls
    assert policy.last_decision["reason"] == "provisional"
    policy.refresh(7, ids[1:])
    assert len(calls) == 1


def test_a_draining_composition_that_only_lost_requests_is_planned_once_it_lasts_a_step():
    """A closed batch drains: the drain rule priced its requests' leaving, so a composition that only lost requests of
    the latest drain plan keeps that plan's k_i for the step it first runs (refresh() passes it over, though the
    releases fed before it made it due), and is planned if it runs again; after clear() voided the plans nothing
    inherits. Planned at every finish, the draft model's
    batch of 128 on an H100 (2026-12-08) spent ~13 ms (cProfile) of each call after a finish planning."""
    policy = injected_policy(0.1, explore_every=None, probe_margin=None)
    ids = [f"r{i}" for i in range(8)]
    for _ in range(20):  # every draft accepted
        policy.observe(StepOutcome(ids, K, drafted=[K] * 8, accepted=[K] * 8, draft_lens=[K] * 8))
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    planned = policy.draft_lens(8, 8, ids, remaining=[40] * 8)
    policy.refresh(8, ids)
    assert len(calls) == 1 and planned == [K] * 8
    for gone in (1, 2, 3):  # a request finishes at each step
        assert policy.draft_lens(8 - gone, 8 - gone, ids[gone:], remaining=[30] * (8 - gone)) == planned[gone:]
        assert policy.last_decision["reason"] == "provisional"
        policy.release(f"r{gone - 1}")  # fed after the decision, with the step before it: due or not,
        for _ in range(policy.settings.replan_every):
            policy.observe(StepOutcome(ids[gone - 1:], K, drafted=[K] * (9 - gone), accepted=[K] * (9 - gone),
                                       draft_lens=[K] * (9 - gone)))
        policy.refresh(8 - gone, ids[gone:])
        assert len(calls) == 1  # inherited: passed over
    policy.draft_lens(5, 5, ids[3:], remaining=[20] * 5)  # it lasted a step
    policy.refresh(5, ids[3:])
    assert len(calls) == 2 and calls[1][2] == [20] * 5  # planned off the critical path, with its tokens left
    step = dict(drafted=[K] * 5, accepted=[K] * 5, draft_lens=[K] * 5)
    policy.observe(StepOutcome(ids[3:], K, seconds=3.0 * policy.step_seconds(5, 5 * K), **step))  # voids the plans
    policy.release("r3")
    policy.draft_lens(4, 4, ids[4:], remaining=[10] * 4)
    assert len(calls) == 2 and policy.last_decision["reason"] == "provisional"  # one decision from the voided plan
    policy.refresh(4, ids[4:])
    assert len(calls) == 3  # and nothing inherits it


def test_a_batch_that_does_not_drain_is_planned_at_every_new_composition():
    """Without tokens left (serving: finished requests are replaced), a composition that lost requests is new."""
    policy = injected_policy(0.1, explore_every=None, probe_margin=None, replan_every=4)
    ids = [f"r{i}" for i in range(8)]
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    policy.draft_lens(8, 8, ids)
    policy.draft_lens(7, 7, ids[1:])
    policy.refresh(7, ids[1:])
    assert len(calls) == 2


def test_while_requests_wait_or_prefill_it_keeps_k0_where_the_full_batch_would():
    """The goodput planner's ramp rule: two requests decode beside six still prefilling, and at the batch of eight
    k = 0 is best, so the two run plain steps too (on an H100, 2026-12-07, drafting beside a closed batch's
    prefill chunks cost adaptive 14-24% more prefill time than goodput at batch 64-256); alone, they draft."""
    policy = injected_policy(0.1, explore_every=None, probe_margin=None)
    assert max(policy.allocation(8).draft_lens) == 0
    assert max(policy.draft_lens(2, 2, ["a", "b"])) > 0
    assert policy.draft_lens(2, 8, ["a", "b"]) == [0, 0] and policy.last_decision["reason"] == "ramp"


def test_plain_steps_count_towards_replanning():
    """A plain phase moves the overhead fit (and a batch's first allocation may have been made on a fit from
    other batches): its steps make a replan due as speculative ones do."""
    policy = injected_policy(0.1, replan_every=3)
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    policy.refresh(2, ["x", "y"])
    for _ in range(3):
        policy.observe(StepOutcome(["x", "y"], 0, drafted=[0, 0], accepted=[0, 0], draft_lens=[0, 0], seconds=1.0))
    policy.refresh(2, ["x", "y"])
    assert len(calls) == 2


def test_a_decision_with_tokens_left_reuses_the_refresh_where_the_drain_rule_does_not_apply():
    """refresh() plans off the critical path without tokens left; the next decision asks with them (a closed batch).
    Above drain_max_batch (or with the drain rule off) they change nothing, so it reuses that plan; within it, it
    plans for the drain."""
    policy = injected_policy(0.1, drain_max_batch=2)
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    ids = ["a", "b", "c"]
    policy.refresh(3, ids)
    policy.draft_lens(3, 3, ids, remaining=[5, 5, 5])
    assert len(calls) == 1 and calls[0][2] is None
    policy.refresh(2, ids[:2])
    policy.draft_lens(2, 2, ids[:2], remaining=[5, 5])
    assert len(calls) == 3 and calls[2][2] == [5, 5]  # batch 2 drains: planned again, for the drain


def test_a_draining_batch_is_refreshed_with_its_tokens_left_and_a_finished_request_costs_no_plan():
    """refresh() planned a draining batch without its tokens left, a plan no draining decision used, so every drain
    plan was made on the critical path, and in a closed batch's tail a request finishes nearly every step. It now
    plans with the tokens left the latest decision was asked with, and a draining batch's new composition takes
    the latest drain plan's k_i for the step it first runs."""
    policy = injected_policy(0.1, drain_max_batch=8, explore_every=None, probe_margin=None)
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    ids = ["r0", "r1", "r2", "r3"]
    policy.draft_lens(4, 4, ids, remaining=[9, 9, 9, 9])
    assert len(calls) == 1 and calls[0][2] == [9, 9, 9, 9]
    for _ in range(policy.settings.replan_every):
        policy.observe(StepOutcome(ids, 0, drafted=[0] * 4, accepted=[0] * 4, draft_lens=[0] * 4))
    policy.refresh(4, ids)
    assert len(calls) == 2 and calls[1][2] == [9, 9, 9, 9]  # the drain plan, off the critical path
    policy.draft_lens(3, 3, ids[1:], remaining=[8, 8, 8])  # r0 finished
    assert len(calls) == 2
    policy.refresh(3, ids[1:])
    assert len(calls) == 2  # the drain plan's requests less one: passed over for the step it first runs
    policy.draft_lens(3, 3, ids[1:], remaining=[7, 7, 7])
    policy.refresh(3, ids[1:])
    assert len(calls) == 3 and calls[2][2] == [7, 7, 7]


def test_uniform_policies_give_one_k_per_request_by_default():
    class Fixed(DraftLenPolicy):
        def draft_len(self, num_decoding, num_active, request_ids=None):
            return 3

    assert Fixed().draft_lens(4, 4, list("abcd")) == [3, 3, 3, 3]
    assert SchedulePolicy(NGramDecodingConfig(max_draft_len=2)).draft_lens(3, 3) == [2, 2, 2]


def test_factory_builds_adaptive():
    context = PolicyContext(step_costs=lambda: injected_costs(0.1), catch_up_cost=lambda: (0.0, 0.0),
                            backlog=lambda: (0, 0))
    policy = build_policy(NGramDecodingConfig(max_draft_len=K, draft_len_policy="adaptive"), context)
    assert isinstance(policy, AdaptivePolicy) and policy.reachable_draft_lens(5) == set(range(K + 1))
    with pytest.raises(ValueError, match="adaptive"):
        NGramDecodingConfig(max_draft_len=K, draft_len_policy="adaptive", draft_len_schedule={1: K})


def test_stats_count_ragged_steps_and_the_per_request_histogram():
    stats = SpecStats()
    stats.record(2, 4, [4, 0], [2, 0], [4, 0])
    stats.record(2, 2, [2, 2], [0, 1], [2, 2])
    stats.record(3, 0, [0, 0, 0], [0, 0, 0])
    out = stats.as_dict()
    assert out["ragged_steps"] == 1
    assert out["draft_len_histogram"] == {"2": {"0": 1, "2": 2, "4": 1}, "3": {"0": 3}}
    with pytest.raises(ValueError, match="draft_lens"):
        stats.record(2, 2, [1, 1], [0, 0], [3, 1])


# --- the scheduler: per-request caps ---------------------------------------------------------------

def _decoding(request_id: str, prompt_len: int, max_tokens: int):
    from dynaspec.runtime.request import Request, RequestStatus

    request = Request(request_id, None, list(range(prompt_len)), SamplingParams(max_tokens=max_tokens))
    request.output_token_ids = [1]
    request.num_computed_tokens = request.num_tokens - 1  # decoding: all but its last token computed
    request.status = RequestStatus.RUNNING
    return request


def test_scheduler_caps_each_requests_draft_length_by_the_budget_and_max_model_len():
    from dynaspec.engine.block_manager import BlockManager
    from dynaspec.engine.scheduler import Scheduler

    def scheduled(ks, budget=64, max_model_len=64):
        scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=budget,
                              max_model_len=max_model_len)
        scheduler.running = [_decoding("a", 8, 10), _decoding("b", 8, 3), _decoding("c", 8, 10)]
        out = scheduler.schedule(lambda n, active, ids, remaining=None: ks)
        return [d.max_draft for d in out.decodes], out.draft_len

    assert scheduled([4, 0, 2]) == ([4, 0, 2], 4)
    # "b" may take 2 more tokens, yet keeps its 4 drafts: the commit stops it at max_tokens, and a cap would make
    # the step ragged (and unchainable, engine/chained_step.py) for the few positions it saves
    assert scheduled([4, 4, 1]) == ([4, 4, 1], 4)
    # the token budget trims the longest drafts first: 3 + 1 + 3 <= 7; then 2 + 1 + 2 <= 6
    assert scheduled([4, 0, 2], budget=7) == ([2, 0, 2], 2)
    assert scheduled([4, 0, 2], budget=6) == ([1, 0, 1], 1)
    assert scheduled([3, 3, 3], budget=8) == ([1, 1, 1], 1)  # one k for all: the largest k with 3 * (1 + k) <= 8
    assert scheduled([4, 0, 4], max_model_len=11) == ([2, 0, 2], 4)  # 9 tokens: 2 more before max_model_len
    with pytest.raises(ValueError, match="draft lengths"):
        scheduled([4, 0])


def test_a_switch_that_did_not_pay_is_not_priced_again_while_k_stays_zero():
    """The catch-up rule's "no" for an allocation holds while k = 0 (the backlog only grows, the tokens left
    only shrink): the backlog, a pass over the requests, is asked once, not at every plain step; after a
    speculative step (or for other requests) it is asked again."""
    from dynaspec.spec.planner_settings import PlannerSettings

    asked = []

    def backlog():
        asked.append(1)
        return 10**6, 100  # far behind, few tokens left: never pays

    settings = PlannerSettings(explore_every=None, probe_margin=None)
    policy = AdaptivePolicy(injected_costs(0.01), AcceptanceEstimator(K, blend_count=1.0), K, settings,
                            catch_up=CatchUpCost(1e-3), backlog=backlog)
    ids = ["a", "b"]
    for _ in range(10):
        assert policy.draft_lens(2, 2, ids) == [0, 0] and policy.last_decision["reason"] == "catch-up"
        policy.observe(StepOutcome(ids, 0, drafted=[0, 0], accepted=[0, 0], draft_lens=[0, 0], seconds=1.0))
    assert len(asked) == 1
    policy.draft_lens(3, 3, ids + ["c"])  # other requests: another allocation, asked again
    assert len(asked) == 2


def test_a_re_probe_from_k0_pays_its_catch_up_out_of_the_exploration_budget():
    """A near-tie (position 0 accepted ~17%, speculating pays from 20%) with a drafter whose catch-up from
    k = 0 costs 1.5 plain steps: the first probe of a never-verified position runs at once; re-probes of a
    position verified before wait until the exploration budget (1% of the decisions' time) covers the
    catch-up and the extra steps, instead of running every reprobe_after (32) decisions (on an H100, chat at
    batch 16: re-probes every ~35 steps paid 4-9 ms catch-ups each, adaptive 0.87x no spec)."""
    import random

    from dynaspec.spec.planner_settings import PlannerSettings

    def policy():
        return AdaptivePolicy(injected_costs(0.1), AcceptanceEstimator(K, blend_count=1.0), K, PlannerSettings(),
                              catch_up=CatchUpCost(0.0, fixed_seconds=1.5), backlog=lambda: (100, 10_000))

    ids = ["a", "b"]
    fresh = policy()
    fresh.estimator.update_step(None, [1, 1], [0, 0], 1)  # position 0 priced below the tie, never verified
    first = fresh.draft_lens(2, 2, ids)
    assert fresh.last_decision["reason"] in ("probe", "allocate") and max(first) >= 1

    learned, rng = policy(), random.Random(0)
    for _ in range(40):  # position 0 verified: ~17% accepted
        accepted = [int(rng.random() < 0.17) for _ in ids]
        learned.observe(StepOutcome(ids, 1, drafted=[1, 1], accepted=accepted, draft_lens=[1, 1], seconds=1.2))
    assert learned.plan(2, ids).budget == 0
    speculative = []
    for n in range(160):
        draft_lens = learned.draft_lens(2, 2, ids)
        if any(draft_lens):
            speculative.append((n, learned.last_decision["reason"]))
        accepted = [min(d, int(rng.random() < 0.17)) for d in draft_lens]
        learned.observe(StepOutcome(ids, max(draft_lens), drafted=draft_lens, accepted=accepted,
                                    draft_lens=draft_lens, seconds=1.0 + 0.1 * sum(draft_lens)))
    assert speculative == []  # 1.5 s of catch-up + 0.2 s of extra steps at 0.01 s earned a decision


def test_view_reports_the_allocation_and_its_prices_as_json():
    policy = injected_policy(0.1)
    for _ in range(30):
        policy.observe(StepOutcome(["copy", "chat"], K, drafted=[K, K], accepted=[K, 0], draft_lens=[K, K]))
    view = json.loads(json.dumps(policy.view(2)))
    assert view["allocation"]["budget"] == sum(int(k) * n for k, n in view["allocation"]["draft_lens"].items())
    assert view["step_seconds_by_budget"]["0"] == pytest.approx(1.0)
    assert view["probed_seconds_by_k"] == pytest.approx({str(k): policy.cost_model.cost(2, k) for k in range(K + 1)})
    assert set(view["overhead_coefficients"]) and view["catch_up_samples"] == 0
    assert view["verify_is_cheap"] is False and view["no_trimming_up_to_batch"] == 0
    assert len(view["pooled_alphas"]) == K and 0.2 < view["pooled_alphas"][0] < 0.8  # half the drafts accepted
    # no request finished: a new one is taken for the pooled estimate
    assert view["request_prior_alphas"] == view["pooled_alphas"] and view["request_prior_count"] > 0
    assert DraftLenPolicy().view(2) is None


def test_a_probe_and_an_exploration_in_one_decision_never_draft_past_max_draft_len():
    """The H100 run of 2026-12-06 (the EAGLE head, max_draft_len 6): a probe and an exploration in one decision
    each lengthened a uniform allocation by one, and a step drafted 7 for every request (eager, 55 ms)."""
    ids = ["a", "b", "c", "d"]
    policy = injected_policy(0.01, explore_every=1, explore_budget=None)
    for _ in range(12):
        draft_lens = policy.draft_lens(4, 4, ids)
        assert max(draft_lens) <= K == policy.max_draft_len
    assert draft_lens == [K] * 4


def test_plain_steps_are_priced_at_what_they_measure_beyond_the_probe():
    """A plain step's price is its probe plus the plain steps' measured residual, as a speculative step's is its
    probe plus its own: priced at the probe alone, k = 0 looked cheaper than it ran (H100, 2026-12-06: plain steps
    at batch 4 ran 0.16 ms over the probe, 8% of a step), a bias towards k = 0 of that size."""
    policy = injected_policy(0.02, explore_every=None, probe_margin=None)
    ids = ["a", "b"]
    probed_plain = policy.step_seconds(2, 0)
    assert probed_plain == pytest.approx(1.0)  # nothing observed: the probe
    for _ in range(20):  # plain steps run 0.2 s over their probe; speculative ones 0.2 s over theirs
        policy.observe(StepOutcome(ids, 0, seconds=1.2))
        policy.observe(StepOutcome(ids, 2, drafted=[2, 2], accepted=[1, 1], draft_lens=[2, 2],
                                   seconds=1.0 + 0.02 * 4 + 0.2))
    assert policy.step_seconds(2, 0) == pytest.approx(1.2, abs=0.01)
    assert policy.step_seconds(2, 4) == pytest.approx(1.0 + 0.02 * 4 + 0.2, abs=0.01)


def test_the_first_step_above_every_batch_the_overhead_fit_has_seen_voids_the_plans():
    """The overhead fit prices a batch above any speculative one it has seen as the largest seen; on an H100
    (2026-12-07, the diurnal trace at concurrency 128) adaptive ran 15 steps of k = 1 at 12-15 ms against 8 ms plain,
    each under SURPRISED times its price, until replan_every observations made the plan due. The first uniform
    speculative step at a larger batch now voids the plans (its sample joins the fit); the next one does not."""
    policy = injected_policy(0.001, explore_every=None, probe_margin=None)
    small, large = [f"s{i}" for i in range(4)], [f"r{i}" for i in range(8)]
    for _ in range(4):  # a fit from batch 4 only
        policy.observe(StepOutcome(small, K, drafted=[K] * 4, accepted=[K] * 4, draft_lens=[K] * 4,
                                   seconds=policy.step_seconds(4, 4 * K) + 1e-4))
    assert policy.overhead.largest_speculative_batch == 4
    step = dict(drafted=[K] * 8, accepted=[K] * 8, draft_lens=[K] * 8)
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    assert policy.draft_lens(8, 8, large) == [K] * 8 and len(calls) == 1
    policy.observe(StepOutcome(large, K, seconds=1.3 * policy.step_seconds(8, 8 * K), **step))
    policy.draft_lens(8, 8, large)
    assert len(calls) == 2 and policy.overhead.largest_speculative_batch == 8
    policy.observe(StepOutcome(large, K, seconds=1.3 * policy.step_seconds(8, 8 * K), **step))
    policy.draft_lens(8, 8, large)
    assert len(calls) == 2  # seen at this batch now: within the noise, the plan stands until replan_every


def test_a_ragged_step_above_every_batch_the_fit_has_seen_teaches_the_fit_that_batch():
    """A ragged step's excess over the fit is the ragged premium (spec/ragged_premium.py) only where the fit knows
    the batch; above every batch it has seen, the excess is the batch's host work, which the premium would absorb
    while uniform steps stayed priced by extrapolation. Such a step joins the fit and voids the plans."""
    policy = injected_policy(0.001, explore_every=None, probe_margin=None)
    small, large = [f"s{i}" for i in range(4)], [f"r{i}" for i in range(8)]
    for _ in range(4):
        policy.observe(StepOutcome(small, K, drafted=[K] * 4, accepted=[K] * 4, draft_lens=[K] * 4,
                                   seconds=policy.step_seconds(4, 4 * K) + 1e-4))
    calls = []
    plan = policy.plan
    policy.plan = lambda *args: calls.append(args) or plan(*args)
    policy.draft_lens(8, 8, large)
    lens = [K, 0] * 4
    policy.observe(StepOutcome(large, K, drafted=lens, accepted=[0] * 8, draft_lens=lens,
                               seconds=1.2 * policy.step_seconds(8, sum(lens))))
    assert policy.overhead.largest_speculative_batch == 8
    assert policy.ragged_premium.seconds(8, policy.overhead) == 0.0  # no premium sample
    policy.draft_lens(8, 8, large)
    assert len(calls) == 2  # the plans were voided
