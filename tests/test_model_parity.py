"""Our paged-KV decoders against HF transformers on tiny random checkpoints.

fp32 on CPU, logits within 1e-4 of HF's full-sequence forward for: one whole-prompt prefill; chunked
prefill + decodes + a rejected then an accepted verify step; and mixed multi-sequence batches.
The KV cache starts NaN-filled and blocks are shuffled, so any read of an unwritten slot or a wrong
block mapping breaks parity.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig

from dynaspec.models.attention_metadata import AttentionMetadata
from dynaspec.models.llama import LlamaForCausalLM
from dynaspec.models.qwen3 import Qwen3ForCausalLM
from dynaspec.models.registry import SUPPORTED_ARCHITECTURES, resolve_model_class
from tests.tiny_models import make_tiny_checkpoint, make_tiny_config, make_tiny_hf_model

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

CASES = {
    "llama": ("llama", {}),
    "llama-bias-tied": ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    "llama3-rope": ("llama", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 32}),
    "mistral-window": ("mistral", {"sliding_window": 6}),
}

FP32_ATOL = 1e-4


class PagedHarness:
    """Drives one of our models step by step over a paged KV cache with shuffled block ids."""

    def __init__(self, model, num_blocks=64, block_size=4, device="cpu", dtype=torch.float32, seed=0):
        self.model = model
        self.block_size = block_size
        self.device = device
        shape = (2, num_blocks, block_size, model.num_kv_heads, model.head_dim)
        self.kv_caches = [torch.full(shape, float("nan"), dtype=dtype, device=device) for _ in range(model.num_layers)]
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
        self.tables: dict[str, list[int]] = {}

    def step(self, chunks: list[tuple[str, list[int], int]]) -> list[torch.Tensor]:
        """chunks: (sequence name, new token ids, position of the first one) -> per-chunk logits (q_len, vocab)."""
        seq_lens = [start + len(tokens) for _, tokens, start in chunks]
        for (name, _, _), seq_len in zip(chunks, seq_lens):
            table = self.tables.setdefault(name, [])
            while len(table) * self.block_size < seq_len:
                table.append(self.free.pop())
        meta = AttentionMetadata.build(
            [len(tokens) for _, tokens, _ in chunks], seq_lens, [self.tables[n] for n, _, _ in chunks],
            self.block_size, self.device,
        )
        input_ids = torch.tensor([t for _, tokens, _ in chunks for t in tokens], device=self.device)
        positions = torch.cat([torch.arange(start, start + len(tokens)) for _, tokens, start in chunks]).to(self.device)
        with torch.no_grad():
            logits = self.model.compute_logits(self.model(input_ids, positions, self.kv_caches, meta))
        assert logits.dtype == torch.float32
        return list(logits.split([len(tokens) for _, tokens, _ in chunks]))


def build_pair(case: str, seed: int = 0, device="cpu", dtype=torch.float32):
    arch, overrides = CASES[case]
    hf = make_tiny_hf_model(arch, seed, **overrides).to(device, dtype)
    ours = resolve_model_class(hf.config)(hf.config)
    ours.load_weights(hf.state_dict().items())
    return hf, ours.to(device, dtype).eval()


def hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    device = next(hf.parameters()).device
    with torch.no_grad():
        return hf(torch.tensor([tokens], device=device)).logits[0].float()


def random_tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("case", list(CASES))
def test_full_prompt_prefill_matches_hf(case):
    hf, ours = build_pair(case)
    tokens = random_tokens(23, seed=1)
    (logits,) = PagedHarness(ours).step([("a", tokens, 0)])
    assert logits.shape == (23, 512)
    assert max_diff(logits, hf_logits(hf, tokens)) <= FP32_ATOL


def run_incremental(harness: PagedHarness, tokens: list[int], junk: list[int]) -> torch.Tensor:
    """Chunked prefill (10 + 6), 3 decodes, a verify step of wrong tokens, the same positions again with the
    right ones (overwriting the rejected KV), then one decode. Returns logits for every position of `tokens`."""
    assert len(tokens) == 25 and len(junk) == 5
    out = []
    out += harness.step([("a", tokens[0:10], 0)])
    out += harness.step([("a", tokens[10:16], 10)])
    for pos in (16, 17, 18):
        out += harness.step([("a", tokens[pos:pos + 1], pos)])
    harness.step([("a", junk, 19)])  # rejected draft: its KV slots get overwritten below
    out += harness.step([("a", tokens[19:24], 19)])
    out += harness.step([("a", tokens[24:25], 24)])
    return torch.cat(out)


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_prefill_decode_verify_match_hf(case):
    hf, ours = build_pair(case)
    tokens = random_tokens(25, seed=2)
    logits = run_incremental(PagedHarness(ours, seed=3), tokens, random_tokens(5, seed=4))
    assert max_diff(logits, hf_logits(hf, tokens)) <= FP32_ATOL


@pytest.mark.parametrize("case", ["llama", "qwen2", "qwen3", "mistral-window"])
def test_mixed_batch_matches_each_sequence_alone(case):
    hf, ours = build_pair(case)
    a, b, c = random_tokens(14, seed=5), random_tokens(10, seed=6), random_tokens(5, seed=7)
    harness = PagedHarness(ours, seed=8)
    # Step 1: two prefills of different lengths. Step 2: a decode, a verify of 3 and a new prefill.
    la1, lb1 = harness.step([("a", a[:13], 0), ("b", b[:7], 0)])
    la2, lb2, lc2 = harness.step([("a", a[13:], 13), ("b", b[7:], 7), ("c", c, 0)])
    batched = {"a": torch.cat([la1, la2]), "b": torch.cat([lb1, lb2]), "c": lc2}
    for name, tokens in (("a", a), ("b", b), ("c", c)):
        assert max_diff(batched[name], hf_logits(hf, tokens)) <= FP32_ATOL
        (alone,) = PagedHarness(ours).step([(name, tokens, 0)])
        assert max_diff(batched[name], alone) <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_loads_saved_checkpoint_with_tied_embeddings(tmp_path, arch):
    path = make_tiny_checkpoint(tmp_path, arch, seed=11, tie_word_embeddings=True)
    hf = make_tiny_hf_model(arch, seed=11, tie_word_embeddings=True)
    ours = resolve_model_class(hf.config)(hf.config)
    state = load_file(str(path / "model.safetensors"))
    assert "lm_head.weight" not in state  # HF drops the tied copy on save
    ours.load_weights(state.items())
    tokens = random_tokens(9, seed=12)
    (logits,) = PagedHarness(ours.eval()).step([("a", tokens, 0)])
    assert max_diff(logits, hf_logits(hf, tokens)) <= FP32_ATOL


def test_rope_frequencies_stay_float32_after_dtype_cast():
    hf, ours = build_pair("llama3-rope")
    expected = ours.model.rotary_emb.inv_freq.clone()
    ours.to(torch.bfloat16)
    assert ours.model.embed_tokens.weight.dtype == torch.bfloat16
    assert ours.model.rotary_emb.inv_freq.dtype == torch.float32
    torch.testing.assert_close(ours.model.rotary_emb.inv_freq, expected, atol=0, rtol=0)


def test_meta_device_build_then_to_empty_and_load():
    hf = make_tiny_hf_model("qwen3", seed=13, tie_word_embeddings=True)
    with torch.device("meta"):
        ours = resolve_model_class(hf.config)(hf.config)
    ours.to_empty(device="cpu")
    ours.load_weights(hf.state_dict().items())
    tokens = random_tokens(11, seed=14)
    (logits,) = PagedHarness(ours.eval()).step([("a", tokens, 0)])
    assert max_diff(logits, hf_logits(hf, tokens)) <= FP32_ATOL


def test_load_weights_rejects_bad_checkpoints():
    hf = make_tiny_hf_model("llama")
    state = dict(hf.state_dict())
    with pytest.raises(ValueError, match="no parameter"):
        LlamaForCausalLM(hf.config).load_weights([*state.items(), ("model.extra.weight", torch.zeros(1))])
    bad_shape = {**state, "model.norm.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match="shape"):
        LlamaForCausalLM(hf.config).load_weights(bad_shape.items())
    missing = {k: v for k, v in state.items() if k != "model.norm.weight"}
    with pytest.raises(ValueError, match="model.norm.weight"):
        LlamaForCausalLM(hf.config).load_weights(missing.items())


def test_registry_resolves_supported_architectures():
    assert set(SUPPORTED_ARCHITECTURES) == {
        "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"
    }
    for arch, cls in (("llama", LlamaForCausalLM), ("qwen2", LlamaForCausalLM), ("mistral", LlamaForCausalLM),
                      ("qwen3", Qwen3ForCausalLM)):
        assert resolve_model_class(make_tiny_config(arch)) is cls


def test_registry_unknown_architecture_lists_supported():
    config = LlamaConfig(architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(ValueError) as excinfo:
        resolve_model_class(config)
    message = str(excinfo.value)
    assert "GPTNeoXForCausalLM" in message
    for name in SUPPORTED_ARCHITECTURES:
        assert name in message


def test_unsupported_rope_type_raises():
    config = make_tiny_config("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_type"):
        LlamaForCausalLM(config)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", ["llama", "qwen2", "qwen3", "mistral-window"])
def test_bf16_cuda_close_to_hf(case):
    """bf16 on CUDA: our error against the fp32 reference is no worse than HF's own bf16 error (+ slack)."""
    tokens = random_tokens(25, seed=2)
    hf32, _ = build_pair(case)
    truth = hf_logits(hf32, tokens)
    hf16, ours16 = build_pair(case, device="cuda", dtype=torch.bfloat16)
    ours = run_incremental(PagedHarness(ours16, device="cuda", dtype=torch.bfloat16), tokens, random_tokens(5, seed=4))
    theirs = hf_logits(hf16, tokens).cpu()
    ours_err, hf_err = max_diff(ours.cpu(), truth), max_diff(theirs, truth)
    assert ours_err <= 2 * hf_err + 5e-2, (ours_err, hf_err)
    # Greedy choices: ours agree with fp32 about as often as HF's own bf16 run (near-ties flip in bf16).
    ours_agree = (ours.cpu().argmax(-1) == truth.argmax(-1)).float().mean().item()
    hf_agree = (theirs.argmax(-1) == truth.argmax(-1)).float().mean().item()
    assert ours_agree >= hf_agree - 0.1, (ours_agree, hf_agree)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_build_under_cuda_device_context_keeps_rope_on_gpu_in_fp32():
    config = make_tiny_config("llama", rope_scaling=LLAMA3_ROPE, rope_theta=500000.0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.device.type == "cuda" and inv_freq.dtype == torch.float32
    torch.testing.assert_close(inv_freq.cpu(), LlamaForCausalLM(config).model.rotary_emb.inv_freq, atol=0, rtol=0)
