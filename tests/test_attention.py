"""paged_attention against a naive dense causal attention on random tensors.

Mixed batches (prefill, chunked prefill, decode, verify) over shuffled, non-contiguous blocks of a
NaN-filled cache, so reading any slot that was never written would show up as NaN.
"""

from __future__ import annotations

import pytest
import torch

from dynaspec.models.attention import KERNEL_KEY_TILE, paged_attention, warmup_block_tables
from dynaspec.models.attention_metadata import AttentionMetadata

# (query_len, seq_len): full prefill, decode, verify (1 + k), chunked prefill, short prefill.
MIXED = [(7, 7), (1, 9), (5, 13), (3, 10), (2, 2)]
# As the engine lays out a mixed step: decodes / verifies first, then prefill chunks longer than 8 tokens
# (on CUDA the decodes go through the Triton kernel, the chunks through the reference path).
DECODES_THEN_PREFILLS = [(1, 9), (5, 13), (1, 30), (20, 20), (12, 30), (2, 2)]


def dense_causal_attention(q, k, v, scale, sliding_window=None):
    """Naive float64 reference: q (S, H, D) over k, v (S, Hkv, D) of one whole sequence -> (S, H, D)."""
    seq_len, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q.double(), k) * scale
    pos = torch.arange(seq_len)
    allowed = pos[None, :] <= pos[:, None]
    if sliding_window is not None:
        allowed &= pos[None, :] > pos[:, None] - sliding_window
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hts,shd->thd", probs, v)


def run_case(seqs, num_heads, num_kv_heads, head_dim=16, block_size=4, sliding_window=None, device="cpu",
             dtype=torch.float32, seed=0):
    """Build a paged batch for `seqs` [(q_len, seq_len)], run paged_attention, return (out, ref, cache, k, v, meta)."""
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [-(-s // block_size) for _, s in seqs]
    num_blocks = sum(blocks_needed) + 3
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, offset = [], 0
    for n in blocks_needed:
        tables.append(perm[offset:offset + n])
        offset += n
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    full = [
        (torch.randn(s, num_heads, head_dim, generator=gen), torch.randn(s, num_kv_heads, head_dim, generator=gen),
         torch.randn(s, num_kv_heads, head_dim, generator=gen))
        for _, s in seqs
    ]
    # Context written by earlier steps.
    for (q_len, s_len), table, (_, k, v) in zip(seqs, tables, full):
        for pos in range(s_len - q_len):
            cache[0, table[pos // block_size], pos % block_size] = k[pos].to(dtype)
            cache[1, table[pos // block_size], pos % block_size] = v[pos].to(dtype)
    meta = AttentionMetadata.build([q for q, _ in seqs], [s for _, s in seqs], tables, block_size, device)
    q_new = torch.cat([q[s - ql:] for (ql, s), (q, _, _) in zip(seqs, full)]).to(device, dtype)  # (T, H, D)
    k_new = torch.cat([k[s - ql:] for (ql, s), (_, k, _) in zip(seqs, full)]).to(device, dtype)  # (T, Hkv, D)
    v_new = torch.cat([v[s - ql:] for (ql, s), (_, _, v) in zip(seqs, full)]).to(device, dtype)
    scale = head_dim**-0.5
    out = paged_attention(q_new, k_new, v_new, cache, meta, scale, sliding_window)
    ref = torch.cat([
        dense_causal_attention(q, k, v, scale, sliding_window)[s - ql:]
        for (ql, s), (q, k, v) in zip(seqs, full)
    ])
    return out, ref, cache, k_new, v_new, meta


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("sliding_window", [None, 3])
def test_mixed_batch_matches_dense(num_heads, num_kv_heads, sliding_window):
    out, ref, *_ = run_case(MIXED, num_heads, num_kv_heads, sliding_window=sliding_window)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_new_kv_written_at_slot_mapping():
    _, _, cache, k_new, v_new, meta = run_case(MIXED, 4, 2)
    flat = cache.view(2, -1, 2, 16)
    torch.testing.assert_close(flat[0, meta.slot_mapping], k_new, atol=0, rtol=0)
    torch.testing.assert_close(flat[1, meta.slot_mapping], v_new, atol=0, rtol=0)


def test_decode_only_large_batch():
    seqs = [(1, s) for s in range(1, 40, 3)]
    out, ref, *_ = run_case(seqs, 8, 2, block_size=8)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_empty_batch_returns_empty():
    cache = torch.zeros(2, 4, 4, 2, 8)
    meta = AttentionMetadata.build([], [], [], 4, "cpu")
    out = paged_attention(torch.zeros(0, 4, 8), torch.zeros(0, 2, 8), torch.zeros(0, 2, 8), cache, meta, 1.0)
    assert out.shape == (0, 4, 8)


def test_bad_shapes_raise_value_error():
    cache = torch.zeros(2, 4, 4, 2, 8)
    meta = AttentionMetadata.build([2], [2], [[1]], 4, "cpu")
    q = torch.zeros(2, 4, 8)
    with pytest.raises(ValueError, match="k and v"):
        paged_attention(q, torch.zeros(2, 3, 8), torch.zeros(2, 3, 8), cache, meta, 1.0)
    with pytest.raises(ValueError, match="block size"):
        bad = AttentionMetadata.build([2], [2], [[1]], 2, "cpu")
        paged_attention(q, torch.zeros(2, 2, 8), torch.zeros(2, 2, 8), cache, bad, 1.0)
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(torch.zeros(2, 3, 8), torch.zeros(2, 2, 8), torch.zeros(2, 2, 8), cache, meta, 1.0)
    with pytest.raises(ValueError, match="sliding_window"):
        paged_attention(q, torch.zeros(2, 2, 8), torch.zeros(2, 2, 8), cache, meta, 1.0, sliding_window=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_batch_cuda_bf16():
    out, ref, *_ = run_case(MIXED, 8, 2, head_dim=64, device="cuda", dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double().cpu(), ref, atol=3e-2, rtol=3e-2)


def test_split_metadata_covers_the_same_rows():
    """AttentionMetadata.split(n): the first n sequences and the rest, each a batch of its own over the same
    cache; attention over the two parts, concatenated, is attention over the whole."""
    from dynaspec.models.attention import reference_paged_attention

    out, ref, cache, k_new, _, meta = run_case(DECODES_THEN_PREFILLS, 6, 2)
    head, tail = meta.split(3)
    assert (head.num_seqs, tail.num_seqs, head.num_tokens, tail.num_tokens) == (3, 3, 7, 34)
    assert tail.query_start_loc.tolist() == [0, 20, 32, 34] and tail.seq_lens_cpu == [20, 30, 2]
    q = torch.randn(meta.num_tokens, 6, 16, generator=torch.Generator().manual_seed(5))
    whole = reference_paged_attention(q, cache, meta, 0.25)
    parts = torch.cat([reference_paged_attention(q[:7], cache, head, 0.25),
                       reference_paged_attention(q[7:], cache, tail, 0.25)])
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_step_cuda_runs_decodes_through_the_kernel():
    out, ref, _, _, _, meta = run_case(DECODES_THEN_PREFILLS, 8, 2, head_dim=64, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(out.double().cpu(), ref, atol=3e-2, rtol=3e-2)
    head, tail = meta.derived["decode_prefix"]
    # both parts ran through Triton kernels (decode kernel, then prefill kernel): the reference path is the one
    # that fills a metadata's derived cache
    assert head.num_seqs == 3 and not head.derived and not tail.derived


@pytest.mark.parametrize("q_len,block_size", [(1, 16), (9, 16), (5, 4), (300, 4)])
def test_warmup_tables_cover_the_query_and_reach_a_kv_split(q_len, block_size):
    """The start-up forwards (ModelRunner / EagleHeadRunner.compile_eager_kernels) run each query length on
    a table just wide enough and on one at least two key tiles wide, where the decode kernel splits the KV
    (triton_attention.default_num_splits: at most width * block_size / key tile splits)."""
    tables = warmup_block_tables(q_len, block_size, scratch_block=7)
    assert all(set(t) == {7} for t in tables)
    assert len(tables[0]) * block_size >= q_len > (len(tables[0]) - 1) * block_size
    assert len(tables[-1]) * block_size >= 2 * KERNEL_KEY_TILE
