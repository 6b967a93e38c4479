"""The tensor-core small GEMM (models/small_gemm.py) for steps of 3-16 token rows, and its routing in
models/llama.linear.

CPU: the kernel runs under Triton's interpreter (TRITON_INTERPRET=1) in a subprocess, in float16 (see
tests/test_gemv.py for why not bf16), against a float64 reference rounded once, the output poisoned with NaN
first (every element must be written), N not a multiple of BLOCK_N, K not a multiple of BLOCK_K, with and
without bias, 1 to MAX_ROWS rows (each row bit-identical to its own one-row launch: the 16-row tile is the same
whatever M is).
CUDA (Hopper or newer for PDL): bf16 at Qwen2.5-1.5B and Llama-3.1-8B shapes with PDL against cuBLAS; the
routing of a 4-row step; a tiny bf16 model's engine with the fast paths on decoding batches of 3-8 (this
kernel's rows) gives the same greedy tokens under CUDA-graph replay as eagerly.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from dynaspec.config import EngineConfig  # noqa: E402
from dynaspec.engine.engine import LLMEngine  # noqa: E402
from dynaspec.models import small_gemm  # noqa: E402
from dynaspec.models.decode_kernels import (  # noqa: E402
    GEMV_MAX_ROWS,
    GEMV_PROJECTIONS,
    SMALL_GEMM_MAX_ROWS,
    DecodeKernels,
    supports_dependent_launch,
)
from dynaspec.models.llama import linear  # noqa: E402
from tests.tiny_models import make_tiny_checkpoint  # noqa: E402
from tests.small_step_gemm_cases import check_interpreted, greedy, run_case  # noqa: E402
from tests.triton_interpreter import run_interpreted  # noqa: E402

hopper = pytest.mark.skipif(not (torch.cuda.is_available() and supports_dependent_launch(torch.device("cuda"))),
                            reason="needs a Hopper or newer GPU (programmatic dependent launch)")

INTERPRETER_CASES = [
    {"kernel": "small_gemm", "shape": [64, 512], "bias": False, "seed": 0, "rows": 3},
    {"kernel": "small_gemm", "shape": [37, 700], "bias": True, "seed": 1, "rows": 4},  # N % BLOCK_N, K % BLOCK_K != 0
    {"kernel": "small_gemm", "shape": [256, 48], "bias": False, "seed": 2, "rows": 8},  # K below BLOCK_K, a wide weight
    {"kernel": "small_gemm", "shape": [96, 300], "bias": True, "seed": 3, "rows": 16},
    {"kernel": "small_gemm", "shape": [64, 512], "bias": True, "seed": 5, "rows": 1},
]


@pytest.fixture(scope="module")
def interpreter_results():
    return run_interpreted("tests.small_step_gemm_cases", "interpreter_main", INTERPRETER_CASES)


@pytest.mark.parametrize("index", range(len(INTERPRETER_CASES)))
def test_interpreter_small_gemm_matches_float64_reference(interpreter_results, index):
    check_interpreted(interpreter_results[index], INTERPRETER_CASES[index])


def test_small_gemm_rejects_unsupported_inputs():
    w = torch.randn(8, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="small_gemm needs"):
        small_gemm.small_gemm(torch.randn(small_gemm.MAX_ROWS + 1, 16, dtype=torch.float16), w)
    with pytest.raises(ValueError, match="small_gemm needs"):
        small_gemm.small_gemm(torch.randn(3, 16), w.float())  # float32
    with pytest.raises(ValueError, match="small_gemm needs"):
        small_gemm.small_gemm(torch.randn(3, 12, dtype=torch.float16), w)  # K mismatch


def test_worthwhile_routes_every_projection_but_a_long_k_down():
    for n, k in ((2048, 1536), (1536, 1536), (17920, 1536), (6144, 4096), (4096, 4096), (28672, 4096)):
        assert small_gemm.worthwhile(n, k), (n, k)
    for n, k in ((1536, 8960), (4096, 14336)):
        assert not small_gemm.worthwhile(n, k), (n, k)


def test_launch_config_tiles_fit_the_mma():
    for n, k in ((2048, 1536), (17920, 1536), (4096, 14336), (37, 700), (256, 48)):
        block_n, block_k, stages = small_gemm.launch_config(n, k)
        assert block_n >= 16 and block_k >= 16 and block_n & (block_n - 1) == 0 and block_k & (block_k - 1) == 0
        assert stages >= 1


def test_decode_kernels_validate_small_gemm_rows():
    gemv = frozenset(GEMV_PROJECTIONS)
    with pytest.raises(ValueError, match="small_gemm_max_rows"):
        DecodeKernels(dependent_launch=True, small_gemm_max_rows=8)  # without the GEMV path
    with pytest.raises(ValueError, match="small_gemm_max_rows"):
        DecodeKernels(dependent_launch=True, gemv=gemv, small_gemm_max_rows=GEMV_MAX_ROWS)
    with pytest.raises(ValueError, match="small_gemm_max_rows"):
        DecodeKernels(dependent_launch=True, gemv=gemv, small_gemm_max_rows=17)
    assert DecodeKernels(dependent_launch=True, gemv=gemv, small_gemm_max_rows=SMALL_GEMM_MAX_ROWS)


# --- CUDA ---------------------------------------------------------------------------------------------


@hopper
@pytest.mark.cuda
@pytest.mark.parametrize("rows", [3, 4, 8])
@pytest.mark.parametrize("shape", [(2048, 1536), (1536, 1536), (17920, 1536), (6144, 4096), (28672, 4096)])
def test_small_gemm_bf16_real_shapes_with_pdl(shape, rows):
    case = {"kernel": "small_gemm", "shape": list(shape), "bias": shape[0] == 2048, "seed": 4, "rows": rows}
    result = run_case(case, "cuda", torch.bfloat16, pdl=True)
    assert result["shape_ok"] and not result["nan"] and result["row_invariant"], result
    assert result["diff"] <= 1e-2 * max(result["scale"], 1.0), result


@hopper
@pytest.mark.cuda
def test_linear_routes_rows_by_count(monkeypatch):
    """1-2 rows: the GEMV; 3..SMALL_GEMM_MAX_ROWS: the small GEMM where worthwhile (not a long-K down); more: cuBLAS."""
    from dynaspec.models import gemv

    kernels = DecodeKernels(dependent_launch=True, gemv=frozenset(GEMV_PROJECTIONS),
                            small_gemm_max_rows=SMALL_GEMM_MAX_ROWS)
    calls = []
    monkeypatch.setattr(gemv, "gemv", lambda *a, **kw: calls.append("gemv") or torch.zeros(1))
    monkeypatch.setattr(small_gemm, "small_gemm", lambda *a, **kw: calls.append("small") or torch.zeros(1))
    wide = torch.randn(2048, 1536, dtype=torch.bfloat16, device="cuda")
    long_k = torch.randn(1536, 8960, dtype=torch.bfloat16, device="cuda")
    for rows, weight, expected in ((2, wide, ["gemv"]), (4, wide, ["small"]), (8, wide, ["small"]), (9, wide, []),
                                   (4, long_k, [])):
        calls.clear()
        linear(torch.randn(rows, weight.shape[1], dtype=torch.bfloat16, device="cuda"), weight, None, kernels, "qkv")
        assert calls == expected, (rows, weight.shape)


@hopper
@pytest.mark.cuda
@pytest.mark.parametrize("batch", [3, 8])
def test_small_step_batches_graph_equal_eager(tmp_path, batch):
    """bf16 tiny model, `batch` requests decoding together (this kernel's rows): CUDA-graph replay with the fast
    paths on equals eager token for token."""
    path = str(make_tiny_checkpoint(tmp_path, "llama", seed=0))
    gen = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(0, 512, (6 + 3 * i,), generator=gen).tolist() for i in range(batch)]
    common = dict(model=path, dtype="bfloat16", device="cuda", max_num_seqs=batch)
    graphed_engine = LLMEngine(EngineConfig(**common))
    assert graphed_engine.loaded.model.decode_kernels.small_gemm_max_rows == SMALL_GEMM_MAX_ROWS
    graphed = greedy(graphed_engine, prompts)
    assert graphed == greedy(LLMEngine(EngineConfig(enforce_eager=True, **common)), prompts)
