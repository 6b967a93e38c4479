"""Runs one forward of a model over a flat batch of sequences on paged KV.

The same runner serves the target and the draft model (each with its own KV tensors; they share block
tables). The caller describes each sequence by the new tokens it feeds, its context length after them
and its block table; the runner builds input ids, positions and AttentionMetadata, runs the model and
returns logits only for the rows asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dynaspec.runtime.cuda_graphs import CudaGraphDecoder, UniformDecodeBatch
from dynaspec.runtime.mixed_graphs import CHUNK_SLOTS, MixedBatch, MixedGraphDecoder
from dynaspec.runtime.kv_cache import allocate_kv_cache
from dynaspec.runtime.ragged_graphs import RaggedDecodeBatch, RaggedGraphDecoder
from dynaspec.models.attention import warmup_block_tables
from dynaspec.models.attention_metadata import AttentionMetadata


@dataclass
class SequenceInput:
    token_ids: list[int]  # the new tokens fed this forward
    seq_len: int  # context length including them
    block_ids: list[int]


class ModelRunner:
    """`num_blocks` usable KV blocks plus one scratch block (id `num_blocks`) that padded CUDA-graph
    positions write to; the block manager never hands the scratch block out."""

    def __init__(self, model: nn.Module, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.dtype = dtype
        self.scratch_block = num_blocks
        self.kv_caches = allocate_kv_cache(model, num_blocks + 1, block_size, dtype, device)
        self.num_forwards = 0
        self.graphs: CudaGraphDecoder | None = None
        self.ragged_graphs: RaggedGraphDecoder | None = None
        self.mixed_graphs: MixedGraphDecoder | None = None

    def capture_graphs(
        self, pairs: list[tuple[int, int]], max_blocks_per_seq: int, use_graphs: bool = True, pool=None
    ) -> None:
        """Capture decode/verify CUDA graphs for the given (batch bucket, k) pairs (`use_graphs=False`:
        the same fixed-shape path, run eagerly); pool: a graph memory pool to share (CudaGraphDecoder)."""
        self.graphs = CudaGraphDecoder(
            self.model, self.kv_caches, self.block_size, max_blocks_per_seq, self.scratch_block, pairs, self.device,
            use_graphs=use_graphs, pool=pool,
        )
        self.graphs.capture()

    def compile_eager_kernels(self, max_query_len: int) -> None:
        """On CUDA: one eager forward of each query length 1..max_query_len + 1 on the scratch block, so that
        Triton compiles its kernel variants now (the decode / verify attention kernel takes the query length
        as a compile-time constant; the next length takes the prefill kernel) and not in the first step that
        needs one: a 3-token draft-model catch-up compiled mid-run made one step 2.4 s on an H100
        (docs/lab/adaptive_runs.md); each on a short and a wide block table (attention.warmup_block_tables:
        with and without KV splits). Not counted in num_forwards; nothing to compile on the CPU."""
        if self.device.type != "cuda":
            return
        forwards = self.num_forwards
        for q_len in range(1, max_query_len + 2):  # positions 0..q_len-1, scratch only; one KV split and several
            for blocks in warmup_block_tables(q_len, self.block_size, self.scratch_block):
                self.forward([SequenceInput([0] * q_len, q_len, blocks)], [q_len - 1])
        self.num_forwards = forwards

    def capture_ragged_graphs(
        self, keys: list[tuple[int, int]], max_query_len: int, max_blocks_per_seq: int, use_graphs: bool = True
    ) -> None:
        """Capture ragged verify graphs for the (batch bucket, padded tokens) keys, in the uniform graphs'
        memory pool (runtime/ragged_graphs.py); call after capture_graphs."""
        pool = None if self.graphs is None else self.graphs.pool
        buffer = None if self.graphs is None else self.graphs.output_buffer
        if buffer is not None and max((t for _, t in keys), default=0) > buffer.shape[0]:
            buffer = None  # (never for the engine's keys: they stay within the uniform graphs' rows)
        self.ragged_graphs = RaggedGraphDecoder(
            self.model, self.kv_caches, self.block_size, max_blocks_per_seq, self.scratch_block, keys,
            max_query_len, self.device, use_graphs=use_graphs, pool=pool, output_buffer=buffer,
        )
        self.ragged_graphs.capture()

    def capture_mixed_graphs(self, keys: list[tuple[int, int]], max_blocks_per_seq: int, use_graphs: bool = True) -> None:
        """Capture mixed-step graphs (k = 0 decodes + prefill chunks) for the (decode bucket, padded prefill
        rows) keys, in the uniform graphs' memory pool (runtime/mixed_graphs.py); call after capture_graphs."""
        pool = None if self.graphs is None else self.graphs.pool
        buffer = None if self.graphs is None else self.graphs.output_buffer
        if buffer is not None and max((b for b, _ in keys), default=0) + CHUNK_SLOTS > buffer.shape[0]:
            buffer = None
        self.mixed_graphs = MixedGraphDecoder(
            self.model, self.kv_caches, self.block_size, max_blocks_per_seq, self.scratch_block, keys, self.device,
            use_graphs=use_graphs, pool=pool, output_buffer=buffer,
        )
        self.mixed_graphs.capture()

    def mixed_key(self, decodes: int, chunks: int, prefill_rows: int) -> tuple[int, int] | None:
        """The (decode bucket, padded prefill rows) mixed graph such a step runs in, or None."""
        return None if self.mixed_graphs is None else self.mixed_graphs.lookup(decodes, chunks, prefill_rows)

    @torch.inference_mode()
    def forward_mixed(self, batch: MixedBatch, completes: list[bool]) -> torch.Tensor:
        """A mixed step through its graph; float32 logits (decodes + completing chunks, vocab): each decode's
        row, then the last row of each chunk that completes its prompt (flat_inputs' row order)."""
        logits = self.mixed_graphs.run(batch)  # (bucket + CHUNK_SLOTS, vocab)
        bucket = logits.shape[0] - CHUNK_SLOTS  # the graph's decode bucket
        rows = list(range(len(batch.decode_tokens))) + [bucket + j for j, done in enumerate(completes) if done]
        self.num_forwards += 1
        index = torch.tensor(rows, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        return logits.index_select(0, index.to(self.device, non_blocking=True))

    def ragged_key(self, batch: int, tokens: int) -> tuple[int, int] | None:
        """The (bucket, padded tokens) ragged graph a step of `batch` requests and `tokens` positions runs in."""
        return None if self.ragged_graphs is None else self.ragged_graphs.lookup(batch, tokens)

    @torch.inference_mode()
    def forward_ragged(self, batch: RaggedDecodeBatch) -> torch.Tensor:
        """A ragged decode step through its graph; float32 logits (sum(1 + d_i), vocab), every real row."""
        logits = self.ragged_graphs.run(batch)
        self.num_forwards += 1
        return logits

    def can_replay(self, batch: int, k: int) -> bool:
        return self.graphs is not None and self.graphs.lookup(batch, k) is not None

    # Whether forward_uniform takes device_seq_lens (a chained speculative step, engine/chained_step.py).
    takes_device_seq_lens = True

    @torch.inference_mode()
    def forward_uniform(
        self, batch: UniformDecodeBatch, k: int, logit_rows: list[int], device_token_ids: torch.Tensor | None = None,
        device_seq_lens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode-only step through a captured graph; float32 logits (len(logit_rows), vocab).

        When every row is asked for, the graph's own logits are returned (valid until the next replay).
        device_token_ids, device_seq_lens: inputs already on the device, instead of batch.token_ids /
        batch.seq_lens (CudaGraphDecoder.run).
        """
        logits = self.graphs.run(batch, k, device_token_ids, device_seq_lens)  # (B * (1 + k), vocab)
        self.num_forwards += 1
        if len(logit_rows) == logits.shape[0]:  # rows are ascending and distinct: all of them, in order
            return logits
        # From pinned memory: a copy from pageable memory first waits for the stream, i.e. for the graph
        # just launched, and the host would lose the time it has while the GPU runs.
        rows = torch.tensor(logit_rows, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        return logits.index_select(0, rows.to(self.device, non_blocking=True))

    def idle_step(self, batch: int, k: int) -> Callable[[], object]:
        """What runs one (batch, 1 + k)-position forward on idle inputs (the scratch block only: no
        request's KV is touched): the captured graph's replay, else an eager forward (cost_probe.py)."""
        if self.graphs is not None and (batch, k) in self.graphs.graphs:
            return self.graphs.idle_replay(batch, k)
        q_len = 1 + k
        blocks = [self.scratch_block] * -(-q_len // self.block_size)  # the scratch block, reused
        seqs = [SequenceInput([0] * q_len, q_len, blocks)] * batch
        rows = list(range(batch * q_len))
        return lambda: self.forward(seqs, rows)

    @torch.inference_mode()
    def forward(self, seqs: list[SequenceInput], logit_rows: list[int]) -> torch.Tensor:
        """Run the model; return float32 logits (len(logit_rows), vocab) of the requested flat rows."""
        input_ids: list[int] = []
        positions: list[int] = []
        for seq in seqs:
            start = seq.seq_len - len(seq.token_ids)
            input_ids.extend(seq.token_ids)
            positions.extend(range(start, seq.seq_len))
        meta = AttentionMetadata.build(
            query_lens=[len(s.token_ids) for s in seqs],
            seq_lens=[s.seq_len for s in seqs],
            block_tables=[s.block_ids for s in seqs],
            block_size=self.block_size,
            device=self.device,
        )
        ids = torch.tensor(input_ids, dtype=torch.int64, device=self.device)
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)
        hidden = self.model(ids, pos, self.kv_caches, meta)  # (T, hidden)
        rows = torch.tensor(logit_rows, dtype=torch.int64, device=self.device)
        self.num_forwards += 1
        return self.model.compute_logits(hidden.index_select(0, rows))  # (N, vocab) float32
