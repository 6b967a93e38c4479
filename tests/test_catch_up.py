"""Pricing the drafter's catch-up: CatchUpCost, switch_pays, the planner's switch rule, the drafters' backlog."""

import pytest

from dynaspec.runtime.request import Request
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.catch_up import CATCH_UP_MEMORY_SAMPLES, PROBE_BACKLOG_TOKENS, CatchUpCost, switch_pays
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.ngram import NGramDrafter
from tests.test_planner import _cost, _planner

# Flat step cost: with alpha = 0.9 every k > 0 beats k = 0 by far when catch-up is free.
FLAT = _cost(lambda b, k: 0.010)
ALPHAS = [0.9] * 6


def test_catch_up_cost_prior_then_least_squares_slope_of_observed_steps():
    cost = CatchUpCost(2e-6)
    assert cost.seconds(1000) == pytest.approx(2e-3) and cost.seconds(-5) == 0.0
    cost.observe(20_000, 0.070)  # a large catch-up: 3.5 us a token
    for _ in range(20):  # many small ones whose step-time noise dwarfs their price
        cost.observe(10, 0.002)
        cost.observe(10, -0.001)
    assert len(cost) == 41
    keep = 1 - 1 / CATCH_UP_MEMORY_SAMPLES  # the large sample's weight after the 40 later ones
    probe = PROBE_BACKLOG_TOKENS  # the start-up prior: the first sample, before the large one
    slope = (keep**41 * probe**2 * 2e-6 + keep**40 * 20_000 * 0.070
             + sum(keep**i * 10 * (0.002 if i % 2 else -0.001) for i in range(40))) / (
        keep**41 * probe**2 + keep**40 * 20_000**2 + sum(keep**i * 10**2 for i in range(40))
    )
    assert cost.seconds_per_token == pytest.approx(slope) and cost.seconds_per_token == pytest.approx(3.5e-6, rel=0.01)
    cost.observe(0, 1.0)  # no backlog: no sample
    assert len(cost) == 41
    faster = CatchUpCost(2e-6)
    faster.observe(100, -0.5)  # faster than predicted: the slope is clamped at 0 s per token
    assert faster.seconds_per_token == 0.0


def test_the_start_up_probe_outweighs_one_small_noisy_catch_up():
    """On an H100 (2026-12-06) the first batch-1 catch-up (~170 tokens, its step time read 2.4 ms long) replaced
    the probe's price outright: 10.6 us a token, and a batch of 16's backlog came to ~30 ms, which held the
    policies at k = 0 where static k = 2 gave 1.16x. As a catch-up of PROBE_BACKLOG_TOKENS tokens the probe
    keeps most of its weight against one small sample, and yields to large ones."""
    probed = CatchUpCost(1e-6, fixed_seconds=1.3e-3)
    probed.observe(170, 1.3e-3 + 170 * 10.6e-6)
    assert probed.seconds_per_token == pytest.approx(1e-6, rel=0.1)
    for _ in range(3):  # catch-ups as large as the probe's, at 4 us a token
        probed.observe(PROBE_BACKLOG_TOKENS * 4, 1.3e-3 + PROBE_BACKLOG_TOKENS * 4 * 4e-6)
    assert probed.seconds_per_token == pytest.approx(4e-6, rel=0.05)
    unprobed = CatchUpCost(0.0, fixed_seconds=1.3e-3)  # nothing timed (CPU): the first sample sets the price
    unprobed.observe(170, 1.3e-3 + 170 * 10.6e-6)
    assert unprobed.seconds_per_token == pytest.approx(10.6e-6)


def test_a_fixed_part_keeps_a_long_backlog_from_being_priced_by_a_short_ones_slope():
    """A model drafter's catch-up is one eager forward: its launches cost the same for 400 tokens as for
    6,400. From one batch-1 sample (400 tokens, 3.5 ms beyond the step), a price through the origin makes a
    batch of 16's 6,400-token backlog 56 ms; with the start-up's fixed part (3 ms) it is 11 ms, and a switch
    that saves 20 ms pays."""
    through_origin, affine = CatchUpCost(0.0), CatchUpCost(0.0, fixed_seconds=3e-3)
    for cost in (through_origin, affine):
        cost.observe(400, 3.5e-3)
    assert through_origin.seconds(6400) == pytest.approx(0.056)
    assert affine.seconds_per_token == pytest.approx(0.5e-3 / 400)  # the fixed part taken off the sample
    assert affine.seconds(6400) == pytest.approx(3e-3 + 6400 * 0.5e-3 / 400)
    assert affine.seconds(0) == 0.0 and affine.seconds(1) == pytest.approx(3e-3 + 0.5e-3 / 400)
    saved = dict(remaining_tokens=2048, goodput_now=7875, goodput_after=7875 * 1.1)  # ~20 ms saved
    assert switch_pays(affine.seconds(6400), **saved) and not switch_pays(through_origin.seconds(6400), **saved)


def test_model_drafters_measure_their_catch_up_only_on_a_gpu():
    """ChainDrafter.measure_catch_up_cost times feeds on the scratch block on CUDA; elsewhere (0, 0), so the
    CPU tests' policies never depend on this machine's timings."""
    from dynaspec.spec.chain_drafter import ChainDrafter

    class Drafter(ChainDrafter):
        device = __import__("torch").device("cpu")

        def _feed_scratch(self, num_tokens):
            raise AssertionError("no probe on the CPU")

    drafter = Drafter()
    drafter.runner = object()
    assert drafter.measure_catch_up_cost() == (0.0, 0.0)


def test_switch_pays_only_when_the_saved_time_exceeds_the_catch_up():
    # 1,000 tokens at 10,000 tok/s take 0.1 s, at 12,500 tok/s 0.08 s: 20 ms saved.
    assert switch_pays(0.019, 1000, 10_000, 12_500)
    assert not switch_pays(0.021, 1000, 10_000, 12_500)
    assert switch_pays(0.0, 1, 10_000, 10_001)
    assert not switch_pays(0.0, 1000, 10_000, 9_000)  # a slower k never pays


def test_planner_keeps_k0_when_the_catch_up_outweighs_the_tokens_left():
    calls = []

    def backlog():
        calls.append(1)
        return state["behind"], state["remaining"]

    state = {"behind": 50_000, "remaining": 600}
    planner = _planner(FLAT, ALPHAS, catch_up=CatchUpCost(3e-6), backlog=backlog)
    # 150 ms of catch-up vs 600 tokens left at 64 x 10 ms steps: k = 0 stays.
    assert planner.draft_len(64, 64) == 0
    assert planner.last_decision["reason"] == "catch-up" and planner.last_decision["best_k"] > 0
    assert planner.draft_len(64, 64) == 0 and len(calls) == 2
    # Little backlog, or many tokens left: the switch pays.
    state.update(behind=500)
    k = planner.draft_len(64, 64)
    assert k > 0 and planner.last_decision["reason"] == "argmax"
    # Once speculating, the backlog is not asked for again (the drafter keeps up).
    state.update(behind=10**9)
    assert planner.draft_len(64, 64) == k and len(calls) == 3


def test_planner_without_a_backlog_callback_switches_freely():
    planner = _planner(FLAT, ALPHAS, catch_up=CatchUpCost(1.0))
    assert planner.draft_len(8, 8) > 0


def test_exploration_from_k0_is_skipped_when_its_catch_up_costs_more_than_two_plain_steps():
    # k = 1 costs 1.8x a plain step: never the argmax at alpha 0.5, but it could pay if all were accepted.
    cost = _cost(lambda b, k: 0.010 if k == 0 else 0.018, ks=(0, 1))
    state = {"behind": 10_000}
    planner = _planner(cost, [0.5], ks=(0, 1), explore_every=1, catch_up=CatchUpCost(3e-6),
                       backlog=lambda: (state["behind"], 10**6))
    assert planner.draft_len(256, 256) == 0 and planner.last_decision["reason"] == "catch-up"  # 30 ms > 20 ms
    state["behind"] = 5_000  # 15 ms <= two plain steps
    assert planner.draft_len(256, 256) == 1 and planner.last_decision["reason"] == "explore"


def test_a_probe_refused_for_its_catch_up_leaves_the_switch_to_the_switching_rule():
    """At batch 1 the unmeasured neighbours of the best k are probed; a probe from k = 0 may cost at most two
    plain steps of catch-up. When the drafter's catch-up costs more (an EAGLE head's start-up probe measured
    3.6 ms against 1.8 ms plain steps on an H100, 2026-12-06), the refused probe must not hold k = 0: the
    k in force switches where the tokens left earn the catch-up back (the run held k = 0 on all 128 steps
    of every batch size, where static k = 3 ran 1.76x)."""
    cost = _cost(lambda b, k: 0.00183 + 0.00025 * k)
    planner = _planner(cost, [0.5] * 6, probe_margin=0.10, min_observed_steps=4,
                       catch_up=CatchUpCost(1e-6, fixed_seconds=0.0042), backlog=lambda: (200, 128))
    k = planner.draft_len(1, 1)
    assert k > 0 and planner.last_decision["reason"] in ("argmax", "hysteresis")
    tokens_left_nothing = _planner(cost, [0.5] * 6, probe_margin=0.10, min_observed_steps=4,
                                   catch_up=CatchUpCost(1e-6, fixed_seconds=0.0042), backlog=lambda: (200, 4))
    assert tokens_left_nothing.draft_len(1, 1) == 0 and tokens_left_nothing.last_decision["reason"] == "catch-up"


def test_observed_catch_up_steps_price_the_backlog():
    planner = _planner(FLAT, ALPHAS, catch_up=CatchUpCost(0.0), backlog=lambda: (0, 0))
    planner.observe_catch_up(16, 2, 0.010 + 0.020, 10_000)  # 20 ms beyond the 10 ms predicted
    assert planner.catch_up.seconds_per_token == pytest.approx(2e-6)


def test_a_catch_up_step_timed_short_is_no_sample():
    """On an H100 (2026-12-07) the first speculative step after a prefill, catching up on a 128-token prompt, read
    1.1 ms against a predicted 11 ms: its timing was cut short, as an overlapped step's can be, and as a sample
    it would have read a catch-up of -10 ms."""
    cost = CatchUpCost(2e-6)
    assert not cost.observe(128, 1.1e-3 - 11e-3, predicted_seconds=11e-3)
    assert len(cost) == 0 and cost.seconds_per_token == 2e-6
    assert cost.observe(128, 6e-3 - 11e-3, predicted_seconds=11e-3)  # faster, not cut short: kept
    assert len(cost) == 1 and cost.seconds_per_token < 2e-6
    planner = _planner(FLAT, ALPHAS, catch_up=CatchUpCost(0.0), backlog=lambda: (0, 0))
    planner.observe_catch_up(16, 2, 0.001, 10_000)  # a tenth of the 10 ms predicted
    assert len(planner.catch_up) == 0
    planner.observe_catch_up(16, 2, 0.010 + 0.020, 10_000)
    assert len(planner.catch_up) == 1


def _request(rid: str, prompt: list[int]) -> Request:
    return Request(rid, None, prompt, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))


def test_ngram_backlog_counts_tokens_not_indexed_and_its_probe_is_positive():
    drafter = NGramDrafter(NGramDecodingConfig(max_draft_len=3, max_matching_ngram_size=2))
    a, b = _request("a", [1, 2, 3, 1, 2]), _request("b", list(range(10, 30)))
    assert drafter.catch_up_tokens([a, b]) == 25  # prompts never indexed
    drafter.propose([a], 2)
    assert drafter.catch_up_tokens([a, b]) == 20
    a.output_token_ids.extend([3, 1, 2])
    assert drafter.catch_up_tokens([a]) == 3
    assert 0.0 < drafter.measure_catch_up_seconds_per_token(num_tokens=512, repeats=1) < 1e-3


def test_no_switch_from_k0_while_waiting_requests_will_lift_the_batch_where_k0_is_best():
    # k > 0 pays up to batch 32 only; catch-up is nearly free.
    cost = _cost(lambda b, k: 0.010 * (1 + (b / 32) * k))
    planner = _planner(cost, ALPHAS, catch_up=CatchUpCost(1e-9), backlog=lambda: (100, 10**6))
    assert planner.draft_len(16, 256) == 0 and planner.last_decision["reason"] == "ramp"
    assert planner.draft_len(16, 20) > 0  # the few waiting requests keep the batch where speculation pays
    # Already speculating (the tail of the previous burst) when the next one arrives: back to k = 0 too.
    assert planner.draft_len(16, 256) == 0 and planner.last_decision["reason"] == "ramp"


def test_a_refused_switch_holds_for_the_requests_left_in_a_draining_batch():
    """A refusal of the switch from k = 0 covers every subset of its requests for replan_every observations: in a
    closed batch's tail a new composition arrives at every step, and each was planned (the drain rule) and priced
    against a fresh backlog, which on an H100 (2026-12-07, n-gram at 128 requests) stretched the plain steps of
    the hold from 7.8 to 9.5-14.7 ms (spec/switch_hold.py). Requests outside the refused ones are asked again."""
    from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
    from dynaspec.spec.adaptive import AdaptivePolicy
    from dynaspec.spec.planner_settings import PlannerSettings
    from dynaspec.spec.policy import StepOutcome
    from tests.adaptive_policies import K, injected_costs

    asked = []
    policy = AdaptivePolicy(injected_costs(0.001), AcceptanceEstimator(K, blend_count=1.0), K,
                            PlannerSettings(explore_every=None, probe_margin=None, replan_every=4),
                            catch_up=CatchUpCost(1.0), backlog=lambda: asked.append(1) or (10**6, 64))
    plans = []
    plan = policy.plan
    policy.plan = lambda *args: plans.append(args) or plan(*args)
    ids = [f"r{i}" for i in range(8)]
    assert policy.draft_lens(8, 8, ids) == [0] * 8 and policy.last_decision["reason"] == "catch-up"
    assert len(plans) == 1 and len(asked) == 1
    for left in range(7, 4, -1):  # a request leaves at every step, within replan_every (4) observations
        policy.observe(StepOutcome(ids[:left + 1], 0, seconds=1.0))
        policy.refresh(left, ids[:left])
        assert policy.draft_lens(left, left, ids[:left]) == [0] * left
        assert policy.last_decision["reason"] == "catch-up"
    assert len(plans) == 1 and len(asked) == 1  # neither planned nor priced again
    joined = ids[:4] + ["new"]  # a request the refusal did not cover: priced again (and refused: it holds now)
    assert policy.draft_lens(5, 5, joined) == [0] * 5 and len(asked) == 2
    for _ in range(4):  # replan_every observations since that refusal: due again
        policy.observe(StepOutcome(joined, 0, seconds=1.0))
    policy.draft_lens(5, 5, joined)
    assert len(plans) == 2 and len(asked) == 3


def test_a_starting_batch_pays_its_prompts_catch_up_before_it_drafts():
    """Requests that never drafted leave the drafter their prompts to catch up on, whatever the last step was: the
    switch rule weighs it at a batch's first decision too (spec/adaptive.py _none_drafted)."""
    from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
    from dynaspec.spec.adaptive import AdaptivePolicy
    from dynaspec.spec.planner_settings import PlannerSettings
    from dynaspec.spec.policy import StepOutcome
    from tests.adaptive_policies import K, injected_costs

    state = {"behind": 10**6}
    policy = AdaptivePolicy(injected_costs(0.001), AcceptanceEstimator(K, blend_count=1.0), K,
                            PlannerSettings(explore_every=None, probe_margin=None),
                            catch_up=CatchUpCost(1.0), backlog=lambda: (state["behind"], 64))
    old = ["a", "b"]
    policy.observe(StepOutcome(old, K, drafted=[K, K], accepted=[K, K], draft_lens=[K, K], seconds=1.0))
    new = [f"r{i}" for i in range(8)]  # the last step drafted, but these requests never did
    assert policy.draft_lens(8, 8, new) == [0] * 8 and policy.last_decision["reason"] == "catch-up"
    state["behind"] = 0  # nothing to catch up on: it drafts
    assert max(policy.draft_lens(8, 8, new[1:])) > 0
    assert max(policy.draft_lens(2, 2, old)) > 0  # requests that drafted before: no switch to price


def test_a_draining_batch_weighs_the_switch_by_how_much_sooner_it_ends():
    """In a draining batch the switch from k = 0 gains what the drain rule predicts (the batch's end, its slowest
    request and the shrinking batch priced), not the tokens left at the allocation's rate: on an H100 (2026-12-08,
    a draft model at 128 requests of 64 tokens) the rate priced the switch at 96 ms saved against an 82 ms catch-up,
    and the batch ran at 0.86x no speculation. A catch-up between the two gains: refused while the batch drains,
    paid where it does not (serving: finished requests are replaced)."""
    import random

    from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
    from dynaspec.spec.adaptive import AdaptivePolicy
    from dynaspec.spec.planner_settings import PlannerSettings
    from dynaspec.spec.policy import StepOutcome
    from tests.adaptive_policies import K, injected_costs

    ids, left = [f"r{i}" for i in range(8)], 16

    def policy_after_warm_up() -> AdaptivePolicy:
        policy = AdaptivePolicy(injected_costs(0.02), AcceptanceEstimator(K, blend_count=1.0), K,
                                PlannerSettings(explore_every=None, probe_margin=None),
                                catch_up=CatchUpCost(0.0, fixed_seconds=6.0), backlog=lambda: (1000, 8 * left))
        rng = random.Random(0)
        for _ in range(30):  # each request accepts 0..K drafts, evenly
            policy.observe(StepOutcome(ids, K, drafted=[K] * 8, accepted=[int(rng.random() * (K + 1)) for _ in ids],
                                       draft_lens=[K] * 8))
        policy.observe(StepOutcome(ids, 0, seconds=1.0))  # then a plain step: leaving k = 0 pays the catch-up
        return policy

    inherited = policy_after_warm_up()  # a composition of the latest drain plan's requests less one, not planned:
    inherited.allocation(8, ids, [left] * 8, critical=False)  # it weighs the switch by that plan's drain gain
    assert inherited.draft_lens(7, 7, ids[1:], remaining=[left] * 7) == [0] * 7
    assert inherited.last_decision["reason"] == "catch-up"
    planned = policy_after_warm_up().plan(8, ids, [left] * 8)
    rate_gain = 8 * left * (policy_after_warm_up().step_seconds(8, 0) / 8 - 1 / planned.goodput)
    assert planned.budget > 0 and planned.drain_gain < 6.0 < rate_gain, (planned.drain_gain, rate_gain)
    draining = policy_after_warm_up()
    assert draining.draft_lens(8, 8, ids, remaining=[left] * 8) == [0] * 8
    assert draining.last_decision["reason"] == "catch-up"
    assert max(policy_after_warm_up().draft_lens(8, 8, ids)) > 0  # not draining: the rate's gain, and it pays
