"""What LLMEngine needs once, at construction: limits, reserves and stop ids read from the loaded model,
and the check that a model shared between engines is the one an engine was configured with."""

from __future__ import annotations

import torch

from dynaspec.config import EngineConfig
from dynaspec.models.loader import LoadedModel


def resolve_max_model_len(config: EngineConfig, loaded: LoadedModel) -> int:
    """config.max_model_len (at most the model's max_position_embeddings), else min(that, 8192)."""
    model_limit = int(getattr(loaded.hf_config, "max_position_embeddings", 4096) or 4096)
    if config.max_model_len is not None and config.max_model_len > model_limit:
        raise ValueError(
            f"max_model_len={config.max_model_len} exceeds the model's max_position_embeddings={model_limit}"
        )
    return config.max_model_len or min(model_limit, 8192)


def activation_reserve(config: EngineConfig, loaded: LoadedModel, device: torch.device) -> int:
    """GPU bytes kept free for CUDA graphs, activations and logits of the largest decode step: per token
    its bf16 and float32 logits inside the graph pool plus the graphs' static float32 output buffer
    (runtime/cuda_graphs.py; ragged graphs share it), and the layer activations."""
    if device.type != "cuda":
        return 0
    cfg = loaded.hf_config
    spec = config.speculative_config
    tokens = min(config.max_num_seqs, config.cuda_graph_max_batch) * (1 + (spec.max_draft_len if spec else 0))
    tokens = max(tokens, config.max_num_batched_tokens)
    per_token = 12 * cfg.vocab_size + 2 * (16 * cfg.hidden_size + 6 * cfg.intermediate_size)
    return tokens * per_token + (1 << 30)


def eos_ids(loaded: LoadedModel) -> set[int]:
    """End-of-sequence ids from the model config, its generation config and its tokenizer."""
    ids: set[int] = set()
    for source in (loaded.hf_config, getattr(loaded, "generation_config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if loaded.tokenizer is not None and loaded.tokenizer.eos_token_id is not None:
        ids.add(int(loaded.tokenizer.eos_token_id))
    return ids


def check_shared_model(loaded: LoadedModel, model: str, dtype: torch.dtype, device: torch.device) -> None:
    """ValueError unless `loaded` is `model` in `dtype` on `device` (an engine sharing another's weights)."""
    if not isinstance(loaded, LoadedModel):
        raise TypeError(f"loaded must be a LoadedModel (engine.loaded of another engine), got {type(loaded).__name__}")
    param = next(loaded.model.parameters())
    same_device = param.device.type == device.type and (device.index is None or param.device.index == device.index)
    if loaded.spec != model or param.dtype != dtype or not same_device:
        raise ValueError(
            f"a shared model must be the engine's model in its dtype on its device: the engine wants {model!r} "
            f"{dtype} on {device}, the loaded model is {loaded.spec!r} {param.dtype} on {param.device}"
        )
