"""The small-step Triton GEMV (models/gemv.py), the decode-kernel choices (models/decode_kernels.py) and their
wiring into the Llama decoder.

CPU: the GEMV runs under Triton's interpreter (TRITON_INTERPRET=1) in a subprocess that sets the variable
before importing Triton (as tests/test_fused_ops.py does), in float16 (the interpreter truncates float32 to
bfloat16 instead of rounding to nearest even, so a bf16 comparison there would test the interpreter): against
a float64 reference rounded once, with the output poisoned with NaN first (every element must be written),
N not a multiple of BLOCK_N, K not a multiple of BLOCK_K, with and without bias, 1 to MAX_ROWS rows (each row
bit-identical to its own one-row launch).
CUDA (Hopper or newer for PDL): bf16 GEMV at Llama-3.1-8B shapes with PDL; a tiny bf16 model's engine with
the fast decode paths on gives the same greedy tokens under CUDA-graph replay as eagerly, and its batch-1
logits match the paths off to bf16 rounding.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from dynaspec.config import EngineConfig  # noqa: E402
from dynaspec.engine.engine import LLMEngine  # noqa: E402
from dynaspec.models import gemv  # noqa: E402
from dynaspec.models.decode_kernels import (  # noqa: E402
    GEMV_PROJECTIONS,
    DecodeKernels,
    decode_kernels_for,
    supports_dependent_launch,
)
from dynaspec.models.llama import FusedProjections  # noqa: E402
from dynaspec.models.rms_norm import RMSNorm  # noqa: E402
from dynaspec.models.loader import load_model  # noqa: E402
from tests.test_model_parity import PagedHarness  # noqa: E402
from tests.tiny_models import make_tiny_checkpoint  # noqa: E402
from tests.small_step_gemm_cases import check_interpreted, greedy, run_case  # noqa: E402
from tests.triton_interpreter import run_interpreted  # noqa: E402

hopper = pytest.mark.skipif(not (torch.cuda.is_available() and supports_dependent_launch(torch.device("cuda"))),
                            reason="needs a Hopper or newer GPU (programmatic dependent launch)")

# (N, K, bias, rows): Llama-like shapes scaled down, including N % BLOCK_N != 0 and K % BLOCK_K != 0, and
# the several token rows of a small verify step (1 + k drafts at batch 1) up to gemv.MAX_ROWS.
INTERPRETER_CASES = [
    {"shape": [64, 512], "bias": False, "seed": 0, "rows": 1},
    {"shape": [37, 700], "bias": True, "seed": 1, "rows": 1},
    {"shape": [16, 1536], "bias": False, "seed": 2, "rows": 1},
    {"shape": [5, 96], "bias": True, "seed": 3, "rows": 1},
    {"shape": [64, 512], "bias": True, "seed": 5, "rows": 2},
    {"shape": [37, 700], "bias": False, "seed": 6, "rows": 5},
    {"shape": [16, 1536], "bias": True, "seed": 7, "rows": 8},
]


@pytest.fixture(scope="module")
def interpreter_results():
    return run_interpreted("tests.small_step_gemm_cases", "interpreter_main", INTERPRETER_CASES)


@pytest.mark.parametrize("index", range(len(INTERPRETER_CASES)))
def test_interpreter_gemv_matches_float64_reference(interpreter_results, index):
    check_interpreted(interpreter_results[index], INTERPRETER_CASES[index])


def test_gemv_rejects_unsupported_inputs():
    w = torch.randn(8, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="gemv needs"):
        gemv.gemv(torch.randn(gemv.MAX_ROWS + 1, 16, dtype=torch.float16), w)  # more rows than one launch takes
    with pytest.raises(ValueError, match="gemv needs"):
        gemv.gemv(torch.randn(1, 16), w.float())  # float32
    with pytest.raises(ValueError, match="gemv needs"):
        gemv.gemv(torch.randn(1, 12, dtype=torch.float16), w)  # K mismatch
    with pytest.raises(ValueError, match="gemv needs"):
        gemv.gemv(torch.randn(1, 16, dtype=torch.float16), w, torch.randn(9, dtype=torch.float16))


def test_block_shape_covers_every_llama_projection():
    for n, k in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (5, 96)):
        block_n, block_k = gemv.block_shape(n, k)
        assert block_n & (block_n - 1) == 0 and block_k & (block_k - 1) == 0
        assert block_k <= max(16, 2 * k)


def test_decode_kernels_validate_their_fields():
    with pytest.raises(ValueError, match="unknown GEMV projection"):
        DecodeKernels(dependent_launch=True, gemv=frozenset({"lm_head"}))
    with pytest.raises(ValueError, match="only used with dependent_launch"):
        DecodeKernels(gemv=frozenset({"qkv"}))
    assert decode_kernels_for(torch.device("cpu"), True) == DecodeKernels()  # no PDL on a CPU
    assert decode_kernels_for(torch.device("cpu"), False) == DecodeKernels()


def test_set_decode_kernels_reaches_every_module(tmp_path):
    model = load_model(str(make_tiny_checkpoint(tmp_path, "llama")), dtype=torch.float32, device="cpu").model
    kernels = DecodeKernels(dependent_launch=True, gemv=frozenset(GEMV_PROJECTIONS))
    model.set_decode_kernels(kernels)
    users = [m for m in model.modules() if isinstance(m, (RMSNorm, FusedProjections))]
    assert users and all(m.decode_kernels is kernels for m in users)
    assert model.decode_kernels is kernels
    with pytest.raises(TypeError, match="DecodeKernels"):
        model.set_decode_kernels({"dependent_launch": True})


def test_engine_on_cpu_leaves_the_fast_paths_off(tmp_path):
    engine = LLMEngine(EngineConfig(model=str(make_tiny_checkpoint(tmp_path, "llama")), device="cpu"))
    assert engine.loaded.model.decode_kernels == DecodeKernels()


# --- CUDA ---------------------------------------------------------------------------------------------


@hopper
@pytest.mark.cuda
@pytest.mark.parametrize("rows", [1, 5, 8])
@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
def test_gemv_bf16_llama_shapes_with_pdl(shape, rows):
    case = {"shape": list(shape), "bias": shape[0] == 6144, "seed": 4, "rows": rows}
    result = run_case(case, "cuda", torch.bfloat16, pdl=True)
    assert result["shape_ok"] and not result["nan"] and result["row_invariant"], result
    assert result["diff"] <= 1e-2 * max(result["scale"], 1.0), result


@hopper
@pytest.mark.cuda
def test_fast_decode_paths_graph_equals_eager_and_match_the_paths_off(tmp_path):
    """bf16 tiny model, one request at a time (the batch-1 GEMV path): graph replay equals eager token for
    token with PDL + GEMV on; and one batch-1 decode step's logits with the paths on vs off agree to bf16
    rounding (the GEMV sums in another order than cuBLAS, so tokens may differ at near-ties)."""
    path = str(make_tiny_checkpoint(tmp_path, "llama", seed=0))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (6 + 5 * i,), generator=gen).tolist() for i in range(3)]
    common = dict(model=path, dtype="bfloat16", device="cuda", max_num_seqs=1)
    graphed_engine = LLMEngine(EngineConfig(**common))
    assert graphed_engine.loaded.model.decode_kernels.dependent_launch
    graphed = greedy(graphed_engine, prompts)
    eager = greedy(LLMEngine(EngineConfig(enforce_eager=True, **common)), prompts)
    assert graphed == eager

    model = graphed_engine.loaded.model
    prompt = prompts[-1]

    def decode_logits() -> torch.Tensor:
        harness = PagedHarness(model, device="cuda", dtype=torch.bfloat16)
        harness.step([("s", prompt, 0)])  # prefill (many rows: cuBLAS either way)
        return harness.step([("s", [prompt[-1]], len(prompt))])[0]  # one row: the GEMV path when on

    on = decode_logits()
    model.set_decode_kernels(DecodeKernels())
    off = decode_logits()
    assert (on - off).abs().max().item() <= 0.05 * off.abs().max().item()
