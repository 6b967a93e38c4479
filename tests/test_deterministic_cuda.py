"""Deterministic mode on the GPU in bf16 (issue 22): the batch-invariant Triton kernels and a model's logit
rows are the same bits in every step layout, and the engine with CUDA graphs gives speculation the tokens
and logprobs of plain decoding at batch 1. All `cuda` (skipped without a GPU).

Run: python -m pytest -q -p no:cacheprovider tests/test_deterministic_cuda.py (SmolLM2's real weights
included: that test is also `slow`).
"""

from __future__ import annotations

import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.models.decode_kernels import DecodeKernels
from dynaspec.models.loader import load_model
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from tests import deterministic_schedules as ds
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint

pytest.importorskip("triton")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.cuda, cuda]

LLAMA_8B_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]
QWEN_15B_SHAPES = [(2048, 1536), (1536, 1536), (17920, 1536), (1536, 8960), (151936, 1536)]
PROJECTIONS = ["qkv", "o", "gate_up", "down", "lm_head"]


@pytest.mark.parametrize("n, k", LLAMA_8B_SHAPES + QWEN_15B_SHAPES,
                         ids=[f"llama-8b-{p}" for p in PROJECTIONS] + [f"qwen-1.5b-{p}" for p in PROJECTIONS])
def test_gemm_rows_bit_identical_for_every_m(n, k):
    """Row i alone, among M = 2..2048 rows, at any place: the same bits (Llama-3.1-8B's and Qwen2.5-1.5B's
    shapes, bf16, with the tiles this card's tuned table gives them, as the engine runs them); and close to
    cuBLAS."""
    from dynaspec.models.batch_invariant import invariant_matmul
    from dynaspec.models.gemm_tiles import tiles_for

    config = tiles_for(torch.device("cuda")).lookup(n, k, torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2048, k, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).bfloat16()
    singles = torch.cat([invariant_matmul(x[i:i + 1], w, None, config) for i in range(64)])  # (64, N)
    for m in (2, 7, 16, 63, 64, 65, 200, 2048):
        out = invariant_matmul(x[:m], w, None, config)
        assert torch.equal(out[:min(m, 64)], singles[:min(m, 64)]), (m, config)
        perm = torch.randperm(m, device="cuda", generator=gen)
        placed = invariant_matmul(x[:m][perm], w, None, config)
        inverse = torch.argsort(perm)
        assert torch.equal(placed[inverse][:min(m, 64)], singles[:min(m, 64)]), m
    torch.testing.assert_close(singles, x[:64] @ w.T, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("n, k, block_k, slices", [(28672, 4096, 64, 2), (4096, 14336, 128, 2), (1536, 8960, 64, 4)],
                         ids=["llama-8b-gate_up", "llama-8b-down", "qwen-1.5b-down"])
def test_gemm_tma_tiles_rows_bit_identical_for_every_m(n, k, block_k, slices):
    """The TMA-loaded tiles (batch_invariant_tma.py) at every M: row i's bits the same at M = 1 .. 2048 (rows
    past M are the descriptor's zero fill) and close to cuBLAS; reported, not required: whether they equal the
    pointer kernel's bits for the same tiles (the tuner keeps a TMA layout only where they do)."""
    from dynaspec.models.batch_invariant import invariant_matmul
    from dynaspec.models.batch_invariant_tma import tma_supported
    from dynaspec.models.gemm_tiles import RowTiles, TileConfig

    if not tma_supported(torch.device("cuda")):
        pytest.skip("TMA needs compute capability 9.0 and a Triton with tensor descriptors")
    tiles = RowTiles(block_m=128, block_n=128, num_warps=8, num_stages=4 if block_k == 64 else 3)  # shared memory
    pointer = TileConfig(64, 64, block_k, k_slices=slices, large_min_m=1, large=tiles)
    tma = TileConfig(64, 64, block_k, k_slices=slices, large_min_m=1, large=RowTiles(**{**tiles.__dict__, "tma": True}))
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2048, k, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).bfloat16()
    singles = torch.cat([invariant_matmul(x[i:i + 1], w, None, tma, split=False) for i in range(8)])  # (8, N)
    for m in (2, 65, 320, 2048):
        assert torch.equal(invariant_matmul(x[:m], w, None, tma, split=False)[:8], singles[:min(m, 8)]), m
    torch.testing.assert_close(singles, x[:8] @ w.T, rtol=2e-2, atol=2e-2)
    same = torch.equal(invariant_matmul(x[:320], w, None, pointer, split=False),
                       invariant_matmul(x[:320], w, None, tma, split=False))
    print(f"TMA tiles' bits {'equal' if same else 'differ from'} the pointer kernel's ({n}x{k})")


@pytest.mark.parametrize("n, k, slices", [(4096, 14336, 4), (6144, 4096, 8), (1536, 8960, 2)],
                         ids=["llama-8b-down", "llama-8b-qkv", "qwen-1.5b-down"])
def test_gemm_k_slices_give_the_same_bits_split_or_not(n, k, slices):
    """K in fixed slices (TileConfig.k_slices): a row's bits are the same at M = 1 .. 300, in one program
    per tile or split across programs with the summing kernel, on the GPU's MMAs (bf16)."""
    from tests.deterministic_triton_worker import gemm_check

    result = gemm_check(dict(kind="gemm", n=n, k=k, ms=[1, 5, 64, 300], dtype="bfloat16", seed=0, device="cuda",
                             slices=slices))
    assert result["differing_rows"] == 0 and result["rel_err"] < 2e-2, result


@pytest.mark.parametrize("shape", [(32, 8, 128), (9, 3, 64), (14, 2, 64)], ids=["llama-8b", "smollm2", "qwen-0.5b"])
@pytest.mark.parametrize("window", [None, 300])
def test_attention_rows_bit_identical_in_every_layout(shape, window):
    """A query row alone, among other sequences, as row j of verify k = 1, 3, 6, in prefill chunks of 5,
    16 or the whole 1,200-key sequence (3 KV splits), serial or parallel split fold: the same bits."""
    from tests.deterministic_triton_worker import attention_check

    heads, kv_heads, head_dim = shape
    result = attention_check(dict(kind="attention", heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                                  lengths=[1200, 700, 90], window=window, positions=[0, 511, 512, 600, 1199],
                                  dtype="bfloat16", seed=0, device="cuda"))
    assert result["differing_rows"] == 0 and result["compared_rows"] >= 40 and result["finite"], result
    assert result["padding_ok"], result
    assert result["rel_err"] < 2e-2, result


def _random_model(tmp_path, dtype=torch.bfloat16):
    """Random weights with a few real-model proportions (GQA 8:2, head_dim 64, 4 layers), bf16 on the GPU."""
    path = make_tiny_checkpoint(tmp_path, "qwen2", hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                                num_attention_heads=8, num_key_value_heads=2, vocab_size=4096,
                                max_position_embeddings=2048, initializer_range=0.05)
    return load_model(str(path), dtype, "cuda").model


def _assert_layouts_identical(model, length: int, batch: int) -> None:
    model.set_decode_kernels(DecodeKernels(deterministic=True))
    seqs = ds.random_sequences(batch, length, model.vocab_size, seed=0)
    alone = ds.run_schedule(model, seqs, ds.decode_steps([0], length), "cuda", torch.bfloat16, seed=1)
    layouts = {
        f"decode at batch {batch}": ds.decode_steps(list(range(batch)), length),
        "verify k = 1..6": ds.verify_steps(0, length, 3, [1, 2, 3, 4, 5, 6]),
        "ragged": ds.ragged_steps(batch, length, seed=3),
        "prefill chunks of 7": ds.chunked_prefill_steps([0, 5], length, 7),
        "prefill chunks of 64": ds.chunked_prefill_steps(list(range(batch)), length, 64),
        "one prefill": ds.chunked_prefill_steps([0], length, length),
    }
    for name, steps in layouts.items():
        rows = {key: row for key, row in ds.run_schedule(model, seqs, steps, "cuda", torch.bfloat16, seed=2).items()
                if key[0] == 0}
        assert len(rows) == length and not ds.mismatches(alone, rows), (name, ds.mismatches(alone, rows)[:5])


def test_random_model_logit_rows_bit_identical_batch_1_to_64(tmp_path):
    _assert_layouts_identical(_random_model(tmp_path), length=48, batch=64)


def test_random_model_long_context_rows_bit_identical(tmp_path):
    """Past one KV split (512 keys): prefill of 600 tokens at once or in chunks of 7 / 64, then decode."""
    model = _random_model(tmp_path)
    model.set_decode_kernels(DecodeKernels(deterministic=True))
    seqs = ds.random_sequences(2, 640, model.vocab_size, seed=4)
    reference = ds.run_schedule(model, seqs, [[(0, 600), (1, 600)]] + ds.decode_steps([0, 1], 40), "cuda",
                                torch.bfloat16, seed=1)
    for steps in (ds.chunked_prefill_steps([0, 1], 640, 64), ds.chunked_prefill_steps([0], 640, 7),
                  [[(0, 590)]] + ds.verify_steps(0, 50, 0, [6, 1, 3])[1:]):
        rows = ds.run_schedule(model, seqs, steps, "cuda", torch.bfloat16, seed=2)
        assert not ds.mismatches(reference, rows), ds.mismatches(reference, rows)[:5]


@pytest.mark.slow
def test_smollm2_logit_rows_bit_identical_batch_1_to_64(smollm2_dir):
    model = load_model(str(smollm2_dir), torch.bfloat16, "cuda").model
    _assert_layouts_identical(model, length=40, batch=64)


# --- the engine with CUDA graphs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("deterministic-cuda")
    return {"target": str(make_tiny_checkpoint(root, "llama", seed=0, initializer_range=0.05)),
            "draft": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004))}


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    motif = torch.randint(0, 512, (5,), generator=gen).tolist()
    return [motif * 3 + torch.randint(0, 512, (2 + (5 * i) % 23,), generator=gen).tolist() for i in range(n)]


def _params(n: int, seeded: bool) -> list[SamplingParams]:
    common = dict(ignore_eos=True, logprobs=0)
    if seeded:
        return [SamplingParams(temperature=1.0, seed=50 + i, max_tokens=12 + i % 9, **common) for i in range(n)]
    return [SamplingParams(temperature=0.0, max_tokens=12 + i % 9, **common) for i in range(n)]


def _generate(llm: LLM, prompts, params):
    return [(o.token_ids, o.logprobs) for o in llm.generate(prompts, params)]


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_engine_with_graphs_speculation_at_batch_64_equals_plain_alone(ckpts, seeded):
    """bf16, CUDA graphs: plain decoding one request at a time is the reference; plain at batch 64, n-gram
    (static k and a schedule crossing k = 0), a draft model and the goodput policy at batch 64, and eager
    mode, give every request the same tokens and the same logprobs."""
    n = 64
    prompts, params = _prompts(n), _params(n, seeded)
    common = dict(model=ckpts["target"], dtype="bfloat16", device="cuda", deterministic=True, max_num_seqs=n)
    alone_llm = LLM(**common)
    alone = [_generate(alone_llm, [p], [q])[0] for p, q in zip(prompts, params)]
    specs = {
        "plain": None,
        "ngram k=4": NGramDecodingConfig(max_draft_len=4),
        "ngram schedule": NGramDecodingConfig(max_draft_len=4, draft_len_schedule={1: 4, 16: 2, 48: 0}),
        "draft model": DraftTargetDecodingConfig(max_draft_len=3, speculative_model=ckpts["draft"]),
        "goodput": NGramDecodingConfig(max_draft_len=4, draft_len_policy="goodput"),
    }
    for name, spec in specs.items():
        llm = LLM(speculative_config=spec, **common)
        assert _generate(llm, prompts, params) == alone, name
    eager = LLM(enforce_eager=True, speculative_config=specs["ngram k=4"], **common)
    assert _generate(eager, prompts, params) == alone
