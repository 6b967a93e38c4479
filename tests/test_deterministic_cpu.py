"""Deterministic mode on the CPU in float32 (issue 22): batch-invariant kernels, bit-identical logit rows
whatever the step's layout, and an engine whose speculation is token- and logprob-identical to plain
decoding at batch 1, at any batch, greedy and seeded.

The kernels under test: models/invariant_linear.py (fixed 16-row GEMM blocks), models/invariant_attention.py
(fixed absolute key tiles), routed by DecodeKernels(deterministic=True). The CUDA contract in bf16 is in
tests/test_deterministic_cuda.py, the Triton kernels under the interpreter in tests/test_deterministic_triton.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynaspec import LLM, EngineConfig, SamplingParams
from dynaspec.models.attention import reference_paged_attention
from dynaspec.models.decode_kernels import DecodeKernels, decode_kernels_for
from dynaspec.models.invariant_attention import tiled_attention
from dynaspec.models.invariant_linear import CPU_ROW_BLOCK, invariant_linear
from dynaspec.models.loader import load_model
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.models.eagle_head import EagleHeadConfig, random_head, save_head
from dynaspec.spec.config import DraftTargetDecodingConfig, EagleDecodingConfig, NGramDecodingConfig
from tests import deterministic_schedules as ds
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint, make_tiny_gemma3_checkpoint

# --- kernels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, k", [(1728, 576), (576, 1536), (49152, 576), (100, 37)])
def test_linear_row_ignores_its_batch(n, k):
    """A row's output is the same bits alone, among 1..40 other rows, at any place among them (SmolLM2's
    qkv, down and lm_head shapes, and an odd one); F.linear's differ (MKL: GEMV at one row, M-dependent
    blocking above), which is why the mode exists."""
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(n, k, generator=gen) / k ** 0.5, torch.randn(n, generator=gen)
    x = torch.randn(41, k, generator=gen)
    alone = invariant_linear(x[:1], w, b)[0]
    for m in (2, CPU_ROW_BLOCK - 1, CPU_ROW_BLOCK + 1, 41):
        batch = x[:m].clone()
        for place in (0, m // 2, m - 1):
            batch[place] = x[0]
            assert torch.equal(invariant_linear(batch, w, b)[place], alone), (m, place)
            batch[place] = x[place]
    assert torch.allclose(alone, F.linear(x[:1], w, b)[0], rtol=1e-5, atol=1e-5)


def test_tiled_attention_matches_sdpa_reference():
    """The CPU attention computes attention (against the SDPA path) on a NaN-poisoned ragged batch,
    with and without a sliding window."""
    from tests.test_triton_attention import RAGGED, make_case

    for window in (None, 5):
        q, cache, meta = make_case(RAGGED, 6, 2, 32, 4, torch.float32, "cpu", seed=3)
        out = tiled_attention(q, cache, meta, 32 ** -0.5, window, tile=8)
        ref = reference_paged_attention(q, cache, meta, 32 ** -0.5, window)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_tensor_parallelism_cannot_be_deterministic():
    with pytest.raises(ValueError, match="deterministic=True needs tensor_parallel_size=1"):
        EngineConfig(deterministic=True, tensor_parallel_size=2)


def test_cli_flag_reaches_the_engine_config():
    from dynaspec.cli_options import engine_options
    from dynaspec.config_loader import load_engine_config

    options = engine_options(deterministic=True, device=None)
    assert options == {"deterministic": True}
    assert load_engine_config("smollm2-135m-instruct", None, None, None, options).deterministic
    assert not EngineConfig().deterministic  # the fast mode stays the default


def test_deterministic_kernels_exclude_the_gemv_path():
    with pytest.raises(ValueError, match="deterministic kernels exclude the small-step GEMV"):
        DecodeKernels(dependent_launch=True, gemv=frozenset({"qkv"}), deterministic=True)
    kernels = decode_kernels_for(torch.device("cpu"), True, deterministic=True)
    assert kernels.deterministic and not kernels.gemv


# --- logit rows of a model under every step layout --------------------------------------------------


def _layouts(num_seqs: int, length: int) -> dict[str, list]:
    everyone = list(range(num_seqs))
    return {
        f"decode at batch {num_seqs}": ds.decode_steps(everyone, length),
        "verify k = 1..6": ds.verify_steps(0, length, 3, [1, 2, 3, 4, 5, 6]),
        "ragged": ds.ragged_steps(num_seqs, length, seed=3),
        "prefill chunks of 7": ds.chunked_prefill_steps([0, num_seqs - 1], length, 7),
        "one prefill": ds.chunked_prefill_steps(everyone, length, length),
    }


def _assert_rows_identical(model, num_seqs: int, length: int) -> None:
    model.set_decode_kernels(DecodeKernels(deterministic=True))
    seqs = ds.random_sequences(num_seqs, length, model.vocab_size, seed=0)
    alone = ds.run_schedule(model, seqs, ds.decode_steps([0], length), "cpu", torch.float32, seed=1)
    for name, steps in _layouts(num_seqs, length).items():
        rows = ds.run_schedule(model, seqs, steps, "cpu", torch.float32, seed=2)
        rows = {key: row for key, row in rows.items() if key[0] == 0}
        assert len(rows) == length and not ds.mismatches(alone, rows), (name, ds.mismatches(alone, rows))


@pytest.mark.parametrize("arch, overrides", [("llama", {}), ("qwen3", {}), ("mistral", {"sliding_window": 5}),
                                             ("gemma3", {})],
                         ids=["llama", "qwen3", "mistral-window-5", "gemma3-window-5-softcap"])
def test_tiny_model_logit_rows_are_bit_identical_in_every_layout(tmp_path, arch, overrides):
    path = make_tiny_gemma3_checkpoint(tmp_path) if arch == "gemma3" else make_tiny_checkpoint(tmp_path, arch, **overrides)
    model = load_model(str(path), torch.float32, "cpu").model
    _assert_rows_identical(model, num_seqs=4, length=16)


@pytest.mark.slow
def test_smollm2_logit_rows_are_bit_identical_in_every_layout(smollm2_dir):
    model = load_model(str(smollm2_dir), torch.float32, "cpu").model
    _assert_rows_identical(model, num_seqs=2, length=10)


# --- the engine: speculation equals plain decoding at batch 1, tokens and logprobs -----------------


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("deterministic")
    costs = StepCostModel()
    for batch in (1, 2, 4, 8):
        for k in range(4):
            costs.add(batch, k, 1.0 + 0.01 * batch * k)
    costs.save(root / "costs.json")
    target = str(make_tiny_checkpoint(root, "llama", seed=0))
    hf_config = load_model(target, torch.float32, "cpu").hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, target), hf_config, seed=3, std=0.2)
    return {
        "target": target,
        "draft": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
        "head": str(save_head(head, root / "head")),
        "costs": str(root / "costs.json"),
    }


NUM_PROMPTS = 4


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    motif = torch.randint(0, 512, (5,), generator=gen).tolist()
    return [motif * 3 + torch.randint(0, 512, (2 + 4 * i,), generator=gen).tolist() for i in range(n)]


def _params(n: int, seeded: bool) -> list[SamplingParams]:
    """Lengths 6, 9, 12, ...: the batch shrinks as requests finish (a schedule crosses k = 0)."""
    if seeded:
        return [SamplingParams(temperature=1.0, seed=50 + i, max_tokens=6 + 3 * i, ignore_eos=True, logprobs=0)
                for i in range(n)]
    return [SamplingParams(temperature=0.0, max_tokens=6 + 3 * i, ignore_eos=True, logprobs=0) for i in range(n)]


def _generate(llm: LLM, prompts, params) -> list[tuple[list[int], list]]:
    return [(o.token_ids, o.logprobs) for o in llm.generate(prompts, params)]


SPECS = {
    "ngram k=3": lambda c: NGramDecodingConfig(max_draft_len=3),
    "draft model": lambda c: DraftTargetDecodingConfig(max_draft_len=3, speculative_model=c["draft"]),
    "schedule crossing k=0": lambda c: NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3, 3: 0}),
    "adaptive": lambda c: NGramDecodingConfig(max_draft_len=3, draft_len_policy="adaptive",
                                              step_cost_file=c["costs"]),
    "eagle head": lambda c: EagleDecodingConfig(max_draft_len=3, speculative_model=c["head"]),
}


@pytest.fixture(scope="module")
def plain_alone(ckpts):
    """Plain decoding, one request at a time, in deterministic mode: the reference."""
    llm = LLM(model=ckpts["target"], block_size=4, deterministic=True)
    prompts = _prompts(NUM_PROMPTS)
    return {seeded: [_generate(llm, [p], [q])[0] for p, q in zip(prompts, _params(NUM_PROMPTS, seeded))]
            for seeded in (False, True)}


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_speculation_in_a_batch_equals_plain_decoding_alone(ckpts, plain_alone, spec, seeded):
    """Tokens AND their logprobs (bits of the target's logit rows through log_softmax) equal plain
    decoding at batch 1, and stay equal when the batch shrinks as requests finish."""
    llm = LLM(model=ckpts["target"], block_size=4, deterministic=True, speculative_config=SPECS[spec](ckpts))
    assert _generate(llm, _prompts(NUM_PROMPTS), _params(NUM_PROMPTS, seeded)) == plain_alone[seeded]
    if not (seeded and spec == "adaptive"):  # sampled text rarely repeats: the adaptive policy may not draft
        assert llm.get_stats()["num_drafted"] > 0


def test_plain_decoding_in_a_batch_equals_alone(ckpts, plain_alone):
    llm = LLM(model=ckpts["target"], block_size=4, deterministic=True)
    for seeded in (False, True):
        assert _generate(llm, _prompts(NUM_PROMPTS), _params(NUM_PROMPTS, seeded)) == plain_alone[seeded]
