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
from dynaspec.spec.drain import drain_allocation, drain_seconds
from dynaspec.spec.planner_settings import PlannerSettings

FAST, SLOW = survival([0.9, 0.9, 0.9]), survival([0.1, 0.1, 0.1])


def test_drain_seconds_is_the_slowest_requests_steps_at_this_steps_price():
    allocation = Allocation([2, 0], 2, 2 + 0.9 + 0.81, 0.003)
    # the fast request commits 1 + 0.9 + 0.81 a step, the slow one 1: 100 tokens left each -> the slow one decides
    assert drain_seconds(allocation, [FAST, SLOW], [100, 100]) == pytest.approx(0.003 * 100)
    # ... unless the fast one has far more left
    assert drain_seconds(allocation, [FAST, SLOW], [1000, 100]) == pytest.approx(0.003 * 1000 / 2.71)


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
        chosen = drain_allocation(goodput, uniform_allocations([FAST, none], price), [FAST, none], [50, 50], 0.05)
        assert (chosen is goodput) is kept
        if not kept:
            assert chosen.draft_lens == [0, 0]


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
K = 4
T16_MS = [2.07, 2.51, 2.84, 3.10, 3.40]  # chat batch 16, static k medians (H100, Qwen2.5-Coder-1.5B head, 2026-12-06)
T1_MS = [1.85, 2.25, 2.45, 2.60, 2.75]
STEP_MS = interpolated_step_ms(T1_MS, T16_MS, 16)


def _closed_batch_rate(tolerance: float | None, profiles: list[list[float]], seed: int) -> float:
    policy = replayed_adaptive_policy(STEP_MS, 16, K, PlannerSettings(drain_tolerance=tolerance))
    return closed_batch_tokens_per_ms(policy, STEP_MS, profiles, seed)


def test_a_closed_batch_of_unlike_requests_does_not_lose_to_no_speculation():
    """Half the requests accept 0.70 at the first position and half 0.25, priced as the H100 chat run's steps. Most
    tokens a second, the batch drains to its slow half at steps made long for the fast half: 0.93x no speculation
    over three seeds (the run's chat batch 16: 0.84-0.95x). With the drain rule, >= 0.97x."""
    no_spec = 16 / T16_MS[0]
    profiles = [[0.70, 0.65, 0.6, 0.55], [0.25, 0.35, 0.4, 0.4]]
    without = sum(_closed_batch_rate(None, profiles, seed) for seed in range(3)) / 3 / no_spec
    with_rule = sum(_closed_batch_rate(0.05, profiles, seed) for seed in range(3)) / 3 / no_spec
    assert without < 0.95 and with_rule >= 0.97 and with_rule > without + 0.03, (without, with_rule)


def test_a_closed_batch_of_alike_requests_keeps_its_speculation():
    """All requests accept 0.80: the slowest request is an average one, and the rule leaves goodput's choice
    (1.70x no speculation) within a percent."""
    profiles = [[0.8, 0.75, 0.7, 0.65]]
    without = sum(_closed_batch_rate(None, profiles, seed) for seed in range(3))
    with_rule = sum(_closed_batch_rate(0.05, profiles, seed) for seed in range(3))
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
    assert NGramDecodingConfig(draft_len_policy="adaptive").adaptive_drain_tolerance == 0.05
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        NGramDecodingConfig(draft_len_policy="adaptive", adaptive_drain_tolerance=-0.1)


def test_a_closed_batch_of_copy_and_chat_requests_runs_as_fast_as_no_speculation():
    """Half the requests copy (0.90 at every position), half chat (0.10): the chat half ends the batch, so plain steps
    from the start are best. The rule weighs each request at the slow end of what it may be: before a request has
    shown which half it is, that is the slow case of a population known (from the warm-up batch) to differ, so the
    batch starts plain (0.981x no speculation over three seeds when the rule took every request at its mean)."""
    no_spec = 16 / T16_MS[0]
    profiles = [[0.9, 0.9, 0.8, 0.8], [0.1, 0.1, 0.1, 0.1]]
    rate = sum(_closed_batch_rate(0.05, profiles, seed) for seed in range(3)) / 3 / no_spec
    assert rate >= 0.99, rate


def test_a_batch_of_four_learns_how_much_its_requests_differ_from_the_warm_up_batch():
    """The H100 sweep's batch 4 (2026-12-06: adaptive 0.97x no spec), replayed at its step prices with the n-gram
    code-edit and chat profiles (chat: 2.6% at the first position): the warm-up batch's four finished requests
    now teach the policy that requests differ (spec/request_spread.py, MIN_REQUESTS), so the last chat requests
    follow their own ~0 rate instead of one shrunk towards the pooled 0.24 by the default prior count (32), which
    kept them drafting 4 at batch 1-2 (0.95x no spec on two of three seeds)."""
    import json
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "dynaspec" / "bench" / "data"
    profiles = [json.loads((data / f"acceptance_ngram_{w}.json").read_text())["acceptance_per_position"]
                for w in ("code-edit", "chat")]
    step = interpolated_step_ms([5.57, 6.26, 6.49, 6.57, 6.6], [6.22, 6.58, 6.64, 6.62, 6.55], 4)
    no_spec = 4 / step(4, [0] * 4)
    for seed in range(3):
        policy = replayed_adaptive_policy(step, 4, 4, PlannerSettings())
        rate = closed_batch_tokens_per_ms(policy, step, profiles, seed, batch=4, gen=64) / no_spec
        assert rate >= 0.99, (seed, rate)
