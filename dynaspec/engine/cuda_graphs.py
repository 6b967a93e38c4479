"""CUDA graphs of the target's decode / verify forward, one per (batch bucket, draft length k).

A decode-only step with B requests and draft length k feeds exactly 1 + k positions per request, so
its shapes are static once B is padded up to a bucket (nano-vllm and vLLM capture one graph per batch
size and replay the smallest that fits; we key by (bucket, k) because the verify width changes with k).
Only the pairs the draft-length policy can reach are captured, not every bucket x every k.

Padding: padded requests and padded draft positions write their K/V into a scratch block that the
block manager never hands out, and read a context of 1 + k slots; their outputs are ignored. Static
input buffers are shared by all graphs (each graph uses a prefix), and all graphs share one memory
pool, captured largest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dynaspec.models.attention_metadata import AttentionMetadata

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def bucket_for(batch: int, buckets: Iterable[int]) -> int | None:
    """The smallest bucket >= batch, or None when the batch is larger than every bucket."""
    for b in sorted(buckets):
        if b >= batch:
            return b
    return None


@dataclass
class UniformDecodeBatch:
    """A decode step laid out with exactly 1 + k positions per request (CPU lists, one entry per request)."""

    token_ids: list[list[int]]  # each of length 1 + k
    seq_lens: list[int]  # context length including all 1 + k positions
    num_real: list[int]  # leading positions that are real (the rest write to the scratch block)
    block_tables: list[list[int]]


class CudaGraphDecoder:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_blocks_per_seq: int,
        scratch_block: int,
        pairs: Iterable[tuple[int, int]],
        device: torch.device,
    ):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.max_blocks = max_blocks_per_seq
        self.scratch_block = scratch_block
        self.device = device
        self.pairs = sorted(set(pairs), key=lambda p: p[0] * (1 + p[1]), reverse=True)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.metas: dict[tuple[int, int], AttentionMetadata] = {}
        max_tokens = max((b * (1 + k) for b, k in self.pairs), default=0)
        max_batch = max((b for b, _ in self.pairs), default=0)
        self.input_ids = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.slot_mapping = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.block_tables = torch.full((max_batch, max_blocks_per_seq), scratch_block, dtype=torch.int64, device=device)
        self.query_start = {k: torch.arange(max_batch + 1, device=device) * (1 + k) for k in {k for _, k in self.pairs}}
        self.pool = None
        self.num_replays = 0
        self.replays_per_pair: dict[tuple[int, int], int] = {}

    @property
    def buckets(self) -> list[int]:
        return sorted({b for b, _ in self.pairs})

    def lookup(self, batch: int, k: int) -> tuple[int, int] | None:
        bucket = bucket_for(batch, [b for b, kk in self.pairs if kk == k])
        return None if bucket is None else (bucket, k)

    def _meta(self, bucket: int, k: int) -> AttentionMetadata:
        q_len = 1 + k
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[: bucket * q_len],
            query_start_loc=self.query_start[k][: bucket + 1],
            seq_lens=self.seq_lens[:bucket],
            block_tables=self.block_tables[:bucket],
            query_lens_cpu=[q_len] * bucket,
            seq_lens_cpu=[self.max_blocks * self.block_size] * bucket,
            block_size=self.block_size,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every pair (largest first, sharing one memory pool)."""
        for bucket, k in self.pairs:
            q_len = 1 + k
            tokens = bucket * q_len
            self._fill_padding(0, bucket, k)
            meta = self._meta(bucket, k)
            ids, pos = self.input_ids[:tokens], self.positions[:tokens]
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up (Triton autotune / compilation) outside the capture
                    self.model(ids, pos, self.kv_caches, meta)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.model(ids, pos, self.kv_caches, meta)  # (tokens, hidden)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[(bucket, k)] = graph
            self.outputs[(bucket, k)] = out
            self.metas[(bucket, k)] = meta
        torch.cuda.synchronize(self.device)

    def _fill_padding(self, start: int, bucket: int, k: int) -> None:
        """Requests start..bucket-1 become padding: scratch slots, context of 1 + k."""
        q_len = 1 + k
        n = bucket - start
        if n <= 0:
            return
        scratch_slots = self.scratch_block * self.block_size + torch.arange(q_len, device=self.device) % self.block_size
        self.input_ids[start * q_len : bucket * q_len] = 0
        self.positions[start * q_len : bucket * q_len] = torch.arange(q_len, device=self.device).repeat(n)
        self.slot_mapping[start * q_len : bucket * q_len] = scratch_slots.repeat(n)
        self.seq_lens[start:bucket] = min(q_len, self.block_size)
        self.block_tables[start:bucket] = self.scratch_block

    def run(self, batch: UniformDecodeBatch, k: int) -> torch.Tensor:
        """Replay the graph for this batch; returns hidden states (B * (1 + k), hidden) of the real requests."""
        key = self.lookup(len(batch.token_ids), k)
        if key is None:
            raise ValueError(f"no CUDA graph captured for batch {len(batch.token_ids)} at k={k}")
        bucket, _ = key
        q_len = 1 + k
        real = len(batch.token_ids)
        ids, positions, slots = [], [], []
        bs = self.block_size
        scratch = self.scratch_block * bs
        for tokens, seq_len, num_real, table in zip(batch.token_ids, batch.seq_lens, batch.num_real, batch.block_tables):
            start = seq_len - q_len
            ids.extend(tokens)
            for i in range(q_len):
                pos = start + i
                positions.append(pos)
                slots.append(table[pos // bs] * bs + pos % bs if i < num_real else scratch + i % bs)
        width = max(len(t) for t in batch.block_tables)
        if width > self.max_blocks:
            raise ValueError(f"a block table of {width} blocks exceeds the captured width {self.max_blocks}")
        tables = [t + [self.scratch_block] * (width - len(t)) for t in batch.block_tables]
        n = real * q_len
        self.input_ids[:n].copy_(torch.tensor(ids, dtype=torch.int64), non_blocking=True)
        self.positions[:n].copy_(torch.tensor(positions, dtype=torch.int64), non_blocking=True)
        self.slot_mapping[:n].copy_(torch.tensor(slots, dtype=torch.int64), non_blocking=True)
        self.seq_lens[:real].copy_(torch.tensor(batch.seq_lens, dtype=torch.int64), non_blocking=True)
        self.block_tables[:real, :width].copy_(torch.tensor(tables, dtype=torch.int64), non_blocking=True)
        self._fill_padding(real, bucket, k)
        self.graphs[key].replay()
        self.num_replays += 1
        self.replays_per_pair[key] = self.replays_per_pair.get(key, 0) + 1
        return self.outputs[key][:n]
