"""Gemma 3 text decoder (`Gemma3ForCausalLM`, model_type `gemma3_text`) over a flat batch and paged KV.

Gemma 3 (Gemma Team 2025, arXiv 2503.19786); mirrors HF transformers' `models/gemma3/modeling_gemma3.py`
(same parameter names, so an HF state dict loads by name) on top of the Llama block of llama.py:
- token embeddings scaled by sqrt(hidden_size), the scale rounded to the weight dtype as HF does
  (`Gemma3TextScaledWordEmbedding`);
- RMSNorm computed in float32 with a `(1 + weight)` gain, cast back after the product (`Gemma3RMSNorm`);
- per-head RMSNorm on q and k before RoPE (as Qwen3), attention scale `query_pre_attn_scalar ** -0.5`;
- a sandwich block: input norm -> attention -> post-attention norm -> residual add, then pre-feedforward
  norm -> GeGLU MLP (`gelu_pytorch_tanh`) -> post-feedforward norm -> residual add;
- local / global attention: `config.layer_types[i]` ("sliding_attention" on five of every six layers,
  "full_attention" on every 6th) with `config.sliding_window`; local layers use RoPE base
  `rope_parameters["sliding_attention"]` (the old `rope_local_base_freq`, 10k), global ones
  `rope_parameters["full_attention"]` (`rope_theta`, 1M, with the scaling of the larger models);
- optional final logit soft-capping `tanh(logits / cap) * cap`.

Sliding-window layers read the same paged KV cache as the full ones; `paged_attention` masks keys at
distance >= window, on the torch SDPA path and in the CUDA Triton decode kernel alike. The KV blocks of a
sequence are all kept (out-of-window blocks are not freed), so memory is that of full attention.

On CUDA the q/k norms and RoPE run as torch ops, not inside `fused_ops.rope_qk_` (whose norm multiplies by
`weight`, not `1 + weight`), and the norms stay on the torch path for the same reason.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from dynaspec.models.attention_metadata import AttentionMetadata
from dynaspec.models.invariant_linear import mean_square
from dynaspec.models.llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    config_head_dim,
)
from dynaspec.models.rms_norm import RMSNorm
from dynaspec.models.rope import RotaryEmbedding

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


class Gemma3RMSNorm(RMSNorm):
    """HF's Gemma3RMSNorm: float32 x * rsqrt(mean(x^2) + eps) * (1 + weight), then cast to x's dtype.

    (Llama casts before the gain; Gemma after, transformers PR 29402.) Always the torch path: the Triton
    RMSNorm kernel of fused_ops applies `weight`, not `1 + weight`.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__(dim, eps)
        with torch.no_grad():
            self.weight.zero_()  # HF's init: a gain of 1 + 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> normalised (..., dim) in x's dtype."""
        h = x.float()
        h = h * torch.rsqrt(mean_square(h, self.decode_kernels.deterministic) + self.variance_epsilon)
        return (h * (1.0 + self.weight.float())).type_as(x)

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual (T, dim) -> (norm(residual + x), residual + x)."""
        summed = residual + x
        return self(summed), summed


class Gemma3Attention(LlamaAttention):
    """Llama attention with Gemma's q/k norms, scale query_pre_attn_scalar^-0.5 and per-layer window."""

    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)  # sliding_window from config.layer_types[layer_idx]
        if getattr(config, "attn_logit_softcapping", None) is not None:
            raise ValueError(
                "attn_logit_softcapping is not supported by dynaspec's paged attention (Gemma 3 checkpoints "
                f"set it to null); got {config.attn_logit_softcapping}"
            )
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("use_bidirectional_attention (EmbeddingGemma) is not supported: dynaspec decodes causally")
        self.layer_type = _layer_types(config)[layer_idx]
        self.scaling = float(config.query_pre_attn_scalar) ** -0.5
        self.q_norm = Gemma3RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = Gemma3RMSNorm(self.head_dim, config.rms_norm_eps)

    def transform_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (T, H, D), k (T, Hkv, D) -> normalised per head (before RoPE)."""
        return self.q_norm(q), self.k_norm(k)

    def _fused_rope(self, q, k, v, cos, sin, kv_cache, slot_mapping) -> tuple[bool, bool]:
        """Never fused: the Triton RoPE kernel's q/k norm has no `1 + weight` gain (torch path instead)."""
        return False, False


class Gemma3DecoderLayer(nn.Module):
    """Gemma's sandwich block in the residual-beside-the-output form of LlamaDecoderLayer.

    forward(x, residual) takes the previous block's output x and the residual stream before it (None at
    layer 0) and returns (post_feedforward_norm(mlp(...)), stream), so each residual add is the next
    norm's `forward_add`, exactly the HF order `residual + hidden_states`.
    """

    def __init__(self, config: PretrainedConfig, layer_idx: int, attention_cls: type[LlamaAttention]) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.layer_type = _layer_types(config)[layer_idx]
        self.self_attn = attention_cls(config, layer_idx)
        self.mlp = LlamaMLP(config, hidden_act=getattr(config, "hidden_activation", None))
        self.input_layernorm = Gemma3RMSNorm(hidden, eps)
        self.post_attention_layernorm = Gemma3RMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = Gemma3RMSNorm(hidden, eps)
        self.post_feedforward_layernorm = Gemma3RMSNorm(hidden, eps)

    def forward(self, x, residual, cos, sin, kv_cache, meta):
        """x, residual (T, hidden); cos, sin (T, D) of this layer's RoPE -> (T, hidden) x 2."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm.forward_add(x, residual)
        attn = self.post_attention_layernorm(self.self_attn(h, cos, sin, kv_cache, meta))  # (T, hidden)
        h, residual = self.pre_feedforward_layernorm.forward_add(attn, residual)
        return self.post_feedforward_layernorm(self.mlp(h)), residual


class Gemma3Model(LlamaModel):
    """Scaled embedding, Gemma 3 blocks with local / global RoPE tables, final norm (HF's `model.`)."""

    decoder_layer_cls = Gemma3DecoderLayer
    norm_cls = Gemma3RMSNorm

    def __init__(self, config: PretrainedConfig, attention_cls: type[LlamaAttention]) -> None:
        super().__init__(config, attention_cls)  # rotary_emb: the global (full-attention) RoPE
        head_dim = config_head_dim(config)
        self.rotary_emb = RotaryEmbedding(config, head_dim, FULL_ATTENTION)
        self.rotary_emb_local = RotaryEmbedding(config, head_dim, SLIDING_ATTENTION)
        self.embed_scale = float(config.hidden_size) ** 0.5

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions (T,) -> final-normed hidden (T, hidden)."""
        x = self.embed_tokens(input_ids)  # (T, hidden)
        # HF multiplies by a buffer cast to the weight dtype: sqrt(640) = 25.298 becomes 25.25 in bfloat16.
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype).item()
        tables = {
            FULL_ATTENTION: self.rotary_emb(positions, x.dtype),  # (T, D) each
            SLIDING_ATTENTION: self.rotary_emb_local(positions, x.dtype),
        }
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            cos, sin = tables[layer.layer_type]
            x, residual = layer(x, residual, cos, sin, kv_cache, meta)
        if residual is None:  # no layers
            return self.norm(x)
        return self.norm.forward_add(x, residual)[0]


class Gemma3ForCausalLM(LlamaForCausalLM):
    """HF `Gemma3ForCausalLM` (text-only Gemma 3, e.g. gemma-3-270m / 1b) over a flat batch with paged KV.

    Embeddings are tied (HF default); logits are soft-capped when `config.final_logit_softcapping` is set.
    """

    attention_cls = Gemma3Attention
    model_cls = Gemma3Model

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden) -> logits (N, vocab) float32, soft-capped as HF does when configured."""
        logits = super().compute_logits(hidden)
        if self.final_logit_softcapping is not None:
            cap = float(self.final_logit_softcapping)
            logits = torch.tanh(logits / cap) * cap
        return logits


def _layer_types(config: PretrainedConfig) -> list[str]:
    """config.layer_types, or HF's default pattern (every `sliding_window_pattern`-th layer global)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        if len(layer_types) != config.num_hidden_layers:
            raise ValueError(
                f"config.layer_types has {len(layer_types)} entries for {config.num_hidden_layers} layers"
            )
        unknown = sorted(set(layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION})
        if unknown:
            raise ValueError(f"unknown layer types {unknown}; expected {FULL_ATTENTION!r} or {SLIDING_ATTENTION!r}")
        return list(layer_types)
    pattern = int(getattr(config, "sliding_window_pattern", 6))
    return [SLIDING_ATTENTION if (i + 1) % pattern else FULL_ATTENTION for i in range(config.num_hidden_layers)]
