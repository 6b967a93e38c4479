"""Engine core on tiny random models: HF parity, batch invariance under preemption, bad input."""

from __future__ import annotations

import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.engine.engine import LLMEngine
from dynaspec.config import EngineConfig
from tests.tiny_models import make_tiny_checkpoint, make_tiny_hf_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "llama", seed=0))


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = [3, 17, 5, 40, 9, 28, 1, 12, 33, 7][:n]
    return [torch.randint(0, 512, (length,), generator=gen).tolist() for length in lengths]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_greedy_matches_hf_generate(tmp_path, arch):
    path = make_tiny_checkpoint(tmp_path, arch, seed=1)
    hf = make_tiny_hf_model(arch, seed=1)
    llm = LLM(model=str(path), block_size=4)
    prompts = _prompts(3, seed=arch.__len__())
    outs = llm.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs):
        ref = hf.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt):].tolist()
        assert out.token_ids == ref
        assert out.finish_reason == "length"


def test_batch_invariance_with_forced_preemption(tiny_llama):
    prompts = _prompts(8)
    alone = [LLM(model=tiny_llama, block_size=4).generate([p], GREEDY)[0].token_ids for p in prompts[:2]]
    # 24 blocks of 4 slots = 96 slots for 8 requests needing up to 64 slots each: preemption is forced.
    llm = LLM(model=tiny_llama, block_size=4, num_kv_blocks=24, max_num_batched_tokens=64, max_model_len=64)
    outs = llm.generate(prompts, GREEDY)
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    single = LLM(model=tiny_llama, block_size=4)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == single.generate([prompt], GREEDY)[0].token_ids
    assert [o.token_ids for o in outs[:2]] == alone
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks


def test_chunked_prefill_matches_unchunked(tiny_llama):
    prompts = _prompts(4)
    chunked = LLM(model=tiny_llama, block_size=4, max_num_batched_tokens=16).generate(prompts, GREEDY)
    whole = LLM(model=tiny_llama, block_size=4).generate(prompts, GREEDY)
    assert [o.token_ids for o in chunked] == [o.token_ids for o in whole]


def test_seeded_sampling_reproduces_regardless_of_batch(tiny_llama):
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, min_p=0.01, seed=1234, max_tokens=16, ignore_eos=True)
    llm = LLM(model=tiny_llama)
    alone = llm.generate([_prompts(1)[0]], params)[0].token_ids
    batch = llm.generate(_prompts(6), [params] + [SamplingParams(temperature=1.0, max_tokens=16)] * 5)
    assert batch[0].token_ids == alone
    other_seed = llm.generate([_prompts(1)[0]], params.model_copy(update={"seed": 99}))[0].token_ids
    assert other_seed != alone


def test_stop_token_ids_and_max_tokens(tiny_llama):
    llm = LLM(model=tiny_llama)
    prompt = _prompts(1)[0]
    full = llm.generate([prompt], GREEDY)[0].token_ids
    stop_id = full[5]
    first = full.index(stop_id)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_id]))[0]
    assert out.token_ids == full[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    short = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))[0]
    assert short.token_ids == full[:3] and short.finish_reason == "length"


def test_max_model_len_ends_generation(tiny_llama):
    llm = LLM(model=tiny_llama, max_model_len=32)
    out = llm.generate([[1] * 30], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))[0]
    assert len(out.token_ids) == 2 and out.finish_reason == "length"


def test_streaming_yields_growing_outputs(tiny_llama):
    llm = LLM(model=tiny_llama)
    prompt = _prompts(1)[0]
    chunks = list(llm.stream(prompt, GREEDY))
    assert chunks[-1].finished and chunks[-1].token_ids == llm.generate([prompt], GREEDY)[0].token_ids
    assert [len(c.token_ids) for c in chunks] == list(range(1, len(chunks) + 1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": -5}, "top_k"),
        ({"stop": [""]}, "stop"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_sampling_params_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_bad_requests_are_rejected_and_others_keep_running(tiny_llama):
    engine = LLMEngine(EngineConfig(model=tiny_llama, max_model_len=64))
    engine.add_request("good", _prompts(1)[0], GREEDY)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request("long", [1] * 64, GREEDY)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("empty", [], GREEDY)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.add_request("oov", [100000], GREEDY)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("good", [1, 2], GREEDY)
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.add_request("text", "hello", GREEDY)
    with pytest.raises(TypeError, match="SamplingParams"):
        engine.add_request("params", [1, 2], {"temperature": 0})
    finished = []
    while engine.has_unfinished_requests():
        finished += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in finished] == ["good"] and len(finished[0].token_ids) == 24


def test_abort_frees_blocks(tiny_llama):
    engine = LLMEngine(EngineConfig(model=tiny_llama, block_size=4))
    for i, prompt in enumerate(_prompts(4)):
        engine.add_request(f"r{i}", prompt, GREEDY)
    engine.step()
    engine.step()
    for i in range(4):
        engine.abort_request(f"r{i}")
    assert not engine.has_unfinished_requests()
    assert engine.num_free_blocks == engine.num_total_blocks


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        LLM(model="no-such-model-xyz")


def test_unknown_engine_option_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="max_num_seq"):
        LLM(model=tiny_llama, max_num_seq=4)
