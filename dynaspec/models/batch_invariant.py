"""A batch-invariant Triton GEMM for deterministic mode: y (M, N) = x (M, K) @ W (N, K)^T (+ bias).

Batch invariance (He & Thinking Machines Lab 2025, "Defeating Nondeterminism in LLM Inference", and their
`batch_invariant_ops`; vLLM's batch-invariant mode, PR #27433): the bits of row i of y must not depend on
M or on the other rows. A GEMM library breaks that by choosing its tile shape, its MMA instruction and
split-K from M. Here the configuration is a function of (N, K, dtype) and the card only (gemm_tiles.py: a
table tuned per card, else a rule), never of M:

- one (BLOCK_M, BLOCK_N, BLOCK_K) tile and one warp / stage count for every M, so every output element
  is the same chain of `tl.dot` instructions (the same MMA shape) whatever M is; except that a tuned
  entry may name larger output tiles from `large_min_m` rows on (TileConfig.large: same BLOCK_K and K
  slices, so the same walk over K in the same BLOCK_K chunks, a wider MMA; optionally loaded through TMA,
  batch_invariant_tma.py, where it is not split-K). Whether a wider MMA adds an
  element's products in the same order is the card's business, not documented: the tuner keeps such an
  entry only where every row's bits matched (scripts/tune_invariant_gemm.py), and the CUDA tests check
  rows across the threshold;
- K is cut into the config's fixed slices (`k_slices`, whole BLOCK_K steps): each slice's partial is one
  chain of MMAs from a zero float32 accumulator, walking its k upwards in BLOCK_K steps, and the partials
  are added in slice order, then the bias, then one rounding to x's dtype. Whether the slices run in one
  program (a loop) or in programs of their own with a summing kernel after (split-K for the small M of
  decode, where the output tiles alone leave multiprocessors idle) changes which program does an add,
  never which adds are done in which order: the bits are the same, so `split` may follow M;
- M is a run-time argument Triton does not specialise on (`do_not_specialize`), so M = 1 compiles to the
  same kernel as M = 64; rows past M are masked loads of 0, which no MMA output row reads.

The price is decode at small M: with one slice, N / BLOCK_N programs stream the weight, so BLOCK_N is
small for narrow N to keep the GPU's multiprocessors busy, or the slices split K across programs;
scripts/tune_invariant_gemm.py picks the tiles and slices per card and shape,
scripts/deterministic_price.py measures what the engine pays.
fp16 / bf16 / fp32 (fp32 with IEEE products, no TF32). CUDA-graph safe (launch from Python ints, output
from the caching allocator); also runs under Triton's CPU interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from dynaspec.models.batch_invariant_tma import tma_invariant_matmul, tma_shapes_ok, tma_supported
from dynaspec.models.gemm_grid import grouped_tile
from dynaspec.models.gemm_tiles import TileConfig, rule_tile
from dynaspec.models.pdl import launch_options, wait_for_previous_kernel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _slice_dot(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, k_start, k_end, stride_xm, stride_wn,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) float32 partial of x @ W^T over k in [k_start, k_end), from a zero
    accumulator, walking k upwards in BLOCK_K steps: the one chain of MMAs every layout runs."""
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + (k_start + offs_k)[None, :]  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + (k_start + offs_k)[:, None]  # (BLOCK_K, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k_mask = (k0 + offs_k) < k_end
        a = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    return acc


@triton.jit(do_not_specialize=["M"])
def _invariant_matmul_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, part_ptr, M, N, K, K_SLICE, stride_xm, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SLICES: tl.constexpr, SPLIT: tl.constexpr,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)  # which tile, not how

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    wait_for_previous_kernel(PDL)
    if SPLIT:  # this program's one K slice -> its float32 partial; _sum_slices_kernel adds them
        s = tl.program_id(1)
        k_start = s * K_SLICE
        acc = _slice_dot(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, k_start, tl.minimum(k_start + K_SLICE, K),
                         stride_xm, stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, IEEE)
        part_ptrs = part_ptr + (s * M + offs_m.to(tl.int64))[:, None] * N + offs_n[None, :]
        tl.store(part_ptrs, acc, mask=m_mask[:, None] & n_mask[None, :])
    else:  # every slice in turn, summed in slice order: the same adds as _sum_slices_kernel's
        acc = _slice_dot(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, 0, tl.minimum(K_SLICE, K),
                         stride_xm, stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, IEEE)
        for s in tl.static_range(1, SLICES):
            acc += _slice_dot(x_ptr, w_ptr, offs_m, offs_n, m_mask, n_mask, s * K_SLICE,
                              tl.minimum((s + 1) * K_SLICE, K), stride_xm, stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, IEEE)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit(do_not_specialize=["M"])
def _sum_slices_kernel(part_ptr, bias_ptr, y_ptr, M, N, stride_ym, SLICES: tl.constexpr, BLOCK: tl.constexpr,
                       HAS_BIAS: tl.constexpr, PDL: tl.constexpr):
    """y = (((p_0 + p_1) + p_2) ... + bias) in x's dtype: the partials (SLICES, M, N) added in slice order."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # flat (m, n)
    size = M.to(tl.int64) * N  # elements of one slice's partial
    mask = offs < size
    wait_for_previous_kernel(PDL)
    acc = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, SLICES):
        acc += tl.load(part_ptr + s * size + offs, mask=mask, other=0.0)
    n = offs % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + (offs // N) * stride_ym + n, acc.to(y_ptr.dtype.element_ty), mask=mask)


def matmul_supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `invariant_matmul` handles x (M, K) @ weight (N, K)^T (+ bias (N,))."""
    return (
        x.dim() == 2 and weight.dim() == 2 and weight.shape[1] == x.shape[1]
        and x.dtype in SUPPORTED_DTYPES and weight.dtype == x.dtype
        and x.stride(1) == 1 and weight.stride(1) == 1 and weight.device == x.device
        and (bias is None or (bias.shape == (weight.shape[0],) and bias.is_contiguous() and bias.device == x.device))
    )


def invariant_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     config: TileConfig | None = None, pdl: bool = False, split: bool | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T (+ bias (N,)) -> (M, N) in x's dtype, every row batch-invariant.

    config: the tiles (default: gemm_tiles.rule_tile; the model passes its card's tuned table's entry,
    tests small ones for the interpreter);
    pdl: launch with programmatic dependent launch (`pdl.py`);
    split: run the config's K slices in programs of their own plus a summing kernel (None: up to the config's
    tuned split_max_m, else while the output tiles alone would leave multiprocessors idle). Either way gives
    the same bits."""
    if not matmul_supported(x, weight, bias):
        raise ValueError(
            f"invariant_matmul needs x (M, K) and weight (N, K) of one dtype in fp16 / bf16 / fp32 with a "
            f"contiguous last dim (and bias (N,)); got x {tuple(x.shape)} {x.dtype}, weight "
            f"{tuple(weight.shape)} {weight.dtype}"
        )
    m, k = x.shape
    n = weight.shape[0]
    cfg = (config or rule_tile(n, k, x.dtype)).for_rows(m)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)  # (M, N)
    if m == 0:
        return y
    k_slice, slices = slice_bounds(k, cfg)
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    if split is None:
        split = m <= cfg.split_max_m if cfg.split_max_m is not None else tiles < _multiprocessors(x.device)
    split = split and slices > 1
    if cfg.tma and not split and tma_supported(x.device) and tma_shapes_ok(x, weight):
        return tma_invariant_matmul(x, weight, bias, cfg, k_slice, slices, pdl)
    part = torch.empty((slices, m, n), dtype=torch.float32, device=x.device) if split else y  # (S, M, N) partials
    bias_arg = bias if bias is not None else y
    _invariant_matmul_kernel[(tiles, slices if split else 1)](
        x, weight, bias_arg, y, part, m, n, k, k_slice, x.stride(0), weight.stride(0), y.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        SLICES=slices, SPLIT=split, HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, PDL=pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(pdl),
    )
    if split:
        _sum_slices_kernel[(triton.cdiv(m * n, _SUM_BLOCK),)](
            part, bias_arg, y, m, n, y.stride(0), SLICES=slices, BLOCK=_SUM_BLOCK, HAS_BIAS=bias is not None,
            PDL=pdl, **launch_options(pdl),
        )
    return y


_SUM_BLOCK = 1024


def slice_bounds(k: int, cfg: TileConfig) -> tuple[int, int]:
    """(slice length, number of slices) of a K of `k` under cfg.k_slices: slices of whole BLOCK_K steps,
    none of them empty."""
    k_slice = triton.cdiv(triton.cdiv(k, cfg.k_slices), cfg.block_k) * cfg.block_k
    return k_slice, triton.cdiv(k, k_slice)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (the interpreter's CPU: 1, i.e. never split by itself)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count
