"""Triton paged attention for prefill chunks (query lengths of any size), e.g. the chunks of a mixed step.

FlashAttention's tiled online softmax (Dao et al. 2022, arXiv 2205.14135) over a paged KV cache read through
the block table (PagedAttention, Kwon et al. 2023, arXiv 2309.06180), as vLLM's Triton prefix-prefill and
unified attention kernels do. Without it a chunk went through `attention.reference_paged_attention`: a dozen
torch kernels per layer (gather every block, pad, mask, SDPA, scatter back), each an eager launch.

One program handles (sequence b, KV head h, query block j). Its query tile stacks the G = H / Hkv query heads
sharing KV head h times BLOCK_Q consecutive new tokens of sequence b: tile row r = g * BLOCK_Q + i is query
head h * G + g at new token j * BLOCK_Q + i (absolute position seq_lens[b] - q_len + that), with BLOCK_Q * G
rows padded to a power of two >= 16 (tl.dot's minimum). The program walks the KV tiles from the window's
first visible key (0 without a window) up to its last row's position, so a causal chunk reads about half
of what a full pass would; the running max / sum are float32. Programs past a sequence's query length exit.

The grid depends on the step's longest query (a Python int from the host): eager steps only (the engine's
mixed and prefill steps); decode / verify rows of a captured graph use triton_attention.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynaspec.models.triton_attention import SUPPORTED_DTYPES, attend_kv_tile

_TILE_ROWS = 64  # query-tile rows (tokens x grouped heads) per program
_MIN_ROWS = 16  # smallest M of tl.dot


@triton.jit(do_not_specialize=["stride_bt", "sliding_window"])
def _prefill_attention_kernel(
    q_ptr, kv_ptr, out_ptr,
    query_start_loc_ptr, seq_lens_ptr, block_tables_ptr,
    scale_log2e,
    stride_qt, stride_qh,
    stride_kv, stride_kb, stride_ks, stride_kh,
    stride_ot, stride_oh,
    stride_bt, stride_bt_blk,
    sliding_window,
    GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_WINDOW: tl.constexpr, IEEE: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    first = tl.program_id(2) * BLOCK_Q  # the block's first new token
    q_start = tl.load(query_start_loc_ptr + b).to(tl.int32)
    q_len = tl.load(query_start_loc_ptr + b + 1).to(tl.int32) - q_start
    if first < q_len:
        seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
        ctx_len = seq_len - q_len  # position of new token 0

        rows = tl.arange(0, ROWS)
        g = rows // BLOCK_Q
        t = first + rows % BLOCK_Q  # (ROWS,) new-token index of each row
        row_valid = (g < GROUP) & (t < q_len)
        row_pos = ctx_len + t  # (ROWS,) absolute position of each query row
        head = kvh * GROUP + g
        d = tl.arange(0, BLOCK_D)
        d_valid = d < HEAD_DIM

        q_offs = (q_start + t).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
        q = tl.load(q_ptr + q_offs, mask=row_valid[:, None] & d_valid[None, :], other=0.0)  # (ROWS, BLOCK_D)

        # Keys this block needs: [lo, hi) with hi one past its last row's position.
        hi = tl.minimum(ctx_len + tl.minimum(first + BLOCK_Q, q_len), seq_len)
        lo = 0
        if USE_WINDOW:
            lo = tl.maximum(ctx_len + first - sliding_window + 1, 0)
        m_i = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((ROWS,), dtype=tl.float32)
        acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
        bt_row = block_tables_ptr + b.to(tl.int64) * stride_bt
        head_off = kvh.to(tl.int64) * stride_kh

        for start in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
            m_i, l_i, acc = attend_kv_tile(
                q, m_i, l_i, acc, kv_ptr, bt_row, head_off, start, hi, row_pos, sliding_window, scale_log2e, d,
                d_valid, stride_kv, stride_kb, stride_ks, stride_bt_blk, BLOCK_SIZE, BLOCK_N, USE_WINDOW, IEEE,
            )

        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_offs = (q_start + t).to(tl.int64)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_valid[None, :])


def supports(q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Whether `triton_prefill_attention` handles these inputs (common dtypes and head sizes)."""
    head_dim = q.shape[-1]
    return (
        q.dtype in SUPPORTED_DTYPES
        and kv_cache.dtype in SUPPORTED_DTYPES
        and 16 <= head_dim <= 256
        and q.stride(-1) == 1
        and kv_cache.stride(-1) == 1
    )


def triton_prefill_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Causal attention of q (T, H, D) over the paged context in kv_cache (2, NB, BS, Hkv, D) -> (T, H, D).

    query_start_loc (B+1,), seq_lens (B,), block_tables (B, max_blocks): as in AttentionMetadata (the new
    tokens' K/V must already be in the cache). max_query_len: the longest q_len (sets the grid).
    block_n: keys per inner-loop tile (a power of two >= 16).
    """
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_head_dim = kv_cache.shape
    num_seqs = seq_lens.shape[0]
    if cache_head_dim != head_dim or num_heads % num_kv_heads != 0:
        raise ValueError(
            f"q (T, H={num_heads}, D={head_dim}) does not fit kv_cache (Hkv={num_kv_heads}, D={cache_head_dim})"
        )
    if not supports(q, kv_cache):
        raise ValueError(
            f"unsupported input: head_dim {head_dim} (16..256), dtypes {q.dtype}/{kv_cache.dtype} (fp16, bf16, "
            f"fp32), last dim contiguous"
        )
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16; got {block_n}")
    out = torch.empty_like(q)  # (T, H, D)
    if num_tokens == 0 or num_seqs == 0 or max_query_len == 0:
        return out
    group = num_heads // num_kv_heads
    block_q = max(1, _TILE_ROWS // group)
    rows = max(_MIN_ROWS, triton.next_power_of_2(group * block_q))
    _prefill_attention_kernel[(num_seqs, num_kv_heads, triton.cdiv(max_query_len, block_q))](
        q, kv_cache, out,
        query_start_loc, seq_lens, block_tables,
        scale * 1.4426950408889634,
        q.stride(0), q.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        out.stride(0), out.stride(1),
        block_tables.stride(0), block_tables.stride(1),
        sliding_window if sliding_window is not None else 0,
        GROUP=group, BLOCK_Q=block_q, ROWS=rows, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_N=block_n, USE_WINDOW=sliding_window is not None, IEEE=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
