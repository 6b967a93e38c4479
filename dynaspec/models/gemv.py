"""A split-K free Triton GEMV for the few token rows of a small decode or verify step, launchable with PDL.

y (M, N) = x (M, K) @ W (N, K)^T (+ bias), M <= MAX_ROWS: program n owns BLOCK_N outputs of every row,
streams its (BLOCK_N, K) slice of W once in BLOCK_K chunks and accumulates each row in float32 (the
small-batch "gemv" kernels of gpt-fast / TensorRT-LLM's gemv plugin). No partial sums cross programs, so there
is no split-K reduce kernel (cuBLAS adds one to o_proj and down at M = 1) and the kernel can join a chain of
kernels launched with programmatic dependent launch (`pdl.py`, `decode_kernels.py`). Every program waits for
the previous kernel first: loading a weight chunk before the wait measured slower (scripts/gpu_pdl_probe.py).

Several rows (a batch-1 verify step of k drafts has 1 + k; a batch-2 decode step 2): W is still read once,
the rows' products are computed from the same loaded chunk. Their M x N x K multiply-adds run on the CUDA
cores, each row a cross-lane reduction of the whole chunk. Measured on an H100 (2026-12-06, `gpu_session.sh
gemv-ab`, random Llama-3.1-8B, against cuBLAS): 2 rows +2-3% a step, 4 rows -20%, 5 rows -28%, 8 rows -50%:
past 2 rows the per-row reductions, not the weight bytes, bound the kernel, so the engine routes only steps
of up to decode_kernels.GEMV_MAX_ROWS rows here; the kernel takes up to MAX_ROWS.
A row's reduction order does not depend on M (each row accumulates the same chunks in the same order), so
a token row gets the same bits at M = 1 as in a verify step of M rows.

Numerics: a float32-accumulated dot (summation order differs from cuBLAS's), plus the bias in float32,
rounded once to the activation dtype. fp16 / bf16 only. CUDA-graph safe (output from the caching
allocator, launch shape from Python ints); also runs under Triton's CPU interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynaspec.models.pdl import launch_options, wait_for_previous_kernel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


# Rows one launch takes (decode_kernels.GEMV_MAX_ROWS, at most this, says which steps the engine routes here).
MAX_ROWS = 8


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, N, stride_w,
    K: tl.constexpr, ROWS: tl.constexpr, ROWS_P2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    n_offs = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n_offs < N
    rows = tl.arange(0, ROWS_P2)
    kk = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + n_offs.to(tl.int64)[:, None] * stride_w  # (BLOCK_N, 1)
    wait_for_previous_kernel(PDL)
    acc = tl.zeros((ROWS_P2, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        if EVEN:
            w = tl.load(w_rows + k[None, :]).to(tl.float32)
        else:
            k_mask = k < K
            w = tl.load(w_rows + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        for r in tl.static_range(ROWS):  # the chunk of W, loaded once, against every row
            if EVEN:
                x = tl.load(x_ptr + r * K + k)
            else:
                x = tl.load(x_ptr + r * K + k, mask=k_mask, other=0.0)
            part = tl.sum(w * x.to(tl.float32)[None, :], axis=1)  # (BLOCK_N,)
            acc = tl.where(rows[:, None] == r, acc + part[None, :], acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n_offs, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rows[:, None] * N + n_offs[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(rows[:, None] < ROWS) & n_mask[None, :])


def gemv_supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `gemv` handles x (M, K) @ weight (N, K)^T (+ bias (N,)): 1 <= M <= MAX_ROWS rows, fp16/bf16,
    one device."""
    return (
        x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS and x.dtype in SUPPORTED_DTYPES and x.is_contiguous()
        and weight.dim() == 2 and weight.shape[1] == x.shape[1] and weight.dtype == x.dtype
        and weight.stride(1) == 1 and weight.device == x.device
        and (bias is None or (bias.shape == (weight.shape[0],) and bias.dtype == x.dtype and bias.is_contiguous()))
    )


def block_shape(n: int, k: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) for an (N, K) weight, the fastest of 14 shapes per Llama-3.1-8B projection on an
    H200 (scripts/gpu_pdl_probe.py, 2026-11-27): gate/up (N >= 4K) 8 x 1,024; q/k/v (K < N < 4K) 8 x 512;
    o_proj and down (N <= K) 4 x 2,048 (long rows: fewer, longer loads per program)."""
    if n >= 4 * k:
        block_n, block_k = 8, 1024
    elif n > k:
        block_n, block_k = 8, 512
    else:
        block_n, block_k = 4, 2048
    return block_n, min(block_k, triton.next_power_of_2(k))


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T (+ bias (N,)) -> (M, N) in x's dtype, M <= MAX_ROWS; pdl: launch with PDL."""
    if not gemv_supported(x, weight, bias):
        raise ValueError(
            f"gemv needs a contiguous fp16/bf16 x (M, K) with 1 <= M <= {MAX_ROWS}, weight (N, K) of x's dtype "
            f"with a contiguous last dim "
            f"and an optional contiguous bias (N,); got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} "
            f"{weight.dtype}, bias {None if bias is None else tuple(bias.shape)}"
        )
    n, k = weight.shape
    block_n, block_k = block_shape(n, k)
    rows = x.shape[0]
    y = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, y, n, weight.stride(0),
        K=k, ROWS=rows, ROWS_P2=max(2, triton.next_power_of_2(rows)), BLOCK_N=block_n, BLOCK_K=block_k,
        EVEN=n % block_n == 0 and k % block_k == 0,
        HAS_BIAS=bias is not None, PDL=pdl, num_warps=4, num_stages=1, **launch_options(pdl),
    )
    return y
