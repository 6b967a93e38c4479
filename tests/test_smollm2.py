"""Real model: SmolLM2-135M-Instruct (the embedded default) against HF transformers, fp32 on CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from dynaspec import LLM, NGramDecodingConfig, SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
    "import numpy as np\n\n# compute the mean of a list\n",
]
CODE_EDIT = (
    "<|im_start|>user\nAdd a docstring to this function.\n```python\ndef clamp(value, low, high):\n"
    "    if value < low:\n        return low\n    if value > high:\n        return high\n    return value\n"
    "```<|im_end|>\n<|im_start|>assistant\n"
)
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    return LLM(model=str(smollm2_dir))


def test_greedy_tokens_match_transformers_generate(llm, smollm2_dir):
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    outs = llm.generate(PROMPTS, GREEDY)
    for prompt, out in zip(PROMPTS, outs):
        ids = torch.tensor([llm.tokenizer.encode(prompt)])
        ref = hf.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
        assert out.token_ids == ref.tolist(), prompt
        assert out.text == llm.tokenizer.decode(ref, skip_special_tokens=True)


def test_chat_template_and_stop_string(llm):
    out = llm.chat([{"role": "user", "content": "Name a fruit."}], SamplingParams(temperature=0, max_tokens=24))[0]
    assert out.text and out.finish_reason in ("stop", "length")
    full = llm.generate([PROMPTS[2]], GREEDY)[0].text
    words = full.split()
    stop = words[3]
    stopped = llm.generate([PROMPTS[2]], SamplingParams(temperature=0, max_tokens=32, stop=[stop]))[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stop not in stopped.text and full.startswith(stopped.text)


SPEC_PROMPTS = [CODE_EDIT] + PROMPTS + ["def add(a, b):\n    return a + b\n\ndef sub(a, b):\n", "Hello, my name is"]
SPEC_PARAMS = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def plain_outputs(llm):
    return [o.token_ids for o in llm.generate(SPEC_PROMPTS, SPEC_PARAMS)]


@pytest.mark.parametrize(
    "k, batch", [(1, 8), (2, 8), (3, 8), (4, 8), (5, 8), (6, 8), (4, 1), (4, 3)]
)
def test_ngram_speculation_is_lossless(smollm2_dir, plain_outputs, k, batch):
    """Greedy tokens with n-gram speculation equal the plain engine's, k = 1..6, batch 1 / 3 / 8; at
    batch 8 a 36-block pool forces preemption."""
    spec = LLM(
        model=str(smollm2_dir),
        block_size=8,
        num_kv_blocks=36,
        max_model_len=256,
        speculative_config=NGramDecodingConfig(max_draft_len=k, max_matching_ngram_size=3),
    )
    outs = spec.generate(SPEC_PROMPTS[:batch], SPEC_PARAMS)
    assert [o.token_ids for o in outs] == plain_outputs[:batch]
    stats = spec.get_stats()
    assert stats["num_accepted"] > 0  # the code-edit prompt is copied back: drafts are accepted
    if batch == 8:
        assert sum(o.metrics.num_preemptions for o in outs) > 0
