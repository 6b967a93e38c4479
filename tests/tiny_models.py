"""Tiny random HF checkpoints (Llama, Qwen2, Qwen3, Mistral) for fast tests.

Shapes: hidden 64, 2 layers, 4 heads, 2 KV heads (GQA), head_dim 16, vocab 512, 512 positions.
Weights are drawn with `initializer_range` 0.2 so greedy logits are peaked (argmax ties unlikely), and
biases and RMSNorm weights are perturbed away from HF's zero / one init so a mis-mapped bias or norm
weight changes the output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

TINY_ARCHS: dict[str, tuple[type, type]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}

TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    max_position_embeddings=512,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def make_tiny_config(arch: str, **overrides):
    """The HF config of a tiny `arch` model ("llama", "qwen2", "qwen3", "mistral"); overrides win."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {', '.join(TINY_ARCHS)}")
    config_cls, model_cls = TINY_ARCHS[arch]
    kwargs = {**TINY_SHAPE, "architectures": [model_cls.__name__], **overrides}
    if arch == "qwen2":
        kwargs.pop("head_dim", None)  # Qwen2 derives head_dim from hidden_size / heads
    return config_cls(**kwargs)


def make_tiny_hf_model(arch: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny random HF causal LM in float32, eval mode, deterministic in `seed`."""
    config = make_tiny_config(arch, **overrides)
    _, model_cls = TINY_ARCHS[arch]
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * config.initializer_range)
            elif "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
    return model


def make_tiny_checkpoint(tmp_path: Path | str, arch: str, seed: int = 0, **overrides) -> Path:
    """Save a tiny random `arch` model (safetensors + config.json) under tmp_path; return its directory."""
    model = make_tiny_hf_model(arch, seed, **overrides)
    out = Path(tmp_path) / f"tiny-{arch}-seed{seed}"
    model.save_pretrained(out)
    return out


def make_perturbed_checkpoint(tmp_path: Path | str, arch: str, seed: int = 0, noise: float = 0.05) -> Path:
    """The tiny `arch` model of `seed` with every weight nudged by `noise` x N(0, 1): a draft model that
    agrees with its target often but not always (partial acceptance)."""
    model = make_tiny_hf_model(arch, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * noise)
    out = Path(tmp_path) / f"tiny-{arch}-seed{seed}-noise{noise}"
    model.save_pretrained(out)
    return out
