"""Faults stay with their request: a drafter that fails on one request's tokens, non-finite logits of one
request, a stop-string or detokenizer error finish THAT request with finish_reason "error" and a message;
the others' tokens are those of a run without the fault, and the engine stays healthy."""

from __future__ import annotations

import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.spec.config import NGramDecodingConfig
from tests.tiny_models import make_tiny_checkpoint

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("faults"), "llama", seed=3))


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(11)
    motif = torch.randint(0, 500, (5,), generator=gen).tolist()
    return [motif * 3 + torch.randint(0, 500, (4 + 3 * i,), generator=gen).tolist() for i in range(4)]


def _spec() -> NGramDecodingConfig:
    return NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3})


def _expected(tiny: str) -> list[list[int]]:
    return [o.token_ids for o in LLM(model=tiny, block_size=4).generate(_prompts(), GREEDY)]


def _poison(expected: list[list[int]]) -> int:
    """A token id (>= 500, above every prompt token) that no request generates: the faulty request's mark."""
    return max(set(range(500, 512)) - {t for tokens in expected for t in tokens})


def test_a_drafter_failing_on_one_requests_tokens_fails_that_request_only(tiny):
    expected = _expected(tiny)
    poison = _poison(expected)
    llm = LLM(model=tiny, block_size=4, speculative_config=_spec())
    drafter = llm.engine.drafter
    propose = drafter.propose

    def failing(requests, k):
        if any(r.all_token_ids[0] == poison for r in requests):
            raise RuntimeError("cannot draft after token 511")
        return propose(requests, k)

    drafter.propose = failing
    prompts = _prompts()
    prompts[2] = [poison] + prompts[2]
    outputs = llm.generate(prompts, GREEDY)
    assert outputs[2].finish_reason == "error" and "drafter failed" in outputs[2].error and "cannot draft" in outputs[2].error
    assert [o.token_ids for i, o in enumerate(outputs) if i != 2] == [t for i, t in enumerate(expected) if i != 2]
    assert all(o.finish_reason == "length" and o.error is None for i, o in enumerate(outputs) if i != 2)
    drafter.propose = propose
    assert [o.token_ids for o in llm.generate(_prompts(), GREEDY)] == expected  # healthy afterwards
    assert llm.engine.kv_cache_usage == 0


@pytest.mark.parametrize("spec", [None, "ngram"])
def test_non_finite_logits_of_one_request_fail_that_request_only(tiny, spec):
    expected = _expected(tiny)
    poison = _poison(expected)
    llm = LLM(model=tiny, block_size=4, speculative_config=_spec() if spec else None, enable_prefix_caching=False)
    embed = llm.engine.loaded.model.model.embed_tokens.weight
    saved = embed[poison].clone()
    with torch.no_grad():
        embed[poison] = float("nan")  # only a prompt holding this token sees NaN (attention is per sequence)
    prompts = _prompts()
    prompts[1] = [poison] + prompts[1]
    outputs = llm.generate(prompts, GREEDY)
    with torch.no_grad():
        embed[poison] = saved
    assert outputs[1].finish_reason == "error" and "not finite" in outputs[1].error
    assert [o.token_ids for i, o in enumerate(outputs) if i != 1] == [t for i, t in enumerate(expected) if i != 1]
    assert [o.token_ids for o in llm.generate(_prompts(), GREEDY)] == expected


def test_a_stop_string_error_fails_that_request_only(tiny):
    llm = LLM(model=tiny, block_size=4, speculative_config=_spec())
    processor = llm.engine.output_processor
    check = processor._check_stop_strings

    def failing(request):
        if "boom" in request.params.stop:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return check(request)

    processor._check_stop_strings = failing
    params = [GREEDY, GREEDY.model_copy(update={"stop": ["boom"]}), GREEDY, GREEDY]
    outputs = llm.generate(_prompts(), params)
    assert outputs[1].finish_reason == "error" and "UnicodeDecodeError" in outputs[1].error
    expected = _expected(tiny)
    assert [o.token_ids for i, o in enumerate(outputs) if i != 1] == [t for i, t in enumerate(expected) if i != 1]
    assert llm.engine.kv_cache_usage == 0
