"""Sizing and allocation of the per-layer paged KV tensors.

Layout per layer: (2, num_blocks, block_size, num_kv_heads, head_dim), K at index 0 and V at 1 (see
models/attention_metadata.py). A draft model shares the target's block tables, so its KV tensors have
the same num_blocks and both models' bytes count against one budget.
"""

from __future__ import annotations

import torch
from torch import nn


def kv_bytes_per_block(model: nn.Module, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block of `block_size` slots takes across all layers of `model`."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * elem


def allocate_kv_cache(
    model: nn.Module, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """One zero-filled (2, num_blocks, block_size, num_kv_heads, head_dim) tensor per layer."""
    shape = (2, num_blocks, block_size, model.num_kv_heads, model.head_dim)
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(model.num_layers)]


def choose_num_blocks(
    bytes_per_block: int,
    device: torch.device,
    block_size: int,
    max_num_seqs: int,
    max_model_len: int,
    gpu_memory_utilization: float,
    reserved_bytes: int = 0,
    cpu_budget_bytes: int = 4 << 30,
) -> int:
    """How many blocks fit.

    CUDA: what is left of `gpu_memory_utilization` x total memory after weights (already allocated)
    and `reserved_bytes` (CUDA graphs, activations). CPU: enough for every sequence at full length,
    capped by `cpu_budget_bytes`.
    """
    blocks_for_all = max_num_seqs * ((max_model_len + block_size - 1) // block_size)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = total - free
        budget = int(total * gpu_memory_utilization) - used - reserved_bytes
        if budget < bytes_per_block:
            raise ValueError(
                f"no GPU memory left for the KV cache: budget {budget / 2**30:.2f} GiB after weights; "
                "raise gpu_memory_utilization or use a smaller model"
            )
        return max(1, min(budget // bytes_per_block, blocks_for_all))
    return max(1, min(cpu_budget_bytes // bytes_per_block, blocks_for_all))
