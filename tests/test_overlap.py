"""Overlapped decode (engine/overlap.py) gives the synchronous engine's tokens, on CPU through the
fixed-shape decode path run eagerly (the same code the CUDA graphs capture)."""

from __future__ import annotations

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.policy import DraftLenPolicy
from tests.arrivals import run_with_abort
from tests.tiny_models import make_tiny_checkpoint


def _engine(path: str, overlap: bool, spec=None, **kwargs) -> LLMEngine:
    config = EngineConfig(model=path, max_num_seqs=8, block_size=4, async_scheduling=overlap, speculative_config=spec, **kwargs)
    engine = LLMEngine(config)
    engine.runner.capture_graphs(engine.graph_pairs(), engine.max_blocks_per_seq, use_graphs=False)
    return engine


def _count_overlapped_launches(engine: LLMEngine) -> list[bool]:
    """Record, per launched step, whether it was launched from a previous step's tokens on the device."""
    launches: list[bool] = []
    original = engine._launch_overlapped
    engine._launch_overlapped = lambda sched, ids: launches.append(ids is not None) or original(sched, ids)
    return launches


_run = run_with_abort


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("overlap"), "llama"))


def _workload():
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 512, (3 + 5 * i,), generator=gen).tolist() for i in range(6)]
    params = [SamplingParams(temperature=0, max_tokens=6 + 4 * i, ignore_eos=True) for i in range(6)]
    return prompts, params


def test_overlapped_decode_is_token_identical_and_actually_overlaps(tiny):
    prompts, params = _workload()
    arrivals = [0, 0, 0, 2, 9, 9]
    expected = _run(_engine(tiny, overlap=False), prompts, params, arrivals)
    engine = _engine(tiny, overlap=True)
    launches = _count_overlapped_launches(engine)
    assert _run(engine, prompts, params, arrivals) == expected
    assert sum(launches) > 10  # most decode steps were launched before the previous one was committed
    assert engine.num_free_blocks == engine.num_total_blocks


def test_stop_tokens_and_aborts_mid_overlap(tiny):
    prompts, params = _workload()
    # Stop on a token that greedy decoding emits mid-run: a request ends while its next step is in flight.
    plain = _run(_engine(tiny, overlap=False), prompts, params, [0] * 6)
    stops = [SamplingParams(temperature=0, max_tokens=p.max_tokens, stop_token_ids=[plain[f"r{i}"][3]])
             for i, p in enumerate(params)]
    expected = _run(_engine(tiny, overlap=False), prompts, stops, [0] * 6, abort_at=2)
    engine = _engine(tiny, overlap=True)
    got = _run(engine, prompts, stops, [0] * 6, abort_at=2)
    assert got == expected and "r1" not in got
    assert all(len(t) <= 4 for t in got.values())  # each stopped at (or before) its stop token
    assert engine.num_free_blocks == engine.num_total_blocks and not engine.has_unfinished_requests()


def test_k0_steps_of_a_speculative_engine_overlap_and_stay_lossless(tiny):
    prompts, params = _workload()
    spec = NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3, 3: 0})  # batch >= 3: k = 0
    arrivals = [0, 0, 0, 0, 6, 6]
    expected = _run(_engine(tiny, overlap=False), prompts, params, arrivals)
    engine = _engine(tiny, overlap=True, spec=spec)
    launches = _count_overlapped_launches(engine)
    assert _run(engine, prompts, params, arrivals) == expected
    assert sum(launches) > 5
    assert engine.get_stats()["num_drafted"] > 0  # the batch-1/2 tail speculated


def test_seeded_sampling_overlaps_and_reproduces_the_synchronous_tokens(tiny):
    prompts, greedy = _workload()
    params = [
        SamplingParams(temperature=0.8, top_p=0.9, seed=11 + i, max_tokens=p.max_tokens, ignore_eos=True)
        if i % 2 else p
        for i, p in enumerate(greedy)
    ]  # greedy and seeded sampling requests mixed in one batch
    arrivals = [0, 0, 0, 0, 3, 3]
    expected = _run(_engine(tiny, overlap=False), prompts, params, arrivals)
    engine = _engine(tiny, overlap=True)
    launches = _count_overlapped_launches(engine)
    assert _run(engine, prompts, params, arrivals) == expected
    assert sum(launches) > 10
    greedy_only = _run(_engine(tiny, overlap=False), prompts, greedy, arrivals)
    assert any(expected[f"r{i}"] != greedy_only[f"r{i}"] for i in (1, 3, 5))  # they did sample


class _DrainsPlain(DraftLenPolicy):
    """Drafts 2 per request, except while the batch drains (remaining given): then plain steps, as the adaptive
    policy's drain rule may decide (spec/drain.py). Records the remaining counts it was asked with."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def draft_lens(self, num_decoding, num_active, request_ids=None, remaining=None):
        if remaining is None:
            return [2] * num_decoding
        self.asked.append(list(remaining))
        return [0] * num_decoding

    def draft_len(self, num_decoding, num_active, request_ids=None):
        return max(self.draft_lens(num_decoding, num_active, request_ids), default=0)


def test_plain_steps_of_a_draining_batch_overlap_when_the_policy_plans_the_drain_otherwise(tiny):
    """The overlapped step's continuation asks the policy as the scheduler does (with the drain's remaining
    tokens, less the one in flight): a policy that plans a draining batch with plain steps, and drafts
    otherwise, still overlaps those steps (H100, 2026-12-06: adaptive's drain rule held k = 0 in a closed batch
    of 64 while the continuation, asking without `remaining`, saw drafts and refused every overlap: each plain
    step was launched, then waited for, 8.2 ms against no spec's 6.85 ms)."""
    prompts, params = _workload()
    expected = _run(_engine(tiny, overlap=False), prompts, params, [0] * 6)
    engine = _engine(tiny, overlap=True, spec=NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3}))
    engine.policy = engine.policy_feed.policy = policy = _DrainsPlain()
    engine.runner.capture_graphs(engine.graph_pairs(lambda batch: {0, 2}), engine.max_blocks_per_seq, use_graphs=False)
    launches = _count_overlapped_launches(engine)
    assert _run(engine, prompts, params, [0] * 6, closed=True) == expected  # a closed batch: it drains
    assert sum(launches) > 10  # continued from the step in flight, not launched after a wait
    assert engine.get_stats()["num_drafted"] == 0
    # the first decode step is the scheduler's, the second its continuation, asked before the first's commit:
    # the token in flight counted (consecutive continuations differ by one committed token either way)
    assert policy.asked[1] == [left - 1 for left in policy.asked[0]], policy.asked[:2]


class _SimulatedDevice:
    """A fake host clock and a device that runs each overlapped step for STEP seconds after the later of its
    launch and the previous step's end; waiting for a step's tokens moves the host clock to its end. Host
    work costs HOST a clock read. Nothing here depends on this machine's speed."""

    STEP, HOST = 10.0, 0.01

    def __init__(self) -> None:
        self.now = 0.0
        self.device_free = 0.0
        self.ends: dict[int, float] = {}

    def perf_counter(self) -> float:
        self.now += self.HOST
        return self.now

    def launched(self, step) -> None:
        self.device_free = max(self.now, self.device_free) + self.STEP
        self.ends[id(step)] = self.device_free

    def wait(self, step) -> None:
        self.now = max(self.now, self.ends[id(step)])


def test_an_overlapped_step_is_priced_at_its_own_forward_not_its_predecessors(tiny, monkeypatch):
    """Every plain step the policy learns from costs one device step, in a steady run, at its first step and
    at its last (launched behind a step in flight: timed from its launch it cost two, the tail of each
    closed batch on an H100, 2026-12-06, where the adaptive policy's overhead fit then priced plain steps
    at batch 7-254 at 2x), and a step launched by the scheduler and continued at once (launch to launch:
    nearly nothing)."""
    import types

    from dynaspec.engine import engine as engine_module
    from dynaspec.engine.overlap import InflightStep

    device = _SimulatedDevice()
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(perf_counter=device.perf_counter,
                                                                     monotonic=device.perf_counter))
    wait = InflightStep.host_tokens
    monkeypatch.setattr(InflightStep, "host_tokens", lambda step: (device.wait(step), wait(step))[1])
    prompts, params = _workload()
    engine = _engine(tiny, overlap=True)
    launch = engine._launch_overlapped

    def launched(sched, ids):
        step = launch(sched, ids)
        device.launched(step)
        return step

    engine._launch_overlapped = launched
    seconds: list[float] = []
    observe = engine.policy.observe
    engine.policy.observe = lambda outcome: (seconds.append(outcome.seconds) if outcome.seconds is not None
                                             and outcome.draft_len == 0 else None, observe(outcome))
    _run(engine, prompts, params, [0, 0, 0, 2, 9, 9])
    assert len(seconds) > 10
    assert all(device.STEP - 1e-6 <= s < device.STEP + 1.0 for s in seconds), sorted(seconds)


def test_a_batch_whose_requests_finish_one_by_one_stays_overlapped(tiny):
    """Requests of one batch with different max_tokens end at different steps: step t + 1 continues the ones
    still running with their step-t tokens gathered on the device, so the run is launched from the scheduler
    once; before, every finish drained the in-flight step and the next step was launched after a wait (the
    tails of the H100 sweep's closed batches, 2026-12-06)."""
    prompts, params = _workload()
    expected = _run(_engine(tiny, overlap=False), prompts, params, [0] * 6)
    engine = _engine(tiny, overlap=True)
    launches = _count_overlapped_launches(engine)
    assert _run(engine, prompts, params, [0] * 6) == expected
    assert launches.count(False) == 1 and launches.count(True) > 20
    assert engine.num_free_blocks == engine.num_total_blocks


class _PlainRecordingRefresh(DraftLenPolicy):
    """k = 0 for every request; records the request ids refresh() is asked to plan for."""

    def __init__(self, events: list) -> None:
        self.events = events

    def draft_lens(self, num_decoding, num_active, request_ids=None, remaining=None):
        return [0] * num_decoding

    def draft_len(self, num_decoding, num_active, request_ids=None):
        return 0

    def refresh(self, num_decoding, request_ids=None):
        self.events.append(("refresh", list(request_ids)))


def test_the_policy_refreshes_the_batch_of_the_step_just_launched(tiny):
    """refresh() plans off the critical path for the batch the next decision is likeliest to meet. An overlapped
    call launches step t + 1 and commits step t; it refreshed step t's batch, whose finished requests the next
    decision no longer has, so a policy planning per batch composition (adaptive) planned each new one where
    the decision was asked. It now refreshes step t + 1's."""
    prompts, params = _workload()
    engine = _engine(tiny, overlap=True)
    events: list = []
    engine.policy = engine.policy_feed.policy = _PlainRecordingRefresh(events)
    original = engine._launch_overlapped

    def launch(sched, ids):
        events.append(("launch", [d.request.request_id for d in sched.decodes], ids is not None))
        return original(sched, ids)

    engine._launch_overlapped = launch
    _run(engine, prompts, params, [0] * 6)
    continued = [(event, following) for event, following in zip(events, events[1:])
                 if event[0] == "launch" and event[2]]
    assert len(continued) > 20
    assert all(following == ("refresh", event[1]) for event, following in continued)
    # requests finished along the way, so step t's batch and step t + 1's differed in some calls
    assert len({len(event[1]) for event, _ in continued}) > 2
