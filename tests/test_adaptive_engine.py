"""Per-request draft lengths (issue 20) in the engine: `draft_len_policy: adaptive` lossless (greedy and seeded
sampling) on batches mixing copy-heavy and random prompts, with ragged steps, and a draining batch planned
for its slowest request. Step costs come from a step_cost_file written here; no timing assertions."""

from __future__ import annotations

import pytest
import torch

from dynaspec import DraftTargetDecodingConfig, NGramDecodingConfig, SamplingParams
from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.catch_up import CatchUpCost
from tests.adaptive_policies import CHAT, COPY, K, injected_costs
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint

# --- the engine: lossless, ragged ------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    costs = injected_costs(0.1)
    costs.save(root / "costs.json")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        "near": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
        "costs": str(root / "costs.json"),
    }


def _mixed_prompts() -> list[list[int]]:
    """Copy-heavy prompts (a motif repeated) alternating with random ones."""
    gen = torch.Generator().manual_seed(5)
    prompts = []
    for i in range(4):
        if i % 2 == 0:
            prompts.append(torch.randint(0, 512, (4 + i,), generator=gen).tolist() * 5)
        else:
            prompts.append(torch.randint(0, 512, (14 + 3 * i,), generator=gen).tolist())
    return prompts


def _params(i: int, sampled: bool) -> SamplingParams:
    if sampled:
        return SamplingParams(temperature=0.9, top_p=0.95, seed=100 + i, max_tokens=32, ignore_eos=True)
    return SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


def _run(engine: LLMEngine, sampled: bool) -> list[list[int]]:
    for i, prompt in enumerate(_mixed_prompts()):
        engine.add_request(f"{'copy' if i % 2 == 0 else 'chat'}{i}", prompt, _params(i, sampled))
    engine.close_intake()  # an offline batch (the drain rule's case)
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] = list(out.token_ids)
    return [tokens[k] for k in sorted(tokens, key=lambda r: int(r[4:]))]


def _spec(kind: str, ckpts, **extra):
    common = dict(max_draft_len=K, draft_len_policy="adaptive", step_cost_file=ckpts["costs"], **extra)
    if kind == "ngram":
        return NGramDecodingConfig(max_matching_ngram_size=3, **common)
    return DraftTargetDecodingConfig(speculative_model=ckpts["near"], **common)


@pytest.fixture(scope="module")
def plain(ckpts):
    engine = LLMEngine(EngineConfig(model=ckpts["target"], block_size=4))
    return {sampled: _run(engine, sampled) for sampled in (False, True)}


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
@pytest.mark.parametrize("kind", ["ngram", "draft-model"])
def test_adaptive_is_lossless_and_ragged(ckpts, plain, kind, sampled):
    """Per-request acceptance is injected (copy requests 0.95 per position, chat ones 0.05) and verify
    priced by a step_cost_file, so the copy requests draft up to K while the chat ones draft nothing, in
    the same steps: the output still equals plain decoding's, greedy and seeded. (The four requests are the
    whole batch from the start, a drain: with the drain rule the chat requests' end would decide and nobody
    would draft, spec/drain.py; this test is about ragged steps, so it is off.)"""
    spec = _spec(kind, ckpts, adaptive_drain_tolerance=None)
    engine = LLMEngine(EngineConfig(model=ckpts["target"], block_size=4, speculative_config=spec))
    policy = engine.policy
    assert isinstance(policy, AdaptivePolicy)
    policy.estimator.alphas = lambda rid=None: list(COPY if str(rid).startswith("copy") else CHAT)
    policy.catch_up = CatchUpCost(0.0)  # the start-up probe's timed price would make the decisions load-dependent
    proposed, observed = [], []  # per step: the requests drafted for, and those the drafter then learns from
    propose, observe = engine.drafter.propose, engine.drafter.observe
    engine.drafter.propose = (lambda requests, k: proposed.append({r.request_id for r in requests})
                              or propose(requests, k))
    engine.drafter.observe = lambda requests: observed.append({r.request_id for r in requests}) or observe(requests)
    assert _run(engine, sampled) == plain[sampled]
    # a request with k_i = 0 is not indexed after the step (it catches up when it drafts again)
    assert len(observed) == len(proposed) and all(o <= p for o, p in zip(observed, proposed))
    assert any(not any(rid.startswith("chat") for rid in o) for o in observed)
    stats = engine.get_stats()
    assert stats["ragged_steps"] >= 3
    at_4 = stats["draft_len_histogram"]["4"]
    assert at_4.get("0", 0) >= 6 and at_4.get(str(K), 0) >= 6  # chat at 0, copy at K, side by side
    assert stats["num_drafted"] > 0
    assert engine.num_free_blocks == engine.num_total_blocks


def test_adaptive_learning_from_the_target_is_lossless(ckpts, plain):
    """Without injected acceptance (what the target accepts drives the allocation): still lossless."""
    engine = LLMEngine(EngineConfig(model=ckpts["target"], block_size=4, speculative_config=_spec("ngram", ckpts)))
    assert _run(engine, False) == plain[False]


def test_a_draining_batch_is_planned_for_its_slowest_request(ckpts, plain):
    """The same four requests with the drain rule on (the default): nothing waits from the first step, so the
    batch only shrinks and ends with its slowest requests, the chat ones (5% acceptance). Each position the copy
    requests verify lengthens every step by 10% of a plain one (the step-cost file) for a chat request that gains
    nothing from it, so the copy requests draft far less than with the rule off (test above), and the output is
    still plain decoding's."""
    engine = LLMEngine(EngineConfig(model=ckpts["target"], block_size=4, speculative_config=_spec("ngram", ckpts)))
    policy = engine.policy
    policy.estimator.alphas = lambda rid=None: list(COPY if str(rid).startswith("copy") else CHAT)
    policy.catch_up = CatchUpCost(0.0)
    assert _run(engine, False) == plain[False]
    at_4 = engine.get_stats()["draft_len_histogram"]["4"]
    assert at_4.get("0", 0) >= 100 and not any(int(k_i) >= 2 for k_i in at_4)  # probes and explorations: one position
