"""Map an HF config's `architectures` entry to the dynaspec model class that serves it."""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from dynaspec.models.gemma3 import Gemma3ForCausalLM
from dynaspec.models.llama import LlamaForCausalLM
from dynaspec.models.qwen3 import Qwen3ForCausalLM

_MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_MODEL_CLASSES)


def resolve_model_class(hf_config: PretrainedConfig) -> type[nn.Module]:
    """The model class for the first supported name in `hf_config.architectures`.

    Raises ValueError naming the architecture(s) found and listing the supported ones.
    """
    architectures = list(getattr(hf_config, "architectures", None) or [])
    for arch in architectures:
        if arch in _MODEL_CLASSES:
            return _MODEL_CLASSES[arch]
    found = ", ".join(architectures) if architectures else "none (config.architectures is empty)"
    raise ValueError(
        f"unsupported model architecture: {found}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )
