"""Triton paged attention for decode and speculative-verify steps (q_len = 1 + k, small).

Flash-decoding over a paged KV cache: FlashAttention's online softmax (Dao et al. 2022,
arXiv 2205.14135), the KV length split across programs with a log-sum-exp reduction (Flash-Decoding,
Dao et al. 2023, https://pytorch.org/blog/flash-decoding/), reading K/V straight from the paged
cache through the block table (PagedAttention, Kwon et al. 2023, arXiv 2309.06180). The GQA handling
(all query heads of one KV head, and all new tokens of the sequence, as one query tile so each K/V
tile is read once) follows vLLM's Triton unified attention.

One program handles (sequence b, KV head h, KV split s). Its query tile stacks the G = H / Hkv query
heads sharing KV head h times the q_len <= QMAX new tokens of sequence b: tile row r = g * QMAX + i is
query head h * G + g at new-token i, absolute position seq_lens[b] - q_len + i; padded to at least 16
rows (tl.dot's minimum). The program walks its share of the sequence's KV tiles (causal and sliding-
window bounds computed on the device), keeps the running max / sum in fp32, and either writes the
normalised output (one split) or a partial (output, max, sum) that `_reduce_splits_kernel` combines.

CUDA-graph safe: no host synchronisation; the launch grid depends on B, Hkv and Python ints only; the
per-sequence lengths are read on the device.

Few compiled variants: the split count is the launch grid's third dimension (read in the kernel, not a
compile-time constant), and the block table's row stride and the window are not specialised on, so a
kernel is compiled per (QMAX, head shape, dtype, PDL) only. An eager step (a drafter's catch-up, a mixed
step) meets other batch sizes and block-table widths than the captured graphs; each new split count used to
compile a kernel mid-run (80-816 ms steps in the real-Qwen EAGLE bench of 2026-12-05). QMAX stays the exact
max_query_len: rounding it up to a power of two would double the query tile of some GQA groups (6 x 5 rows
-> 64 instead of 32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynaspec.models.pdl import launch_options, wait_for_previous_kernel

# Smallest M of tl.dot.
_MIN_ROWS = 16
# Programs the split heuristic aims for, per multiprocessor.
_PROGRAMS_PER_SM = 2
_MAX_SPLITS = 64
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_QUERY_LEN = 8


@triton.jit
def attend_kv_tile(
    q, m_i, l_i, acc, kv_ptr, bt_row, head_off, start, key_end, row_pos, sliding_window, scale_log2e, d, d_valid,
    stride_kv, stride_kb, stride_ks, stride_bt_blk,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, USE_WINDOW: tl.constexpr, IEEE: tl.constexpr,
):
    """Fold the BLOCK_N keys at positions start.. (those >= key_end masked) of one KV head into the online
    softmax state (m_i, l_i, acc) of a query tile q (ROWS, BLOCK_D) whose rows sit at row_pos (ROWS,):
    causal, with an optional sliding window. K/V are read through the sequence's block-table row `bt_row`
    (shared by the decode kernel here and triton_prefill_attention.py). Returns the new (m_i, l_i, acc)."""
    pos = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key positions
    key_valid = pos < key_end
    block = tl.load(bt_row + (pos // BLOCK_SIZE) * stride_bt_blk, mask=key_valid, other=0).to(tl.int64)
    tok_off = block * stride_kb + (pos % BLOCK_SIZE).to(tl.int64) * stride_ks + head_off  # (BLOCK_N,)
    kv_mask = key_valid[:, None] & d_valid[None, :]
    # Slots past key_end may hold garbage (NaN): masked loads give 0 there.
    k = tl.load(kv_ptr + tok_off[:, None] + d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    v = tl.load(kv_ptr + stride_kv + tok_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    k = k.to(q.dtype)
    v = v.to(q.dtype)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * scale_log2e  # (ROWS, BLOCK_N), log2 domain
    allowed = key_valid[None, :] & (pos[None, :] <= row_pos[:, None])
    if USE_WINDOW:
        allowed = allowed & (pos[None, :] > row_pos[:, None] - sliding_window)
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["stride_bt", "sliding_window"])
def _paged_attention_kernel(
    q_ptr, kv_ptr, out_ptr, part_o_ptr, part_ml_ptr,
    query_start_loc_ptr, seq_lens_ptr, block_tables_ptr,
    scale_log2e,
    stride_qt, stride_qh,
    stride_kv, stride_kb, stride_ks, stride_kh,
    stride_ot, stride_oh,
    stride_bt, stride_bt_blk,
    sliding_window,
    GROUP: tl.constexpr, QMAX: tl.constexpr, ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_WINDOW: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    num_kv_heads = tl.num_programs(1)
    num_splits = tl.num_programs(2)
    wait_for_previous_kernel(PDL)

    q_start = tl.load(query_start_loc_ptr + b).to(tl.int32)
    q_len = tl.load(query_start_loc_ptr + b + 1).to(tl.int32) - q_start
    seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
    ctx_len = seq_len - q_len  # position of new token 0

    rows = tl.arange(0, ROWS)
    g = rows // QMAX
    i = rows % QMAX
    row_valid = (g < GROUP) & (i < q_len)
    row_pos = ctx_len + i  # (ROWS,) absolute position of each query row
    head = kvh * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_valid = d < HEAD_DIM

    q_offs = (q_start + i).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_valid[:, None] & d_valid[None, :], other=0.0)  # (ROWS, BLOCK_D)

    # KV range this sequence needs: [lo, seq_len); the sliding window drops keys before the first row's.
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(ctx_len - sliding_window + 1, 0)
    lo_tile = lo // BLOCK_N
    num_tiles = tl.cdiv(seq_len, BLOCK_N) - lo_tile
    tiles_per_split = tl.cdiv(num_tiles, num_splits)
    tile_begin = lo_tile + split * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, lo_tile + num_tiles)

    m_i = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((ROWS,), dtype=tl.float32)
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    bt_row = block_tables_ptr + b.to(tl.int64) * stride_bt
    head_off = kvh.to(tl.int64) * stride_kh

    for tile in range(tile_begin, tile_end):
        m_i, l_i, acc = attend_kv_tile(
            q, m_i, l_i, acc, kv_ptr, bt_row, head_off, tile * BLOCK_N, seq_len, row_pos, sliding_window, scale_log2e,
            d, d_valid, stride_kv, stride_kb, stride_ks, stride_bt_blk, BLOCK_SIZE, BLOCK_N, USE_WINDOW, IEEE,
        )

    if num_splits == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_offs = (q_start + i).to(tl.int64)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_valid[None, :])
    else:
        # Partials laid out (B, Hkv, num_splits, ROWS, [BLOCK_D | 2]) contiguously, fp32.
        part = ((b.to(tl.int64) * num_kv_heads + kvh) * num_splits + split) * ROWS
        tl.store(part_o_ptr + (part + rows)[:, None] * BLOCK_D + d[None, :], acc)
        tl.store(part_ml_ptr + (part + rows) * 2, m_i)
        tl.store(part_ml_ptr + (part + rows) * 2 + 1, l_i)


@triton.jit(do_not_specialize=["num_splits"])
def _reduce_splits_kernel(
    out_ptr, part_o_ptr, part_ml_ptr, query_start_loc_ptr,
    stride_ot, stride_oh, num_splits,
    GROUP: tl.constexpr, QMAX: tl.constexpr, ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):
    """Combine the num_splits partial (acc, max, sum) of one (sequence, KV head) into the output."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    num_kv_heads = tl.num_programs(1)
    wait_for_previous_kernel(PDL)
    q_start = tl.load(query_start_loc_ptr + b).to(tl.int32)
    q_len = tl.load(query_start_loc_ptr + b + 1).to(tl.int32) - q_start

    rows = tl.arange(0, ROWS)
    g = rows // QMAX
    i = rows % QMAX
    row_valid = (g < GROUP) & (i < q_len)
    head = kvh * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_valid = d < HEAD_DIM

    m_tot = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
    l_tot = tl.zeros((ROWS,), dtype=tl.float32)
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    base = (b.to(tl.int64) * num_kv_heads + kvh) * num_splits * ROWS
    for split in range(num_splits):
        part = base + split * ROWS + rows
        m_s = tl.load(part_ml_ptr + part * 2)
        l_s = tl.load(part_ml_ptr + part * 2 + 1)
        o_s = tl.load(part_o_ptr + part[:, None] * BLOCK_D + d[None, :])
        m_new = tl.maximum(m_tot, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        a_tot = tl.exp2(m_tot - m_safe)
        a_s = tl.exp2(m_s - m_safe)
        l_tot = l_tot * a_tot + l_s * a_s
        acc = acc * a_tot[:, None] + o_s * a_s[:, None]
        m_tot = m_new

    out = acc / tl.where(l_tot == 0.0, 1.0, l_tot)[:, None]
    o_offs = (q_start + i).to(tl.int64)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_valid[None, :])


def supports(q: torch.Tensor, kv_cache: torch.Tensor, max_query_len: int) -> bool:
    """Whether `triton_paged_attention` handles these inputs (decode / verify shapes, common dtypes)."""
    head_dim = q.shape[-1]
    return (
        1 <= max_query_len <= MAX_QUERY_LEN
        and q.dtype in SUPPORTED_DTYPES
        and kv_cache.dtype in SUPPORTED_DTYPES
        and 16 <= head_dim <= 256
        and q.stride(-1) == 1
        and kv_cache.stride(-1) == 1
    )


def default_num_splits(num_seqs: int, num_kv_heads: int, max_blocks: int, block_size: int, block_n: int,
                       device: torch.device) -> int:
    """KV splits so that B * Hkv * splits fills the GPU; from Python ints only (CUDA-graph safe).

    Bounded by the tiles of the longest possible sequence (block_tables' width), so a split is never
    empty for a sequence that fills its block table.
    """
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = num_seqs * num_kv_heads
    max_tiles = max(1, -(-max_blocks * block_size // block_n))
    return max(1, min(-(-sms * _PROGRAMS_PER_SM // max(programs, 1)), max_tiles, _MAX_SPLITS))


def triton_paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    num_splits: int | None = None,
    block_n: int = 128,
    num_warps: int = 4,
    num_stages: int = 2,
    pdl: bool = False,
) -> torch.Tensor:
    """Causal attention of q (T, H, D) over the paged context in kv_cache (2, NB, BS, Hkv, D) -> (T, H, D).

    query_start_loc (B+1,), seq_lens (B,), block_tables (B, max_blocks): as in AttentionMetadata (the new
    tokens' K/V must already be in the cache). max_query_len: an upper bound of every q_len (compile-time,
    <= 8). num_splits: KV splits per (sequence, KV head); None picks one from B, Hkv and the SM count.
    block_n: keys per inner-loop tile (a power of two >= 16; 128 measured best on an H200 for D=128, see
    scripts/gpu_attention_check.py). pdl: launch both kernels with programmatic dependent launch (`pdl.py`).
    """
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_head_dim = kv_cache.shape
    num_seqs = seq_lens.shape[0]
    if cache_head_dim != head_dim or num_heads % num_kv_heads != 0:
        raise ValueError(
            f"q (T, H={num_heads}, D={head_dim}) does not fit kv_cache (Hkv={num_kv_heads}, D={cache_head_dim})"
        )
    if not supports(q, kv_cache, max_query_len):
        raise ValueError(
            f"unsupported input: max_query_len {max_query_len} (1..{MAX_QUERY_LEN}), head_dim {head_dim} (16..256), "
            f"dtypes {q.dtype}/{kv_cache.dtype} (fp16, bf16, fp32), last dim contiguous"
        )
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16; got {block_n}")
    out = torch.empty_like(q)  # (T, H, D)
    if num_tokens == 0 or num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    rows = max(_MIN_ROWS, triton.next_power_of_2(group * max_query_len))
    block_d = triton.next_power_of_2(head_dim)
    if num_splits is None:
        num_splits = default_num_splits(num_seqs, num_kv_heads, block_tables.shape[1], block_size, block_n, q.device)
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1; got {num_splits}")
    if num_splits > 1:
        part_o = torch.empty((num_seqs, num_kv_heads, num_splits, rows, block_d), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((num_seqs, num_kv_heads, num_splits, rows, 2), dtype=torch.float32, device=q.device)
    else:
        part_o = part_ml = out  # unused
    common = dict(GROUP=group, QMAX=max_query_len, ROWS=rows, HEAD_DIM=head_dim, BLOCK_D=block_d)
    _paged_attention_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, kv_cache, out, part_o, part_ml,
        query_start_loc, seq_lens, block_tables,
        scale * 1.4426950408889634,
        q.stride(0), q.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        out.stride(0), out.stride(1),
        block_tables.stride(0), block_tables.stride(1),
        sliding_window if sliding_window is not None else 0,
        BLOCK_SIZE=block_size, BLOCK_N=block_n,
        USE_WINDOW=sliding_window is not None, IEEE=q.dtype == torch.float32, PDL=pdl,
        num_warps=num_warps, num_stages=num_stages, **launch_options(pdl),
        **common,
    )
    if num_splits > 1:
        _reduce_splits_kernel[(num_seqs, num_kv_heads)](
            out, part_o, part_ml, query_start_loc, out.stride(0), out.stride(1), num_splits,
            PDL=pdl, num_warps=num_warps, **launch_options(pdl), **common,
        )
    return out
