"""An EAGLE-3 head trained in the test for SmolLM2-135M-Instruct (train_head: self-distillation, training-time
test): greedy output token-identical to no speculation across k = 0 with preemption, and fresh across
k = 0 (acceptance after a plain phase >= 0.95 x before it: the head caught up from the feature cache)."""

from __future__ import annotations

import pytest

from dynaspec import LLM, EagleDecodingConfig, SamplingParams
from dynaspec.bench.freshness import measure_freshness
from dynaspec.bench.workloads import chat_prompts
from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.train_head.prompts import held_out_split, prompt_token_ids
from dynaspec.train_head.trainer import TrainOptions, train_head

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(smollm2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2-eagle") / "head"
    report = train_head(TrainOptions(
        model=str(smollm2_dir), sources=["chat"], num_prompts=8, out=out, steps=50, lr=1e-3, max_tokens=40,
        ttt_steps=2, batch_size=4, eval_fraction=0.125, device="cpu", dtype="float32",
        # greedy answers: their tokens are the target's argmax, what 50 steps on 7 answers can learn to repeat
        # (the freshness test below measures acceptance on those answers; soft labels learn the distribution)
        labels="tokens",
    ), log=lambda _: None)
    assert report.num_held_out_prompts == 1 and report.train_tokens > 200
    assert report.held_out["held_out_positions"] > 0 and len(report.held_out["accuracy_per_depth"]) == 2
    llm = LLM(model=str(smollm2_dir), dtype="float32", block_size=16)
    train, _ = held_out_split(chat_prompts(8), 0.125, 0)  # the prompts it trained on: acceptance is high there
    prompts = [prompt_token_ids(llm.tokenizer, c) for c in train]
    return {"head": str(out), "model": str(smollm2_dir), "prompts": prompts}


def test_greedy_identical_to_no_spec_across_k_zero_with_preemption(trained):
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    prompts = trained["prompts"][:4]
    plain = LLM(model=trained["model"], dtype="float32", block_size=16).generate(prompts, params)
    spec = EagleDecodingConfig(max_draft_len=3, speculative_model=trained["head"], draft_len_schedule={1: 3, 3: 2, 4: 0})
    llm = LLM(model=trained["model"], dtype="float32", block_size=16, num_kv_blocks=14, max_model_len=160,
              max_num_batched_tokens=160, speculative_config=spec)
    outs = llm.generate(prompts, params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    ks = {int(k) for ks in llm.get_stats()["k_histogram"].values() for k in ks}
    assert 0 in ks and ks & {2, 3}
    assert llm.get_stats()["num_accepted"] > 0


def test_fresh_across_k_zero(trained):
    """Schedule {1: 3, 2: 0}: request r drafts alone, a second request turns speculation off for a few steps,
    then r drafts again (bench/freshness.py). The head caught up from the feature cache: acceptance after the
    plain phase is >= 0.95 x that of a run that never stopped drafting, over the same output positions (the
    same tokens: greedy), and >= 0.95 x the phase before the gap (both phases inside the answers it was
    trained on)."""
    spec = EagleDecodingConfig(max_draft_len=3, speculative_model=trained["head"], draft_len_schedule={1: 3, 2: 0})
    config = EngineConfig(model=trained["model"], dtype="float32", block_size=16, speculative_config=spec)
    fresh = measure_freshness(lambda: LLMEngine(config), trained["prompts"][0], trained["prompts"][1])
    assert fresh.plain_steps >= 3 and min(fresh.drafted) >= 6, fresh  # the k = 0 phase happened
    assert fresh.after >= 0.95 * fresh.never_stopped, fresh
    assert fresh.after >= 0.95 * fresh.before, fresh
