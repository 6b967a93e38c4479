"""The one-pass greedy pick (models/greedy_pick.py) against torch: argmax (first index on ties), the id map,
and the softmax probability of the argmax. CPU: under Triton's interpreter in a subprocess
(tests/triton_interpreter.py); CUDA: the compiled kernel in bf16 at a draft vocabulary's width."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from dynaspec.models.greedy_pick import BLOCK, greedy_pick  # noqa: E402
from tests.triton_interpreter import patch_interpreter, run_interpreted  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run_case(case: dict, device: str) -> dict:
    """Random logits with a planted tie for the maximum in row 0 (at a column and in a later chunk); returns
    whether ids equal torch's, with and without an id map, and the probabilities' largest error."""
    dtype = getattr(torch, case["dtype"])
    gen = torch.Generator().manual_seed(case["seed"])
    rows, cols = case["shape"]
    logits = (torch.randn(rows, cols, generator=gen) * case["scale"]).to(dtype)
    top = logits[0].float().max() + 1
    logits[0, cols // 3] = top
    logits[0, cols - 1] = top  # the same value later: the first one wins
    logits = logits.to(device)
    id_map = torch.randperm(4 * cols, generator=gen)[:cols].sort().values.to(device)
    ids, probs = greedy_pick(logits)
    mapped, _ = greedy_pick(logits, id_map)
    ref_ids = logits.float().argmax(dim=-1)
    ref_probs = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
    return {
        "ids_equal": bool(torch.equal(ids, ref_ids)),
        "mapped_equal": bool(torch.equal(mapped, id_map[ref_ids])),
        "first_of_tie": int(ids[0]) == cols // 3,
        "prob_error": float(((probs - ref_probs).abs() / ref_probs).max()),
        "dtypes_ok": ids.dtype == torch.int64 and probs.dtype == torch.float32,
    }


INTERPRETER_CASES = [
    dict(shape=(3, 100), scale=3.0, dtype="float32", seed=0),  # one partial chunk
    dict(shape=(2, 2 * BLOCK + 5), scale=3.0, dtype="float32", seed=1),  # the maximum's chunk after others
    dict(shape=(2, BLOCK), scale=20.0, dtype="float16", seed=2),  # peaked: the rescaling matters
]
CUDA_CASES = [
    dict(shape=(1, 32000), scale=4.0, dtype="bfloat16", seed=3),  # an EAGLE head's draft vocabulary at batch 1
    dict(shape=(64, 32000), scale=4.0, dtype="bfloat16", seed=4),
    dict(shape=(4, 151936), scale=8.0, dtype="float32", seed=5),  # a Qwen2.5 target's lm_head width
]


def _interpreter_worker(cases_json: str) -> None:
    patch_interpreter()
    print(json.dumps([run_case(case, "cpu") for case in json.loads(cases_json)]))


@pytest.fixture(scope="module")
def interpreter_results():
    return run_interpreted("tests.test_greedy_pick", "_interpreter_worker", INTERPRETER_CASES)


def check(result: dict) -> None:
    assert result["ids_equal"] and result["mapped_equal"] and result["first_of_tie"], result
    assert result["dtypes_ok"], result
    assert result["prob_error"] <= 1e-5, result


@pytest.mark.parametrize("index", range(len(INTERPRETER_CASES)))
def test_interpreter_matches_torch(interpreter_results, index):
    check(interpreter_results[index])


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_matches_torch(case):
    check(run_case(case, "cuda"))


def test_rejects_unsupported_inputs():
    with pytest.raises(ValueError, match="greedy_pick needs logits"):
        greedy_pick(torch.randn(4))
    with pytest.raises(ValueError, match="greedy_pick needs logits"):
        greedy_pick(torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"id_map must be a contiguous \(8,\) table"):
        greedy_pick(torch.randn(3, 8), torch.arange(9))
