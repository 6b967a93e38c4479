"""The drain rule of the adaptive policy (spec/drain.py): while nothing waits, end the slowest request soonest.

Costs and acceptance draws are injected; nothing here reads this machine's clock."""

from __future__ import annotations

import pytest

from dynaspec.bench.closed_batch_replay import (closed_batch_tokens_per_ms, interpolated_step_ms,
                                                 replayed_adaptive_policy)
from dynaspec.engine.block_manager import BlockManager
from dynaspec.engine.scheduler import Scheduler
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.runtime.request import Request
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.adaptive_allocation import Allocation, survival, uniform_allocations
from dynaspec.spec import drain
from dynaspec.spec.drain import drain_allocation, drain_seconds, expected_last_end
from dynaspec.spec.planner_settings import PlannerSettings

FAST, SLOW = survival([0.9, 0.9, 0.9]), survival([0.1, 0.1, 0.1])


def _price(batch: int, positions: int, longest: int) -> float:
    """A step's seconds: 1 + one a request + one a draft position (any unit)."""
    return 1.0 + batch + positions


def test_drain_seconds_prices_each_step_at_the_requests_still_in_it():
    """Certain requests (every draft accepted, or none drafted) have no spread: one commits 3 tokens a step and
    leaves after 10 steps of both (price 1 + 2 + 2), the other runs 20 more alone (1 + 1 + 0)."""
    certain = survival([1.0, 1.0, 1.0])
    assert drain_seconds([2, 0], [certain, SLOW], [certain, SLOW], [30, 30], _price) == pytest.approx(10 * 5 + 20 * 2)
    # the other order: the plain request leaves first, after 10 steps; then the drafting one alone (1 + 1 + 2)
    assert drain_seconds([2, 0], [certain, SLOW], [certain, SLOW], [90, 10], _price) == pytest.approx(10 * 5 + 20 * 4)


def test_the_last_of_alike_requests_ends_at_blom_s_expected_largest():
    """B alike requests: their last ends z_B spreads after the mean (z_B = Phi^-1((B - 0.375) / (B + 0.25)));
    one request far behind the rest ends at its own mean."""
    from statistics import NormalDist

    for count in (1, 2, 16, 256):
        z = NormalDist().inv_cdf((count - 0.375) / (count + 0.25))
        assert expected_last_end([10.0] * count, [2.0] * count) == pytest.approx(10.0 + 2.0 * z, abs=0.01)
    assert expected_last_end([10.0] * 63 + [40.0], [1.0] * 64) == pytest.approx(40.0, abs=0.5)


def test_the_drain_model_predicts_a_closed_batch_s_end_within_a_few_percent(monkeypatch):
    """The model (spec/drain.py) against closed batches simulated draw by draw with the same prices: 16 requests,
    code-edit and chat acceptance of the Qwen2.5-Coder pair alternating, 64 tokens each, uniform k = 0..4, 200
    batches. The model's predicted end is within 4% of the simulated mean end at every k and ranks the best k the
    same; without the draws' spread (the last request ending at its mean) it ends k = 4's batch early by more than
    twice as much (the last request's draws set the end)."""
    import random

    profiles = [[0.929, 1.0, 0.96, 1.0], [0.667, 0.793, 0.696, 0.8]]
    batch, tokens = 16, 64
    rng = random.Random(0)
    simulated, predicted = [], []
    for k in range(5):
        total = 0.0
        for _ in range(200):
            left = [tokens] * batch
            while any(n > 0 for n in left):
                alive = [i for i in range(batch) if left[i] > 0]
                total += _price(len(alive), k * len(alive), k)
                for i in alive:
                    accepted = 0
                    while accepted < k and rng.random() < profiles[i % 2][accepted]:
                        accepted += 1
                    left[i] -= 1 + accepted
        simulated.append(total / 200)
        survivals = [survival(profiles[i % 2]) for i in range(batch)]
        predicted.append(drain_seconds([k] * batch, survivals, survivals, [tokens] * batch, _price))
    assert all(abs(p / s - 1.0) < 0.04 for p, s in zip(predicted, simulated)), (predicted, simulated)
    assert min(range(5), key=predicted.__getitem__) == min(range(5), key=simulated.__getitem__)
    monkeypatch.setattr(drain, "expected_last_end", lambda means, spreads, counts=None: max(means))
    at_mean = drain_seconds([4] * batch, survivals, survivals, [tokens] * batch, _price)
    assert simulated[4] - at_mean > 2 * abs(simulated[4] - predicted[4]) > 0


def test_uniform_allocations_give_every_k_for_every_request():
    price = lambda positions, longest=None: 1.0 + 0.1 * positions  # noqa: E731
    allocations = uniform_allocations([FAST, SLOW], price)
    assert [a.draft_lens for a in allocations] == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert [a.seconds for a in allocations] == pytest.approx([1.0, 1.2, 1.4, 1.6])
    assert allocations[1].expected_tokens == pytest.approx(2 + 0.9 + 0.1)


def test_the_goodput_allocation_stays_within_the_tolerance_and_gives_way_beyond_it():
    """Copy next to a request that accepts nothing: drafting 3 for the copy request alone commits the most tokens
    a second, but the other request ends the batch, and each position lengthens its steps. With verify cheap (1% a
    position) the goodput allocation ends it 3% later than plain steps would: kept at a 5% tolerance. At 10% a
    position, 30% later: the plain allocation instead."""
    none = survival([0.0, 0.0, 0.0])
    for per_position, kept in ((0.01, True), (0.10, False)):
        price = lambda positions, longest=None: 1.0 + per_position * positions  # noqa: E731
        goodput = Allocation([3, 0], 3, 2 + sum(FAST), price(3))
        shrinking = lambda batch, positions, longest: price(positions)  # noqa: E731
        chosen = drain_allocation(goodput, uniform_allocations([FAST, none], price), [FAST, none], [FAST, none],
                                  [50, 50], shrinking, 0.05)
        assert (chosen.draft_lens == goodput.draft_lens and chosen.source == "goodput") is kept
        # how much sooner than plain steps (50 steps of 1 s) it ends: later, within the tolerance; or plain itself
        assert (-0.05 * 50 < chosen.drain_gain < 0.0) if kept else chosen.drain_gain == 0.0
        if not kept:  # marked, so the policy's decision says why (reason "drain")
            assert chosen.draft_lens == [0, 0] and chosen.source == "drain"


def test_the_scheduler_gives_tokens_left_only_while_the_batch_drains():
    """remaining: each decoding request's tokens before max_tokens, once no request waits or prefills."""
    scheduler = Scheduler(None, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=64)
    requests = [Request(f"r{i}", None, [1, 2, 3], SamplingParams(max_tokens=5 + i)) for i in range(3)]
    requests[0].output_token_ids = [7, 7]
    for request in requests:
        scheduler.add(request)
    scheduler.close_intake()  # an offline batch
    scheduler.waiting.clear()
    scheduler.running.extend(requests[:2])
    scheduler.waiting.append(requests[2])
    assert scheduler.drain_remaining(scheduler.running) is None  # one waits: slots are refilled
    scheduler.waiting.clear()
    assert scheduler.drain_remaining(scheduler.running) == [3, 6]
    assert scheduler.drain_remaining(scheduler.running[:1]) is None  # another unfinished request is not decoding


def test_only_a_batch_its_caller_closed_drains():
    """In serving a finished request is replaced, so the batch does not end with its slowest request; only the
    caller knows a batch is closed (LLM.generate, a benchmark's batch: close_intake). Requests admitted together
    are not one: on an H100 (2026-12-07) a diurnal phase's first requests, admitted at once, looked closed to a
    rule that judged by intake, and the adaptive policy drafted nothing at concurrency 4 for 60-100 steps."""
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64)
    plain = lambda num_decoding, *args, **kwargs: [0] * num_decoding  # noqa: E731
    first, second, third = (Request(f"r{i}", None, [1, 2, 3], SamplingParams(max_tokens=8)) for i in range(3))
    scheduler.add(first)
    scheduler.add(second)  # together, as a burst of a server's clients
    scheduler.schedule(plain)  # they prefill
    assert not scheduler.waiting and len(scheduler.running) == 2
    assert scheduler.drain_remaining(scheduler.running) is None  # nobody closed it
    scheduler.close_intake()
    assert scheduler.drain_remaining(scheduler.running) == [8, 8]
    scheduler.add(third)  # an add reopens it
    scheduler.schedule(plain)
    assert scheduler.drain_remaining(scheduler.running) is None
    scheduler.remove(first)
    assert scheduler.drain_remaining(scheduler.running) is None


def test_llm_generate_closes_its_batch_and_requests_added_to_the_engine_do_not(tmp_path):
    from dynaspec import LLM
    from tests.tiny_models import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path, "llama", seed=0)
    llm = LLM(model=str(checkpoint), block_size=4, num_kv_blocks=64, max_model_len=64)
    seen = []
    drain_remaining = llm.engine.scheduler.drain_remaining
    llm.engine.scheduler.drain_remaining = lambda decoding: seen.append(drain_remaining(decoding)) or seen[-1]
    llm.generate([[1, 2, 3], [4, 5, 6]], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    assert any(r is not None for r in seen)
    seen.clear()
    for i in range(2):
        llm.engine.add_request(f"s{i}", [1, 2, 3], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    while llm.engine.has_unfinished_requests():
        llm.engine.step()
    assert seen and all(r is None for r in seen)


# --- closed batches replayed on the policy (bench/closed_batch_replay.py) -------------------------------
# The replay draws acceptance as the bench does since 2026-12-08 (common random numbers keyed by request and position);
# figures quoted from before were drawn in call order.
K = 4
T16_MS = [2.07, 2.51, 2.84, 3.10, 3.40]  # chat batch 16, static k medians (H100, Qwen2.5-Coder-1.5B head, 2026-12-06)
T1_MS = [1.85, 2.25, 2.45, 2.60, 2.75]
STEP_MS = interpolated_step_ms(T1_MS, T16_MS, 16)
RULE = PlannerSettings().drain_tolerance  # the drain rule as configured by default


def _closed_batch_rate(tolerance: float | None, profiles: list[list[float]], seed: int) -> float:
    policy = replayed_adaptive_policy(STEP_MS, 16, K, PlannerSettings(drain_tolerance=tolerance))
    return closed_batch_tokens_per_ms(policy, STEP_MS, profiles, seed)


def test_a_closed_batch_of_unlike_requests_does_not_lose_to_no_speculation():
    """Half the requests accept 0.70 at the first position and half 0.25, priced as the H100 chat run's steps. Most
    tokens a second, the batch drains to its slow half at steps made long for the fast half: 0.96x no speculation
    over three seeds (0.92x with keyed draws; 0.93x before the neighbour probe, spec/neighbour_probe.py; the run's
    chat batch 16: 0.84-0.95x). With the drain rule, >= 0.97x (1.00x; keyed draws 0.99x)."""
    no_spec = 16 / T16_MS[0]
    profiles = [[0.70, 0.65, 0.6, 0.55], [0.25, 0.35, 0.4, 0.4]]
    without = sum(_closed_batch_rate(None, profiles, seed) for seed in range(3)) / 3 / no_spec
    with_rule = sum(_closed_batch_rate(RULE, profiles, seed) for seed in range(3)) / 3 / no_spec
    assert without < 0.97 and with_rule >= 0.97 and with_rule > without + 0.03, (without, with_rule)


def test_a_closed_batch_of_alike_requests_keeps_its_speculation():
    """All requests accept 0.80: the slowest request is an average one, and the rule leaves goodput's choice
    (1.70x no speculation) within a percent."""
    profiles = [[0.8, 0.75, 0.7, 0.65]]
    without = sum(_closed_batch_rate(None, profiles, seed) for seed in range(3))
    with_rule = sum(_closed_batch_rate(RULE, profiles, seed) for seed in range(3))
    assert with_rule >= 0.98 * without and without / 3 / (16 / T16_MS[0]) > 1.5


def test_the_drain_tolerance_reaches_the_policy_and_is_validated():
    from pydantic import ValidationError

    from dynaspec import NGramDecodingConfig
    from dynaspec.spec.policies import build_adaptive_policy

    costs = StepCostModel()
    for k in range(3):
        costs.add(1, k, 1e-3 * (1 + k))
    for tolerance in (None, 0.2):
        config = NGramDecodingConfig(max_draft_len=2, draft_len_policy="adaptive", adaptive_drain_tolerance=tolerance)
        assert build_adaptive_policy(config, costs).settings.drain_tolerance == tolerance
    assert NGramDecodingConfig(draft_len_policy="adaptive").adaptive_drain_tolerance == 0.0
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        NGramDecodingConfig(draft_len_policy="adaptive", adaptive_drain_tolerance=-0.1)


def test_a_closed_batch_of_copy_and_chat_requests_runs_as_fast_as_no_speculation():
    """Half the requests copy (0.90 at every position), half chat (0.10): the chat half ends the batch, so plain steps
    from the start are best. The rule weighs each request at the slow end of what it may be: before a request has
    shown which half it is, that is the slow case of a population known (from the warm-up batch) to differ, so the
    batch starts plain (0.981x no speculation over three seeds when the rule took every request at its mean)."""
    no_spec = 16 / T16_MS[0]
    profiles = [[0.9, 0.9, 0.8, 0.8], [0.1, 0.1, 0.1, 0.1]]
    rate = sum(_closed_batch_rate(RULE, profiles, seed) for seed in range(3)) / 3 / no_spec
    assert rate >= 0.99, rate


def test_a_batch_of_four_learns_how_much_its_requests_differ_from_the_warm_up_batch():
    """The H100 sweep's batch 4 (2026-12-06: adaptive 0.97x no spec), replayed at its step prices with the n-gram
    code-edit and chat profiles (chat: 2.6% at the first position): the warm-up batch's four finished requests
    now teach the policy that requests differ (spec/request_spread.py, MIN_REQUESTS), so the last chat requests
    follow their own ~0 rate instead of one shrunk towards the pooled 0.24 by the default prior count (32), which
    kept them drafting 4 at batch 1-2 (0.95x no spec on two of three seeds). Since a request's prior is the mean of
    finished requests (0.28 at the first position, not the trial-weighted 0.1 of the chat-heavy tail), a chat
    request that was probed once reads ~0.17, and seed 0 drafts 4 for its last 16 tokens: 0.985x (keyed draws:
    1.02-1.03x on every seed)."""
    import json
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "dynaspec" / "bench" / "data"
    profiles = [json.loads((data / f"acceptance_ngram_{w}.json").read_text())["acceptance_per_position"]
                for w in ("code-edit", "chat")]
    step = interpolated_step_ms([5.57, 6.26, 6.49, 6.57, 6.6], [6.22, 6.58, 6.64, 6.62, 6.55], 4)
    no_spec = 4 / step(4, [0] * 4)
    rates = [closed_batch_tokens_per_ms(replayed_adaptive_policy(step, 4, 4, PlannerSettings()), step, profiles,
                                        seed, batch=4, gen=64) / no_spec for seed in range(3)]
    assert min(rates) >= 0.98 and sum(rates) / 3 >= 0.99, rates


def test_a_step_the_drain_rule_decided_is_neither_probed_nor_explored():
    """Where the drain rule chose the step's k (reason "drain"), the step runs it: a probe or exploration would lengthen
    a step of the closed batch whose end the rule just minimised, to learn for steps that batch hardly has left
    (replayed at the H100's draft-model prices, 2026-12-07: at batch 128 the probes of one request's first position
    cost 0.92x the best static line against 1.00x without them; the n-gram replay at 4-64 0.975-0.995x -> 1.00x)."""
    from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
    from dynaspec.spec.adaptive import AdaptivePolicy
    from dynaspec.spec.policy import StepOutcome

    k = 3
    costs = StepCostModel()
    for batch in (1, 2, 4):
        for draft in range(k + 1):
            costs.add(batch, draft, 1.0 + 0.1 * batch * draft)  # verifying costs: a position 10% of a plain step
    settings = PlannerSettings(explore_every=1, probe_margin=0.99, explore_budget=None)
    policy = AdaptivePolicy(costs, AcceptanceEstimator(k, blend_count=1.0), k, settings)
    ids = ["copy", "chat"]
    for _ in range(30):  # "copy" accepts every draft, "chat" nothing
        policy.observe(StepOutcome(ids, k, drafted=[k, k], accepted=[k, 0], draft_lens=[k, k], seconds=None))
    assert max(policy.draft_lens(2, 2, ids)) > 0  # tokens a second: the copy request drafts
    decided = policy.draft_lens(2, 2, ids, remaining=[10, 60])  # closed: the chat request ends the batch
    assert decided == [0, 0] and policy.last_decision["reason"] == "drain"
