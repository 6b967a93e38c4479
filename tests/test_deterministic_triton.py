"""The batch-invariant Triton kernels of deterministic mode on the CPU, under Triton's interpreter (a
subprocess with TRITON_INTERPRET=1, tests/triton_interpreter.py; worker: tests/deterministic_triton_worker.py).

GEMM (models/batch_invariant.py): row i of x @ W^T + b has the same bits for M = 1 .. 33 and at any place
in the batch, with K slices whether they run in one program or split across programs, and with larger
output tiles from 17 rows on (TileConfig.large, the same block_k: numpy sums a k step's products in one
order whatever the tile; a shorter block_k sums them in another, which the GPU's MMAs may not). Attention (models/triton_invariant_attention.py): a query row has the same bits in a decode
step alone or among other sequences, as row j of a verify step (k = 1, 3, 6), in prefill chunks of 5, 16
or the whole sequence, and with the serial or the parallel split fold, on a NaN-poisoned paged cache with
several KV splits per sequence; and it is attention (against the SDPA reference). The interpreter runs
tl.dot through numpy, so this checks the kernels' structure (fixed tiles, fixed orders, exact no-op
masking); the GPU's MMA numerics are checked by tests/test_deterministic_cuda.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from tests.triton_interpreter import run_interpreted  # noqa: E402

CASES = [
    dict(kind="gemm", n=40, k=56, ms=[1, 2, 15, 17, 33], dtype="float32", seed=0),
    dict(kind="gemm", n=24, k=40, ms=[1, 16, 19], dtype="float16", seed=1),
    # K = 72 in 3 slices of 32, 32, 8 (whole 16-wide k steps), in one program or split across programs
    dict(kind="gemm", n=40, k=72, ms=[1, 5, 17, 33], dtype="float32", seed=4, slices=3),
    dict(kind="gemm", n=24, k=40, ms=[1, 16, 19], dtype="float16", seed=5, slices=2),
    dict(kind="gemm", n=40, k=64, ms=[1, 5, 17, 33], dtype="float16", seed=6, slices=2,
         large={"min_m": 17, "block_m": 32, "block_n": 32, "num_stages": 1}),
    dict(kind="attention", heads=6, kv_heads=2, head_dim=32, lengths=[70, 20, 45], window=None,
         positions=[0, 31, 33, 69], dtype="float32", seed=2),
    dict(kind="attention", heads=4, kv_heads=4, head_dim=16, lengths=[50, 9], window=5,
         positions=[3, 40, 49], dtype="float32", seed=3),
]


@pytest.fixture(scope="module")
def results():
    return run_interpreted("tests.deterministic_triton_worker", "worker", CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c['kind']}-{c['dtype']}-{i}" for i, c in enumerate(CASES)])
def test_rows_are_bit_identical_in_every_layout(results, index):
    case, result = CASES[index], results[index]
    assert result["differing_rows"] == 0, (case, result)
    if case["kind"] == "attention":
        assert result["compared_rows"] >= 20 and result["finite"] and result["padding_ok"], result
    assert result["rel_err"] < (1e-5 if case["dtype"] == "float32" else 2e-3), (case, result)
