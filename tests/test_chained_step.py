"""Chained speculative steps (engine/chained_step.py): a greedy step drafted by a chain drafter is launched from
the previous step's results on the device, before the host verifies that step. Token-identical to the
synchronous engine, on CPU through the graphs' fixed-shape forwards run eagerly (as tests/test_deferred_verify.py):
with arrivals (which stop the chaining), stops inside a step, max_tokens, an abort, preemption-free KV
accounting (every block back at the end)."""

from __future__ import annotations

import time

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import DraftTargetDecodingConfig
from tests.arrivals import run_with_abort
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("chained")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        # drafts accepted often but not always: steps that accept all k and steps that reject some
        "near": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
    }


def chained_engine(target: str, spec, overlapped: bool, **options) -> LLMEngine:
    """An engine whose target and drafter run their graphs' fixed-shape code eagerly (CPU)."""
    config = EngineConfig(model=target, max_num_seqs=8, block_size=4, async_scheduling=overlapped,
                          speculative_config=spec, **options)
    engine = LLMEngine(config)
    pairs = engine.graph_pairs()
    engine.runner.capture_graphs(pairs, engine.max_blocks_per_seq, use_graphs=False)
    engine.drafter.capture_graphs([(b, k) for b, k in pairs if k > 0], engine.max_blocks_per_seq, use_graphs=False)
    return engine


def count_chained(engine: LLMEngine) -> list[int]:
    """Appends the batch size of every step launched before its predecessor was verified."""
    chained: list[int] = []
    original = engine._continue_chained

    def spy(step, proposal, earlier):
        chained.append(len(step.sched.decodes))
        return original(step, proposal, earlier)

    engine._continue_chained = spy
    return chained


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, 512, (3 + 4 * i,), generator=gen).tolist() for i in range(6)]


@pytest.mark.parametrize("k", [1, 3])
def test_chained_steps_are_token_identical_with_arrivals_stops_and_an_abort(ckpts, k):
    spec = DraftTargetDecodingConfig(max_draft_len=k, speculative_model=ckpts["near"])
    prompts = _prompts()
    greedy = [SamplingParams(temperature=0, max_tokens=14 + 5 * i, ignore_eos=True) for i in range(6)]
    arrivals = [0, 0, 0, 6, 6, 20]
    first = run_with_abort(chained_engine(ckpts["target"], spec, False), prompts, greedy, arrivals)
    params = [SamplingParams(temperature=0, max_tokens=p.max_tokens, stop_token_ids=[first[f"r{i}"][9]])
              for i, p in enumerate(greedy)]  # a stop inside a multi-token commit, the next step already running
    params[1] = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)  # still running when aborted
    expected = run_with_abort(chained_engine(ckpts["target"], spec, False), prompts, params, arrivals, abort_at=12)
    engine = chained_engine(ckpts["target"], spec, True)
    chained = count_chained(engine)
    got = run_with_abort(engine, prompts, params, arrivals, abort_at=12)
    assert got == expected and "r1" not in got
    assert len(chained) >= 5 and engine.get_stats()["num_accepted"] > 0
    assert engine.num_free_blocks == engine.num_total_blocks and not engine.has_unfinished_requests()
    assert engine._launched is None and not engine.drafter._state


@pytest.mark.parametrize("k", [1, 3])
def test_chained_steps_draft_what_the_synchronous_engine_drafts(ckpts, k):
    """Lossless output alone would not show a wrong catch-up (drafts only change acceptance): the same
    drafts give the same acceptance, position by position (no abort here: an aborted request's last step
    is committed by the synchronous engine, skipped by a deferred one)."""
    spec = DraftTargetDecodingConfig(max_draft_len=k, speculative_model=ckpts["near"])
    params = [SamplingParams(temperature=0, max_tokens=14 + 5 * i, ignore_eos=True) for i in range(6)]
    synchronous = chained_engine(ckpts["target"], spec, False)
    expected = run_with_abort(synchronous, _prompts(), params, [0, 0, 0, 6, 6, 20])
    engine = chained_engine(ckpts["target"], spec, True)
    chained = count_chained(engine)
    assert run_with_abort(engine, _prompts(), params, [0, 0, 0, 6, 6, 20]) == expected and len(chained) >= 5
    counts = ("num_drafted", "num_accepted", "accepted_per_position")
    assert [engine.get_stats()[c] for c in counts] == [synchronous.get_stats()[c] for c in counts]


@pytest.mark.parametrize("k", [1, 3])
def test_a_draining_batch_stays_chained_through_every_finish(ckpts, k):
    """Six requests admitted together that end one after another (max_tokens apart): once chained, every later
    speculative step is chained too, each finish dropping its request's rows from the next launch on the device
    (before, each finish paused the chain for a synchronous step); the same tokens and the same drafts, position
    by position, as the synchronous engine."""
    spec = DraftTargetDecodingConfig(max_draft_len=k, speculative_model=ckpts["near"])
    params = [SamplingParams(temperature=0, max_tokens=12 + 6 * i, ignore_eos=True) for i in range(6)]
    synchronous = chained_engine(ckpts["target"], spec, False)
    expected = run_with_abort(synchronous, _prompts(), params, [0] * 6)
    engine = chained_engine(ckpts["target"], spec, True)
    chained = count_chained(engine)
    launches: list[int] = []  # chained steps so far, at each synchronous launch of a speculative step
    launch = engine._launch

    def spy(sched):
        if sched.draft_len:
            launches.append(len(chained))
        return launch(sched)

    engine._launch = spy
    assert run_with_abort(engine, _prompts(), params, [0] * 6) == expected
    assert set(chained) >= {6, 5, 4, 3, 2} and chained == sorted(chained, reverse=True)  # shrinking as they end
    assert max(launches) == 0  # every synchronous step came before the first chained one
    counts = ("num_drafted", "num_accepted", "accepted_per_position")
    assert [engine.get_stats()[c] for c in counts] == [synchronous.get_stats()[c] for c in counts]
    assert engine.num_free_blocks == engine.num_total_blocks and not engine.drafter._state


def test_no_chaining_without_graphs_or_with_a_sampled_request(ckpts):
    spec = DraftTargetDecodingConfig(max_draft_len=2, speculative_model=ckpts["near"])
    prompts = _prompts()[:3]
    greedy = [SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)] * 3
    eager = LLMEngine(EngineConfig(model=ckpts["target"], max_num_seqs=8, block_size=4, speculative_config=spec))
    unchained = count_chained(eager)
    assert run_with_abort(eager, prompts, greedy, [0, 0, 0]) and not unchained  # nothing deferred, nothing chained
    # the sampled request ends first: the two greedy ones chain once it has left the batch, never before
    # (and the one left, once the other reached its max_tokens, alone)
    mixed = greedy[:2] + [SamplingParams(temperature=0.8, max_tokens=8, seed=3, ignore_eos=True)]
    engine = chained_engine(ckpts["target"], spec, True)
    chained = count_chained(engine)
    run_with_abort(engine, prompts, mixed, [0, 0, 0])
    assert chained and chained[0] == 2 and set(chained) <= {1, 2}


def test_adaptive_chains_alone_and_trims_in_a_batch(ckpts, tmp_path):
    """adaptive trims drafts (a host read between drafting and verifying) from trim_min_batch = 2 requests
    on where verifying them costs enough (trim_min_saving), and such steps are not chained; a request decoding
    alone is not trimmed, so its steps chain. Costs injected (a drafted position costs 15% of a plain step:
    the near-copy drafter's positions still pay); tokens equal the synchronous engine's."""
    from dynaspec.runtime.cost_model import StepCostModel

    costs = StepCostModel()
    for batch in (1, 2, 4, 8):
        for k in range(3):
            costs.add(batch, k, 1.0 + 0.15 * batch * k)
    costs.save(tmp_path / "costs.json")
    spec = DraftTargetDecodingConfig(max_draft_len=2, speculative_model=ckpts["near"], draft_len_policy="adaptive",
                                     step_cost_file=str(tmp_path / "costs.json"))
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)] + [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)] * 2
    arrivals = [0, 24, 24]  # r0 alone, then beside two others, then alone again once they finish
    expected = run_with_abort(chained_engine(ckpts["target"], spec, False), _prompts()[:3], params, arrivals)
    engine = chained_engine(ckpts["target"], spec, True)
    chained = count_chained(engine)
    trimmed = []
    trim = engine.policy.trim_drafts
    engine.policy.trim_drafts = lambda ids, *args: trimmed.append(len(ids)) or trim(ids, *args)
    assert run_with_abort(engine, _prompts()[:3], params, arrivals) == expected
    assert chained and set(chained) == {1}  # chained alone only
    assert trimmed and min(trimmed) >= 2  # trimmed in company only


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("k", [1, 3])
def test_chained_steps_on_cuda_graphs_equal_the_synchronous_engine(ckpts, k):
    """Captured graphs, float32: the chained engine's tokens and acceptance are the synchronous engine's."""
    spec = DraftTargetDecodingConfig(max_draft_len=k, speculative_model=ckpts["near"])
    params = [SamplingParams(temperature=0, max_tokens=20 + 6 * i, ignore_eos=True) for i in range(6)]

    def run(overlapped: bool):
        engine = LLMEngine(EngineConfig(model=ckpts["target"], max_num_seqs=8, block_size=4, device="cuda",
                                        dtype="float32", async_scheduling=overlapped, speculative_config=spec))
        chained = count_chained(engine)
        tokens = run_with_abort(engine, _prompts(), params, [0, 0, 0, 6, 6, 20])
        counts = [engine.get_stats()[c] for c in ("num_drafted", "num_accepted", "accepted_per_position")]
        return tokens, counts, len(chained)

    expected, expected_counts, none = run(False)
    got, counts, chained = run(True)
    assert got == expected and counts == expected_counts
    assert none == 0 and chained >= 5


def test_a_drafter_that_fails_to_chain_falls_back_to_the_synchronous_path(ckpts):
    """propose_chained raising is no request's failure: the step is verified first and drafted as always."""
    spec = DraftTargetDecodingConfig(max_draft_len=2, speculative_model=ckpts["near"])
    params = [SamplingParams(temperature=0, max_tokens=20 + 4 * i, ignore_eos=True) for i in range(4)]
    expected = run_with_abort(chained_engine(ckpts["target"], spec, False), _prompts()[:4], params, [0, 0, 0, 0])
    engine = chained_engine(ckpts["target"], spec, True)

    def broken(*args):
        raise RuntimeError("no chain today")

    engine.drafter.propose_chained = broken
    chained = count_chained(engine)
    assert run_with_abort(engine, _prompts()[:4], params, [0, 0, 0, 0]) == expected and not chained


def test_chained_steps_report_periods_not_overlapping_spans_to_the_policy(ckpts, monkeypatch):
    """The policy prices k from each speculative step's reported seconds. A chained step is launched before
    its predecessor is verified, so timed from its launch it would also count the predecessor's forward
    queued before it (the H100 run of 2026-12-06 fed the goodput planner ~4.5 ms for 2.3 ms steps, and it
    left k = 3's 1.58x for k = 0). With a clock that ticks once per reading (no real timing), the reported
    seconds of the steps are disjoint spans: their sum fits in the clock's whole run."""
    ticks = iter(range(10**9))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    spec = DraftTargetDecodingConfig(max_draft_len=2, speculative_model=ckpts["near"])
    engine = chained_engine(ckpts["target"], spec, True)
    chained = count_chained(engine)
    reported: list[float] = []
    observe = engine.policy.observe

    def spy(outcome):
        if outcome.seconds is not None:
            reported.append(outcome.seconds)
        return observe(outcome)

    engine.policy.observe = spy
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)] * 3
    start = time.perf_counter()
    run_with_abort(engine, _prompts()[:3], params, [0, 0, 0])
    elapsed = time.perf_counter() - start
    assert len(chained) >= 5 and len(reported) >= len(chained)
    assert sum(reported) <= elapsed
