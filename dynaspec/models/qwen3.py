"""Qwen3 decoder: the Llama block plus a per-head RMSNorm on q and k before RoPE.

Mirrors HF transformers' `modeling_qwen3.py` (parameter names `self_attn.q_norm.weight`,
`self_attn.k_norm.weight` of size head_dim); q/k/v/o biases follow `config.attention_bias`.
On CUDA the q/k norms run inside the RoPE kernel of `fused_ops.rope_qk_`; the torch path is `transform_qk`.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from dynaspec.models.llama import LlamaAttention, LlamaForCausalLM
from dynaspec.models.rms_norm import RMSNorm


class Qwen3Attention(LlamaAttention):
    """Llama attention with q_norm / k_norm over each head's D features."""

    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def qk_norms(self) -> tuple[RMSNorm, RMSNorm]:
        """(q_norm, k_norm): fused with RoPE into one kernel on CUDA (see LlamaAttention._fused_rope)."""
        return self.q_norm, self.k_norm

    def transform_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (T, H, D), k (T, Hkv, D) -> normalised per head."""
        return self.q_norm(q), self.k_norm(k)


class Qwen3ForCausalLM(LlamaForCausalLM):
    """HF `Qwen3ForCausalLM` checkpoints over a flat batch with paged KV."""

    attention_cls = Qwen3Attention
