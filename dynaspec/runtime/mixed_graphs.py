"""CUDA graphs of mixed steps: plain decodes and prefill chunks in one forward, keyed by (decode bucket,
padded prefill rows) (issue 20).

A step that prefills new prompts beside running decodes used to run eager: on an 8B model at 64 decodes it
took 19-34 ms against ~7 ms for a captured decode step, the host issuing the eager forward's launches slower
than the GPU ran them (docs/lab/benchmarks.md, 2026-12-06). Both attention kernels read every sequence's
query length on the device (triton_attention.py for the decodes, triton_prefill_attention.py for the
chunks, whose programs past a chunk's length exit), so one graph serves every mix of chunk lengths up to
its padded rows; vLLM captures its mixed batches by token count likewise.

Layout of the graph keyed (B, P), every decode at k = 0:
- rows 0..B-1: decode slots 0..B-1, one row each (padding slots: token 0 in the scratch block, context 1);
- rows B..B+P-1: CHUNK_SLOTS chunk slots packed from row B (unused ones have no rows), then pad slots
  holding the P - sum(chunk rows) padding rows, in the scratch block. A pad slot is a sequence read through a
  block-table row, so it holds at most a sequence's blocks x block_size rows, and the graph has as many pad
  slots as its largest P needs (`pad_slots`): one pad slot of P = 2048 rows read past 128-block table rows
  and hit an illegal address on an H100 (2026-12-06), and capping P at max_model_len instead left every step
  of more prompt rows than that eager (the bench's max_model_len is prompt + generated tokens, 197: its
  closed batches' 2,048-token prefill steps never took a mixed graph, H100 2026-12-07).
Staged per step (one pinned copy): token ids (B + P), per slot the context length and the query start,
the number of real rows, the block tables, and the rows whose logits the step needs (each decode's row,
each chunk's last row). Positions and KV slots are derived inside the graph; the attention metadata is
split at the decodes by construction (`derived["decode_prefix"]`). The graph returns float32 logits
(B + CHUNK_SLOTS, vocab): decode rows first, then one row per chunk slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dynaspec.models.attention_metadata import AttentionMetadata
from dynaspec.runtime.cuda_graphs import CapturedGraphs
from dynaspec.runtime.packed_layout import PackedStaging, packed_slots

# Prefill chunks one mixed graph holds (a step with more runs eager). A burst of 128-token prompts fills a
# 2,048-token step with 16 chunks: with 8 slots (and the rows capped at max_model_len, module docstring) every
# step of a closed batch's prefill phase ran eager, and the policies' decodes beside them speculated there
# (plain_beside_prefills drops drafts only where a mixed graph takes the step): the draft model's adaptive line
# spent 672 ms in the prefill phase at batch 128 against no spec's 448 (H200, 2026-12-07). 32 holds prompts
# down to 64 tokens; an unused slot costs its attention programs an early exit.
CHUNK_SLOTS = 32
PREFILL_ROW_BUCKETS = (64, 128, 256, 512, 1024, 2048)


@dataclass
class MixedBatch:
    """A step of k = 0 decodes and prefill chunks (CPU lists, decodes first)."""

    decode_tokens: list[int]  # each decode's last token
    decode_seq_lens: list[int]  # its context length including that token
    decode_tables: list[list[int]]
    chunk_tokens: list[list[int]]  # each chunk's prompt tokens
    chunk_seq_lens: list[int]  # its context length including the chunk
    chunk_tables: list[list[int]]


def pad_slots(max_prefill_rows: int, rows_per_slot: int) -> int:
    """Pad slots a graph of up to max_prefill_rows prefill rows needs, each at most rows_per_slot rows."""
    return max(1, -(-max_prefill_rows // rows_per_slot))


def prefill_buckets(max_rows: int) -> list[int]:
    """Padded prefill rows captured under a step's token budget: the buckets below it, and it."""
    return sorted({b for b in PREFILL_ROW_BUCKETS if b < max_rows} | {max_rows})


class MixedGraphDecoder(CapturedGraphs):
    """Mixed-step forwards of the target keyed by (decode bucket, padded prefill rows) (module docstring).
    The other arguments are CudaGraphDecoder's."""

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_blocks_per_seq: int,
        scratch_block: int,
        keys: list[tuple[int, int]],
        device: torch.device,
        use_graphs: bool = True,
        pool=None,
        output_buffer: torch.Tensor | None = None,
    ):
        self._bind_target(model, kv_caches, block_size, max_blocks_per_seq, scratch_block, device, use_graphs, pool)
        self.pairs = sorted(set(keys), key=lambda key: key[0] + key[1], reverse=True)  # largest first
        self._init_graph_store(output_buffer)
        max_rows = max((b + p for b, p in self.pairs), default=1)
        self.pad_rows_per_slot = max_blocks_per_seq * block_size  # a pad slot's block-table row holds no more
        self.pad_slots = pad_slots(max((p for _, p in self.pairs), default=1), self.pad_rows_per_slot)
        max_slots = max((b for b, _ in self.pairs), default=1) + CHUNK_SLOTS + self.pad_slots
        self.max_rows, self.max_slots = max_rows, max_slots
        # Staging (int64): [token ids | seq_lens | query_start (slots + 1) | num_real | logit rows | tables].
        self.staging = PackedStaging(
            (max_rows, max_slots, max_slots + 1, max_slots, max_slots, max_slots * max_blocks_per_seq), 5, scratch_block,
            device)
        self.device_inputs = self.staging.device_inputs
        parts = self.staging.parts(self.device_inputs)
        self.input_ids, self.seq_lens, self.query_start, self.num_real, self.logit_rows, tables = parts
        self.block_tables = tables.view(max_slots, max_blocks_per_seq)
        self.arange = torch.arange(max_rows, device=device)

    def output_rows(self, bucket: int, prefill_rows: int) -> int:
        return bucket + CHUNK_SLOTS

    def lookup(self, decodes: int, chunks: int, prefill_rows: int) -> tuple[int, int] | None:
        """The captured (bucket, padded prefill rows) that runs this step: the smallest bucket >= decodes,
        then its smallest prefill bucket >= prefill_rows; None when none holds it (or too many chunks)."""
        if chunks > CHUNK_SLOTS:
            return None
        fitting = [(b, p) for b, p in self.pairs if b >= decodes and p >= prefill_rows]
        return min(fitting, default=None)

    # ----------------------------------------------------------------- the captured computation
    def _forward(self, bucket: int, prefill_rows: int) -> torch.Tensor:
        """Positions, KV slots and the two halves of the attention metadata from the staged inputs, the
        model, the logits of the staged rows; no host synchronisation. (bucket + CHUNK_SLOTS, vocab)."""
        rows = bucket + prefill_rows
        tail_slots = CHUNK_SLOTS + self.pad_slots
        n_slots = bucket + tail_slots
        starts = self.query_start[: n_slots + 1]  # (S + 1,)
        seq_lens = self.seq_lens[:n_slots]  # (S,)
        tables = self.block_tables[:n_slots]  # (S, max_blocks)
        positions, slot_mapping = packed_slots(starts, seq_lens, self.num_real[:n_slots], tables, rows,
                                               self.block_size, self.scratch_block, self.arange)  # (T,), (T,)
        bound = [self.max_blocks * self.block_size]
        meta = AttentionMetadata(
            slot_mapping=slot_mapping, query_start_loc=starts, seq_lens=seq_lens, block_tables=tables,
            query_lens_cpu=[1] * bucket + [prefill_rows] * tail_slots, seq_lens_cpu=bound * n_slots,
            block_size=self.block_size,
        )
        head = AttentionMetadata(  # the decodes: rows 0..bucket-1, one each
            slot_mapping=slot_mapping[:bucket], query_start_loc=starts[: bucket + 1], seq_lens=seq_lens[:bucket],
            block_tables=tables[:bucket], query_lens_cpu=[1] * bucket, seq_lens_cpu=bound * bucket,
            block_size=self.block_size,
        )
        tail = AttentionMetadata(  # the chunks and the pad slots: rows bucket.., query starts from 0
            slot_mapping=slot_mapping[bucket:], query_start_loc=starts[bucket:] - bucket, seq_lens=seq_lens[bucket:],
            block_tables=tables[bucket:], query_lens_cpu=[prefill_rows] * tail_slots,
            seq_lens_cpu=bound * tail_slots, block_size=self.block_size,
        )
        meta.derived["decode_prefix"] = (head, tail)
        hidden = self.model(self.input_ids[:rows], positions, self.kv_caches, meta)  # (T, hidden)
        picked = hidden.index_select(0, self.logit_rows[: bucket + CHUNK_SLOTS])  # (B + CHUNK_SLOTS, hidden)
        return self.model.compute_logits(picked)  # float32

    # ----------------------------------------------------------------- staging
    def stage_idle(self, bucket: int, prefill_rows: int) -> None:
        """Every row padding (timing replays and capture touch no request's KV)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        staging = self.staging.current()
        self._fill(staging, MixedBatch([], [], [], [], [], []), bucket, prefill_rows)
        self.device_inputs.copy_(staging)

    def _fill(self, staging: torch.Tensor, batch: MixedBatch, bucket: int, prefill_rows: int) -> None:
        ids, seq_lens, starts, num_real, logit_rows, tables = (part.numpy() for part in self.staging.parts(staging))
        tables = tables.reshape(self.max_slots, self.max_blocks)
        n = len(batch.decode_tokens)
        starts[: bucket + 1] = range(bucket + 1)
        ids[:n] = batch.decode_tokens
        ids[n:bucket] = 0
        seq_lens[:n] = batch.decode_seq_lens
        seq_lens[n:bucket] = 1
        num_real[:n] = 1
        num_real[n:bucket] = 0
        logit_rows[:bucket] = range(bucket)
        for i, table in enumerate(batch.decode_tables):
            tables[i, : len(table)] = table
            tables[i, len(table) :] = self.scratch_block
        tables[n:bucket] = self.scratch_block
        start = bucket
        for j in range(CHUNK_SLOTS):
            slot = bucket + j
            if j < len(batch.chunk_tokens):
                tokens = batch.chunk_tokens[j]
                ids[start : start + len(tokens)] = tokens
                seq_lens[slot], num_real[slot] = batch.chunk_seq_lens[j], len(tokens)
                table = batch.chunk_tables[j]
                tables[slot, : len(table)] = table
                tables[slot, len(table) :] = self.scratch_block
                start += len(tokens)
                logit_rows[slot] = start - 1
            else:
                seq_lens[slot], num_real[slot], logit_rows[slot] = 0, 0, 0
                tables[slot] = self.scratch_block
            starts[slot + 1] = start
        ids[start : bucket + prefill_rows] = 0  # the rest of the rows: padding in the scratch block
        for pad in range(bucket + CHUNK_SLOTS, bucket + CHUNK_SLOTS + self.pad_slots):
            rows = min(self.pad_rows_per_slot, bucket + prefill_rows - start)  # 0 for the pad slots not needed
            seq_lens[pad], num_real[pad] = rows, 0
            tables[pad] = self.scratch_block
            start += rows
            starts[pad + 1] = start

    def run(self, batch: MixedBatch) -> torch.Tensor:
        """Run the smallest graph holding the step; float32 logits (B + CHUNK_SLOTS, vocab) where B is the
        graph's bucket: row i is decode i's, row B + j chunk j's last row. Valid until the next launch."""
        prefill_rows = sum(len(t) for t in batch.chunk_tokens)
        key = self.lookup(len(batch.decode_tokens), len(batch.chunk_tokens), prefill_rows)
        if key is None:
            raise ValueError(f"no mixed CUDA graph for {len(batch.decode_tokens)} decodes and "
                             f"{len(batch.chunk_tokens)} chunks of {prefill_rows} rows")
        width = max(len(t) for t in batch.decode_tables + batch.chunk_tables)
        if width > self.max_blocks:
            raise ValueError(f"a block table of {width} blocks exceeds the captured width {self.max_blocks}")
        staging = self.staging.next()
        self._fill(staging, batch, *key)
        self.device_inputs.copy_(staging, non_blocking=True)
        return self._launch(key)
