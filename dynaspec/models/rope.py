"""Rotary position embedding (RoPE; Su et al. 2021, arXiv 2104.09864) as HF's Llama computes it: the
frequencies from the config (default, linear, Llama-3 and YaRN scaling through transformers'
`ROPE_INIT_FUNCTIONS`), cos / sin tables for given positions (float32 math), and their application."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

# RoPE variants whose frequencies do not depend on the running sequence length.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_parameters(config: PretrainedConfig, layer_type: str | None = None) -> dict:
    """The RoPE settings as one dict with `rope_type` and `rope_theta`.

    transformers >= 5 keeps them in `config.rope_parameters`; older versions in `rope_theta` plus an
    optional `rope_scaling` dict whose type key may be `type`. Models with per-layer-type RoPE (Gemma 3:
    `rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}`) give the settings of
    `layer_type` (default "full_attention").
    """
    params = getattr(config, "rope_parameters", None)
    if params and all(isinstance(v, dict) for v in params.values()):  # keyed by layer type
        params = params.get(layer_type or "full_attention") or {}
    if params is None:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = dict(params)
    params["rope_type"] = params.get("rope_type", params.get("type", "default")) or "default"
    return params


class RotaryEmbedding(nn.Module):
    """cos / sin tables of RoPE for given positions, as HF's LlamaRotaryEmbedding (float32 math).

    `inv_freq` stays float32 whatever `.to(dtype)` / `.half()` / `to_empty()` does to the module: a
    bfloat16 inv_freq would put angle errors of ~position * 2^-9 radians into long contexts.
    """

    def __init__(self, config: PretrainedConfig, head_dim: int, layer_type: str | None = None) -> None:
        super().__init__()
        params = rope_parameters(config, layer_type)
        rope_type = params["rope_type"]
        if rope_type not in STATIC_ROPE_TYPES:
            raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {', '.join(STATIC_ROPE_TYPES)}")
        cpu = torch.device("cpu")  # explicit, so a `with torch.device("meta")` build still gets real values
        with cpu:  # the init functions make helper tensors on the default device too
            if rope_type == "default":
                base = float(params["rope_theta"])
                inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=cpu) / head_dim))
                self.attention_scaling = 1.0
            else:
                extra = {} if layer_type is None else {"layer_type": layer_type}
                inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](config, cpu, **extra)
        self._inv_freq_master = inv_freq.to(cpu, torch.float32)  # plain attribute: never cast by _apply
        # The buffer lives on the default device (a `with torch.device(...)` build), the master on CPU.
        self.register_buffer(
            "inv_freq", self._inv_freq_master.to(torch.get_default_device()), persistent=False
        )  # (D/2,)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.inv_freq.device.type != "meta":
            self.inv_freq = self._inv_freq_master.to(self.inv_freq.device)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) -> cos, sin (T, D) in `dtype`."""
        freqs = positions[:, None].float() * self.inv_freq.to(device=positions.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, heads, D), cos / sin (T, D) -> (T, heads, D)."""
    cos = cos[:, None, :]
    sin = sin[:, None, :]
    return x * cos + _rotate_half(x) * sin
