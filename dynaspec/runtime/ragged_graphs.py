"""CUDA graphs of ragged verify steps, keyed by (batch bucket, padded total tokens) (issue 20).

With per-request draft lengths each decoding request i feeds 1 + d_i positions, d_i in 0..max_draft_len.
Padding every request to 1 + max(d_i) (the uniform graphs of cuda_graphs.py) verifies B * (1 + k_max)
positions where only sum(1 + d_i) are real; these graphs verify the real total, padded up to a token
bucket (vLLM captures its varlen graphs by token count likewise; the adaptive-verification work, vLLM PR
#47808, prices steps by total tokens for that reason).

Layout of the graph keyed (bucket, T), `slots(bucket, T)` sequence slots:
- slots 0..n-1: the n real requests, q_i = 1 + d_i query rows each (the Triton attention kernel reads each
  sequence's q_len from query_start_loc on the device, so one graph serves every mix of d_i);
- then pad slots holding the T - sum(q_i) padding tokens, at most `max_query_len` each, whose K/V go to
  the scratch block and whose logits are ignored; remaining slots are empty (q_len 0, context 0).
Staged per step (one pinned copy, as the uniform graphs): token ids (T), per slot the context length,
the query start offsets and the number of real rows, and the block tables. Positions and KV slots are
derived inside the graph. The graph returns float32 logits (T, vocab); rows sum(q_i).. are padding.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dynaspec.models.attention_metadata import AttentionMetadata
from dynaspec.runtime.cuda_graphs import CapturedGraphs
from dynaspec.runtime.packed_layout import PackedStaging, packed_slots

# Token buckets per batch bucket: the verify positions above the batch (batch * max_draft_len at most)
# are split into at most this many steps, so padding costs at most 1/8 of the largest ragged step's drafts.
TOKEN_STEPS_PER_BUCKET = 8


@dataclass
class RaggedDecodeBatch:
    """A decode step with its own number of positions per request (CPU lists, one entry per request)."""

    token_ids: list[list[int]]  # request i's last token and its d_i drafts (1 + d_i ids)
    seq_lens: list[int]  # context length including them
    block_tables: list[list[int]]


def token_buckets(bucket: int, max_draft_len: int, max_tokens: int | None = None) -> list[int]:
    """Padded total-token counts captured for a batch bucket: at most TOKEN_STEPS_PER_BUCKET evenly spaced
    values in (bucket, bucket * (1 + max_draft_len)], capped at max_tokens (the step's token budget)."""
    extra = bucket * max_draft_len
    steps = min(extra, TOKEN_STEPS_PER_BUCKET)
    values = {bucket + -(-extra * j // steps) for j in range(1, steps + 1)}
    if max_tokens is not None:
        values = {min(v, max_tokens) for v in values if v - bucket > 0}
    return sorted(v for v in values if v > bucket)


class RaggedKeys:
    """The (batch bucket, padded total tokens) keys of ragged graphs, and which one runs a step (no model: the
    policy's pricing and CPU replays ask the same question)."""

    def __init__(self, keys: Iterable[tuple[int, int]]) -> None:
        self._tokens_by_bucket: dict[int, list[int]] = {}
        for bucket, tokens in sorted(set(keys)):
            self._tokens_by_bucket.setdefault(bucket, []).append(tokens)

    def lookup(self, batch: int, tokens: int) -> tuple[int, int] | None:
        """The (bucket, padded tokens) that runs `batch` requests verifying `tokens` positions in all: the smallest
        batch bucket >= batch that has a token bucket >= tokens, and its smallest such token bucket; None when no
        graph holds the step."""
        for bucket, padded_counts in self._tokens_by_bucket.items():  # ascending buckets, ascending counts
            if bucket >= batch and padded_counts[-1] >= tokens:
                return bucket, padded_counts[bisect_left(padded_counts, tokens)]
        return None


def slots(bucket: int, tokens: int, max_query_len: int) -> int:
    """Sequence slots of the (bucket, tokens) graph: the requests plus enough pad slots for any padding."""
    return bucket + -(-tokens // max_query_len)


class RaggedGraphDecoder(CapturedGraphs):
    """Ragged verify forwards of the target keyed by (batch bucket, padded total tokens) (module docstring).

    keys: the (bucket, tokens) pairs to capture; max_query_len: 1 + the largest draft length (every real
    request has at most that many rows). The other arguments are CudaGraphDecoder's.
    """

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_blocks_per_seq: int,
        scratch_block: int,
        keys: Iterable[tuple[int, int]],
        max_query_len: int,
        device: torch.device,
        use_graphs: bool = True,
        pool=None,
        output_buffer: torch.Tensor | None = None,
    ):
        """output_buffer: the uniform decoder's static logits buffer, shared (a ragged step never holds more
        rows than the uniform graph of its bucket at max k)."""
        self._bind_target(model, kv_caches, block_size, max_blocks_per_seq, scratch_block, device, use_graphs, pool)
        self.max_query_len = max_query_len
        self.pairs = sorted(set(keys), key=lambda key: key[1], reverse=True)  # largest first
        self._keys = RaggedKeys(self.pairs)
        self._init_graph_store(output_buffer)
        max_tokens = max((t for _, t in self.pairs), default=1)
        max_slots = max((slots(b, t, max_query_len) for b, t in self.pairs), default=1)
        self.max_tokens, self.max_slots = max_tokens, max_slots
        # Staging (int64): [token ids | seq_lens | query_start (slots + 1) | num_real | block tables].
        self.staging = PackedStaging((max_tokens, max_slots, max_slots + 1, max_slots, max_slots * max_blocks_per_seq),
                                     4, scratch_block, device)
        self.device_inputs = self.staging.device_inputs
        self.input_ids, self.seq_lens, self.query_start, self.num_real, tables = self.staging.parts(self.device_inputs)
        self.block_tables = tables.view(max_slots, max_blocks_per_seq)
        self.arange = torch.arange(max(max_tokens, max_slots) + 1, device=device)

    def output_rows(self, bucket: int, tokens: int) -> int:
        return tokens

    # ----------------------------------------------------------------- lookup
    def lookup(self, batch: int, tokens: int) -> tuple[int, int] | None:
        """The captured (bucket, padded tokens) that runs `batch` requests verifying `tokens` positions (RaggedKeys)."""
        return self._keys.lookup(batch, tokens)

    # ----------------------------------------------------------------- the captured computation
    def _forward(self, bucket: int, tokens: int) -> torch.Tensor:
        """Positions and KV slots from the staged inputs, the model, the logits; no host synchronisation.
        Returns float32 logits (tokens, vocab)."""
        n_slots = slots(bucket, tokens, self.max_query_len)
        starts = self.query_start[: n_slots + 1]  # (S + 1,)
        seq_lens = self.seq_lens[:n_slots]  # (S,)
        tables = self.block_tables[:n_slots]  # (S, max_blocks)
        positions, slot_mapping = packed_slots(starts, seq_lens, self.num_real[:n_slots], tables, tokens,
                                               self.block_size, self.scratch_block, self.arange)  # (T,), (T,)
        meta = AttentionMetadata(
            slot_mapping=slot_mapping,
            query_start_loc=starts,
            seq_lens=seq_lens,
            block_tables=tables,
            query_lens_cpu=[self.max_query_len] * n_slots,  # an upper bound of every slot's q_len
            seq_lens_cpu=[self.max_blocks * self.block_size] * n_slots,
            block_size=self.block_size,
        )
        hidden = self.model(self.input_ids[:tokens], positions, self.kv_caches, meta)  # (T, hidden)
        return self.model.compute_logits(hidden)  # (T, vocab) float32

    # ----------------------------------------------------------------- staging
    def stage_idle(self, bucket: int, tokens: int) -> None:
        """Every row of the (bucket, tokens) pair padding (timing replays touch no request's KV)."""
        if self.device.type == "cuda":  # no copy from the staging buffers may still be pending
            torch.cuda.synchronize(self.device)
        staging = self.staging.current()
        self._fill(staging, RaggedDecodeBatch([], [], []), bucket, tokens)
        self.device_inputs.copy_(staging)

    def _fill(self, staging: torch.Tensor, batch: RaggedDecodeBatch, bucket: int, tokens: int) -> int:
        """Write the batch and its padding into a staging buffer; returns the real rows sum(q_i)."""
        ids, seq_lens, starts, num_real, tables = (part.numpy() for part in self.staging.parts(staging))
        tables = tables.reshape(self.max_slots, self.max_blocks)
        n = len(batch.token_ids)
        start = 0
        starts[0] = 0
        for i, (toks, seq_len, table) in enumerate(zip(batch.token_ids, batch.seq_lens, batch.block_tables)):
            ids[start : start + len(toks)] = toks
            start += len(toks)
            starts[i + 1] = start
            seq_lens[i] = seq_len
            num_real[i] = len(toks)
            tables[i, : len(table)] = table
            tables[i, len(table) :] = self.scratch_block
        real_rows = start
        ids[start:tokens] = 0
        for slot in range(n, slots(bucket, tokens, self.max_query_len)):
            q_len = min(self.max_query_len, tokens - start)  # pad rows (0 once the padding is placed)
            start += q_len
            starts[slot + 1] = start
            seq_lens[slot] = q_len
            num_real[slot] = 0
            tables[slot] = self.scratch_block
        return real_rows

    def run(self, batch: RaggedDecodeBatch) -> torch.Tensor:
        """Run the smallest graph holding the batch; float32 logits (sum(1 + d_i), vocab) of the real rows,
        request by request. Valid until the next launch of any graph of the pool."""
        real_tokens = sum(len(t) for t in batch.token_ids)
        key = self.lookup(len(batch.token_ids), real_tokens)
        if key is None:
            raise ValueError(f"no ragged CUDA graph for {len(batch.token_ids)} requests and {real_tokens} tokens")
        width = max(len(t) for t in batch.block_tables)
        if width > self.max_blocks:
            raise ValueError(f"a block table of {width} blocks exceeds the captured width {self.max_blocks}")
        longest = max(len(t) for t in batch.token_ids)
        if longest > self.max_query_len:
            raise ValueError(f"a request feeds {longest} positions; these graphs take at most {self.max_query_len}")
        staging = self.staging.next()
        self._fill(staging, batch, *key)
        self.device_inputs.copy_(staging, non_blocking=True)
        return self._launch(key)[:real_tokens]
