"""RMSNorm (Zhang & Sennrich 2019), computed in float32 exactly as HF's LlamaRMSNorm, with the residual add
before it fused in (`forward_add`) and, for the EAGLE feature tap, the summed residual stream also stored
at given rows of a cache (models/feature_tap.py).

On CUDA one Triton kernel does all of it (fused_ops.rms_norm); on the CPU, in deterministic mode's torch
path and wherever autograd records (train-head trains an EAGLE head through these modules; the kernel has no
backward), torch ops compute the same numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from dynaspec.models.decode_kernels import DecodeKernels
from dynaspec.models.invariant_linear import mean_square


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record an op on these tensors (our Triton kernels have no backward)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 exactly as HF's LlamaRMSNorm."""

    decode_kernels = DecodeKernels()  # LlamaForCausalLM.set_decode_kernels sets it per module

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> normalised (..., dim); one Triton kernel for (T, dim) inputs on CUDA."""
        if x.is_cuda and x.dim() == 2 and not needs_grad(x, self.weight):
            from dynaspec.models import fused_ops  # Triton is only needed on CUDA

            if fused_ops.rms_norm_supported(x, self.weight):
                return fused_ops.rms_norm(x, self.weight, self.variance_epsilon,
                                          pdl=self.decode_kernels.dependent_launch)[0]
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(mean_square(h, self.decode_kernels.deterministic) + self.variance_epsilon)
        return self.weight * h.to(dtype)

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor,
                    store: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual (T, dim) -> (norm(x + residual), x + residual); one Triton kernel on CUDA.
        store = (cache (S, dim), slots (T,)): x + residual's rows also go to those cache rows."""
        if x.is_cuda and not needs_grad(x, residual, self.weight):
            from dynaspec.models import fused_ops

            if fused_ops.rms_norm_supported(x, self.weight) and residual.dtype == x.dtype \
                    and residual.stride(-1) == 1 and (store is None or fused_ops.store_supported(x, *store)):
                return fused_ops.rms_norm(x, self.weight, self.variance_epsilon, residual,
                                          pdl=self.decode_kernels.dependent_launch, store=store)
        summed = residual + x
        if store is not None and summed.shape[0] > 0:
            cache, slots = store
            cache.index_copy_(0, slots, summed.detach().to(cache.dtype))
        return self(summed), summed
