"""The offline API stays healthy after failures (issue 24): a failing generate() aborts its own
requests, as stream() does, and a later generate() works; near-zero temperatures decode greedily."""

from __future__ import annotations

import pytest

from dynaspec import LLM, SamplingParams
from tests.tiny_models import make_tiny_checkpoint

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
PROMPTS = [[5, 17, 33, 2], [101, 7, 9], [300, 301, 302, 303, 304]]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "llama", seed=0)
    return LLM(model=str(path), block_size=4, num_kv_blocks=64, max_model_len=64)


@pytest.fixture(scope="module")
def expected(llm):
    return [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]


def _idle(llm: LLM) -> bool:
    engine = llm.engine
    return (not engine.has_unfinished_requests() and engine.num_free_blocks == engine.num_total_blocks
            and not engine.requests)


def test_bad_prompt_mid_list_adds_nothing(llm, expected):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([PROMPTS[0], [1, 2, 10**9], PROMPTS[1]], GREEDY)
    assert _idle(llm)
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == expected


def test_failing_step_aborts_the_calls_requests(llm, expected, monkeypatch):
    original = llm.engine.step
    calls = {"n": 0}

    def step_then_fail():
        calls["n"] += 1
        if calls["n"] == 2:  # after the requests were scheduled and hold KV blocks
            raise RuntimeError("injected step fault")
        return original()

    monkeypatch.setattr(llm.engine, "step", step_then_fail)
    with pytest.raises(RuntimeError, match="injected step fault"):
        llm.generate(PROMPTS, GREEDY)
    monkeypatch.undo()
    assert _idle(llm), "the failed call left requests or KV blocks behind"
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == expected


def test_interrupted_generate_aborts(llm, expected, monkeypatch):
    original = llm.engine.step

    def interrupted():
        original()
        raise KeyboardInterrupt

    monkeypatch.setattr(llm.engine, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(PROMPTS, GREEDY)
    monkeypatch.undo()
    assert _idle(llm)
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == expected


def test_abandoned_stream_aborts(llm, expected):
    stream = llm.stream(PROMPTS[0], GREEDY)
    next(stream)
    stream.close()
    assert _idle(llm)
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == expected


def test_invalid_sampling_params_never_reach_the_engine(llm, expected):
    for bad in ({"top_k": 2**63}, {"seed": 2**64}, {"temperature": float("nan")}):
        with pytest.raises(ValueError):
            llm.generate(PROMPTS, SamplingParams(**bad))
    assert _idle(llm)
    assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == expected


@pytest.mark.parametrize("temperature", [1e-40, 1e-7])
def test_near_zero_temperature_gives_greedy_tokens(llm, expected, temperature):
    params = SamplingParams(temperature=temperature, max_tokens=8, ignore_eos=True, seed=3)
    assert [o.token_ids for o in llm.generate(PROMPTS, params)] == expected


def test_largest_seed_and_top_k_run(llm):
    params = SamplingParams(temperature=0.8, top_k=2**31 - 1, seed=2**63 - 1, max_tokens=4, ignore_eos=True)
    outs = llm.generate(PROMPTS, params)
    assert all(len(o.token_ids) == 4 for o in outs)
    assert all(0 <= t < 512 for o in outs for t in o.token_ids)
    assert _idle(llm)
