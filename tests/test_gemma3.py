"""Gemma 3 (text) against HF transformers' Gemma3ForCausalLM on a tiny random config, fp32 on CPU.

The tiny config (tests/tiny_models.py) has a sliding window of 5 positions on three of its four layers,
distinct local / global RoPE bases, query_pre_attn_scalar != head_dim and final-logit soft-capping, and
the prompts are longer than the window, so a wrong window, RoPE base, scale or norm breaks parity.
"""

from __future__ import annotations

import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.models.gemma3 import Gemma3ForCausalLM
from dynaspec.models.registry import resolve_model_class
from tests.test_model_parity import FP32_ATOL, PagedHarness, hf_logits, max_diff, random_tokens, run_incremental
from tests.tiny_models import make_tiny_gemma3_checkpoint, make_tiny_gemma3_config, make_tiny_gemma3_hf_model


def build_pair(seed: int = 0, **overrides):
    hf = make_tiny_gemma3_hf_model(seed, **overrides)
    ours = resolve_model_class(hf.config)(hf.config)
    ours.load_weights(hf.state_dict().items())
    return hf, ours.eval()


def test_registry_and_layer_windows():
    config = make_tiny_gemma3_config()
    assert resolve_model_class(config) is Gemma3ForCausalLM
    model = Gemma3ForCausalLM(config)
    windows = [layer.self_attn.sliding_window for layer in model.model.layers]
    assert windows == [5, 5, None, 5]
    assert model.model.layers[0].self_attn.scaling == pytest.approx(24**-0.5)
    # Local and global layers rotate with different bases.
    assert not torch.equal(model.model.rotary_emb.inv_freq, model.model.rotary_emb_local.inv_freq)


@pytest.mark.parametrize("overrides", [{}, {"final_logit_softcapping": None, "tie_word_embeddings": False}])
def test_prefill_logits_match_hf(overrides):
    hf, ours = build_pair(**overrides)
    tokens = random_tokens(23, seed=1)  # longer than the window of 5
    (logits,) = PagedHarness(ours).step([("a", tokens, 0)])
    assert logits.shape == (23, 512)
    assert max_diff(logits, hf_logits(hf, tokens)) <= FP32_ATOL


def test_window_matters():
    """The same weights with a window wider than the prompt give other logits past the window."""
    hf, ours = build_pair()
    wide, _ = build_pair(sliding_window=64)
    tokens = random_tokens(23, seed=1)
    (logits,) = PagedHarness(ours).step([("a", tokens, 0)])
    assert max_diff(logits[5:], hf_logits(wide, tokens)[5:]) > 1e-2
    assert max_diff(logits[:5], hf_logits(wide, tokens)[:5]) <= FP32_ATOL  # inside the window: identical


def test_chunked_prefill_decode_verify_match_hf():
    hf, ours = build_pair()
    tokens = random_tokens(25, seed=2)
    logits = run_incremental(PagedHarness(ours, seed=3), tokens, random_tokens(5, seed=4))
    assert max_diff(logits, hf_logits(hf, tokens)) <= FP32_ATOL


def test_mixed_batch_matches_hf():
    hf, ours = build_pair()
    a, b = random_tokens(14, seed=5), random_tokens(10, seed=6)
    harness = PagedHarness(ours, seed=8)
    la1, lb1 = harness.step([("a", a[:13], 0), ("b", b[:7], 0)])
    la2, lb2 = harness.step([("a", a[13:], 13), ("b", b[7:], 7)])
    assert max_diff(torch.cat([la1, la2]), hf_logits(hf, a)) <= FP32_ATOL
    assert max_diff(torch.cat([lb1, lb2]), hf_logits(hf, b)) <= FP32_ATOL


def test_unsupported_attention_softcap_is_a_clear_error():
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        Gemma3ForCausalLM(make_tiny_gemma3_config(attn_logit_softcapping=50.0))


@pytest.mark.parametrize("max_num_batched_tokens", [2048, 16])
def test_engine_greedy_matches_hf_generate(tmp_path, max_num_batched_tokens):
    """20 greedy steps through LLM (paged cache, blocks of 4, prompts longer than the window; with 16, the
    prompts are prefilled in chunks) equal HF generate."""
    path = make_tiny_gemma3_checkpoint(tmp_path, seed=1)
    hf = make_tiny_gemma3_hf_model(seed=1)
    llm = LLM(model=str(path), device="cpu", block_size=4, max_num_batched_tokens=max_num_batched_tokens)
    prompts = [random_tokens(n, seed=10 + n) for n in (12, 31, 3)]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    for prompt, out in zip(prompts, llm.generate(prompts, params)):
        ref = hf.generate(
            torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt):].tolist()
        assert out.token_ids == ref


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_cuda_close_to_hf():
    """bf16 on CUDA (decode / verify steps through the Triton kernel with the sliding window): our error
    against the fp32 reference is no worse than HF's own bf16 error (+ slack)."""
    tokens = random_tokens(25, seed=2)
    hf32, _ = build_pair()
    truth = hf_logits(hf32, tokens)
    hf16, ours16 = build_pair()
    hf16, ours16 = hf16.to("cuda", torch.bfloat16), ours16.to("cuda", torch.bfloat16)
    ours = run_incremental(PagedHarness(ours16, device="cuda", dtype=torch.bfloat16), tokens, random_tokens(5, seed=4))
    theirs = hf_logits(hf16, tokens).cpu()
    ours_err, hf_err = max_diff(ours.cpu(), truth), max_diff(theirs, truth)
    assert ours_err <= 2 * hf_err + 5e-2, (ours_err, hf_err)
