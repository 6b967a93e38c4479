"""Attention metadata: how a flat batch of new tokens maps onto paged KV.

Every forward pass of a model (prefill chunk, plain decode, or a verify step over 1+k positions) uses
one flat token layout, as in vLLM / nano-vllm: the new tokens of all B sequences are concatenated into
T = sum(query_lens) rows. Sequence b owns rows query_start_loc[b] : query_start_loc[b+1]; its new
tokens sit at the END of its context, so query row i of sequence b has absolute position
seq_lens[b] - query_lens[b] + i and attends causally to keys 0 .. that position.

KV cache layout for one layer: a tensor of shape (2, num_blocks, block_size, num_kv_heads, head_dim)
holding K at index 0 and V at index 1. The K/V of the flat row t is written to slot slot_mapping[t]
(block_id * block_size + offset_in_block).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttentionMetadata:
    """Per-forward description of the flat batch (see module docstring).

    Tensors live on the model's device. Python-side copies of the lengths are kept for code paths
    (CPU loops, kernel launch grids) that must not synchronise with the device.
    """

    slot_mapping: torch.Tensor  # (T,) int64: flat KV slot written by each new token
    query_start_loc: torch.Tensor  # (B+1,) int64: cumulative query lengths, starts at 0
    seq_lens: torch.Tensor  # (B,) int64: context length of each sequence INCLUDING the new tokens
    block_tables: torch.Tensor  # (B, max_blocks_per_seq) int64: physical block ids, padded with 0
    query_lens_cpu: list[int]  # len B
    seq_lens_cpu: list[int]  # len B
    block_size: int
    # Tensors derived from the fields above by an attention backend (masks, index maps), computed by
    # the first layer and reused by the others of the same forward.
    derived: dict = field(default_factory=dict, repr=False)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens_cpu) if self.query_lens_cpu else 0

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_cpu) if self.seq_lens_cpu else 0

    def split(self, num_seqs: int) -> tuple["AttentionMetadata", "AttentionMetadata"]:
        """(the first num_seqs sequences, the rest) as two batches over the same cache: flat rows
        0 .. query_start_loc[num_seqs] - 1 and the rows after, each with its own query_start_loc from 0."""
        row = sum(self.query_lens_cpu[:num_seqs])
        head = AttentionMetadata(
            slot_mapping=self.slot_mapping[:row], query_start_loc=self.query_start_loc[: num_seqs + 1],
            seq_lens=self.seq_lens[:num_seqs], block_tables=self.block_tables[:num_seqs],
            query_lens_cpu=self.query_lens_cpu[:num_seqs], seq_lens_cpu=self.seq_lens_cpu[:num_seqs],
            block_size=self.block_size,
        )
        tail = AttentionMetadata(
            slot_mapping=self.slot_mapping[row:], query_start_loc=self.query_start_loc[num_seqs:] - row,
            seq_lens=self.seq_lens[num_seqs:], block_tables=self.block_tables[num_seqs:],
            query_lens_cpu=self.query_lens_cpu[num_seqs:], seq_lens_cpu=self.seq_lens_cpu[num_seqs:],
            block_size=self.block_size,
        )
        return head, tail

    @staticmethod
    def build(
        query_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device: torch.device | str,
    ) -> "AttentionMetadata":
        """Build metadata from Python lists (one entry per sequence).

        query_lens[b]: number of new tokens of sequence b in this forward.
        seq_lens[b]: its context length including those new tokens.
        block_tables[b]: its physical block ids (must cover seq_lens[b] slots).
        """
        if not (len(query_lens) == len(seq_lens) == len(block_tables)):
            raise ValueError("query_lens, seq_lens and block_tables must have one entry per sequence")
        slots: list[int] = []
        for q_len, s_len, table in zip(query_lens, seq_lens, block_tables):
            if q_len > s_len:
                raise ValueError(f"query_len {q_len} exceeds seq_len {s_len}")
            if len(table) * block_size < s_len:
                raise ValueError(f"block table of {len(table)} blocks cannot hold {s_len} tokens")
            for pos in range(s_len - q_len, s_len):
                slots.append(table[pos // block_size] * block_size + pos % block_size)
        max_blocks = max((len(t) for t in block_tables), default=0)
        padded = [t + [0] * (max_blocks - len(t)) for t in block_tables]
        starts = [0]
        for q_len in query_lens:
            starts.append(starts[-1] + q_len)
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            query_start_loc=torch.tensor(starts, dtype=torch.int64, device=device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
            block_tables=torch.tensor(padded, dtype=torch.int64, device=device).reshape(len(padded), max_blocks),
            query_lens_cpu=list(query_lens),
            seq_lens_cpu=list(seq_lens),
            block_size=block_size,
        )
