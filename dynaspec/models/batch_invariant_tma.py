"""The batch-invariant GEMM's large-tile path with TMA loads (Hopper and newer): y (M, N) = x (M, K) @ W (N, K)^T.

Same arithmetic as batch_invariant._invariant_matmul_kernel without split-K: per output tile, each K slice is
one chain of `tl.dot` over BLOCK_K chunks walking k upwards from a zero float32 accumulator, the slices added in
order, then the bias, one rounding. Only the loads differ: the x and W tiles come through tensor descriptors
(the Tensor Memory Accelerator copies a whole (rows, BLOCK_K) box into shared memory and fills what lies past
the tensor's edge with zeros, as the pointer kernel's masked loads do) instead of per-thread pointer loads, so
the warps spend their issue slots on MMAs. That is what lets Triton's Hopper GEMMs approach cuBLAS at the M of
verify and prefill steps (Triton tutorial 09, "Persistent Matmul"; cuBLAS's sm90 kernels load with TMA too).

Whether a row's bits equal the pointer kernel's for the same tiles is the card's business: the tuner keeps a
TMA layout (RowTiles.tma) only where every row matched the small tiles' bits (scripts/tune_invariant_gemm.py),
as it does for any larger tile.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from dynaspec.models.gemm_grid import grouped_tile
from dynaspec.models.gemm_tiles import TileConfig
from dynaspec.models.pdl import launch_options, wait_for_previous_kernel


@functools.lru_cache(maxsize=None)
def tma_supported(device: torch.device) -> bool:
    """Whether this device can run the TMA path: a CUDA card of compute capability 9.0 or newer, with a Triton
    that has host-side tensor descriptors."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


def tma_shapes_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the TMA path takes these operands: fp16 / bf16 (float32 keeps the pointer kernel's IEEE products),
    every stride but the last and the base addresses multiples of 16 bytes."""
    size = x.element_size()
    return x.dtype in (torch.float16, torch.bfloat16) and (x.stride(0) * size) % 16 == 0 and (weight.stride(0) * size) % 16 == 0 and x.data_ptr() % 16 == 0 \
        and weight.data_ptr() % 16 == 0


@triton.jit
def _tma_slice_dot(x_desc, w_desc, off_m, off_n, k_start, k_end,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) float32 partial over k in [k_start, k_end) (whole BLOCK_K steps; the last
    slice's tail past K is the descriptor's zero fill), from a zero accumulator, k upwards."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        a = x_desc.load([off_m, k0])  # (BLOCK_M, BLOCK_K)
        b = w_desc.load([off_n, k0])  # (BLOCK_N, BLOCK_K)
        acc = tl.dot(a, b.T, acc)
    return acc


@triton.jit(do_not_specialize=["M"])
def _tma_invariant_matmul_kernel(
    x_desc, w_desc, bias_ptr, y_ptr, M, N, K, K_SLICE, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SLICES: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)  # which tile, not how
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    wait_for_previous_kernel(PDL)
    acc = _tma_slice_dot(x_desc, w_desc, off_m, off_n, 0, tl.minimum(K_SLICE, K), BLOCK_M, BLOCK_N, BLOCK_K)
    for s in tl.static_range(1, SLICES):
        acc += _tma_slice_dot(x_desc, w_desc, off_m, off_n, s * K_SLICE, tl.minimum((s + 1) * K_SLICE, K),
                              BLOCK_M, BLOCK_N, BLOCK_K)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & n_mask[None, :])


def tma_invariant_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: TileConfig,
                         k_slice: int, slices: int, pdl: bool = False) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T (+ bias (N,)) -> (M, N) in x's dtype with cfg's tiles (already chosen for M,
    TileConfig.for_rows) and K cut into `slices` slices of `k_slice` (batch_invariant.slice_bounds); the
    caller checked tma_supported and tma_shapes_ok."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)  # (M, N)
    if m == 0:
        return y
    x_desc = TensorDescriptor.from_tensor(x, [cfg.block_m, cfg.block_k])
    w_desc = TensorDescriptor.from_tensor(weight, [cfg.block_n, cfg.block_k])
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    _tma_invariant_matmul_kernel[(tiles,)](
        x_desc, w_desc, bias if bias is not None else y, y, m, n, k, k_slice, y.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, SLICES=slices,
        HAS_BIAS=bias is not None, PDL=pdl, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **launch_options(pdl),
    )
    return y
