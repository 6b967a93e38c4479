"""Triton paged attention for prefill chunks (models/triton_prefill_attention.py) against the reference path.

Cases as in test_triton_attention.py (NaN-poisoned cache, shuffled blocks, GQA groups that are not powers
of two), with query lengths of prefill chunks: a whole prompt, a chunk after earlier context, chunks longer
than one query block and shorter than one, and decode rows among them. CPU: Triton's interpreter in a
subprocess; CUDA: compiled kernels in fp32 and bf16, and a mixed step through `paged_attention`'s dispatch.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from dynaspec.models.attention import paged_attention, reference_paged_attention  # noqa: E402
from dynaspec.models.attention_metadata import AttentionMetadata  # noqa: E402
from dynaspec.models.triton_prefill_attention import triton_prefill_attention  # noqa: E402
from tests.test_triton_attention import assert_matches_reference, make_case, relative_error  # noqa: E402
from tests.triton_interpreter import patch_interpreter, run_interpreted  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (q_len, seq_len) per sequence: a decode row, a whole prompt, a chunk after 30 keys of context, a chunk
# shorter than one query block, a long chunk, a chunk ending exactly at a block boundary.
CHUNKS = [(1, 9), (37, 37), (20, 50), (5, 13), (64, 70), (16, 32)]


def run_one(case: dict, device: str) -> dict:
    dtype = getattr(torch, case["dtype"])
    seqs = [tuple(s) for s in case["seqs"]]
    q, cache, meta = make_case(seqs, case["heads"], case["kv_heads"], case["head_dim"], case["block_size"],
                               dtype, device, case["seed"])
    scale = case["head_dim"] ** -0.5
    out = triton_prefill_attention(q, cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                                   meta.max_query_len, scale, case["window"], block_n=case.get("block_n", 64))
    ref = reference_paged_attention(q.float(), cache.float(), meta, scale, case["window"])
    return {"finite": bool(torch.isfinite(out).all()), "shape_ok": out.shape == q.shape,
            "dtype_ok": out.dtype == q.dtype, "rel_err": relative_error(out, ref)}


INTERPRETER_CASES = [
    dict(heads=h, kv_heads=hkv, head_dim=d, block_size=4, dtype="float32", seqs=CHUNKS, window=w, block_n=16, seed=i)
    for i, (h, hkv, d, w) in enumerate([
        (6, 2, 32, None),  # G = 3: 21 tokens a query block, padded rows
        (6, 2, 32, 5),  # sliding window shorter than a key tile
        (4, 4, 16, 17),  # MHA: 64 tokens a block; a window across tiles
        (14, 2, 64, None),  # Qwen2.5-0.5B's grouping (G = 7: 9 tokens a block)
    ])
] + [  # fp16, not bf16: the interpreter's tl.dot is wrong on bf16 (test_triton_attention.py)
    dict(heads=4, kv_heads=1, head_dim=32, block_size=16, dtype="float16", seqs=[(40, 40), (3, 23)], window=None,
         block_n=16, seed=10),
]


def _interpreter_worker(cases_json: str) -> None:
    """Entry point of the subprocess (TRITON_INTERPRET=1 already set): run cases on CPU, print JSON."""
    patch_interpreter()
    print(json.dumps([run_one(case, "cpu") for case in json.loads(cases_json)]))


@pytest.fixture(scope="module")
def interpreter_results():
    return run_interpreted("tests.test_triton_prefill_attention", "_interpreter_worker", INTERPRETER_CASES)


@pytest.mark.parametrize("index", range(len(INTERPRETER_CASES)))
def test_interpreter_matches_reference(interpreter_results, index):
    assert_matches_reference(INTERPRETER_CASES[index], interpreter_results[index])


def test_rejects_unsupported_inputs():
    q, cache, meta = make_case([(3, 4)], 4, 2, 16, 4, torch.float32, "cpu", 0)
    args = (q, cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, 3, 0.25)
    with pytest.raises(ValueError, match="block_n"):
        triton_prefill_attention(*args, block_n=24)
    with pytest.raises(ValueError, match="head_dim"):
        triton_prefill_attention(q[..., :8].contiguous(), cache[..., :8].contiguous(), *args[2:])
    with pytest.raises(ValueError, match="does not fit"):
        triton_prefill_attention(q[:, :3], cache, *args[2:])


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(32, 8, 128), (12, 2, 128), (9, 3, 64)], ids=["llama-8b", "qwen-1.5b", "smollm2"])
@pytest.mark.parametrize("window", [None, 100])
def test_cuda_matches_reference(dtype, shape, window):
    heads, kv_heads, head_dim = shape
    seqs = [(1, 300), (128, 128), (128, 700), (37, 90), (512, 512)]
    result = run_one(dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim, block_size=16, dtype=dtype,
                          seqs=seqs, window=window, seed=1), "cuda")
    assert result["finite"] and result["shape_ok"] and result["dtype_ok"], result
    assert result["rel_err"] < (1e-5 if dtype == "float32" else 2e-2), result


@cuda
@pytest.mark.cuda
def test_mixed_step_dispatch_matches_reference():
    """A mixed step (63 decodes, then a 128-token chunk and a whole prompt) through paged_attention: the
    decode rows through the decode kernel, the chunks through the prefill kernel; against the reference."""
    seqs = [(1, 200 + i) for i in range(63)] + [(128, 400), (96, 96)]
    q, cache, meta = make_case(seqs, 32, 8, 128, 16, torch.bfloat16, "cuda", 3)
    k = v = torch.empty(q.shape[0], 8, 128, dtype=q.dtype, device="cuda")  # K/V already in the cache
    out = paged_attention(q, k, v, cache, meta, 128 ** -0.5, kv_written=True)
    ref = reference_paged_attention(q.float(), cache.float(), meta, 128 ** -0.5)
    assert relative_error(out, ref) < 2e-2 and bool(torch.isfinite(out).all())
    assert isinstance(meta, AttentionMetadata)
