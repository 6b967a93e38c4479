"""Megatron-style tensor parallelism of a built Llama-family model, in place (Shoeybi et al. 2019,
"Megatron-LM: Training Multi-Billion Parameter Language Models Using Model Parallelism", arXiv 1909.08053).

Each of `size` ranks keeps a slice of every matrix and runs the same forward on the same inputs:
- attention: q/k/v column-parallel by head (rank r keeps query heads [r*H/N, (r+1)*H/N) and the KV heads
  they read; with fewer KV heads than ranks each KV head is replicated on N / Hkv ranks, as vLLM does),
  o_proj row-parallel, then ONE all-reduce of the attention output (a forward hook on the module);
- MLP: gate/up column-parallel (rows of the intermediate), down row-parallel, ONE all-reduce;
- the embedding vocab-parallel (each rank looks up its rows, zeros elsewhere, one all-reduce) and the
  lm_head vocab-parallel (rows of the vocabulary; tied embeddings use the same shard) with an all-gather
  of the logits, so `compute_logits` returns the full (N, vocab) on every rank for sampling.
Row-parallel biases stay on rank 0 only (added once). The model's `num_kv_heads` becomes the per-rank
count, so the paged KV cache each rank allocates holds its own heads only.

Only the communication object (`TensorParallelGroup`) is torch.distributed's; which process group it wraps
(gloo on CPU, NCCL on CUDA) is decided by runtime/tp_group.py. Everything here is graph-capturable: no host
synchronisation, so per-rank CUDA graphs capture the all-reduces.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from dynaspec.models.llama import FusedProjections, LlamaAttention, LlamaForCausalLM, LlamaMLP


class TensorParallelGroup:
    """The ranks one model is sharded over: a torch.distributed process group (used through its own
    methods, so no global default group is needed) with this process's rank in it."""

    def __init__(self, process_group: dist.ProcessGroup, rank: int, size: int) -> None:
        self.process_group = process_group
        self.rank = rank
        self.size = size

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        self.process_group.allreduce([tensor]).wait()
        return tensor

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """(..., n) on every rank -> (..., size * n): the ranks' tensors side by side, rank order."""
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        self.process_group.allgather([parts], [tensor]).wait()
        return torch.cat(parts, dim=-1)


def check_tensor_parallel(hf_config: PretrainedConfig, size: int) -> None:
    """ValueError naming what is wrong unless a model of `hf_config` can be sharded over `size` ranks:
    `size` divides the attention heads and the intermediate size, and the KV heads divide `size` or
    `size` divides them (fewer KV heads than ranks: each is replicated)."""
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {size}")
    heads, kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
    intermediate = hf_config.intermediate_size
    if heads % size:
        raise ValueError(
            f"tensor_parallel_size={size} must divide the model's {heads} attention heads; "
            f"allowed: {', '.join(str(n) for n in range(1, heads + 1) if heads % n == 0)}"
        )
    if kv_heads % size and size % kv_heads:
        raise ValueError(
            f"tensor_parallel_size={size} and the model's {kv_heads} KV heads: one must divide the other "
            "(KV heads are split across ranks, or replicated where there are fewer than ranks)"
        )
    if intermediate % size:
        raise ValueError(f"tensor_parallel_size={size} must divide the model's intermediate_size {intermediate}")


def kv_head_range(num_kv_heads: int, size: int, rank: int) -> tuple[int, int]:
    """(first KV head, KV heads) rank `rank` keeps: Hkv / N of them, or one replicated head when Hkv < N."""
    if num_kv_heads >= size:
        per_rank = num_kv_heads // size
        return rank * per_rank, per_rank
    return rank * num_kv_heads // size, 1


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + rows) of the embedding table (padded to `rows`); ids outside look up zeros and
    the all-reduce adds the owning rank's row (exact: the other ranks add zeros)."""

    def __init__(self, weight: torch.Tensor, start: int, group: TensorParallelGroup) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (rows, hidden)
        self.start = start
        self.group = group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (T,) -> (T, hidden), the same on every rank."""
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.group.all_reduce(out.masked_fill(outside.unsqueeze(-1), 0))


def _rows(weight: torch.Tensor, start: int, count: int) -> torch.Tensor:
    return weight[start:start + count].clone()


def _shard_linear_rows(linear: nn.Linear, ranges: list[tuple[int, int]]) -> None:
    """Column parallelism: keep the output rows in `ranges` ((start, count) each, concatenated)."""
    linear.weight = nn.Parameter(torch.cat([_rows(linear.weight.data, s, n) for s, n in ranges]), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(torch.cat([_rows(linear.bias.data, s, n) for s, n in ranges]), requires_grad=False)
    linear.out_features = linear.weight.shape[0]


def _shard_linear_columns(linear: nn.Linear, start: int, count: int, rank: int) -> None:
    """Row parallelism: keep input columns [start, start + count); the bias only on rank 0."""
    linear.weight = nn.Parameter(linear.weight.data[:, start:start + count].clone(), requires_grad=False)
    if linear.bias is not None and rank != 0:
        linear.bias = None
    linear.in_features = count


def _shard_attention(attn: LlamaAttention, group: TensorParallelGroup) -> None:
    size, rank, d = group.size, group.rank, attn.head_dim
    heads = attn.num_heads // size
    kv_start, kv_heads = kv_head_range(attn.num_kv_heads, size, rank)
    _shard_linear_rows(attn.q_proj, [(rank * heads * d, heads * d)])
    for proj in (attn.k_proj, attn.v_proj):
        _shard_linear_rows(proj, [(kv_start * d, kv_heads * d)])
    _shard_linear_columns(attn.o_proj, rank * heads * d, heads * d, rank)
    attn.num_heads, attn.num_kv_heads = heads, kv_heads
    attn.fuse_projections()


def _shard_mlp(mlp: LlamaMLP, group: TensorParallelGroup) -> None:
    per_rank = mlp.gate_proj.out_features // group.size
    start = group.rank * per_rank
    _shard_linear_rows(mlp.gate_proj, [(start, per_rank)])
    _shard_linear_rows(mlp.up_proj, [(start, per_rank)])
    _shard_linear_columns(mlp.down_proj, start, per_rank, group.rank)
    mlp.fuse_projections()


def _vocab_rows(vocab_size: int, group: TensorParallelGroup) -> tuple[int, int]:
    """(first row, rows per rank): ceil(vocab / N) rows each, the last rank's tail padded."""
    per_rank = -(-vocab_size // group.size)
    return group.rank * per_rank, per_rank


def _padded_rows(weight: torch.Tensor, start: int, count: int) -> torch.Tensor:
    rows = weight[start:start + count]
    if rows.shape[0] == count:
        return rows.clone()
    padded = torch.zeros((count, weight.shape[1]), dtype=weight.dtype, device=weight.device)
    padded[: rows.shape[0]] = rows
    return padded


def shard_model(model: LlamaForCausalLM, group: TensorParallelGroup) -> None:
    """Shard `model` (loaded in full) in place for rank `group.rank` of `group.size`; see the module doc.

    Afterwards `model.num_kv_heads` is this rank's KV heads, `model.vocab_size` stays the full vocabulary
    and `model.compute_logits(hidden)` returns full (N, vocab) float32 logits on every rank.
    """
    if group.size == 1:
        return
    check_tensor_parallel(model.config, group.size)
    layers = model.model.layers
    for layer in layers:
        if not isinstance(layer.self_attn, LlamaAttention) or not isinstance(layer.mlp, LlamaMLP):
            raise ValueError(f"{type(model).__name__}: tensor parallelism needs Llama-style attention and MLP blocks")
        _shard_attention(layer.self_attn, group)
        _shard_mlp(layer.mlp, group)
        # the row-parallel outputs are partial sums: one all-reduce each, right after the module
        layer.self_attn.register_forward_hook(lambda module, args, out: group.all_reduce(out))
        layer.mlp.register_forward_hook(lambda module, args, out: group.all_reduce(out))
    model.num_kv_heads = kv_head_range(model.num_kv_heads, group.size, group.rank)[1]

    vocab = model.vocab_size
    start, rows = _vocab_rows(vocab, group)
    embedding = model.model.embed_tokens
    if type(embedding) is not nn.Embedding:
        raise ValueError(f"{type(model).__name__}: tensor parallelism needs a plain nn.Embedding")
    model.model.embed_tokens = VocabParallelEmbedding(_padded_rows(embedding.weight.data, start, rows), start, group)
    if model.lm_head is not None:
        lm_head = nn.Linear(model.lm_head.in_features, rows, bias=False, device=model.lm_head.weight.device,
                            dtype=model.lm_head.weight.dtype)
        lm_head.weight = nn.Parameter(_padded_rows(model.lm_head.weight.data, start, rows), requires_grad=False)
        model.lm_head = lm_head
    local_logits = model.compute_logits  # (N, hidden) -> (N, rows): this rank's vocabulary rows

    def compute_logits(hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden) -> full logits (N, vocab) float32, gathered from every rank's rows."""
        logits = group.all_gather_last_dim(local_logits(hidden))  # (N, size * rows)
        return logits if logits.shape[-1] == vocab else logits[:, :vocab].contiguous()

    model.compute_logits = compute_logits  # instance attribute: shadows the class's method
    for module in model.modules():
        if isinstance(module, FusedProjections):
            module.fuse_projections()
