"""Batch-invariant paged attention for deterministic mode: a query row's output depends on its own query,
its sequence's K/V and its position only, never on the step's batch, the row's query length (decode,
verify 1 + k, prefill chunk), the other rows or the CUDA graph bucket.

Both paths walk the keys in tiles of a FIXED size whose boundaries are absolute positions (tile j holds
keys j * tile .. (j + 1) * tile - 1 of every sequence), in increasing order, with FlashAttention's online
softmax (Dao et al. 2022, arXiv 2205.14135) in float32 per query row. A tile a row cannot see (past its
position, or before its sliding window) is an exact no-op: its scores are -inf, so the running max does
not move, the rescale factor is exp(0) = 1 and the added probabilities are exact zeros (masked K/V are
zeroed first: a never-written slot may hold NaN, and 0 * NaN is NaN). So the padding of the batch to its
longest sequence, or a tile loop that runs further than a row needs, cannot change that row's bits.

- CUDA: `triton_invariant_attention.py` (one program per (token row, KV head), a fixed KV split size
  merged in a fixed order).
- CPU: `tiled_attention` below in torch, vectorised over rows: scores as an elementwise product summed
  over head_dim, the probability-weighted values as a product summed over the tile, both innermost,
  contiguous reductions of a fixed length, which ATen's CPU reduction computes the same way for every
  output element whatever the tensor's other sizes (no GEMM: a BLAS would pick its blocking from the
  number of rows). tests/test_deterministic_cpu.py checks the bits.
"""

from __future__ import annotations

import torch

from dynaspec.models.attention_metadata import AttentionMetadata

CPU_KEY_TILE = 32


def invariant_paged_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    sliding_window: int | None = None, pdl: bool = False,
) -> torch.Tensor:
    """Causal attention of q (T, H, D) over the paged context already in kv_cache (2, NB, BS, Hkv, D)
    -> (T, H, D) in q's dtype, each row batch-invariant (module docstring); pdl: CUDA launch option."""
    if q.is_cuda:
        from dynaspec.models import triton_invariant_attention  # Triton is only needed on CUDA

        return triton_invariant_attention.invariant_attention(
            q, kv_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, meta.max_seq_len, scale,
            sliding_window, row_seq=_row_sequences(meta, q.shape[0], q.device), pdl=pdl,
        )
    return tiled_attention(q, kv_cache, meta, scale, sliding_window)


def _row_sequences(meta: AttentionMetadata, num_tokens: int, device: torch.device) -> torch.Tensor:
    """(T,) int64: the sequence of each flat row (rows past the last sequence: num_seqs, i.e. none), from
    device tensors only (CUDA-graph safe); computed once per forward (meta.derived)."""
    key = ("invariant_row_seq", num_tokens)
    if key not in meta.derived:
        rows = torch.arange(num_tokens, device=device)
        meta.derived[key] = torch.searchsorted(meta.query_start_loc[1:].contiguous(), rows, right=True)
    return meta.derived[key]


def tiled_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    sliding_window: int | None = None, tile: int = CPU_KEY_TILE,
) -> torch.Tensor:
    """The torch path (any device): fixed absolute key tiles, online softmax, fixed-length reductions."""
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    if num_tokens == 0 or meta.num_seqs == 0:
        return q.new_empty((num_tokens, num_heads, head_dim))
    group = num_heads // num_kv_heads
    seq_idx = _row_sequences(meta, num_tokens, q.device)  # (T,)
    query_lens = meta.query_start_loc[1:] - meta.query_start_loc[:-1]  # (B,)
    row_pos = (meta.seq_lens - query_lens)[seq_idx] + torch.arange(num_tokens, device=q.device) \
        - meta.query_start_loc[seq_idx]  # (T,) absolute position of each row
    tables = meta.block_tables[seq_idx]  # (T, max_blocks)
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)  # (2, NB*BS, Hkv, D)
    q_rows = q.float().view(num_tokens, num_kv_heads, group, 1, head_dim)  # (T, Hkv, G, 1, D)

    m = q.new_full((num_tokens, num_kv_heads, group), float("-inf"), dtype=torch.float32)  # running max
    l = torch.zeros_like(m)  # running sum of probabilities
    acc = q.new_zeros((num_tokens, num_kv_heads, group, head_dim), dtype=torch.float32)
    offsets = torch.arange(tile, device=q.device)
    for first in range(0, meta.max_seq_len, tile):
        pos = first + offsets  # (tile,) absolute key positions
        visible = pos[None, :] <= row_pos[:, None]  # (T, tile)
        if sliding_window is not None:
            visible &= pos[None, :] > row_pos[:, None] - sliding_window
        block_col = (pos // block_size).clamp(max=tables.shape[1] - 1)
        slots = torch.where(visible, tables[:, block_col] * block_size + pos % block_size, 0).reshape(-1)
        keep = visible[:, :, None, None]
        keys = torch.where(keep, flat[0].index_select(0, slots).view(num_tokens, tile, num_kv_heads, head_dim)
                           .float(), 0.0)  # (T, tile, Hkv, D)
        values = torch.where(keep, flat[1].index_select(0, slots).view(num_tokens, tile, num_kv_heads, head_dim)
                             .float(), 0.0)
        # scores (T, Hkv, G, tile): products summed over D, innermost.
        scores = (q_rows * keys.permute(0, 2, 1, 3)[:, :, None]).sum(-1) * scale
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        m_new = torch.maximum(m, scores.amax(-1))
        m_safe = torch.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        alpha = torch.exp(m - m_safe)
        probs = torch.exp(scores - m_safe[..., None])  # (T, Hkv, G, tile)
        l = l * alpha + probs.sum(-1)
        # probability-weighted values (T, Hkv, G, D): products summed over the tile, innermost.
        weighted = (probs[:, :, :, None, :] * values.permute(0, 2, 3, 1)[:, :, None]).sum(-1)
        acc = acc * alpha[..., None] + weighted
        m = m_new
    out = acc / torch.where(l == 0.0, 1.0, l)[..., None]
    return out.reshape(num_tokens, num_heads, head_dim).to(q.dtype)
