"""Real model: Gemma-3-270M (zoo `gemma-3-270m`, Q4_K_M GGUF from PyPI) against HF transformers, fp32 CPU.

HF reads the assembled GGUF itself (`from_pretrained(dir, gguf_file=...)`, dequantized); dynaspec loads the
zoo's converted cache. Greedy tokens must be equal, for a short prompt and for one longer than the model's
sliding window (512), so the local layers' window is exercised through the paged cache.
Slow (two dequantizations of the GGUF, ~2-3 min on 2 CPU cores); skipped when the packages are missing.
"""

from __future__ import annotations

import pydoc_data.topics

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from dynaspec import LLM, SamplingParams
from dynaspec.models import zoo

NAME = "gemma-3-270m"
MAX_TOKENS = 24

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    if zoo.missing_packages(NAME):
        pytest.skip(f"zoo model {NAME} is not installed: {zoo.get_zoo_model(NAME).pip_command}")
    return tmp_path_factory.mktemp("dynaspec-cache")


@pytest.fixture(scope="module")
def hf_model(cache_root):
    """HF Gemma3ForCausalLM read straight from the assembled GGUF (float32)."""
    model = zoo.get_zoo_model(NAME)
    gguf = cache_root / "gemma-3-270m-q4_k_m.gguf"
    zoo.assemble(model, zoo.installed_files(model), gguf)  # joins the parts and checks size + sha256
    kwargs = {"gguf_file": gguf.name}
    try:  # transformers >= 5.2x keeps GGUF blocks packed unless told to dequantize
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    hf = AutoModelForCausalLM.from_pretrained(str(cache_root), dtype=torch.float32, **kwargs).eval()
    gguf.unlink()
    return hf


@pytest.fixture(scope="module")
def llm(cache_root):
    return LLM(model=NAME, model_cache_dir=str(cache_root), device="cpu", max_model_len=2048, max_num_seqs=4)


def _long_prompt(tokenizer) -> str:
    text = pydoc_data.topics.topics["with"]
    ids = tokenizer.encode(text)
    assert len(ids) > 600, len(ids)  # past the 512-position window
    return tokenizer.decode(ids[1:700])  # drop BOS; the engine's encode adds it again


def test_gemma3_270m_greedy_matches_transformers(llm, hf_model, cache_root):
    config = AutoConfig.from_pretrained(str(zoo.cache_path(NAME, cache_root)))
    assert config.architectures == ["Gemma3ForCausalLM"] and config.sliding_window == 512
    prompts = ["The capital of France is", "def fibonacci(n):\n    ", _long_prompt(llm.tokenizer)]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([llm.tokenizer.encode(prompt)])
        with torch.no_grad():
            ref = hf_model.generate(
                ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, ids.shape[1]:]
        assert out.token_ids == ref.tolist(), (prompt[:40], out.token_ids, ref.tolist())
