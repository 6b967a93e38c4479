"""Real architecture shapes with random weights, for timing on a GPU (`--model random:<preset>`).

The shapes are copied from the models' published HF `config.json` files (Meta Llama 3.1 / 3.2 model
cards; Qwen2.5 and Qwen3 technical reports, arXiv 2412.15115 and 2505.09388). Only the architecture is
real: the weights are noise, so the text a preset generates is meaningless, and every output made with
one says so (see `loader.load_model`). Timing an 8B shape needs no 16 GB download.

A preset is a transformers config object (LlamaConfig / Qwen2Config / Qwen3Config), built fresh on each
call so a caller may mutate it (e.g. shrink `num_hidden_layers` in a test) without affecting others. The
config classes are imported when a preset is built: importing any model-specific transformers config
pulls in transformers.activations and torch.distributed.tensor (~1 s of a 2-core CPU), which the loader,
importing this module for the preset names, must not pay on every start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

# Llama 3.1 / 3.2 frequency scaling ("llama3" rope type), from the published configs.
_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_LLAMA32_ROPE = {**_LLAMA31_ROPE, "factor": 32.0}
_LLAMA3_TOKENS = dict(vocab_size=128256, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
_QWEN_TOKENS = dict(bos_token_id=151643, eos_token_id=[151645, 151643])


def _llama(hidden, inter, layers, heads, kv_heads, rope_scaling, tie, head_dim=None) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=dict(rope_scaling),
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        **_LLAMA3_TOKENS,
    )


def _qwen2(hidden, inter, layers, heads, kv_heads, vocab, tie, max_pos=32768) -> Qwen2Config:
    from transformers import Qwen2Config

    return Qwen2Config(
        architectures=["Qwen2ForCausalLM"],
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        use_sliding_window=False,
        hidden_act="silu",
        initializer_range=0.02,
        **_QWEN_TOKENS,
    )


def _qwen3(hidden, inter, layers, heads, kv_heads, tie) -> Qwen3Config:
    from transformers import Qwen3Config

    return Qwen3Config(
        architectures=["Qwen3ForCausalLM"],
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        use_sliding_window=False,
        attention_bias=False,
        hidden_act="silu",
        initializer_range=0.02,
        **_QWEN_TOKENS,
    )


_PRESETS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama-3.1-8b": lambda: _llama(4096, 14336, 32, 32, 8, _LLAMA31_ROPE, tie=False),
    "llama-3.2-1b": lambda: _llama(2048, 8192, 16, 32, 8, _LLAMA32_ROPE, tie=True, head_dim=64),
    "llama-3.2-3b": lambda: _llama(3072, 8192, 28, 24, 8, _LLAMA32_ROPE, tie=True, head_dim=128),
    "qwen2.5-0.5b": lambda: _qwen2(896, 4864, 24, 14, 2, 151936, tie=True),
    "qwen2.5-1.5b": lambda: _qwen2(1536, 8960, 28, 12, 2, 151936, tie=True),
    "qwen2.5-7b": lambda: _qwen2(3584, 18944, 28, 28, 4, 152064, tie=False),
    "qwen3-0.6b": lambda: _qwen3(1024, 3072, 28, 16, 8, tie=True),
    "qwen3-8b": lambda: _qwen3(4096, 12288, 36, 32, 8, tie=False),
}

PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def get_preset_config(name: str) -> PretrainedConfig:
    """A fresh HF config of the preset `name` (e.g. "llama-3.1-8b"); ValueError naming the presets if unknown."""
    factory = _PRESETS.get(name)
    if factory is None:
        raise ValueError(
            f"unknown random preset {name!r}; available presets: "
            + ", ".join(f"random:{p}" for p in PRESET_NAMES)
        )
    return factory()


def num_parameters(config: PretrainedConfig) -> int:
    """Parameter count of a Llama / Qwen2 / Qwen3 decoder with this config, from the shapes alone.

    Counts embeddings, attention projections (+ q/k/v bias for Qwen2, q/k RMSNorm for Qwen3), the SwiGLU
    MLP, the RMSNorms, and `lm_head` unless the embeddings are tied. Allocates nothing.
    """
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    arch = (config.architectures or [""])[0]
    qkv_bias = arch == "Qwen2ForCausalLM" or bool(getattr(config, "attention_bias", False))
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attn = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    if qkv_bias:
        attn += q_out + 2 * kv_out
    if getattr(config, "attention_bias", False):  # Llama's attention_bias also covers o_proj
        attn += hidden
    if arch == "Qwen3ForCausalLM":
        attn += 2 * head_dim  # q_norm, k_norm
    mlp = 3 * hidden * inter + (2 * inter + hidden if getattr(config, "mlp_bias", False) else 0)
    layer = attn + mlp + 2 * hidden  # input / post-attention RMSNorm
    total = vocab * hidden + config.num_hidden_layers * layer + hidden
    if not config.tie_word_embeddings:
        total += vocab * hidden
    return total
