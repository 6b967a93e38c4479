"""Batch-invariant linear layer: y = x @ W^T (+ b) whose row i depends on x[i] only, never on how many rows
the step has or where row i sits among them (deterministic mode, `DecodeKernels.deterministic`).

Why plain F.linear is not: a BLAS picks its kernel and blocking from the shape. On CPU, MKL runs one row
as a GEMV and M >= 2 rows as a GEMM whose blocking changes with M; on CUDA, cuBLAS picks tile shapes and
split-K from M. Each choice sums the K products in another order, and float addition is not associative,
so the same token row gets logits that differ in the last bits between a decode step at batch 1, one at
batch 64 and a verify step (He & Thinking Machines Lab 2025, "Defeating Nondeterminism in LLM Inference").

- CUDA: the Triton GEMM of `batch_invariant.py`: one tile configuration for every M (the card's tuned
  table's, gemm_tiles.py), K in fixed slices whose partials are added in one order (split across programs
  or not, the same adds).
- CPU (any other device): the rows are padded to a multiple of `CPU_ROW_BLOCK` and every block of
  `CPU_ROW_BLOCK` rows is one BLAS call of the same shape (block, K) x (K, N) on a 64-byte aligned slice
  of one fresh buffer (16 rows of 4-byte floats are a multiple of 64 bytes). One shape means one kernel and one blocking for every row of every step;
  the rows of a GEMM never mix, and tests/test_deterministic_cpu.py checks that a row's result depends
  neither on the other rows of its block nor on its place in it (for one BLAS thread count, which a
  process keeps). 16 rows: ~3x F.linear's time for one
  row (a GEMV), ~1.4x for long prefills (measured on 2 AVX-512 cores with SmolLM2-135M's shapes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynaspec.models.gemm_tiles import GemmTiles

CPU_ROW_BLOCK = 16


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     pdl: bool = False, tiles: GemmTiles | None = None) -> torch.Tensor:
    """x (T, K) @ weight (N, K)^T (+ bias (N,)) -> (T, N) in x's dtype, each row batch-invariant;
    pdl: launch the CUDA kernel with programmatic dependent launch; tiles: the card's tuned GEMM tiles
    (gemm_tiles.py; None: the rule)."""
    if x.is_cuda:
        from dynaspec.models import batch_invariant  # Triton is only needed on CUDA

        if x.dim() == 2 and x.stride(-1) != 1:
            x = x.contiguous()
        if batch_invariant.matmul_supported(x, weight, bias):
            config = tiles.lookup(weight.shape[0], weight.shape[1], x.dtype) if tiles is not None else None
            return batch_invariant.invariant_matmul(x, weight, bias, config, pdl=pdl)
        raise ValueError(
            f"deterministic mode has no batch-invariant GEMM for x {tuple(x.shape)} {x.dtype} @ weight "
            f"{tuple(weight.shape)} {weight.dtype}: it needs 2-D fp16 / bf16 / fp32 operands of one dtype"
        )
    return blocked_linear(x, weight, bias, CPU_ROW_BLOCK)


def blocked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, block: int) -> torch.Tensor:
    """F.linear over fixed blocks of `block` rows (zero-padded): every BLAS call has the shape (block, K)."""
    num_rows, k = x.shape
    num_blocks = max(1, -(-num_rows // block))
    padded = x.new_zeros((num_blocks * block, k))  # (blocks * block, K)
    padded[:num_rows] = x
    out = [F.linear(padded[i * block:(i + 1) * block], weight, bias) for i in range(num_blocks)]
    return torch.cat(out)[:num_rows]  # (T, N)


def mean_square(h: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """mean(h ** 2) over the last dim of a float32 h (..., D) -> (..., 1), RMSNorm's variance. In
    deterministic mode on CUDA it is (h * h) @ ones(D) / D through the batch-invariant GEMM: torch's CUDA
    reduction picks its block shape (and whether several blocks share a row) from the number of rows.
    On the CPU, ATen reduces each row of a contiguous last dim by the same loop whatever the row count."""
    if not (deterministic and h.is_cuda):
        return h.pow(2).mean(-1, keepdim=True)
    dim = h.shape[-1]
    squares = (h * h).reshape(-1, dim)  # (rows, D)
    ones = torch.ones((1, dim), dtype=h.dtype, device=h.device)
    return (invariant_linear(squares, ones) / dim).reshape(*h.shape[:-1], 1)
