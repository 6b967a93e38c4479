"""A greedy draft pick in one pass over the logits: each row's argmax, mapped through an id table, and the
softmax probability of that argmax (the drafter's confidence, spec/draft_trimming.py), by one Triton kernel.

torch needs five launches for the same (`.float()`, `argmax`, the id map's gather, `softmax`, `amax`), each a
full pass over a (B, V) row block; at batch 1 an EAGLE draft step is made of such small launches (issue 21:
~0.3 ms a draft step of a one-layer head on an H100). One program per row walks the row in BLOCK-wide chunks
with the online-softmax recurrence (Milakov & Gimelshein 2018, arXiv 1805.02867): a running maximum m, its
first index, and s = sum(exp(x - m)) rescaled whenever m grows; the probability of the argmax is 1 / s.

The index is torch's: the first maximal column (a chunk's argmax breaks ties to the left, and a later chunk
replaces it only when strictly larger). The probability equals torch.softmax(...).amax() up to float32
summation order. Runs under Triton's CPU interpreter (TRITON_INTERPRET=1) too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynaspec.models.pdl import launch_options, wait_for_previous_kernel

BLOCK = 2048  # columns a program reads per iteration


@triton.jit
def _greedy_pick_kernel(
    logits_ptr, map_ptr, ids_ptr, prob_ptr, stride_row, n_cols,
    HAS_MAP: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    base = logits_ptr + row * stride_row
    wait_for_previous_kernel(PDL)
    best = tl.full((), float("-inf"), tl.float32)
    best_idx = tl.full((), 0, tl.int64)
    total = tl.full((), 0.0, tl.float32)
    for start in range(0, n_cols, BLOCK):
        idx = start + cols
        x = tl.load(base + idx, mask=idx < n_cols, other=float("-inf")).to(tl.float32)
        chunk_max, chunk_idx = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
        new_best = tl.maximum(best, chunk_max)
        # exp(-inf - -inf) would be NaN on the first chunk: rescale only a sum that has terms.
        scale = tl.where(total > 0, tl.exp(best - new_best), 0.0)
        total = total * scale + tl.sum(tl.exp(x - new_best), axis=0)
        better = chunk_max > best
        best_idx = tl.where(better, start + chunk_idx.to(tl.int64), best_idx)
        best = new_best
    if HAS_MAP:
        best_idx = tl.load(map_ptr + best_idx).to(tl.int64)
    tl.store(ids_ptr + row, best_idx)
    tl.store(prob_ptr + row, 1.0 / total)


def greedy_pick(logits: torch.Tensor, id_map: torch.Tensor | None = None,
                pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) (fp16 / bf16 / fp32, last dim contiguous) -> (ids (B,) int64: each row's argmax, through
    `id_map` (V,) when given; probs (B,) float32: the softmax probability of that argmax)."""
    if logits.dim() != 2 or logits.stride(-1) != 1 or logits.dtype not in (torch.float16, torch.bfloat16,
                                                                           torch.float32):
        raise ValueError(f"greedy_pick needs logits (B, V) in fp16/bf16/fp32 with a contiguous last dim; got "
                         f"{tuple(logits.shape)} {logits.dtype}")
    if id_map is not None and (id_map.dim() != 1 or id_map.shape[0] != logits.shape[1] or not id_map.is_contiguous()):
        raise ValueError(f"id_map must be a contiguous ({logits.shape[1]},) table; got {tuple(id_map.shape)}")
    rows = logits.shape[0]
    ids = torch.empty(rows, dtype=torch.int64, device=logits.device)
    probs = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return ids, probs
    _greedy_pick_kernel[(rows,)](
        logits, id_map if id_map is not None else ids, ids, probs, logits.stride(0), logits.shape[1],
        HAS_MAP=id_map is not None, BLOCK=BLOCK, PDL=pdl, num_warps=8, **launch_options(pdl),
    )
    return ids, probs
