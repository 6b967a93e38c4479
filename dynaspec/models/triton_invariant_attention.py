"""Batch-invariant Triton paged attention (deterministic mode) for every step kind: decode, verify
(q_len 1 + k), ragged steps and prefill chunks of any length.

What makes a row's bits independent of the step (see invariant_attention.py for the contract):
- one query tile of ROWS = max(16, next_pow2(G * MIN_POSITIONS)) rows (tl.dot's minimum is 16) for every
  program, where G = H / Hkv query heads share KV head h: row r of a tile is query head r % G of token row
  t + r // G, so a tile holds P = ROWS // G consecutive token rows of ONE sequence (a verify step's 1 + k
  rows, or a prefill chunk's, share one read of their K/V instead of one read each); rows past the
  sequence's last query row, or past P * G, are zero queries whose results are never stored. A tile starts
  at the sequence's first query row and every P rows after it; the programs of the other rows have no
  rows and no keys, so they load and store nothing (the grid stays (T, Hkv, splits): Python ints,
  CUDA-graph safe). Every program runs the same `tl.dot` shapes, and an MMA computes each output element
  from its own row and column, so the other rows of a tile cannot change a row's bits;
- a fixed KV split SIZE (`SPLIT_TILES` tiles of `BLOCK_N` keys, boundaries at absolute positions): split
  s of any row covers keys [s * SPLIT, (s + 1) * SPLIT); inside a split, tiles in increasing order with
  the online softmax (Dao et al. 2022, arXiv 2205.14135); splits merged by log-sum-exp in increasing
  order (Flash-Decoding, Dao et al. 2023), always a left fold starting from the empty state;
- the fold runs either inside the program (serial: one program walks all of its tile's splits) or in
  `_merge_kernel` over partials written by one program per split (parallel: many programs for a small
  step, Flash-Decoding's reason to split). The two compute the same IEEE operations in the same order
  (both kernels are compiled without FMA contraction, `enable_fp_fusion=False`), so which one a step
  uses (a function of T * Hkv) cannot change a row;
- masked keys are zero-filled loads and -inf scores; a tile or split a row cannot see adds exact zeros
  (the state stays what it was: m unchanged and alpha = 1, or the empty state), so the keys a tile walks
  for its later rows leave its earlier rows' bits as they are alone.

CUDA-graph safe: the grid comes from Python ints (T, Hkv, and the split count of `max_seq_len`, which a
graph's metadata sets to the block table's capacity); the lengths are read on the device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynaspec.models.pdl import launch_options, wait_for_previous_kernel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MIN_ROWS = 16  # smallest M of tl.dot
MIN_POSITIONS = 4  # token rows a query tile holds at least (GQA group permitting): verify steps of k <= 3 in one
BLOCK_N = 64  # keys per tile
SPLIT_TILES = 8  # tiles per KV split: 512 keys
PARALLEL_MAX_PROGRAMS = 256  # T * Hkv up to this: one program per split (partials + merge); above: serial


@triton.jit
def _attend_split(q, kv_ptr, bt_row, head_off, stride_kv, stride_kb, stride_ks, stride_bt_blk, scale_log2e,
                  row_pos, lo, tile_lo, tile_hi, d, d_valid, last_pos, first_lo,
                  ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  USE_WINDOW: tl.constexpr, IEEE: tl.constexpr):
    """Online softmax of one split, tiles tile_lo .. tile_hi - 1 in order, from the empty state. row_pos,
    lo (ROWS,): each tile row's position and first visible key; last_pos / first_lo: their max / min (the
    keys loaded)."""
    m = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((ROWS,), dtype=tl.float32)
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    n_offs = tl.arange(0, BLOCK_N)
    for tile in range(tile_lo, tile_hi):
        pos = tile * BLOCK_N + n_offs  # (BLOCK_N,) absolute key positions
        loaded = pos <= last_pos  # keys some row of the tile sees
        visible = pos[None, :] <= row_pos[:, None]  # (ROWS, BLOCK_N)
        if USE_WINDOW:
            loaded = loaded & (pos >= first_lo)
            visible = visible & (pos[None, :] >= lo[:, None])
        block = tl.load(bt_row + (pos // BLOCK_SIZE) * stride_bt_blk, mask=loaded, other=0).to(tl.int64)
        tok = block * stride_kb + (pos % BLOCK_SIZE).to(tl.int64) * stride_ks + head_off  # (BLOCK_N,)
        kv_mask = loaded[:, None] & d_valid[None, :]
        k = tl.load(kv_ptr + tok[:, None] + d[None, :], mask=kv_mask, other=0.0).to(q.dtype)  # (BLOCK_N, BLOCK_D)
        v = tl.load(kv_ptr + stride_kv + tok[:, None] + d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(visible, s * scale_log2e, float("-inf"))  # (ROWS, BLOCK_N), log2 domain
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    return m, l, acc


@triton.jit
def _merge(m_tot, l_tot, acc_tot, m, l, acc):
    """Fold one split's (max, sum, acc) into the running totals (log-sum-exp merge)."""
    m_new = tl.maximum(m_tot, m)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    a_tot = tl.exp2(m_tot - m_safe)
    a_s = tl.exp2(m - m_safe)
    return m_new, l_tot * a_tot + l * a_s, acc_tot * a_tot[:, None] + acc * a_s[:, None]


@triton.jit
def _row_geometry(row_seq_ptr, query_start_loc_ptr, seq_lens_ptr, t, num_seqs, sliding_window,
                  USE_WINDOW: tl.constexpr):
    """(sequence, row position, first visible key, number of keys) of flat row t; 0 keys for a row
    outside every sequence (graph padding), whose output is then zeros."""
    b = tl.minimum(tl.load(row_seq_ptr + t), num_seqs - 1).to(tl.int32)
    q_start = tl.load(query_start_loc_ptr + b).to(tl.int32)
    q_end = tl.load(query_start_loc_ptr + b + 1).to(tl.int32)
    seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
    row_pos = seq_len - (q_end - q_start) + (t - q_start)
    n_keys = tl.where(t < q_end, tl.maximum(row_pos + 1, 0), 0)
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(row_pos - sliding_window + 1, 0)
    return b, row_pos, lo, n_keys


@triton.jit
def _invariant_attention_kernel(
    q_ptr, kv_ptr, out_ptr, part_o_ptr, part_ml_ptr,
    row_seq_ptr, query_start_loc_ptr, seq_lens_ptr, block_tables_ptr,
    scale_log2e, num_seqs, num_splits,
    stride_qt, stride_qh, stride_kv, stride_kb, stride_ks, stride_kh, stride_ot, stride_oh,
    stride_bt, stride_bt_blk, sliding_window,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_TILES: tl.constexpr, PARALLEL: tl.constexpr,
    USE_WINDOW: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    t = tl.program_id(0)
    kvh = tl.program_id(1)
    split_id = tl.program_id(2)
    num_kv_heads = tl.num_programs(1)
    POSITIONS: tl.constexpr = ROWS // GROUP  # token rows per tile
    wait_for_previous_kernel(PDL)
    # The tile of token rows t .. t + rows_here - 1 (one sequence), if row t starts one; a padding row
    # (outside every sequence) is a tile of itself with no keys (zeros out); any other row: no rows.
    b, row_pos0, lo0, _ = _row_geometry(row_seq_ptr, query_start_loc_ptr, seq_lens_ptr, t, num_seqs,
                                         sliding_window, USE_WINDOW)
    q_start = tl.load(query_start_loc_ptr + b).to(tl.int32)
    q_end = tl.load(query_start_loc_ptr + b + 1).to(tl.int32)
    in_seq = t < q_end
    starts = (t - q_start) % POSITIONS == 0
    rows_here = tl.where(in_seq, tl.where(starts, tl.minimum(q_end - t, POSITIONS), 0), 1)
    n_keys = tl.where(in_seq & starts, tl.maximum(row_pos0 + rows_here, 0), 0)  # keys of the tile's last row
    r = tl.arange(0, ROWS)
    p = r // GROUP  # (ROWS,) token row within the tile
    g = r % GROUP  # (ROWS,) query head within the KV head's group
    r_valid = p < rows_here
    row_t = t.to(tl.int64) + p
    row_pos = row_pos0 + p
    lo = row_pos * 0
    if USE_WINDOW:
        lo = tl.maximum(row_pos - sliding_window + 1, 0)
    head = kvh * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_valid = d < HEAD_DIM
    q_offs = row_t[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=r_valid[:, None] & d_valid[None, :], other=0.0)

    split_keys: tl.constexpr = SPLIT_TILES * BLOCK_N
    row_splits = tl.cdiv(n_keys, split_keys)
    if PARALLEL:
        s_begin = split_id
        s_end = tl.minimum(split_id + 1, row_splits)
    else:
        s_begin = 0
        s_end = row_splits
    bt_row = block_tables_ptr + b.to(tl.int64) * stride_bt
    head_off = kvh.to(tl.int64) * stride_kh
    m_tot = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
    l_tot = tl.zeros((ROWS,), dtype=tl.float32)
    acc_tot = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for s in range(s_begin, s_end):
        tile_lo = tl.maximum(s * split_keys, lo0) // BLOCK_N
        tile_hi = tl.cdiv(tl.minimum((s + 1) * split_keys, n_keys), BLOCK_N)
        m, l, acc = _attend_split(q, kv_ptr, bt_row, head_off, stride_kv, stride_kb, stride_ks, stride_bt_blk,
                                  scale_log2e, row_pos, lo, tile_lo, tile_hi, d, d_valid, n_keys - 1, lo0,
                                  ROWS, BLOCK_D, BLOCK_SIZE, BLOCK_N, USE_WINDOW, IEEE)
        m_tot, l_tot, acc_tot = _merge(m_tot, l_tot, acc_tot, m, l, acc)

    if PARALLEL:
        # Partials (T, Hkv, num_splits, GROUP_P, [BLOCK_D | 2]) fp32, per token row and query head; a split
        # past the tile stores the empty state.
        part = ((row_t * num_kv_heads + kvh) * num_splits + split_id) * GROUP_P + g
        tl.store(part_o_ptr + part[:, None] * BLOCK_D + d[None, :], acc_tot, mask=r_valid[:, None])
        tl.store(part_ml_ptr + part * 2, m_tot, mask=r_valid)
        tl.store(part_ml_ptr + part * 2 + 1, l_tot, mask=r_valid)
    else:
        out = acc_tot / tl.where(l_tot == 0.0, 1.0, l_tot)[:, None]
        o_offs = row_t[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty),
                 mask=r_valid[:, None] & d_valid[None, :])


@triton.jit
def _merge_kernel(
    out_ptr, part_o_ptr, part_ml_ptr, row_seq_ptr, query_start_loc_ptr, seq_lens_ptr,
    num_seqs, num_splits, stride_ot, stride_oh, sliding_window,
    GROUP: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT_TILES: tl.constexpr, USE_WINDOW: tl.constexpr, PDL: tl.constexpr,
):
    """Fold the row's splits 0, 1, ... in order (the serial kernel's fold, from memory) and normalise; ROWS
    here is max(16, next_pow2(GROUP)): the partials' slots per (row, KV head, split)."""
    t = tl.program_id(0)
    kvh = tl.program_id(1)
    num_kv_heads = tl.num_programs(1)
    wait_for_previous_kernel(PDL)
    b, row_pos, lo, n_keys = _row_geometry(row_seq_ptr, query_start_loc_ptr, seq_lens_ptr, t, num_seqs,
                                           sliding_window, USE_WINDOW)
    g = tl.arange(0, ROWS)
    g_valid = g < GROUP
    head = kvh * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_valid = d < HEAD_DIM
    split_keys: tl.constexpr = SPLIT_TILES * BLOCK_N
    m_tot = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
    l_tot = tl.zeros((ROWS,), dtype=tl.float32)
    acc_tot = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    base = (t.to(tl.int64) * num_kv_heads + kvh) * num_splits
    for s in range(0, tl.cdiv(n_keys, split_keys)):
        part = (base + s) * ROWS + g
        m = tl.load(part_ml_ptr + part * 2, mask=g_valid, other=float("-inf"))
        l = tl.load(part_ml_ptr + part * 2 + 1, mask=g_valid, other=0.0)
        acc = tl.load(part_o_ptr + part[:, None] * BLOCK_D + d[None, :], mask=g_valid[:, None], other=0.0)
        m_tot, l_tot, acc_tot = _merge(m_tot, l_tot, acc_tot, m, l, acc)
    out = acc_tot / tl.where(l_tot == 0.0, 1.0, l_tot)[:, None]
    o_offs = t.to(tl.int64) * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty),
             mask=g_valid[:, None] & d_valid[None, :])


def supports(q: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Whether `invariant_attention` handles these inputs."""
    return (q.dtype in SUPPORTED_DTYPES and kv_cache.dtype in SUPPORTED_DTYPES and 16 <= q.shape[-1] <= 256
            and q.stride(-1) == 1 and kv_cache.stride(-1) == 1)


def invariant_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
    block_tables: torch.Tensor, max_seq_len: int, scale: float, sliding_window: int | None = None,
    row_seq: torch.Tensor | None = None, parallel: bool | None = None, pdl: bool = False,
) -> torch.Tensor:
    """Causal attention of q (T, H, D) over kv_cache (2, NB, BS, Hkv, D) -> (T, H, D), each row batch-invariant.

    query_start_loc (B+1,), seq_lens (B,), block_tables (B, max_blocks) as in AttentionMetadata (new K/V
    already written); max_seq_len: an upper bound of every seq_len (a Python int: the grid); row_seq (T,):
    each row's sequence (None: computed here); parallel: one program per split (None: when T * Hkv <=
    PARALLEL_MAX_PROGRAMS) -- a choice of speed only, never of bits; pdl: programmatic dependent launch.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_head_dim = kv_cache.shape
    if cache_head_dim != head_dim or num_heads % num_kv_heads != 0 or not supports(q, kv_cache):
        raise ValueError(
            f"deterministic attention needs q (T, H, D) to fit kv_cache (Hkv | H, same D in 16..256), fp16 / "
            f"bf16 / fp32, last dim contiguous; got q {tuple(q.shape)} {q.dtype}, kv_cache "
            f"{tuple(kv_cache.shape)} {kv_cache.dtype}"
        )
    out = torch.empty_like(q)  # (T, H, D)
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    if row_seq is None:
        row_seq = torch.searchsorted(query_start_loc[1:].contiguous(),
                                     torch.arange(num_tokens, device=q.device), right=True)
    group = num_heads // num_kv_heads
    rows = max(_MIN_ROWS, triton.next_power_of_2(group * MIN_POSITIONS))  # the query tile (module docstring)
    group_p = max(_MIN_ROWS, triton.next_power_of_2(group))  # partial slots per (row, KV head, split)
    block_d = triton.next_power_of_2(head_dim)
    num_splits = max(1, triton.cdiv(max_seq_len, SPLIT_TILES * BLOCK_N))
    if parallel is None:
        parallel = num_tokens * num_kv_heads <= PARALLEL_MAX_PROGRAMS
    grid_splits = num_splits if parallel else 1
    if parallel:
        part_o = torch.empty((num_tokens, num_kv_heads, num_splits, group_p, block_d), dtype=torch.float32,
                             device=q.device)
        part_ml = torch.empty((num_tokens, num_kv_heads, num_splits, group_p, 2), dtype=torch.float32,
                              device=q.device)
    else:
        part_o = part_ml = out  # unused
    window = sliding_window if sliding_window is not None else 0
    common = dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=BLOCK_N,
                  SPLIT_TILES=SPLIT_TILES, USE_WINDOW=sliding_window is not None, PDL=pdl,
                  enable_fp_fusion=False, **launch_options(pdl))
    _invariant_attention_kernel[(num_tokens, num_kv_heads, grid_splits)](
        q, kv_cache, out, part_o, part_ml, row_seq, query_start_loc, seq_lens, block_tables,
        scale * 1.4426950408889634, num_seqs, num_splits,
        q.stride(0), q.stride(1), kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        out.stride(0), out.stride(1), block_tables.stride(0), block_tables.stride(1), window,
        GROUP_P=group_p, ROWS=rows, BLOCK_SIZE=block_size, PARALLEL=parallel, IEEE=q.dtype == torch.float32,
        **common,
    )
    if parallel:
        _merge_kernel[(num_tokens, num_kv_heads)](
            out, part_o, part_ml, row_seq, query_start_loc, seq_lens, num_seqs, num_splits,
            out.stride(0), out.stride(1), window, ROWS=group_p, **common,
        )
    return out
