"""Sizing and allocation of the per-layer paged KV tensors.

Layout per layer: (2, num_blocks, block_size, num_kv_heads, head_dim), K at index 0 and V at 1 (see
models/attention_metadata.py). A draft model shares the target's block tables, so its KV tensors have
the same num_blocks and both models' bytes count against one budget.

Sizing (`choose_num_blocks`): on CUDA the pool takes what `gpu_memory_utilization` leaves after weights
and reserves, as vLLM does. Where memory is not the GPU's (CPU) the pool is sized by need, not by a fixed
budget: `max_num_seqs` sequences of `max_model_len` (+ draft slots) tokens, capped at
`CPU_KV_BUDGET_CAP` (1 GiB) or a quarter of the memory available now, whichever is smaller, but never below
one full-length sequence (the engine's minimum). The pool is zero-filled everywhere: an unwritten
(`torch.empty`) CPU pool made the draft model's fixed-shape chain path propose other tokens than the
step-by-step path from run to run (tests/test_chain_graphs.py), so some fixed-shape path reads a slot it
never wrote (its output is discarded, but not always harmlessly); zeros keep every path deterministic.
On CUDA `torch.zeros` fills it. On the CPU it is anonymous memory from the OS (`zeroed_host_tensor`),
which the kernel hands out as zero pages when first touched: the same zeros without writing a pool sized
for the longest sequences up front (torch.zeros took ~0.25 s of a 2-core CPU's start-up for the default
model's 1 GiB pool), and resident memory grows with the KV actually written.
"""

from __future__ import annotations

import math
import mmap
import os

import torch
from torch import nn

CPU_KV_BUDGET_CAP = 1 << 30  # bytes: the most a CPU pool takes by default
CPU_KV_MEMORY_FRACTION = 0.25  # of the memory available when the engine starts


def kv_bytes_per_block(model: nn.Module, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block of `block_size` slots takes across all layers of `model`."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * elem


def allocate_kv_cache(
    model: nn.Module, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """One zero-filled (2, num_blocks, block_size, num_kv_heads, head_dim) tensor per layer."""
    shape = (2, num_blocks, block_size, model.num_kv_heads, model.head_dim)
    if torch.device(device).type == "cpu":
        return [zeroed_host_tensor(shape, dtype) for _ in range(model.num_layers)]
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(model.num_layers)]


def zeroed_host_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of zeros over a private anonymous memory map: POSIX maps anonymous memory as zeros,
    and the kernel supplies each page when it is first touched, so nothing is written here. The tensor
    holds the map (torch.frombuffer keeps its buffer alive). torch.zeros where there is no such mmap."""
    numel = math.prod(shape)
    if numel == 0 or not hasattr(mmap, "MAP_PRIVATE"):  # nothing to map, or not a POSIX system
        return torch.zeros(shape, dtype=dtype)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return torch.frombuffer(buffer, dtype=dtype, count=numel).view(shape)


def available_memory_bytes() -> int | None:
    """Memory the OS can give now (Linux MemAvailable, else free physical pages), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def cpu_kv_budget(available_bytes: int | None) -> int:
    """Default byte budget of a CPU KV pool: CPU_KV_BUDGET_CAP, or CPU_KV_MEMORY_FRACTION of
    `available_bytes` when that is smaller."""
    if available_bytes is None:
        return CPU_KV_BUDGET_CAP
    return min(CPU_KV_BUDGET_CAP, int(available_bytes * CPU_KV_MEMORY_FRACTION))


def choose_num_blocks(
    bytes_per_block: int,
    device: torch.device,
    block_size: int,
    max_num_seqs: int,
    max_model_len: int,
    gpu_memory_utilization: float,
    reserved_bytes: int = 0,
    cpu_budget_bytes: int | None = None,
    available_bytes: int | None = None,
) -> int:
    """How many blocks the pool gets.

    `max_model_len` here is the longest a sequence's KV can get (the engine passes max_model_len + the
    largest draft length). CUDA: what is left of `gpu_memory_utilization` x total memory after weights
    (already allocated) and `reserved_bytes` (CUDA graphs, activations), at most enough for every sequence
    at full length. CPU (memory not the GPU's): enough for every sequence at full length, capped by
    `cpu_budget_bytes` (default `cpu_kv_budget(available_bytes)`, with `available_bytes` read from the OS
    when not given), but at least one full-length sequence.
    """
    if bytes_per_block < 1 or block_size < 1 or max_num_seqs < 1 or max_model_len < 1:
        raise ValueError(
            f"bytes_per_block, block_size, max_num_seqs and max_model_len must be positive; got "
            f"{bytes_per_block}, {block_size}, {max_num_seqs}, {max_model_len}"
        )
    blocks_per_seq = -(-max_model_len // block_size)
    blocks_for_all = max_num_seqs * blocks_per_seq
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
    if cpu_budget_bytes is None:
        cpu_budget_bytes = cpu_kv_budget(available_bytes if available_bytes is not None else available_memory_bytes())
    return min(blocks_for_all, max(blocks_per_seq, cpu_budget_bytes // bytes_per_block))
