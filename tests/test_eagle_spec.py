"""The EAGLE drafter in the engine, on a tiny random target: `dynaspec train-head` runs end to end and its
head is lossless (greedy token-identical to no speculation under schedules that cross k = 0 and back,
with preemption, with the adaptive per-request policy), the fixed-shape chain drafts what the
step-by-step path drafts, and sampled requests keep the target's distribution (rejection sampling with
the head's q)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from scipy.stats import chisquare
from typer.testing import CliRunner

from dynaspec import LLM, EagleDecodingConfig, SamplingParams
from dynaspec.cli import app
from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.models.eagle_head import read_head_config
from dynaspec.runtime.cost_model import StepCostModel
from tests.arrivals import run_with_arrivals
from tests.draft_spy import spy_drafts
from tests.tiny_models import make_tiny_hf_model, make_word_target

GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
VOCAB = 64  # a small vocabulary: a head trained for seconds is right often enough to exercise acceptance


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny target with a word-level tokenizer, and a head `dynaspec train-head` trained for it (CLI)."""
    root = tmp_path_factory.mktemp("eagle-spec")
    target, prompts = make_word_target(root, VOCAB, num_prompts=24, spread=9)
    head = root / "head"
    result = CliRunner().invoke(app, [
        "train-head", "--model", str(target), "--workload", str(prompts), "--num-prompts", "24", "--out", str(head),
        "--steps", "60", "--max-tokens", "24", "--ttt-steps", "2", "--batch-size", "8", "--device", "cpu",
        "--dtype", "float32",
    ])
    assert result.exit_code == 0, result.output
    assert "mean accepted length at k: k=1:" in result.output and "2 held out" in result.output
    # the same with EAGLE-3's draft vocabulary: 24 of the 64 tokens, an lm_head of its own
    small = root / "head-vocab24"
    result = CliRunner().invoke(app, [
        "train-head", "--model", str(target), "--workload", str(prompts), "--num-prompts", "24", "--out", str(small),
        "--steps", "60", "--max-tokens", "24", "--ttt-steps", "2", "--batch-size", "8", "--device", "cpu",
        "--dtype", "float32", "--draft-vocab-size", "24",
    ])
    assert result.exit_code == 0, result.output
    assert re.search(r"draft vocabulary: 24 of 64 tokens, [\d.]+% of the training answers", result.output)
    return {"target": str(target), "head": str(head), "head-vocab24": str(small), "root": root}


def test_train_head_writes_a_head_for_its_target(tiny):
    config = read_head_config(tiny["head"])
    assert config.architecture == "Eagle3Head" and config.layers_to_capture == [0, 1]
    assert config.target.name.endswith("tiny-llama-seed0") and config.target.hidden_size == 64
    assert config.draft_vocab_size is None and read_head_config(tiny["head-vocab24"]).draft_vocab_size == 24


def test_train_head_bad_options_are_one_line_errors(tiny):
    runner = CliRunner()
    base = ["train-head", "--model", tiny["target"], "--out", str(tiny["root"] / "x")]
    result = runner.invoke(app, [*base, "--num-prompts", "1"])
    assert result.exit_code == 2 and "--num-prompts" in result.output and "greater than or equal to 2" in result.output
    result = runner.invoke(app, [*base, "--workload", "poems"])
    assert result.exit_code == 2 and "poems unknown" in result.output and "stdlib" in result.output
    result = runner.invoke(app, [*base, "--layers", "1,x"])
    assert result.exit_code == 2 and "--layers" in result.output
    result = runner.invoke(app, [*base, "--answers-per-prompt", "3"])
    assert result.exit_code == 2 and "--answers-per-prompt 3 needs --temperature > 0" in result.output
    result = runner.invoke(app, [*base, "--draft-vocab-size", "-5"])
    assert result.exit_code == 2 and "--draft-vocab-size" in result.output and "greater than or equal to 0" in result.output


def test_train_head_answers_each_training_prompt_several_times(tiny):
    """--answers-per-prompt 2 --temperature 0.8: 22 training prompts answered twice (sampled, distinct seeds),
    the 2 held-out prompts once: 46 requests (a sampled answer that ends at once, EOS first, is not recorded)."""
    result = CliRunner().invoke(app, [
        "train-head", "--model", tiny["target"], "--workload", str(tiny["root"] / "prompts.jsonl"), "--num-prompts",
        "24", "--out", str(tiny["root"] / "head2"), "--steps", "2", "--max-tokens", "6", "--ttt-steps", "1",
        "--answers-per-prompt", "2", "--temperature", "0.8", "--device", "cpu", "--dtype", "float32",
    ])
    assert result.exit_code == 0, result.output
    assert "22 training prompts (2 answers each), 2 held out" in result.output
    recorded = int(re.search(r"recorded\s+(\d+)\s+of\s+46\s+answers", result.output).group(1))
    trained = int(re.search(r"\((\d+)\s+training\s+answers", result.output).group(1))
    assert 40 <= recorded <= 46 and trained == recorded - 2 and trained > 22


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(3, 40, (4 + 5 * i,), generator=gen).tolist() for i in range(n)]


@pytest.fixture(scope="module")
def baseline(tiny):
    return [o.token_ids for o in LLM(model=tiny["target"], block_size=4).generate(_prompts(6), GREEDY)]


def _spec(tiny, k: int, head: str = "head", **extra) -> EagleDecodingConfig:
    return EagleDecodingConfig(max_draft_len=k, speculative_model=tiny[head], **extra)


HEADS = ["head", "head-vocab24"]  # predicting over the target's vocabulary, and over a draft vocabulary of 24


@pytest.mark.parametrize(("k", "head"), [(1, "head"), (3, "head"), (3, "head-vocab24")])
def test_greedy_identical_to_no_spec_with_preemption(tiny, baseline, k, head):
    llm = LLM(model=tiny["target"], block_size=4, num_kv_blocks=30, max_model_len=64, max_num_batched_tokens=64,
              speculative_config=_spec(tiny, k, head))
    outs = llm.generate(_prompts(6), GREEDY)
    assert [o.token_ids for o in outs] == baseline
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    stats = llm.get_stats()
    assert stats["num_drafted"] > stats["num_accepted"] > 0  # the trained head is right sometimes, not always
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks


def _trace(engine: LLMEngine) -> dict[str, list[int]]:
    """Arrivals and departures move the decoding batch across the schedule's thresholds (k -> 0 -> k)."""
    arrivals = {0: [0, 1], 3: [2, 3, 4], 9: [5], 16: [0, 3]}
    return run_with_arrivals(engine, _prompts(6), arrivals, lambda i, n: (
        f"r{n}", SamplingParams(temperature=0.0, max_tokens=8 + 5 * (n % 3), ignore_eos=True)))


@pytest.mark.parametrize("policy", [{"draft_len_schedule": {1: 3, 3: 0}}, {"draft_len_policy": "adaptive"}])
def test_schedule_across_k_zero_and_adaptive_are_lossless(tiny, policy):
    plain = _trace(LLMEngine(EngineConfig(model=tiny["target"], block_size=4)))
    engine = LLMEngine(EngineConfig(model=tiny["target"], block_size=4, num_kv_blocks=40, max_model_len=64,
                                    speculative_config=_spec(tiny, 3, **policy)))
    assert _trace(engine) == plain
    ks = {int(k) for ks in engine.get_stats()["k_histogram"].values() for k in ks}
    if "draft_len_schedule" in policy:
        assert 0 in ks and 3 in ks  # the schedule crossed k = 0 and back


@pytest.mark.parametrize("head", HEADS)
def test_adaptive_trims_drafts_by_the_heads_confidence_losslessly(tiny, baseline, head):
    """adaptive drafts k_i, then keeps each request's prefix worth verifying by the head's calibrated
    probability of each draft: positions left unverified, outputs unchanged, the calibration fed by the
    verified drafts. Costs injected (a position costs 1% of a plain step: every k_i drafts; trim_min_saving
    0, so the policy trims at such cheap verifies: this test is about what trimming keeps, not where it
    runs; no drain rule, which would rightly stop drafting in this closed batch once the first drafts failed),
    and the calibration primed to say drafts the head gives less than 0.9 are rejected, so trimming
    has something to cut."""
    from dynaspec.spec.planner_settings import PlannerSettings

    costs = StepCostModel()
    for batch in (1, 2, 4, 8):
        for k in range(4):
            costs.add(batch, k, 1.0 + 0.01 * batch * k)
    costs.save(tiny["root"] / "trim-costs.json")
    llm = LLM(model=tiny["target"], block_size=4, max_num_seqs=8, speculative_config=_spec(
        tiny, 3, head, draft_len_policy="adaptive", step_cost_file=str(tiny["root"] / "trim-costs.json")))
    llm.engine.policy.settings = PlannerSettings(**{**llm.engine.policy.settings.model_dump(), "trim_min_saving": 0.0,
                                                    "drain_tolerance": None})
    for _ in range(100):
        for doubtful in (0.05, 0.25, 0.45, 0.65, 0.85):
            llm.engine.policy.calibration.observe([doubtful], accepted=0)
    outcomes = []
    observe = llm.engine.policy.observe
    llm.engine.policy.observe = lambda outcome: outcomes.append(outcome) or observe(outcome)
    steps = []  # each step's trimmed count, as the step logs see it (SpecStats.last_step)
    record = llm.engine.stats.record
    llm.engine.stats.record = lambda *a, **kw: record(*a, **kw) or steps.append(llm.engine.stats.last_step)
    assert [o.token_ids for o in llm.generate(_prompts(6), GREEDY)] == baseline
    stats = llm.get_stats()
    assert stats["trimmed_positions"] > 0 and stats["num_drafted"] > 0
    assert sum(step["trimmed"] for step in steps) == stats["trimmed_positions"]
    assert {step["path"] for step in steps} == {"eager"}  # CPU: no graphs
    # the policy hears each trimmed step's k_i before the trim (StepOutcome.planned), the others' stay empty
    trimmed = [o for o in outcomes if o.planned]
    assert trimmed and all(len(o.planned) == o.batch for o in trimmed)
    assert any(sum(o.planned) > sum(o.draft_lens) for o in trimmed)
    assert all(p >= k for o in trimmed for p, k in zip(o.planned, o.draft_lens))
    assert llm.engine.policy.calibration.samples(0) > 500  # the primed 500 and the verified drafts


def _training_prompts(tiny) -> list[list[int]]:
    """The prompts the heads were trained on, as token ids (the word-level tokenizer: "w12" is id 12)."""
    lines = (tiny["root"] / "prompts.jsonl").read_text().splitlines()
    return [[int(word[1:]) for word in json.loads(line)["prompt"].split()] for line in lines]


@pytest.mark.parametrize("head", HEADS)
def test_chained_steps_draft_and_commit_what_the_synchronous_engine_does(tiny, head):
    """Steps launched from the previous step's device-side acceptance (engine/chained_step.py) with the head's
    catch-up of a + 1 tokens computed there: the same tokens, the same acceptance position by position."""
    from tests.arrivals import run_with_abort
    from tests.test_chained_step import chained_engine, count_chained

    params = [SamplingParams(temperature=0.0, max_tokens=16 + 4 * i, ignore_eos=True) for i in range(6)]
    arrivals = [0, 0, 0, 5, 5, 12]
    prompts = _training_prompts(tiny)[:6]  # answers the head learned: drafts accepted often, a > 0 exercised
    synchronous = chained_engine(tiny["target"], _spec(tiny, 3, head), False)
    expected = run_with_abort(synchronous, prompts, params, arrivals)
    engine = chained_engine(tiny["target"], _spec(tiny, 3, head), True)
    chained = count_chained(engine)
    assert run_with_abort(engine, prompts, params, arrivals) == expected and len(chained) >= 5
    counts = ("num_drafted", "num_accepted", "accepted_per_position")
    assert [engine.get_stats()[c] for c in counts] == [synchronous.get_stats()[c] for c in counts]
    assert engine.num_free_blocks == engine.num_total_blocks and not engine.drafter._state


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_eagle_engines_sharing_one_target_step_in_turn_each_with_its_own_features(tiny, device):
    """`dynaspec bench --rounds` builds every line's engine on one copy of the target and steps them in turn. Each
    EAGLE engine installs its feature tap on that model object; before each step it claims it back
    (Drafter.claim_target). Interleaved step by step, each engine decodes no spec's tokens and accepts exactly
    what the same engine accepts alone: a head reading the other engine's features would accept otherwise
    (its output stays lossless either way, so acceptance is what tells). On CUDA the target's graphs, captured
    per engine, store into the tap installed at their capture; the eager forwards follow the claim."""
    prompts = _training_prompts(tiny)[:3]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    common = dict(model=tiny["target"], block_size=4, device=device, dtype="float32")

    def submit(engine: LLMEngine) -> None:
        for i, prompt in enumerate(prompts):
            engine.add_request(f"r{i}", prompt, params)

    def run_alone(k: int) -> tuple[dict, int]:
        engine = LLMEngine(EngineConfig(speculative_config=_spec(tiny, k), **common))
        submit(engine)
        outputs = {}
        while engine.has_unfinished_requests():
            outputs.update({o.request_id: o.token_ids for o in engine.step() if o.finished})
        return outputs, engine.get_stats()["num_accepted"]

    alone = {k: run_alone(k) for k in (1, 3)}
    first = LLMEngine(EngineConfig(speculative_config=_spec(tiny, 1), **common))
    second = LLMEngine(EngineConfig(speculative_config=_spec(tiny, 3), **common), loaded=first.loaded)
    plain = LLMEngine(EngineConfig(**common), loaded=first.loaded)
    engines = {1: first, 3: second, 0: plain}
    outputs = {k: {} for k in engines}
    for engine in engines.values():
        submit(engine)
    while any(e.has_unfinished_requests() for e in engines.values()):
        for k, engine in engines.items():
            if engine.has_unfinished_requests():
                outputs[k].update({o.request_id: o.token_ids for o in engine.step() if o.finished})
    for k in (1, 3):
        assert outputs[k] == outputs[0] == alone[k][0]
        assert engines[k].get_stats()["num_accepted"] == alone[k][1] > 0


@pytest.mark.parametrize("head", HEADS)
def test_chain_drafts_equal_step_by_step_drafts(tiny, head):
    """The fixed-shape chain (the CUDA graph's code, run eagerly) proposes exactly what the eager
    step-by-step path proposes, call by call, and served the steady state and, after feeding them ahead,
    new requests' long catch-ups (with a draft vocabulary: the
    chain's argmax over it, mapped back, is the eager path's argmax over the target's logits)."""
    def run(chain: bool):
        engine = LLMEngine(EngineConfig(model=tiny["target"], block_size=4, max_num_seqs=8,
                                        speculative_config=_spec(tiny, 3, head)))
        if chain:
            pairs = [(b, k) for b, k in engine.graph_pairs() if k > 0]
            engine.drafter.capture_graphs(pairs, engine.max_blocks_per_seq, use_graphs=False)
        seen, fed = [], []
        propose, feed = engine.drafter.propose, engine.drafter._feed

        def spy(requests, k):
            proposal = propose(requests, k)
            seen.append((proposal.tokens, proposal.confidence))
            return proposal

        engine.drafter.propose = spy
        engine.drafter._feed = lambda requests, starts, ends: fed.append(len(requests)) or feed(requests, starts, ends)
        return _trace(engine), seen, engine.drafter, fed

    out, plain_seen, _, plain_fed = run(False)
    chained_out, chained_seen, drafter, fed = run(True)
    assert chained_out == out and [t for t, _ in chained_seen] == [t for t, _ in plain_seen]
    assert drafter.chain.num_replays > len(chained_seen) // 2
    assert fed and not plain_fed  # prompts' catch-ups fed ahead, then the chain (no chain: step by step)
    # the head's probability of each draft, from the graph's code as from the eager path's logits
    chained_p = [p for _, c in chained_seen for row in c for p in row]
    plain_p = [p for _, c in plain_seen for row in c for p in row]
    assert chained_p == pytest.approx(plain_p, abs=1e-5) and all(0 < p <= 1 for p in chained_p)


def test_chain_drafts_reach_the_verify_forward_on_the_device(tiny):
    """With the target's fixed-shape verify paths too (run eagerly), the head's chained drafts go to the
    verify forward as device ids (engine/drafting.py) and the output still equals no speculation's."""
    def build(spec):
        return LLMEngine(EngineConfig(model=tiny["target"], block_size=4, max_num_seqs=8, speculative_config=spec))

    expected = _trace(build(None))
    engine = build(_spec(tiny, 3, HEADS[0]))
    pairs = engine.graph_pairs()
    engine.runner.capture_graphs(pairs, engine.max_blocks_per_seq, use_graphs=False)
    engine.drafter.capture_graphs([(b, k) for b, k in pairs if k > 0], engine.max_blocks_per_seq, use_graphs=False)
    handed = []
    forward_uniform = engine.runner.forward_uniform
    engine.runner.forward_uniform = lambda batch, k, rows, ids=None, *more: handed.append(ids is not None) or (
        forward_uniform(batch, k, rows, ids, *more))
    assert _trace(engine) == expected
    assert any(handed)


def _prompt_with_acceptance(tiny, head: str, params: SamplingParams) -> list[int]:
    """The first test prompt on which this head's sampled drafts are accepted at all, so that both the accept
    and the reject paths of rejection sampling run (a head trained for seconds drafts well for some prompts
    only: which ones moves with its training batches)."""
    for prompt in _prompts(6):
        llm = LLM(model=tiny["target"], block_size=4, max_num_seqs=64, seed=1, speculative_config=_spec(tiny, 2, head))
        llm.generate([prompt] * 64, params)
        if llm.get_stats()["num_accepted"] > 0:
            return prompt
    raise AssertionError(f"the {head} head's drafts were never accepted on any test prompt")


@pytest.mark.parametrize("head", HEADS)
def test_sampled_requests_keep_the_target_distribution(tiny, head):
    """Unseeded sampling with EAGLE drafts: the first three tokens' joint distribution is the target's
    (chi-square against the HF model's processed probabilities; top-k 3 keeps 27 outcomes). With a draft
    vocabulary q is 0 outside it, and rejection sampling still gives the target's distribution."""
    params = SamplingParams(temperature=1.5, top_k=3, max_tokens=3, ignore_eos=True)
    prompt = _prompt_with_acceptance(tiny, head, params)
    hf = make_tiny_hf_model("llama", seed=0, num_hidden_layers=4, vocab_size=VOCAB)

    def processed(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1] / 1.5
        top = logits.topk(3)
        probs = torch.zeros_like(logits)
        probs[top.indices] = torch.softmax(top.values, -1)
        return probs

    expected: dict[tuple[int, ...], float] = {}
    p1 = processed(prompt)
    for a in p1.nonzero().flatten().tolist():
        p2 = processed(prompt + [a])
        for b in p2.nonzero().flatten().tolist():
            p3 = processed(prompt + [a, b])
            for c in p3.nonzero().flatten().tolist():
                expected[(a, b, c)] = float(p1[a] * p2[b] * p3[c])
    n = 2700
    llm = LLM(model=tiny["target"], block_size=4, max_num_seqs=256, seed=1, speculative_config=_spec(tiny, 2, head))
    outs = llm.generate([prompt] * n, params)
    counts: dict[tuple[int, ...], int] = {}
    for out in outs:
        key = tuple(out.token_ids)
        assert key in expected, f"{key} is outside the target's top-3 support"
        counts[key] = counts.get(key, 0) + 1
    keys = sorted(expected)
    total = sum(expected.values())
    result = chisquare([counts.get(k, 0) for k in keys], [expected[k] / total * n for k in keys])
    assert result.pvalue > 1e-3
    stats = llm.get_stats()
    assert stats["num_drafted"] > 0 and stats["num_accepted"] > 0  # q was used: drafts accepted and rejected


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("k", [1, 3, 5])
def test_chain_graph_equals_eager_on_cuda(tiny, k):
    """float32 on CUDA: with the target's graphs (which write the features) and the head's chain graph per
    (bucket, k), every proposal and every output equal the eager engine's, and equal no speculation."""
    def run(eager: bool, spec: bool = True):
        config = EngineConfig(model=tiny["target"], block_size=4, max_num_seqs=8, dtype="float32", device="cuda",
                              enforce_eager=eager, speculative_config=_spec(tiny, k) if spec else None)
        engine = LLMEngine(config)
        drafts = spy_drafts(engine.drafter) if spec else None  # chained steps draft through propose_chained
        return _trace(engine), drafts, engine

    plain, _, _ = run(True, spec=False)
    eager, eager_drafts, _ = run(True)
    graphed, graphed_drafts, engine = run(False)
    assert eager == plain and graphed == plain
    assert graphed_drafts.drafts_equal(eager_drafts)
    chain = engine.drafter.chain
    assert chain is not None and chain.use_graphs and chain.num_replays > graphed_drafts.calls // 2
    assert engine.get_stats()["num_accepted"] > 0


@cuda
@pytest.mark.cuda
def test_goodput_policy_prices_the_eagle_chain_on_cuda(tiny):
    """The goodput planner's start-up probe times the head's chain replays; output stays lossless."""
    plain = _trace(LLMEngine(EngineConfig(model=tiny["target"], block_size=4, device="cuda", dtype="float32")))
    engine = LLMEngine(EngineConfig(model=tiny["target"], block_size=4, device="cuda", dtype="float32",
                                    speculative_config=_spec(tiny, 3, draft_len_policy="goodput")))
    assert _trace(engine) == plain
    assert engine.drafter.chain is not None and engine.drafter.chain.graphs
