"""Triton paged attention (decode / verify) against the reference path of models/attention.py.

Every case uses a NaN-poisoned cache (slots never written stay NaN, so reading one shows), shuffled
non-contiguous blocks, ragged sequence lengths, GQA groups that are not powers of two, and a
max_query_len larger than some sequences' q_len.

CPU: the kernels run under Triton's interpreter (TRITON_INTERPRET=1, a Triton debugging facility read
when `triton.jit` decorates a kernel), so those cases run in a subprocess that sets the variable before
importing Triton; this process and the CUDA tests keep compiled kernels. CUDA: compiled kernels against
the reference path in fp32 and bf16, through `paged_attention`'s dispatch, and under CUDA-graph replay.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from dynaspec.models.attention import paged_attention, reference_paged_attention  # noqa: E402
from dynaspec.models.attention_metadata import AttentionMetadata  # noqa: E402
from dynaspec.models.triton_attention import triton_paged_attention  # noqa: E402
from tests.triton_interpreter import patch_interpreter, run_interpreted  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (q_len, seq_len) per sequence: decode, verify 1+k, a sequence shorter than one block, one exactly
# filling its blocks, q_len == seq_len.
RAGGED = [(1, 9), (5, 13), (3, 3), (8, 20), (2, 16)]


def make_case(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype, device, seed):
    """Random paged batch: returns q (T, H, D), kv_cache (2, NB, BS, Hkv, D) NaN outside the context, meta."""
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [-(-s // block_size) for _, s in seqs]
    num_blocks = sum(blocks_needed) + 3
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, offset = [], 0
    for n in blocks_needed:
        tables.append(perm[offset:offset + n])
        offset += n
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    for (_, s_len), table in zip(seqs, tables):
        kv = torch.randn(2, s_len, num_kv_heads, head_dim, generator=gen)
        for pos in range(s_len):
            cache[:, table[pos // block_size], pos % block_size] = kv[:, pos].to(dtype)
    meta = AttentionMetadata.build([q for q, _ in seqs], [s for _, s in seqs], tables, block_size, device)
    q = torch.randn(meta.num_tokens, num_heads, head_dim, generator=gen).to(dtype)
    return q.to(device), cache.to(device), meta


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())


def run_one(case: dict, device: str) -> dict:
    """Run one case through the Triton kernel and the fp32 reference path; report errors."""
    dtype = getattr(torch, case["dtype"])
    seqs = [tuple(s) for s in case["seqs"]]
    q, cache, meta = make_case(seqs, case["heads"], case["kv_heads"], case["head_dim"], case["block_size"],
                               dtype, device, case["seed"])
    scale = case["head_dim"] ** -0.5
    tiling = {"block_n": case["block_n"]} if "block_n" in case else {}  # else the default
    out = triton_paged_attention(
        q, cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, case["max_query_len"], scale,
        case["window"], num_splits=case.get("splits"), **tiling,
    )
    ref = reference_paged_attention(q.float(), cache.float(), meta, scale, case["window"])
    return {"finite": bool(torch.isfinite(out).all()), "shape_ok": out.shape == q.shape,
            "dtype_ok": out.dtype == q.dtype, "rel_err": relative_error(out, ref)}


# Interpreter cases: small shapes, block_n 16 so the KV loop runs several tiles.
INTERPRETER_CASES = [
    dict(heads=h, kv_heads=hkv, head_dim=d, block_size=4, dtype="float32", seqs=RAGGED, max_query_len=8,
         window=w, splits=splits, block_n=16, seed=i)
    for i, (h, hkv, d, w, splits) in enumerate([
        (6, 2, 32, None, 1),   # G = 3: padded rows
        (6, 2, 32, None, 3),   # split-KV + reduction
        (6, 2, 32, 5, 1),      # sliding window
        (6, 2, 32, 5, 3),      # window + splits (some splits empty for some rows)
        (4, 4, 16, None, 2),   # MHA, smallest head_dim
        (9, 3, 64, None, 1),   # SmolLM2 grouping
    ])
] + [
    # fp16, not bf16: Triton 3.6's interpreter computes tl.dot on bf16 wrongly (numpy has no bf16), so
    # bf16 is checked on CUDA only.
    dict(heads=4, kv_heads=1, head_dim=32, block_size=16, dtype="float16", seqs=[(1, 40), (4, 23)],
         max_query_len=5, window=None, splits=2, block_n=16, seed=10),
]


def _interpreter_worker(cases_json: str) -> None:
    """Entry point of the subprocess (TRITON_INTERPRET=1 already set): run cases on CPU, print JSON."""
    patch_interpreter()
    print(json.dumps([run_one(case, "cpu") for case in json.loads(cases_json)]))


@pytest.fixture(scope="module")
def interpreter_results():
    return run_interpreted("tests.test_triton_attention", "_interpreter_worker", INTERPRETER_CASES)


def assert_matches_reference(case: dict, result: dict) -> None:
    """A run_one result: finite, q's shape and dtype, within the case dtype's tolerance of the reference."""
    assert result["finite"] and result["shape_ok"] and result["dtype_ok"], result
    tol = 1e-5 if case["dtype"] == "float32" else 1e-2
    assert result["rel_err"] < tol, (case, result)


@pytest.mark.parametrize("index", range(len(INTERPRETER_CASES)))
def test_interpreter_matches_reference(interpreter_results, index):
    assert_matches_reference(INTERPRETER_CASES[index], interpreter_results[index])


def test_rejects_unsupported_inputs():
    q, cache, meta = make_case([(1, 4)], 4, 2, 16, 4, torch.float32, "cpu", 0)
    args = (q, cache, meta.query_start_loc, meta.seq_lens, meta.block_tables)
    with pytest.raises(ValueError, match="max_query_len"):
        triton_paged_attention(*args, 9, 0.25)
    with pytest.raises(ValueError, match="block_n"):
        triton_paged_attention(*args, 1, 0.25, block_n=24)
    with pytest.raises(ValueError, match="dtypes"):
        triton_paged_attention(q.double(), cache.double(), *args[2:], 1, 0.25)
    with pytest.raises(ValueError, match="does not fit"):
        triton_paged_attention(q[:, :3], cache, *args[2:], 1, 0.25)


# --- CUDA -------------------------------------------------------------------------------------------

CUDA_SHAPES = [(32, 8, 128), (14, 2, 64), (9, 3, 64)]  # Llama-3.1-8B, Qwen2.5-0.5B, SmolLM2-135M


LLAMA, QWEN, SMOL = CUDA_SHAPES
CUDA_CASES = [  # (shape, dtype, max_query_len, sliding_window)
    (LLAMA, "bfloat16", 1, None), (LLAMA, "bfloat16", 5, None), (LLAMA, "float32", 8, None),
    (LLAMA, "float16", 3, 37), (QWEN, "bfloat16", 5, 37), (QWEN, "float32", 1, 37),
    (SMOL, "bfloat16", 8, None), (SMOL, "float32", 5, 37),
]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("shape,dtype,max_query_len,window", CUDA_CASES)
def test_cuda_matches_reference(shape, dtype, max_query_len, window):
    heads, kv_heads, head_dim = shape
    gen = torch.Generator().manual_seed(heads * 100 + max_query_len)
    seqs = []
    for _ in range(7):
        q_len = int(torch.randint(1, max_query_len + 1, (1,), generator=gen))
        seqs.append((q_len, q_len + int(torch.randint(0, 300, (1,), generator=gen))))
    for splits in (None, 5):
        case = dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim, block_size=16, dtype=dtype, seqs=seqs,
                    max_query_len=max_query_len, window=window, splits=splits, seed=len(seqs))
        result = run_one(case, "cuda")
        assert result["finite"] and result["shape_ok"] and result["dtype_ok"], result
        tol = 1e-5 if dtype == "float32" else 1e-2
        assert result["rel_err"] < tol, (case, result)


@pytest.mark.cuda
@cuda
def test_cuda_dispatch_uses_kernel_for_verify_and_reference_for_prefill():
    seqs = [(5, 40), (3, 17)]
    q, cache, meta = make_case(seqs, 8, 2, 64, 16, torch.bfloat16, "cuda", 1)
    k = torch.randn(meta.num_tokens, 2, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    scale = 64**-0.5
    out = paged_attention(q, k, v, cache, meta, scale)
    kernel = triton_paged_attention(q, cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, 5, scale)
    assert torch.equal(out, kernel)  # same kernel, same inputs: bit-identical
    assert "reference" not in str(list(meta.derived))  # the reference path never ran
    ref = reference_paged_attention(q.float(), cache.float(), meta, scale)
    assert relative_error(out, ref) < 1e-2


@pytest.mark.cuda
@cuda
def test_cuda_graph_replay_follows_new_lengths():
    """Captured once, replayed after the batch's lengths, tables and queries change in place."""
    heads, kv_heads, head_dim, block_size, max_q = 32, 8, 128, 16, 4
    first = [(4, 100), (2, 30), (1, 257)]
    second = [(3, 260), (3, 17), (1, 1)]
    max_blocks = 20
    q, cache, meta = make_case(first, heads, kv_heads, head_dim, block_size, torch.bfloat16, "cuda", 2)
    q2, cache2, meta2 = make_case(second, heads, kv_heads, head_dim, block_size, torch.bfloat16, "cuda", 3)
    num_blocks = max(cache.shape[1], cache2.shape[1])
    pool = torch.zeros((2, num_blocks, block_size, kv_heads, head_dim), dtype=torch.bfloat16, device="cuda")
    tables = torch.zeros((3, max_blocks), dtype=torch.int64, device="cuda")
    starts, lens = meta.query_start_loc.clone(), meta.seq_lens.clone()
    static_q = torch.zeros((meta.num_tokens, heads, head_dim), dtype=torch.bfloat16, device="cuda")
    assert meta.num_tokens == meta2.num_tokens  # same token count: same graph

    def load(q_src, cache_src, m):
        pool.zero_()
        pool[:, :cache_src.shape[1]] = cache_src
        tables.zero_()
        tables[:, :m.block_tables.shape[1]] = m.block_tables
        starts.copy_(m.query_start_loc)
        lens.copy_(m.seq_lens)
        static_q.copy_(q_src)

    def step():
        return triton_paged_attention(static_q, pool, starts, lens, tables, max_q, head_dim**-0.5)

    load(q, cache, meta)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    for q_src, cache_src, m in ((q, cache, meta), (q2, cache2, meta2)):
        load(q_src, cache_src, m)
        graph.replay()
        ref = reference_paged_attention(q_src.float(), cache_src.float(), m, head_dim**-0.5)
        assert relative_error(static_out, ref) < 1e-2
