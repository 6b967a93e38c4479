"""Presets: real architecture shapes (checked against published parameter counts), no weights allocated."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from dynaspec.models.presets import PRESET_NAMES, get_preset_config, num_parameters
from dynaspec.models.registry import resolve_model_class

# Published sizes (model cards / technical reports), in billions of parameters.
PUBLISHED_B = {
    "llama-3.1-8b": 8.03,
    "llama-3.2-1b": 1.24,
    "llama-3.2-3b": 3.21,
    "qwen2.5-0.5b": 0.494,
    "qwen2.5-1.5b": 1.54,
    "qwen2.5-7b": 7.62,
    "qwen3-0.6b": 0.596,
    "qwen3-8b": 8.19,
}


def test_required_presets_exist():
    assert {"llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b", "qwen2.5-0.5b"} <= set(PRESET_NAMES)
    assert set(PUBLISHED_B) == set(PRESET_NAMES)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_parameter_count_matches_published_size(name):
    count = num_parameters(get_preset_config(name))
    assert count / 1e9 == pytest.approx(PUBLISHED_B[name], rel=0.006)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_shape_arithmetic_matches_hf_and_our_model_on_meta(name):
    config = get_preset_config(name)
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(config)
    # RoPE scaling does not change shapes; llama3 frequency init cannot run on the meta device.
    plain_rope = get_preset_config(name)
    plain_rope.rope_parameters = {"rope_type": "default", "rope_theta": config.rope_parameters["rope_theta"]}
    with torch.device("meta"):
        ours = resolve_model_class(plain_rope)(plain_rope)
    hf_count = sum(p.numel() for p in hf_model.parameters())
    our_count = sum(p.numel() for p in ours.parameters())
    assert num_parameters(config) == hf_count == our_count


def test_llama_31_8b_shape():
    c = get_preset_config("llama-3.1-8b")
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (4096, 14336, 32)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size) == (32, 8, 128, 128256)
    assert c.tie_word_embeddings is False
    rope = c.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0 and rope["rope_theta"] == 500000.0
    assert c.architectures == ["LlamaForCausalLM"]


def test_qwen_shapes():
    small = get_preset_config("qwen2.5-0.5b")
    assert (small.hidden_size, small.num_attention_heads, small.num_key_value_heads) == (896, 14, 2)
    assert small.tie_word_embeddings is True and small.architectures == ["Qwen2ForCausalLM"]
    big = get_preset_config("qwen2.5-7b")
    assert (big.hidden_size, big.num_key_value_heads, big.vocab_size) == (3584, 4, 152064)
    assert big.tie_word_embeddings is False
    assert get_preset_config("qwen3-8b").architectures == ["Qwen3ForCausalLM"]


def test_each_call_returns_a_fresh_config():
    first = get_preset_config("llama-3.2-1b")
    first.num_hidden_layers = 1
    assert get_preset_config("llama-3.2-1b").num_hidden_layers == 16


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="random:llama-3.1-8b") as err:
        get_preset_config("llama-9000")
    assert "llama-9000" in str(err.value)
