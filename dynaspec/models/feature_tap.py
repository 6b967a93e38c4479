"""The target-side capture of hidden states for an EAGLE-3 draft head (Li et al. 2025, arXiv 2503.01840).

EAGLE-3 feeds its draft head the target's residual stream after a low, a middle and a high decoder layer
of the token before. The target computes those in the forward it runs anyway (prefill, plain decode,
verify), so the FeatureTap writes them there: per tapped layer, a (num_slots, hidden) tensor paged exactly
like the KV cache (the same slot of the same block table: `meta.slot_mapping`, scratch block included),
written inside the forward, so captured CUDA graphs capture the write too. Features of rejected verify
positions are overwritten later, exactly like their K/V; features of a block reused by the prefix cache
were written by the forward that wrote its K/V. The stream after layer i is the sum that layer i + 1's
input norm computes in its fused residual add (the final norm's, after the last layer), so that kernel also
stores its rows at the tap's slots (models/rms_norm.py, fused_ops.rms_norm): a k = 0 step pays the stores,
not a launch. A drafter that missed tokens reads their features by slot when it catches up.

`layers_to_capture` follows TensorRT-LLM's `eagle3_layers_to_capture`: index i is the residual stream
AFTER decoder layer i (HF's `hidden_states[i + 1]`); the default (1, L/2 - 1, L - 4) is vLLM's (2, L/2,
L - 3) counted as layer inputs.
"""

from __future__ import annotations

import torch
from torch import nn


def default_layers_to_capture(num_layers: int) -> tuple[int, ...]:
    """EAGLE-3's low / middle / high layers (1, L // 2 - 1, L - 4), clamped into range and deduplicated
    for models with fewer than 5 layers."""
    picks = (1, num_layers // 2 - 1, num_layers - 4)
    return tuple(sorted({min(max(i, 0), num_layers - 1) for i in picks}))


def check_layers_to_capture(layers: tuple[int, ...] | list[int], num_layers: int) -> tuple[int, ...]:
    """The layers as a sorted tuple; ValueError unless they are distinct indices in 0 .. num_layers - 1."""
    layers = tuple(int(i) for i in layers)
    if not layers:
        raise ValueError("layers_to_capture must name at least one decoder layer")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers_to_capture {list(layers)} names a layer more than once")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers_to_capture {list(layers)}: {bad} not in 0 .. {num_layers - 1} (the target's layers)")
    return tuple(sorted(layers))


def supports_feature_tap(model: nn.Module) -> bool:
    """True when `model`'s decoder runs LlamaModel.forward, the forward that calls the tap (Llama, Qwen2,
    Mistral, Qwen3; not Gemma 3, whose decoder has its own forward)."""
    from dynaspec.models.llama import LlamaModel

    decoder = getattr(model, "model", None)
    return isinstance(decoder, LlamaModel) and type(decoder).forward is LlamaModel.forward


def feature_bytes_per_block(hidden_size: int, num_layers: int, block_size: int, dtype: torch.dtype) -> int:
    """Bytes the features of one block of `block_size` slots take: num_layers x hidden values per slot."""
    return num_layers * hidden_size * block_size * torch.empty((), dtype=dtype).element_size()


class FeatureTap:
    """Per tapped layer a (num_slots, hidden) tensor; the target's decoder calls `record` after each layer.

    num_slots = (num_blocks + 1) * block_size: the engine's blocks plus the scratch block that padded
    CUDA-graph positions write to.
    """

    def __init__(self, layers: tuple[int, ...], hidden_size: int, num_slots: int, dtype: torch.dtype,
                 device: torch.device):
        self.layers = tuple(layers)
        self.hidden_size = hidden_size
        self.num_slots = num_slots
        self.caches = [torch.zeros(num_slots, hidden_size, dtype=dtype, device=device) for _ in self.layers]

    @property
    def feature_size(self) -> int:
        """Width of one slot's features: len(layers) x hidden."""
        return len(self.layers) * self.hidden_size

    def stores(self, slot_mapping: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """tapped layer -> (its cache (num_slots, hidden), slot_mapping (T,)): where the norm that sums the
        stream after that layer stores it (models/rms_norm.py `forward_add`). No host synchronisation."""
        return {layer: (cache, slot_mapping) for layer, cache in zip(self.layers, self.caches)}

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        """slots (N,) int64 -> the features stored there, (N, len(layers) x hidden), layers side by side."""
        return torch.cat([cache.index_select(0, slots) for cache in self.caches], dim=-1)


def install_feature_tap(model: nn.Module, tap: FeatureTap | None) -> None:
    """Make `model`'s decoder (a LlamaForCausalLM-like model) write its features through `tap` (None: stop).
    The tap is a property of the model object: every engine sharing these weights writes through it.
    Capture CUDA graphs after installing it."""
    if tap is not None and not supports_feature_tap(model):
        raise ValueError(
            f"{type(model).__name__} cannot feed an EAGLE head: its decoder does not run the forward that "
            "records hidden states (supported: Llama, Qwen2, Mistral, Qwen3)"
        )
    model.model.feature_tap = tap
