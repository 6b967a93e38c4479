"""Speculative decoding is lossless: greedy tokens equal the non-speculative engine's, for every drafter,
draft length, batch size and draft-length schedule, with preemption forced."""

from __future__ import annotations

import pytest
import torch

from dynaspec import LLM, DraftTargetDecodingConfig, NGramDecodingConfig, SamplingParams
from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint
from tests.arrivals import run_with_arrivals

GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        "other": str(make_tiny_checkpoint(root, "qwen2", seed=7)),
        "near": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
    }


def _prompts(n: int) -> list[list[int]]:
    """Prompts with repeated spans (so prompt lookup finds matches) and mixed lengths."""
    gen = torch.Generator().manual_seed(3)
    prompts = []
    for i in range(n):
        motif = torch.randint(0, 512, (3 + i % 4,), generator=gen).tolist()
        prompts.append((motif * (2 + i % 3))[: 4 + 5 * i] + [i])
    return prompts


@pytest.fixture(scope="module")
def baseline(ckpts):
    llm = LLM(model=ckpts["target"], block_size=4)
    return [o.token_ids for o in llm.generate(_prompts(8), GREEDY)]


def _spec(kind: str, k: int, ckpts, **extra):
    if kind == "ngram":
        return NGramDecodingConfig(max_draft_len=k, max_matching_ngram_size=3, **extra)
    draft = {"draft-same": ckpts["target"], "draft-near": ckpts["near"], "draft-other": ckpts["other"]}[kind]
    return DraftTargetDecodingConfig(max_draft_len=k, speculative_model=draft, **extra)


@pytest.mark.parametrize("kind", ["ngram", "draft-same", "draft-near", "draft-other"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_greedy_identical_to_no_spec(ckpts, baseline, kind, k, batch):
    # A small KV pool forces preemption at batch 8.
    llm = LLM(
        model=ckpts["target"], block_size=4, num_kv_blocks=40, max_model_len=64, speculative_config=_spec(kind, k, ckpts)
    )
    outs = llm.generate(_prompts(8)[:batch], GREEDY)
    assert [o.token_ids for o in outs] == baseline[:batch]
    stats = llm.get_stats()
    assert stats["num_drafted"] >= stats["num_accepted"] >= 0
    if kind == "draft-same":
        # The target drafting for itself: every draft is accepted.
        assert stats["num_drafted"] > 0 and stats["num_accepted"] == stats["num_drafted"]
    if kind == "draft-near" and k >= 3:
        # A perturbed copy of the target: some drafts accepted, some rejected (rollback exercised).
        assert 0 < stats["num_accepted"] < stats["num_drafted"]
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks


def test_preemption_happens_with_speculation(ckpts, baseline):
    llm = LLM(
        model=ckpts["target"], block_size=4, num_kv_blocks=24, max_model_len=64, max_num_batched_tokens=64,
        speculative_config=_spec("draft-other", 4, ckpts),
    )
    outs = llm.generate(_prompts(8), GREEDY)
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    assert [o.token_ids for o in outs] == baseline


def _run_trace(engine: LLMEngine, prompts: list[list[int]]) -> dict[str, list[int]]:
    """Requests arrive over time and finish at different lengths, so the decoding batch size rises
    and falls across schedule thresholds mid-run."""
    arrivals = {0: [0, 1], 2: [2, 3, 4], 5: [5, 6, 7], 12: [0, 3], 20: [1, 2, 4, 6]}
    return run_with_arrivals(engine, prompts, arrivals, lambda i, n: (
        f"r{n}", SamplingParams(temperature=0.0, max_tokens=6 + 4 * (n % 4), ignore_eos=True)))


@pytest.mark.parametrize("kind", ["ngram", "draft-near", "draft-same"])
@pytest.mark.parametrize("schedule", [{1: 4, 3: 2, 6: 0}, {1: 3, 2: 1, 5: 3}, {1: 2, 4: 0}])
def test_schedule_across_thresholds_is_lossless(ckpts, kind, schedule):
    prompts = _prompts(8)
    plain = _run_trace(LLMEngine(EngineConfig(model=ckpts["target"], block_size=4)), prompts)
    k = schedule[1]
    engine = LLMEngine(
        EngineConfig(model=ckpts["target"], block_size=4, speculative_config=_spec(kind, k, ckpts, draft_len_schedule=schedule))
    )
    assert _run_trace(engine, prompts) == plain
    histogram = engine.get_stats()["k_histogram"]
    # The schedule was applied: every recorded (batch, k) pair is what the schedule gives for that batch.
    from dynaspec.spec.schedule_policy import DraftLenSchedule

    lookup = DraftLenSchedule(schedule)
    seen_k = set()
    for batch, ks in histogram.items():
        for kk in ks:
            assert int(kk) == lookup.draft_len(int(batch))
            seen_k.add(int(kk))
    assert len(seen_k) >= 2  # the batch size crossed at least one threshold


def test_k_zero_steps_do_no_draft_work(ckpts):
    spec = _spec("draft-same", 3, ckpts, draft_len_schedule={1: 3, 2: 0})
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=spec)
    drafter = llm.engine.drafter
    llm.generate(_prompts(4), GREEDY)  # batch 4 throughout decoding: k = 0 every step
    assert drafter.num_propose_calls == 0 and drafter.num_forwards == 0
    llm.generate(_prompts(1), GREEDY)  # batch 1: k = 3
    assert drafter.num_propose_calls > 0


def test_max_concurrency_turns_speculation_off(ckpts, baseline):
    spec = _spec("ngram", 4, ckpts, max_concurrency=2)
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=spec)
    outs = llm.generate(_prompts(8)[:3], GREEDY)
    assert [o.token_ids for o in outs] == baseline[:3]
    histogram = llm.get_stats()["k_histogram"]
    assert set(histogram["3"]) == {"0"}


def test_draft_model_stays_fresh_through_k_zero(ckpts):
    """Acceptance right after a k = 0 period equals that of a run that never stopped drafting: the
    draft KV caught up on every token it missed (TensorRT-LLM issue #16888). A second request joins
    for a while, so the batch is 2 and the schedule {1: 3, 2: 0} turns speculation off."""
    prompt, other = _prompts(8)[5], _prompts(8)[2]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)

    def run(with_gap: bool) -> tuple[list[int], list[float]]:
        spec = _spec("draft-same", 3, ckpts, draft_len_schedule={1: 3, 2: 0})
        engine = LLMEngine(EngineConfig(model=ckpts["target"], block_size=4, speculative_config=spec))
        engine.add_request("r", prompt, params)
        tokens: list[int] = []
        rates_after_gap: list[float] = []
        step = 0
        while engine.has_unfinished_requests():
            if with_gap and step == 2:
                engine.add_request("other", other, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
            outs = engine.step()
            last = engine.stats.last_step
            if last and last.get("k", 0) > 0:
                rates_after_gap.append(last["accepted"] / max(1, last["drafted"]))
            for out in outs:
                if out.request_id == "r":
                    tokens = out.token_ids
            step += 1
        return tokens, engine.get_stats()

    plain_tokens, plain_stats = run(False)
    gap_tokens, gap_stats = run(True)
    assert gap_tokens == plain_tokens
    assert 0 in {int(k) for ks in gap_stats["k_histogram"].values() for k in ks}  # the gap happened
    # Same tokens, drafted from a fresh KV: acceptance per position is no lower after the gap.
    assert gap_stats["acceptance_rate"] >= plain_stats["acceptance_rate"] - 1e-9


def test_vocab_mismatch_is_a_clear_error(tmp_path, ckpts):
    small_vocab = make_tiny_checkpoint(tmp_path, "llama", seed=2, vocab_size=300)
    with pytest.raises(ValueError, match="vocab"):
        LLM(model=ckpts["target"], speculative_config=DraftTargetDecodingConfig(max_draft_len=2, speculative_model=str(small_vocab)))


def test_acceptance_replay_follows_the_profile(ckpts, tmp_path):
    """Benchmark-only replay: accepted lengths follow the profile, not the model, and say so."""
    import json

    profile = tmp_path / "half.json"
    profile.write_text(json.dumps({"acceptance_per_position": [1.0, 0.5, 0.0]}))
    spec = _spec("ngram", 3, ckpts, replay_acceptance_profile=str(profile))
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=spec)
    llm.generate(_prompts(4), SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    stats = llm.get_stats()
    rates = stats["acceptance_per_position"]
    assert rates[0] == 1.0 and rates[2] == 0.0 and 0.3 < rates[1] < 0.7
    assert stats["acceptance_replay"] == "half"
    with pytest.raises(ValueError, match="acceptance profile"):
        LLM(model=ckpts["target"], speculative_config=_spec("ngram", 3, ckpts, replay_acceptance_profile="nope"))


@pytest.mark.parametrize("kind", ["ngram", "draft-near", "draft-same"])
def test_goodput_planner_is_lossless(ckpts, baseline, kind):
    spec = _spec(kind, 4, ckpts, draft_len_policy="goodput")
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=spec)
    outs = llm.generate(_prompts(8)[:3], GREEDY)
    assert [o.token_ids for o in outs] == baseline[:3]


def test_goodput_planner_follows_the_cost_table(ckpts, tmp_path):
    """Cheap verify + perfect acceptance -> the largest k; verify that costs 10x per drafted position -> k = 0.
    (n-gram drafts with replayed full acceptance, so real step times, which refine the table online, stay
    close to each other across k on this CPU.)"""
    import json

    from dynaspec.runtime.cost_model import StepCostModel

    profile = tmp_path / "all.json"
    profile.write_text(json.dumps({"acceptance_per_position": [1.0, 1.0, 1.0, 1.0]}))

    def run(cost_per_k: float) -> dict:
        table = StepCostModel()
        for batch in (1, 2, 4, 8):
            for k in range(5):
                table.add(batch, k, 1.0 * (1 + cost_per_k * k))  # seconds: far above real steps
        path = tmp_path / f"cost{cost_per_k}.json"
        table.save(path)
        spec = _spec(
            "ngram", 4, ckpts, draft_len_policy="goodput", step_cost_file=str(path),
            replay_acceptance_profile=str(profile), acceptance_profile=str(profile),
        )
        llm = LLM(model=ckpts["target"], block_size=4, speculative_config=spec)
        llm.generate(_prompts(1), SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        return llm.get_stats()["k_histogram"]["1"]

    cheap = run(0.0)
    assert max(cheap, key=cheap.get) == "4"
    costly = run(10.0)
    assert max(costly, key=costly.get) == "0"


def test_first_speculative_step_after_plain_ones_is_not_a_step_time_sample(ckpts, tmp_path):
    """The goodput planner learns T(batch, k) from real decode steps, except a k > 0 step right after k = 0
    ones (or the engine's first), which pays the drafter's catch-up on every token committed meanwhile."""
    import json

    profile = tmp_path / "half.json"
    profile.write_text(json.dumps({"acceptance_per_position": [0.5, 0.5, 0.5, 0.5]}))
    spec = _spec("ngram", 4, ckpts, draft_len_policy="goodput", replay_acceptance_profile=str(profile),
                 acceptance_profile=str(profile), goodput_hysteresis=1e9)
    engine = LLM(model=ckpts["target"], block_size=4, speculative_config=spec).engine
    planner = engine.policy
    planner.explore_every = 3  # hold k = 0 (hysteresis) except every 3rd decision: k resumes often
    planner.explore_budget = None  # whatever an exploration costs on this CPU
    planner._current = {b: 0 for b in planner._buckets}
    reported: list[int] = []
    observe = planner.observe_step_time

    def spy(batch: int, k: int, seconds: float) -> None:
        reported.append(k)
        observe(batch, k, seconds)

    planner.observe_step_time = spy
    caught_up: list[tuple[int, int]] = []  # (k, tokens behind) of each resumed step
    observe_catch_up = planner.observe_catch_up

    def spy_catch_up(batch: int, k: int, seconds: float, tokens: int) -> None:
        caught_up.append((k, tokens))
        observe_catch_up(batch, k, seconds, tokens)

    planner.observe_catch_up = spy_catch_up
    priced: list[int] = []  # tokens of each catch-up that reached the price (kept or, timed short, dropped)
    price_observe = planner.catch_up.observe
    planner.catch_up.observe = lambda tokens, *args: priced.append(tokens) or price_observe(tokens, *args)
    planner.backlog = None  # switches from k = 0 unpriced here: this test makes k resume often
    planner.could_pay = lambda *args: True  # and explores whatever this busy CPU's step times say
    planner.probe_margin = None  # no probes either: whether one runs would hang on this CPU's step times
    for i, prompt in enumerate(_prompts(2)):
        engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    engine.step()  # both prompts prefill in this one step: every later step decodes only
    assert reported == [] and not engine.scheduler.waiting
    previous, resumed, plain, timed = 0, 0, 0, []
    while engine.has_unfinished_requests():
        engine.step()
        k = engine.get_stats()["last_step"]["k"]
        if k > 0 and previous == 0:
            assert len(caught_up) == resumed + 1 and caught_up[-1][0] == k, "it prices the catch-up instead"
            assert caught_up[-1][1] >= 2  # both requests' tokens committed while k was 0
            resumed += 1
        else:
            timed.append(k)
            plain += k == 0
        previous = k
    assert resumed >= 3 and plain >= 3
    # each resumed step priced the catch-up per token (whether this CPU timed it short is not asserted)
    assert priced == [tokens for _, tokens in caught_up] and len(priced) == resumed
    # Step times reach the planner one step late (while the next forward runs); resumed steps never do.
    assert reported == timed[: len(reported)] and len(reported) >= len(timed) - 1


def test_goodput_and_schedule_are_exclusive():
    with pytest.raises(ValueError, match="goodput"):
        NGramDecodingConfig(max_draft_len=4, draft_len_policy="goodput", draft_len_schedule={1: 4, 8: 0})
