"""Triton kernels for the small per-layer ops of a Llama-family decoder, CUDA-graph safe.

- `rms_norm`: RMSNorm (Zhang & Sennrich 2019), optionally fused with the residual add before it
  (the "fused_add_rms_norm" of vLLM / TensorRT-LLM): one kernel instead of ~6 elementwise ones; and
  optionally also storing the summed stream at given rows of a cache (the EAGLE feature tap: the stream
  after layer i is what layer i + 1's input norm adds up, so the tap costs no launch of its own).
- `rope_qk_`: rotary position embedding (Su et al. 2021, arXiv 2104.09864) of q and k in place, in one
  launch, optionally preceded by Qwen3's per-head q/k RMSNorm, and optionally also storing the rotated k
  and v into the paged KV cache at their slots (vLLM's `reshape_and_cache` folded into the RoPE launch):
  two fewer launches per layer, which is what a batch-1 decode step of a small model is made of.
- `silu_and_mul`: SwiGLU's act(gate) * up (Shazeer 2020) on the fused gate/up projection output.

Numerics follow HF transformers' eager modules op by op, including their roundings to the activation
dtype, so the result equals the torch path of `llama.py` up to float32 summation order:
RMSNorm (`LlamaRMSNorm`): h = x + residual rounded to dtype; variance in float32; h * rsqrt(var + eps)
rounded to dtype; times weight, rounded. RoPE (`apply_rotary_pos_emb`): q * cos and rotate_half(q) * sin
each rounded to dtype, then their sum rounded. SiLU-and-mul: silu(gate) rounded, times up, rounded.

Every wrapper takes tensors whose last dimension is contiguous (row strides are free), allocates its
outputs with the torch caching allocator and launches with shapes from Python ints only, so it can be
captured in a CUDA graph. The kernels also run under Triton's CPU interpreter (TRITON_INTERPRET=1),
which tests/test_fused_ops.py uses.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynaspec.models.pdl import launch_options, wait_for_previous_kernel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_NORM_DIM = 16384  # one program holds a whole row in registers


@triton.jit
def _round_to(x, dtype: tl.constexpr):
    """float32 x rounded to `dtype` (round to nearest even) and held in float32 again: what a torch op in that
    dtype does to its output before the next op reads it. bf16 rounds with integer ops: on an H100
    (2026-12-06) `x.to(tl.bfloat16).to(tl.float32)` feeding an add lost its rounding to an FMA contraction, so
    the RoPE kernel's results differed from HF's (x * cos + rotate_half(x) * sin in bf16) in ~27% of
    elements by one ulp. Finite values, infinities and NaNs keep their class."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    else:
        return x.to(dtype).to(tl.float32)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, store_ptr, slot_ptr,
    stride_x, stride_r, stride_o, stride_ro, stride_store,
    n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, STORE: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    dtype = out_ptr.dtype.element_ty
    wait_for_previous_kernel(PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(dtype)  # HF: hidden = residual + hidden, in the activation dtype
        tl.store(res_out_ptr + row * stride_ro + cols, s, mask=mask)
        if STORE:  # the summed stream also at row slot[row] of the store (the feature tap)
            slot = tl.load(slot_ptr + row).to(tl.int64)
            tl.store(store_ptr + slot * stride_store + cols, s.to(store_ptr.dtype.element_ty), mask=mask)
        x = s.to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    h = _round_to(x * tl.rsqrt(var + eps), dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (w * h).to(dtype), mask=mask)


@triton.jit
def _rope_qk_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, v_ptr, slot_ptr, k_cache_ptr, v_cache_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_ct, stride_st, stride_vt, stride_vh,
    stride_cache_slot, stride_cache_head,
    num_q_heads, num_kv_heads, eps,
    HEAD_DIM: tl.constexpr, HALF_BLOCK: tl.constexpr, HAS_NORM: tl.constexpr, WRITE_KV: tl.constexpr,
    PDL: tl.constexpr,
):
    # Program (t, h): h < H rotates q head h; H <= h < H + Hkv rotates k head h - H (and, with WRITE_KV,
    # stores it at slot[t] of the K cache); h >= H + Hkv (WRITE_KV only) copies v head h - H - Hkv to the
    # V cache.
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    half: tl.constexpr = HEAD_DIM // 2
    d = tl.arange(0, HALF_BLOCK)
    mask = d < half
    dtype = q_ptr.dtype.element_ty
    wait_for_previous_kernel(PDL)
    if h < num_q_heads + num_kv_heads:
        is_q = h < num_q_heads
        q_base = q_ptr + t * stride_qt + h.to(tl.int64) * stride_qh
        k_base = k_ptr + t * stride_kt + (h - num_q_heads).to(tl.int64) * stride_kh
        base = tl.where(is_q, q_base, k_base)
        x1 = tl.load(base + d, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(base + half + d, mask=mask, other=0.0).to(tl.float32)
        if HAS_NORM:  # Qwen3: per-head RMSNorm before RoPE
            var = (tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / HEAD_DIM
            inv = tl.rsqrt(var + eps)
            w1 = tl.where(is_q, tl.load(qw_ptr + d, mask=mask, other=0.0), tl.load(kw_ptr + d, mask=mask, other=0.0))
            w2 = tl.where(is_q, tl.load(qw_ptr + half + d, mask=mask, other=0.0),
                          tl.load(kw_ptr + half + d, mask=mask, other=0.0))
            x1 = _round_to(w1.to(tl.float32) * _round_to(x1 * inv, dtype), dtype)
            x2 = _round_to(w2.to(tl.float32) * _round_to(x2 * inv, dtype), dtype)
        c1 = tl.load(cos_ptr + t * stride_ct + d, mask=mask, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + t * stride_ct + half + d, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + t * stride_st + d, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + t * stride_st + half + d, mask=mask, other=0.0).to(tl.float32)
        # x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1), each product rounded as HF does.
        o1 = (_round_to(x1 * c1, dtype) + _round_to(-x2 * s1, dtype)).to(dtype)
        o2 = (_round_to(x2 * c2, dtype) + _round_to(x1 * s2, dtype)).to(dtype)
        tl.store(base + d, o1, mask=mask)
        tl.store(base + half + d, o2, mask=mask)
        if WRITE_KV:
            if h >= num_q_heads:
                slot = tl.load(slot_ptr + t).to(tl.int64)
                dst = k_cache_ptr + slot * stride_cache_slot + (h - num_q_heads).to(tl.int64) * stride_cache_head
                tl.store(dst + d, o1, mask=mask)
                tl.store(dst + half + d, o2, mask=mask)
    else:
        hv = (h - num_q_heads - num_kv_heads).to(tl.int64)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        src = v_ptr + t * stride_vt + hv * stride_vh
        dst = v_cache_ptr + slot * stride_cache_slot + hv * stride_cache_head
        tl.store(dst + d, tl.load(src + d, mask=mask, other=0.0), mask=mask)
        tl.store(dst + half + d, tl.load(src + half + d, mask=mask, other=0.0), mask=mask)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_o, n_cols,
    BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dtype = out_ptr.dtype.element_ty
    wait_for_previous_kernel(PDL)
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    a = _round_to(g / (1.0 + tl.exp(-g)), dtype)
    tl.store(out_ptr + row * stride_o + cols, (a * u).to(dtype), mask=mask)


def rms_norm_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `rms_norm` handles x (T, N) with this weight (N,): same float dtype, N <= MAX_NORM_DIM."""
    return (
        x.dim() == 2
        and x.dtype in SUPPORTED_DTYPES
        and weight.dtype == x.dtype
        and weight.shape == (x.shape[1],)
        and x.shape[1] <= MAX_NORM_DIM
        and x.stride(-1) == 1
        and weight.is_contiguous()
    )


def store_supported(x: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor) -> bool:
    """Whether `rms_norm` can store x's (T, N) rows in cache (S, N) at slots (T,)."""
    return (
        cache.dim() == 2 and cache.shape[1] == x.shape[1] and cache.stride(-1) == 1
        and cache.dtype in SUPPORTED_DTYPES and cache.device == x.device == slots.device
        and slots.dim() == 1 and slots.shape[0] == x.shape[0] and slots.dtype in (torch.int32, torch.int64)
        and slots.is_contiguous()
    )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, pdl: bool = False,
    store: tuple[torch.Tensor, torch.Tensor] | None = None, out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of x (T, N) (or of x + residual) -> (normed (T, N), x + residual (T, N) or None).
    pdl: launch with programmatic dependent launch (`pdl.py`). store = (cache (S, N), slots (T,)): also write
    x + residual's row t at cache row slots[t] (needs a residual; check with `store_supported`). out: a (T, N)
    tensor of x's dtype with a contiguous last dim (a column slice of a wider buffer) to write the normed rows
    into, instead of a new one."""
    if not rms_norm_supported(x, weight):
        raise ValueError(
            f"rms_norm needs x (T, N) in fp16/bf16/fp32 with N <= {MAX_NORM_DIM}, last dim contiguous, and a "
            f"contiguous weight (N,) of x's dtype; got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} "
            f"{weight.dtype}"
        )
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or residual.stride(-1) != 1):
        raise ValueError(
            f"residual must match x {tuple(x.shape)} {x.dtype} with a contiguous last dim; "
            f"got {tuple(residual.shape)} {residual.dtype}"
        )
    if store is not None and (residual is None or not store_supported(x, *store)):
        raise ValueError(
            f"store needs a residual and a cache (S, {x.shape[1]}) with contiguous rows on x's device, and slots "
            f"({x.shape[0]},) int32/int64; got residual {residual is not None}, "
            f"cache {tuple(store[0].shape)}, slots {tuple(store[1].shape)} {store[1].dtype}"
        )
    num_rows, n_cols = x.shape
    if out is None:
        out = torch.empty((num_rows, n_cols), dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or out.stride(-1) != 1 or out.device != x.device:
        raise ValueError(f"out must be {tuple(x.shape)} {x.dtype} on x's device with a contiguous last dim; got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    res_out = torch.empty((num_rows, n_cols), dtype=x.dtype, device=x.device) if residual is not None else None
    if num_rows == 0:
        return out, res_out
    block = triton.next_power_of_2(n_cols)
    res_in = residual if residual is not None else x
    res_dst = res_out if res_out is not None else out
    cache, slots = store if store is not None else (out, out)  # unused without STORE
    _rms_norm_kernel[(num_rows,)](
        x, res_in, weight, out, res_dst, cache, slots,
        x.stride(0), res_in.stride(0), out.stride(0), res_dst.stride(0), cache.stride(0),
        n_cols, float(eps),
        HAS_RESIDUAL=residual is not None, STORE=store is not None, BLOCK=block, PDL=pdl,
        num_warps=min(16, max(1, block // 256)), **launch_options(pdl),
    )
    return out, res_out


def rope_supported(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether `rope_qk_` handles q (T, H, D), k (T, Hkv, D) with cos (T, D)."""
    return (
        q.dim() == 3 and k.dim() == 3 and cos.dim() == 2
        and q.dtype in SUPPORTED_DTYPES and k.dtype == q.dtype
        and q.shape[0] == k.shape[0] == cos.shape[0]
        and q.shape[2] == k.shape[2] == cos.shape[1]
        and q.shape[2] % 2 == 0
        and q.stride(-1) == 1 and k.stride(-1) == 1 and cos.stride(-1) == 1
    )


def kv_write_supported(q: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> bool:
    """Whether `rope_qk_` can also store k / v (T, Hkv, D) into kv_cache (2, NB, BS, Hkv, D) at slot_mapping."""
    return (
        v.dim() == 3 and v.dtype == q.dtype and v.stride(-1) == 1
        and kv_cache.dim() == 5 and kv_cache.dtype == q.dtype and kv_cache.is_contiguous()
        and kv_cache.shape[0] == 2 and tuple(kv_cache.shape[3:]) == tuple(v.shape[1:])
        and slot_mapping.dim() == 1 and slot_mapping.shape[0] == v.shape[0]
        and slot_mapping.dtype in (torch.int32, torch.int64) and slot_mapping.is_contiguous()
        and kv_cache.device == q.device == slot_mapping.device
    )


def rope_qk_(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    norm_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-6,
    kv_write: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    pdl: bool = False,
) -> None:
    """Rotate q (T, H, D) and k (T, Hkv, D) in place by cos / sin (T, D) (HF layout: halves repeated).

    `norm_weights` = (q_norm weight (D,), k_norm weight (D,)) first applies Qwen3's per-head RMSNorm.
    `kv_write` = (v (T, Hkv, D), kv_cache (2, NB, BS, Hkv, D), slot_mapping (T,)) also stores the rotated
    k and v at those flat slots of the cache, as attention.write_kv_cache would (check with
    `kv_write_supported`). pdl: launch with programmatic dependent launch (`pdl.py`).
    """
    if not rope_supported(q, k, cos) or sin.shape != cos.shape or sin.stride(-1) != 1:
        raise ValueError(
            f"rope_qk_ needs q (T, H, D), k (T, Hkv, D) of one fp16/bf16/fp32 dtype, even D, cos / sin (T, D), "
            f"last dims contiguous; got q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype}, "
            f"cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    head_dim = q.shape[2]
    if norm_weights is not None:
        qw, kw = norm_weights
        if qw.shape != (head_dim,) or kw.shape != (head_dim,) or not (qw.is_contiguous() and kw.is_contiguous()):
            raise ValueError(f"norm weights must be contiguous ({head_dim},); got {tuple(qw.shape)}, {tuple(kw.shape)}")
    else:
        qw = kw = cos  # unused
    num_tokens, num_heads, num_kv_heads = q.shape[0], q.shape[1], k.shape[1]
    if kv_write is not None:
        v, kv_cache, slots = kv_write
        if not kv_write_supported(q, v, kv_cache, slots) or v.shape != k.shape:
            raise ValueError(
                f"rope_qk_ kv_write needs v shaped like k {tuple(k.shape)} in q's dtype, a contiguous "
                f"(2, NB, BS, Hkv, D) cache of that dtype and (T,) int slots; got v {tuple(v.shape)} {v.dtype}, "
                f"cache {tuple(kv_cache.shape)} {kv_cache.dtype}, slots {tuple(slots.shape)} {slots.dtype}"
            )
        flat = kv_cache.view(2, -1, num_kv_heads, head_dim)  # (2, NB*BS, Hkv, D)
        k_cache, v_cache = flat[0], flat[1]
        v_strides = (v.stride(0), v.stride(1))
    else:
        v = slots = k_cache = v_cache = q  # unused
        v_strides = (0, 0)
    if num_tokens == 0:
        return
    programs = num_heads + num_kv_heads * (2 if kv_write is not None else 1)
    _rope_qk_kernel[(num_tokens, programs)](
        q, k, cos, sin, qw, kw, v, slots, k_cache, v_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0), *v_strides,
        num_kv_heads * head_dim, head_dim,
        num_heads, num_kv_heads, float(eps),
        HEAD_DIM=head_dim, HALF_BLOCK=triton.next_power_of_2(head_dim // 2), HAS_NORM=norm_weights is not None,
        WRITE_KV=kv_write is not None, PDL=pdl,
        num_warps=1, enable_fp_fusion=False, **launch_options(pdl),  # no FMA: torch rounds x * cos first
    )


def silu_and_mul(x: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """x (T, 2I) = [gate | up] -> silu(gate) * up (T, I); pdl: launch with PDL (`pdl.py`)."""
    if x.dim() != 2 or x.shape[1] % 2 or x.dtype not in SUPPORTED_DTYPES or x.stride(-1) != 1:
        raise ValueError(
            f"silu_and_mul needs x (T, 2I) in fp16/bf16/fp32 with a contiguous last dim; got "
            f"{tuple(x.shape)} {x.dtype}"
        )
    num_rows, n_cols = x.shape[0], x.shape[1] // 2
    out = torch.empty((num_rows, n_cols), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    block = min(1024, triton.next_power_of_2(n_cols))
    _silu_and_mul_kernel[(num_rows, triton.cdiv(n_cols, block))](
        x, out, x.stride(0), out.stride(0), n_cols, BLOCK=block, PDL=pdl, num_warps=4, **launch_options(pdl),
    )
    return out
