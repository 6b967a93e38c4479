"""Paged attention over a flat batch: KV write + causal attention against each sequence's paged context.

The KV cache of one layer is a tensor (2, num_blocks, block_size, num_kv_heads, head_dim): a pool of
fixed-size blocks, each sequence owning the blocks named by its row of `meta.block_tables`
(PagedAttention, Kwon et al. 2023, arXiv 2309.06180; the flat-batch layout follows vLLM / nano-vllm).
See `attention_metadata.py` for the layout of the flat batch.

One call serves every kind of step, mixed in one batch: prefill, chunked prefill (query_len < seq_len),
decode (query_len 1) and speculative verify (query_len 1 + k). Query row i of sequence b sits at absolute
position seq_lens[b] - query_lens[b] + i and attends keys 0 .. that position (and, with a sliding window
W, only keys at distance < W).

The reference path (`reference_paged_attention`) runs on any device with plain torch: it gathers each
sequence's blocks into a padded (B, S, Hkv, D) tensor, pads the queries to (B, Qmax, H, D), builds the
causal + length mask and calls `torch.nn.functional.scaled_dot_product_attention`, with no Python loop
over sequences. On CUDA, decode and verify steps (max query length <= 8) run the Triton kernel of
`triton_attention.py` instead, and prefill chunks that of `triton_prefill_attention.py` (a mixed step: the
leading decodes through the first, the chunks through the second; dispatch in `paged_attention`). The
reference path stays the CPU's and the tests' ground truth. Deterministic mode
(`deterministic=True`) takes the batch-invariant kernels of `invariant_attention.py` on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynaspec.models.attention_metadata import AttentionMetadata


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    kv_written: bool = False,
    pdl: bool = False,
    deterministic: bool = False,
) -> torch.Tensor:
    """Write the new K/V into the paged cache, then attend causally over each sequence's context.

    q: (T, H, D) queries of the new tokens (RoPE applied); k, v: (T, Hkv, D) their keys / values;
    kv_cache: (2, num_blocks, block_size, Hkv, D); scale: softmax scale (usually D ** -0.5);
    sliding_window: if set, a query at position p sees only keys at positions > p - sliding_window
    (HF Mistral / Qwen2 semantics); kv_written: the caller already stored k, v at meta.slot_mapping
    (fused_ops.rope_qk_ with kv_write); pdl: launch the CUDA decode kernels with programmatic dependent
    launch (`pdl.py`); deterministic: the batch-invariant kernels of `invariant_attention.py` on every
    device (EngineConfig.deterministic). Returns (T, H, D) in q's dtype.
    """
    _check_inputs(q, k, v, kv_cache, meta, sliding_window)
    if not kv_written:
        write_kv_cache(k, v, kv_cache, meta.slot_mapping)
    if deterministic:
        from dynaspec.models.invariant_attention import invariant_paged_attention

        return invariant_paged_attention(q, kv_cache, meta, scale, sliding_window, pdl=pdl)  # (T, H, D)
    if q.is_cuda and 1 <= meta.max_query_len <= KERNEL_MAX_QUERY_LEN:
        # Decode / verify steps: the fused Triton kernel reads K/V straight from the paged cache
        # (imported here: Triton is only needed on CUDA). Prefill chunks: triton_prefill_attention.
        from dynaspec.models import triton_attention

        if triton_attention.supports(q, kv_cache, meta.max_query_len):
            return triton_attention.triton_paged_attention(
                q, kv_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                meta.max_query_len, scale, sliding_window, block_n=KERNEL_KEY_TILE, pdl=pdl,
            )  # (T, H, D)
    if q.is_cuda:
        parts = _decode_prefix(meta)
        if parts is not None:
            # A mixed step (the engine lays out decodes first, then prefill chunks): the decodes through the
            # decode kernel, the chunks through the prefill kernel. Padding every decode to the longest chunk's
            # query length made a step of 63 decodes + 1 prefill ~6x a decode step on an 8B model.
            head, tail = parts
            rows = head.num_tokens
            return torch.cat([
                paged_attention(q[:rows], k[:rows], v[:rows], kv_cache, head, scale, sliding_window, True, pdl),
                _prefill_attention(q[rows:], kv_cache, tail, scale, sliding_window),
            ])  # (T, H, D)
        return _prefill_attention(q, kv_cache, meta, scale, sliding_window)
    return reference_paged_attention(q, kv_cache, meta, scale, sliding_window)


def _prefill_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                       sliding_window: int | None) -> torch.Tensor:
    """Prefill chunks on CUDA: the Triton prefill kernel (one launch a layer) where it takes the inputs,
    else the reference path. (T, H, D)."""
    from dynaspec.models import triton_prefill_attention

    if triton_prefill_attention.supports(q, kv_cache):
        return triton_prefill_attention.triton_prefill_attention(
            q, kv_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, meta.max_query_len, scale,
            sliding_window,
        )
    return reference_paged_attention(q, kv_cache, meta, scale, sliding_window)


# Longest query (1 + k positions) the decode / verify kernel serves.
KERNEL_MAX_QUERY_LEN = 8
# Keys per inner-loop tile of the decode / verify kernel (triton_attention's block_n).
KERNEL_KEY_TILE = 128


def warmup_block_tables(q_len: int, block_size: int, scratch_block: int) -> list[list[int]]:
    """Block tables for the eager start-up forwards of a q_len-token query on the scratch block: one just
    wide enough, where the decode kernel runs one KV split, and one two key tiles wide, where it splits the
    KV and runs its reduce kernel (a variant of its own per query length, which a batch-1 table of one block
    never launched: a catch-up fed ahead over long contexts at batch 64 compiled it mid-run, one step of
    1,035 ms on an H100, docs/lab/eagle_qwen_runs.md)."""
    narrow = -(-q_len // block_size)
    wide = max(narrow, -(-2 * KERNEL_KEY_TILE // block_size))
    return [[scratch_block] * n for n in sorted({narrow, wide})]


def _decode_prefix(meta: AttentionMetadata) -> tuple[AttentionMetadata, AttentionMetadata] | None:
    """(leading sequences of query length <= KERNEL_MAX_QUERY_LEN, the rest), computed once per forward
    (meta.derived), or None when the batch does not start with such sequences or has nothing after them."""
    if "decode_prefix" not in meta.derived:
        count = 0
        for length in meta.query_lens_cpu:
            if not 1 <= length <= KERNEL_MAX_QUERY_LEN:
                break
            count += 1
        meta.derived["decode_prefix"] = meta.split(count) if 0 < count < meta.num_seqs else None
    return meta.derived["decode_prefix"]


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store k, v (T, Hkv, D) at the flat slots `slot_mapping` (T,) of kv_cache (2, NB, BS, Hkv, D)."""
    if k.shape[0] == 0:
        return
    _, _, _, num_kv_heads, head_dim = kv_cache.shape
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)  # (2, NB*BS, Hkv, D)
    flat[0].index_copy_(0, slot_mapping, k.to(kv_cache.dtype))
    flat[1].index_copy_(0, slot_mapping, v.to(kv_cache.dtype))


def reference_paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of q (T, H, D) over the paged context already in kv_cache; returns (T, H, D).

    Vectorised over sequences: gathers blocks into (B, S, Hkv, D), pads queries to (B, Qmax, H, D),
    masks by position and calls SDPA. GQA is handled by folding the G = H / Hkv query heads that share
    a KV head into the query-length axis, so K/V are never repeated.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    num_seqs = meta.num_seqs
    if num_tokens == 0 or num_seqs == 0:
        return q.new_empty((num_tokens, num_heads, head_dim))
    group = num_heads // num_kv_heads
    max_q = meta.max_query_len
    num_blocks = -(-meta.max_seq_len // block_size)
    max_s = num_blocks * block_size
    device = q.device

    key = ("reference", sliding_window, group, q.dtype)
    if key not in meta.derived:
        meta.derived[key] = _reference_layout(meta, max_q, max_s, num_tokens, group, sliding_window, q.dtype, device)
    seq_idx, row_idx, key_valid, mask_fold = meta.derived[key]

    q_pad = q.new_zeros((num_seqs, max_q, num_heads, head_dim))
    q_pad[seq_idx, row_idx] = q  # (B, Qmax, H, D)

    # Gather each sequence's blocks: (B, nblk, BS, Hkv, D) -> (B, S, Hkv, D).
    # index_select, not advanced indexing: kv_cache[0][tables] is ~1000x slower on CPU for a large pool.
    tables = meta.block_tables[:, :num_blocks].reshape(-1)
    keys = kv_cache[0].index_select(0, tables).reshape(num_seqs, max_s, num_kv_heads, head_dim).to(q.dtype)
    values = kv_cache[1].index_select(0, tables).reshape(num_seqs, max_s, num_kv_heads, head_dim).to(q.dtype)
    # Slots past a sequence's length were never written (maybe NaN garbage): zero them, since a masked
    # NaN still poisons softmax @ V.
    keys = torch.where(key_valid, keys, 0)
    values = torch.where(key_valid, values, 0)

    # GQA fold: query head h = kv_head * G + g; rows ordered (g, i) inside each KV head.
    q_fold = (
        q_pad.view(num_seqs, max_q, num_kv_heads, group, head_dim)
        .permute(0, 2, 3, 1, 4)
        .reshape(num_seqs, num_kv_heads, group * max_q, head_dim)
    )  # (B, Hkv, G*Qmax, D)
    out = F.scaled_dot_product_attention(
        q_fold,
        keys.transpose(1, 2),  # (B, Hkv, S, D)
        values.transpose(1, 2),
        attn_mask=mask_fold,
        scale=scale,
    )  # (B, Hkv, G*Qmax, D)
    out = out.view(num_seqs, num_kv_heads, group, max_q, head_dim).permute(0, 3, 1, 2, 4)  # (B, Qmax, Hkv, G, D)
    return out[seq_idx, row_idx].reshape(num_tokens, num_heads, head_dim)


def _reference_layout(meta, max_q, max_s, num_tokens, group, sliding_window, dtype, device):
    """Index maps and masks shared by every layer of one forward (computed once, see meta.derived)."""
    num_seqs = meta.num_seqs
    # Flat row t -> (sequence b, row i within the sequence's new tokens).
    query_lens = meta.query_start_loc[1:] - meta.query_start_loc[:-1]  # (B,)
    seq_idx = torch.repeat_interleave(
        torch.arange(num_seqs, device=device), query_lens, output_size=num_tokens
    )  # (T,)
    row_idx = torch.arange(num_tokens, device=device) - meta.query_start_loc[seq_idx]  # (T,)
    key_pos = torch.arange(max_s, device=device)  # (S,)
    key_valid = (key_pos[None, :] < meta.seq_lens[:, None])[:, :, None, None]  # (B, S, 1, 1)
    q_rows = torch.arange(max_q, device=device)  # (Qmax,)
    q_pos = (meta.seq_lens - query_lens)[:, None] + q_rows[None, :]  # (B, Qmax)
    mask = key_pos[None, None, :] <= q_pos[:, :, None]  # (B, Qmax, S)
    if sliding_window is not None:
        mask &= key_pos[None, None, :] > (q_pos[:, :, None] - sliding_window)
    row_valid = q_rows[None, :] < query_lens[:, None]  # (B, Qmax)
    mask |= ~row_valid[:, :, None]  # padding rows see everything: no all-masked (NaN) rows
    mask_fold = mask[:, None].expand(num_seqs, group, max_q, max_s).reshape(num_seqs, 1, group * max_q, max_s)
    # An additive float mask: SDPA's CPU path with a boolean mask is ~1000x slower for small shapes.
    mask_fold = torch.zeros(mask_fold.shape, dtype=dtype, device=device).masked_fill_(~mask_fold, float("-inf"))
    return seq_idx, row_idx, key_valid, mask_fold


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    sliding_window: int | None,
) -> None:
    """Shape checks that need no device synchronisation."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be (T, heads, head_dim); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(
            f"kv_cache must be (2, num_blocks, block_size, num_kv_heads, head_dim); got {tuple(kv_cache.shape)}"
        )
    num_tokens, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, cache_head_dim = kv_cache.shape
    if k.shape != (num_tokens, num_kv_heads, head_dim) or v.shape != k.shape:
        raise ValueError(
            f"k and v must be (T={num_tokens}, Hkv={num_kv_heads}, D={head_dim}) to match q and kv_cache; "
            f"got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if cache_head_dim != head_dim:
        raise ValueError(f"kv_cache head_dim {cache_head_dim} differs from q's {head_dim}")
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    if meta.block_size != block_size:
        raise ValueError(f"meta.block_size {meta.block_size} differs from kv_cache block size {block_size}")
    if meta.num_tokens != num_tokens:
        raise ValueError(f"meta describes {meta.num_tokens} tokens but q has {num_tokens} rows")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be a positive int or None; got {sliding_window}")
