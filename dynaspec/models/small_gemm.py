"""A tensor-core GEMM for the 3-16 token rows of a small verify or decode step, launchable with PDL.

y (M, N) = x (M, K) @ W (N, K)^T (+ bias), M <= MAX_ROWS: program n owns BLOCK_N outputs of every row and
streams its (BLOCK_N, K) slice of W once in BLOCK_K chunks; the rows, padded to the 16 of the smallest MMA
tile, multiply each chunk on the tensor cores (tl.dot, float32 accumulator). The GEMV of gemv.py reduces
each row across lanes, which bounds it past 2 rows; here the extra rows ride in the MMA tile for free, so the
time stays that of reading W: on an H100 (docs/lab/verify_rows_kernels.md, 2026-12-07) flat from 3 to 8
rows at 0.89-0.97x cuBLAS on every routed Qwen2.5-1.5B and Llama-3.1-8B projection, and 6-8% faster steps of
4-8 rows in the engine (docs/results.md, issue 21 section). No partial sums cross
programs (no split-K), so the kernel joins a chain of PDL kernels (`pdl.py`) where cuBLAS, launched without
PDL, breaks it: a batch-1 verify of 2-7 drafts, a decode step of 3-8 requests.

A row's result does not depend on M or on the other rows: every launch multiplies the same 16-row tile in
the same K order, the rows past M loaded as zeros. Where N is small against K (the 1.5B's down projection:
1536 outputs) the kernel has too few programs to read W at full bandwidth, and cuBLAS's split-K is faster
alone; `worthwhile` says which shapes to route here.

fp16 / bf16 only. CUDA-graph safe (output from the caching allocator, launch shape from Python ints); also
runs under Triton's CPU interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynaspec.models.pdl import launch_options, wait_for_previous_kernel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MAX_ROWS = 16  # the MMA tile's rows: one launch takes up to this many


@triton.jit
def _small_gemm_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, M, N, stride_w,
    K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN: tl.constexpr, HAS_BIAS: tl.constexpr,
    PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    n_offs = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n_offs < N
    rows = tl.arange(0, 16)
    row_mask = rows < M
    kk = tl.arange(0, BLOCK_K)
    w_cols = w_ptr + n_offs.to(tl.int64)[None, :] * stride_w  # (1, BLOCK_N)
    wait_for_previous_kernel(PDL)
    acc = tl.zeros((16, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        if EVEN:
            w = tl.load(w_cols + k[:, None])  # (BLOCK_K, BLOCK_N)
            x = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=row_mask[:, None], other=0.0)  # (16, BLOCK_K)
        else:
            k_mask = k < K
            w = tl.load(w_cols + k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            x = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n_offs, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rows[:, None] * N + n_offs[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])


def supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `small_gemm` handles x (M, K) @ weight (N, K)^T (+ bias (N,)): 1 <= M <= MAX_ROWS rows,
    fp16/bf16, contiguous, one device."""
    return (
        x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS and x.dtype in SUPPORTED_DTYPES and x.is_contiguous()
        and weight.dim() == 2 and weight.shape[1] == x.shape[1] and weight.dtype == x.dtype
        and weight.stride(1) == 1 and weight.device == x.device
        and (bias is None or (bias.shape == (weight.shape[0],) and bias.dtype == x.dtype and bias.is_contiguous()))
    )


def launch_config(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_stages) for an (N, K) weight: the H100 probe's best (scripts/lab/gemv_rows_probe.py,
    2026-12-06): wide weights (gate/up, N >= 4K) 64 x 128 in 3 stages; the rest 32 x 256 in 4."""
    if n >= 4 * k:
        block_n, block_k, stages = 64, 128, 3
    else:
        block_n, block_k, stages = 32, 256, 4
    return block_n, max(16, min(block_k, triton.next_power_of_2(k))), stages


def worthwhile(n: int, k: int) -> bool:
    """Whether an (N, K) weight is better served here than by cuBLAS: at least as many outputs as inputs. On the
    H100 probe every such projection won (q/k/v, o_proj, gate/up of Qwen2.5-1.5B and Llama-3.1-8B) and the one
    long-K shape lost (the 1.5B's down, 1536 x 8960: 48 programs of 32 outputs each streaming 8960 inputs,
    16.1 us against cuBLAS's split-K 13.6)."""
    return n >= k


def small_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, pdl: bool = False
               ) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T (+ bias (N,)) -> (M, N) in x's dtype, M <= MAX_ROWS; pdl: launch with PDL."""
    if not supported(x, weight, bias):
        raise ValueError(
            f"small_gemm needs a contiguous fp16/bf16 x (M, K) with 1 <= M <= {MAX_ROWS}, weight (N, K) of x's "
            f"dtype with a contiguous last dim and an optional contiguous bias (N,); got x {tuple(x.shape)} "
            f"{x.dtype}, weight {tuple(weight.shape)} {weight.dtype}, bias {None if bias is None else tuple(bias.shape)}"
        )
    n, k = weight.shape
    block_n, block_k, stages = launch_config(n, k)
    y = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
    _small_gemm_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, y, x.shape[0], n, weight.stride(0),
        K=k, BLOCK_N=block_n, BLOCK_K=block_k, EVEN=n % block_n == 0 and k % block_k == 0,
        HAS_BIAS=bias is not None, PDL=pdl, num_warps=4, num_stages=stages, **launch_options(pdl),
    )
    return y
