"""A batch-invariant Triton GEMM for deterministic mode: y (M, N) = x (M, K) @ W (N, K)^T (+ bias).

Batch invariance (He & Thinking Machines Lab 2025, "Defeating Nondeterminism in LLM Inference", and their
`batch_invariant_ops`; vLLM's batch-invariant mode, PR #27433): the bits of row i of y must not depend on
M or on the other rows. A GEMM library breaks that by choosing its tile shape, its MMA instruction and
split-K from M. Here the configuration is a function of (N, K, dtype) and the card only (gemm_tiles.py: a
table tuned per card, else a rule), never of M:

- one (BLOCK_M, BLOCK_N, BLOCK_K) tile and one warp / stage count for every M, so every output element
  is the same chain of `tl.dot` instructions (the same MMA shape) whatever M is;
- no split-K: one program owns an output tile and walks K from 0 upwards in BLOCK_K steps, accumulating
  in float32 in registers; the bias is added once after the loop, then one rounding to x's dtype;
- M is a run-time argument Triton does not specialise on (`do_not_specialize`), so M = 1 compiles to the
  same kernel as M = 64; rows past M are masked loads of 0, which no MMA output row reads.

The price is decode at small M: no split-K means N / BLOCK_N programs stream the weight, so BLOCK_N is
small for narrow N to keep the GPU's multiprocessors busy; scripts/tune_invariant_gemm.py picks the tiles
per card and shape, scripts/deterministic_price.py measures what the engine pays.
fp16 / bf16 / fp32 (fp32 with IEEE products, no TF32). CUDA-graph safe (launch from Python ints, output
from the caching allocator); also runs under Triton's CPU interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynaspec.models.gemm_tiles import TileConfig, rule_tile
from dynaspec.models.pdl import launch_options, wait_for_previous_kernel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit(do_not_specialize=["M"])
def _invariant_matmul_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    # Grouped program order (L2 reuse of W tiles across M tiles): which tile a program owns, never how
    # a tile is computed.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]  # (BLOCK_K, BLOCK_N): W^T
    wait_for_previous_kernel(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):  # one order, from k = 0 up, for every M
        k_mask = (k0 + offs_k) < K
        a = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def matmul_supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `invariant_matmul` handles x (M, K) @ weight (N, K)^T (+ bias (N,))."""
    return (
        x.dim() == 2 and weight.dim() == 2 and weight.shape[1] == x.shape[1]
        and x.dtype in SUPPORTED_DTYPES and weight.dtype == x.dtype
        and x.stride(1) == 1 and weight.stride(1) == 1 and weight.device == x.device
        and (bias is None or (bias.shape == (weight.shape[0],) and bias.is_contiguous() and bias.device == x.device))
    )


def invariant_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     config: TileConfig | None = None, pdl: bool = False) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T (+ bias (N,)) -> (M, N) in x's dtype, every row batch-invariant.

    config: the tiles (default: gemm_tiles.rule_tile; the model passes its card's tuned table's entry,
    tests small ones for the interpreter);
    pdl: launch with programmatic dependent launch (`pdl.py`)."""
    if not matmul_supported(x, weight, bias):
        raise ValueError(
            f"invariant_matmul needs x (M, K) and weight (N, K) of one dtype in fp16 / bf16 / fp32 with a "
            f"contiguous last dim (and bias (N,)); got x {tuple(x.shape)} {x.dtype}, weight "
            f"{tuple(weight.shape)} {weight.dtype}"
        )
    m, k = x.shape
    n = weight.shape[0]
    cfg = config or rule_tile(n, k, x.dtype)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)  # (M, N)
    if m == 0:
        return y
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _invariant_matmul_kernel[grid](
        x, weight, bias if bias is not None else y, y, m, n, k, x.stride(0), weight.stride(0), y.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, PDL=pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(pdl),
    )
    return y
