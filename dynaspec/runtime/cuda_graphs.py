"""CUDA graphs of the target's decode / verify forward, one per (batch bucket, draft length k).

A decode-only step with B requests and draft length k feeds exactly 1 + k positions per request, so
its shapes are static once B is padded up to a bucket (nano-vllm and vLLM capture one graph per batch
size and replay the smallest that fits; we key by (bucket, k) because the verify width changes with k).
Only the pairs the draft-length policy can reach are captured, not every bucket x every k.

Host work per step is kept small: the host writes four static inputs (token ids, context lengths,
number of real positions, block tables) into a pinned staging buffer (two, used in turn) and copies
it to the device in a single transfer; positions and KV slots are derived from them INSIDE the graph,
and so are the lm_head and the float32 logits. A step is then: fill staging, one copy, one replay.

Padding: padded requests have num_real = 0 and a context of 1 + k; padded positions (of padded
requests, and draft positions past a request's real drafts) write their K/V into a scratch block that
the block manager never hands out; their logits are ignored. Static inputs are shared by all graphs
(each graph uses a prefix), and all graphs share one memory pool, captured largest first, so the
logits returned by `run` are only valid until the next replay.

`use_graphs=False` runs the same per-pair forward eagerly (the CPU tests check the layout with it).

Subclasses reuse the staging, the static inputs and the capture loop by overriding `input_width` (the
positions staged per request) and `_forward` (the captured computation): runtime/chain_graphs.py
captures a draft model's whole k-step draft chain that way.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from dynaspec.models.attention_metadata import AttentionMetadata

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


@contextmanager
def collections_paused() -> Iterator[None]:
    """Keep Python's cyclic collector off until the block ends (restored as it was on exit).

    An engine that was dropped lives on until the cyclic collector runs (its policy holds bound methods
    of it), and so do its CUDA graphs; torch no longer collects when a capture begins. A collection that
    frees them in the middle of another engine's capture resets a graph while a stream is capturing
    ("operation not permitted when stream is capturing (function reset)"), which invalidates that capture:
    seen on an H100 after ~60 engines in one pytest process (2026-12-06). Outside a capture, freeing them
    is harmless, so nothing is collected here (a full collection costs ~0.1-0.2 s on a torch heap, and an
    engine captures up to six decoders)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


class CapturedGraphs:
    """Capture, idle replay and launch of a set of fixed-shape forwards keyed by `self.pairs` (largest
    first, one shared memory pool). Subclasses set `pairs`, `device`, `use_graphs`, `pool` and implement
    `stage_idle(*key)` and `_forward(*key)`: CudaGraphDecoder keys by (batch bucket, k), the ragged
    decoder of runtime/ragged_graphs.py by (batch bucket, padded total tokens)."""

    pairs: list[tuple[int, int]]
    device: torch.device
    use_graphs: bool
    pool: object
    # Logits graphs write their output into ONE static buffer (rows: the largest pair's) instead of each
    # keeping its own output tensor alive in the pool: 14 batch buckets x 5 k's of an 8B model's float32
    # logits held ~9 GB that the KV pool sizing never counted. Costs one copy inside each graph.
    shares_output: bool = True

    def _bind_target(self, model: nn.Module, kv_caches: list[torch.Tensor], block_size: int, max_blocks_per_seq: int,
                     scratch_block: int, device: torch.device, use_graphs: bool, pool) -> None:
        """The model and KV layout every decoder's forward runs on (the constructor arguments they share)."""
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.max_blocks = max_blocks_per_seq
        self.scratch_block = scratch_block
        self.device = device
        self.use_graphs = use_graphs
        self.pool = pool

    def _init_graph_store(self, output_buffer: torch.Tensor | None = None) -> None:
        """output_buffer: a static buffer to write outputs into, shared with another decoder whose graphs
        never replay concurrently with these (None: allocated at the first capture)."""
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.output_buffer = output_buffer
        self.num_replays = 0
        self.replays_per_pair: dict[tuple[int, int], int] = {}

    def output_rows(self, a: int, b: int) -> int:
        """Rows of the pair's output (the static buffer holds the largest)."""
        raise NotImplementedError

    def stage_idle(self, a: int, b: int) -> None:
        raise NotImplementedError

    def _forward(self, a: int, b: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every pair (largest first, sharing one memory pool); eager mode captures nothing."""
        if not self.use_graphs:
            return
        with collections_paused():
            self._capture_pairs()

    def _capture_pairs(self) -> None:
        for key in self.pairs:
            self.stage_idle(*key)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up (Triton autotune / compilation) outside the capture
                    warm = self._forward(*key)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self.shares_output and self.output_buffer is None:  # outside the pool: counted as activations
                rows = max(self.output_rows(*pair) for pair in self.pairs)
                self.output_buffer = torch.empty((rows, *warm.shape[1:]), dtype=warm.dtype, device=self.device)
            del warm
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._forward(*key)
                if self.shares_output:
                    out = self.output_buffer[: out.shape[0]].copy_(out)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[key] = graph
            self.outputs[key] = out
        torch.cuda.synchronize(self.device)

    def idle_replay(self, a: int, b: int) -> Callable[[], object]:
        """Stage the pair as all padding and return what runs it once: the graph's replay, or in eager mode
        its forward (for timing, runtime/cost_probe.py: no request's KV is touched)."""
        key = (a, b)
        if key not in self.pairs:
            raise ValueError(f"{key} is not one of this decoder's pairs")
        self.stage_idle(a, b)
        if self.use_graphs:
            return self.graphs[key].replay

        def forward() -> torch.Tensor:
            with torch.inference_mode():
                return self._forward(a, b)

        return forward

    def _launch(self, key: tuple[int, int]) -> torch.Tensor:
        """Replay the pair's graph (eager mode: run its forward); its whole output, valid until the next
        launch of any graph of the pool."""
        if self.use_graphs:
            self.graphs[key].replay()
            out = self.outputs[key]
        else:
            with torch.inference_mode():
                out = self._forward(*key)
        self.num_replays += 1
        self.replays_per_pair[key] = self.replays_per_pair.get(key, 0) + 1
        return out


class CudaGraphDecoder(CapturedGraphs):
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_blocks_per_seq: int,
        scratch_block: int,
        pairs: Iterable[tuple[int, int]],
        device: torch.device,
        use_graphs: bool = True,
        pool=None,
    ):
        """pool: a CUDA graph memory pool handle to capture into (shared with graphs captured before, which
        are never replayed concurrently with these); None starts a new one at the first capture."""
        self._bind_target(model, kv_caches, block_size, max_blocks_per_seq, scratch_block, device, use_graphs, pool)
        self.pairs = sorted(set(pairs), key=lambda p: p[0] * (1 + p[1]), reverse=True)
        self._buckets_by_k: dict[int, list[int]] = {}  # k -> its captured batch buckets, ascending (lookup)
        for bucket, k in sorted(self.pairs):
            self._buckets_by_k.setdefault(k, []).append(bucket)
        self._init_graph_store()
        widths = {self.input_width(k) for _, k in self.pairs}
        max_tokens = max((b * self.input_width(k) for b, k in self.pairs), default=0)
        max_batch = max((b for b, _ in self.pairs), default=0)
        max_q = max(widths, default=1)
        self.max_tokens, self.max_batch = max_tokens, max_batch
        # Staging layout (int64): [token ids | seq_lens | num_real | block tables (max_batch x max_blocks)].
        # Two pinned host buffers, used in turn: with overlapped decode the host fills step t + 1's inputs
        # before it has waited for anything after step t - 1, so step t's copy may still be pending.
        size = max_tokens + 2 * max_batch + max_batch * max_blocks_per_seq
        self._stagings = [_Staging(size, max_tokens, max_batch, max_blocks_per_seq, scratch_block, device) for _ in range(2)]
        self._turn = 0
        self.staging = self._stagings[0]
        self.device_inputs = torch.zeros(size, dtype=torch.int64, device=device)
        self.input_ids = self.device_inputs[:max_tokens]
        self.seq_lens = self.device_inputs[max_tokens : max_tokens + max_batch]
        self.num_real = self.device_inputs[max_tokens + max_batch : max_tokens + 2 * max_batch]
        self.block_tables = self.device_inputs[max_tokens + 2 * max_batch :].view(max_batch, max_blocks_per_seq)
        self.arange = torch.arange(max(max_q, max_batch + 1), device=device)
        self.scratch_slots = scratch_block * block_size + self.arange[:max_q] % block_size
        # query_start_loc per query width: (max_batch + 1,) multiples of the width
        self.query_start = {w: self.arange[: max_batch + 1] * w for w in widths | {1}}

    @property
    def buckets(self) -> list[int]:
        return sorted({b for b, _ in self.pairs})

    def lookup(self, batch: int, k: int) -> tuple[int, int] | None:
        """The captured (bucket, k) that runs `batch` requests at draft length k: the smallest bucket >=
        batch, or None (every step asks, and the goodput planner prices each candidate k with it)."""
        buckets = self._buckets_by_k.get(k)
        if not buckets:
            return None
        i = bisect_left(buckets, batch)
        return None if i == len(buckets) else (buckets[i], k)

    def input_width(self, k: int) -> int:
        """Positions staged per request for a pair of draft length k: a verify step feeds 1 + k."""
        return 1 + k

    def output_rows(self, bucket: int, k: int) -> int:
        return bucket * (1 + k)

    def _forward(self, bucket: int, k: int) -> torch.Tensor:
        """The captured computation: positions and slots from the static inputs, the model, the logits.

        Returns float32 logits (bucket * (1 + k), vocab).
        """
        q_len = 1 + k
        steps = self.arange[:q_len]  # (q_len,)
        seq_lens = self.seq_lens[:bucket]  # (bucket,)
        positions = (seq_lens - q_len).unsqueeze(1) + steps  # (bucket, q_len)
        real = steps.unsqueeze(0) < self.num_real[:bucket].unsqueeze(1)  # (bucket, q_len)
        hidden = self._model_step(self.input_ids[: bucket * q_len], positions, real, seq_lens)
        return self.model.compute_logits(hidden)  # (bucket * q_len, vocab) float32

    def _model_step(
        self, input_ids: torch.Tensor, positions: torch.Tensor, real: torch.Tensor, seq_lens: torch.Tensor
    ) -> torch.Tensor:
        """One fixed-shape forward of the first `bucket` requests, q_len positions each, on static tensors.

        input_ids: (bucket * q_len,) int64; positions: (bucket, q_len) int64 absolute positions; real:
        (bucket, q_len) bool, False where the position writes its K/V to the scratch block instead of the
        request's block; seq_lens: (bucket,) context lengths including the q_len positions.
        Returns hidden states (bucket * q_len, hidden). No host synchronisation (graph-capturable).
        """
        bucket, q_len = positions.shape
        tables = self.block_tables[:bucket]  # (bucket, max_blocks)
        blocks = tables.gather(1, torch.div(positions, self.block_size, rounding_mode="floor"))
        slots = torch.where(real, blocks * self.block_size + positions % self.block_size, self.scratch_slots[:q_len])
        meta = AttentionMetadata(
            slot_mapping=slots.reshape(-1),
            query_start_loc=self.query_start[q_len][: bucket + 1],
            seq_lens=seq_lens,
            block_tables=tables,
            query_lens_cpu=[q_len] * bucket,
            seq_lens_cpu=[self.max_blocks * self.block_size] * bucket,
            block_size=self.block_size,
        )
        return self.model(input_ids, positions.reshape(-1), self.kv_caches, meta)  # (bucket * q_len, hidden)

    def stage_idle(self, bucket: int, k: int) -> None:
        """Make every row of the (bucket, k) pair padding (for timing replays: no request's KV is touched)."""
        if self.device.type == "cuda":  # no copy from the staging buffers may still be pending
            torch.cuda.synchronize(self.device)
        self.staging.pad(0, bucket, self.input_width(k))
        self.device_inputs.copy_(self.staging.buffer)

    def run(self, batch: UniformDecodeBatch, k: int, device_token_ids: torch.Tensor | None = None,
            device_seq_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Run the pair for this batch; float32 logits (B * (1 + k), vocab) of the real requests' rows.

        device_token_ids: (B * (1 + k),) input ids already on the device (overlapped decode: the previous
        step's argmax); they replace batch.token_ids. device_seq_lens: (B,) context lengths on the device
        (a chained speculative step: they depend on the previous step's acceptance), replacing
        batch.seq_lens. The result lives in the graphs' shared pool: read it before the next `run`.
        """
        key, real = self._stage(batch, k, device_token_ids, device_seq_lens)
        return self._launch(key)[: real * self.input_width(k)]

    def _stage(
        self, batch: UniformDecodeBatch, k: int, device_token_ids: torch.Tensor | None = None,
        device_seq_lens: torch.Tensor | None = None, device_num_real: torch.Tensor | None = None,
    ) -> tuple[tuple[int, int], int]:
        """Fill the next pinned staging buffer with the batch (padded to its bucket) and start the one
        host-to-device copy; returns the (bucket, k) pair to launch and the number of real requests.

        batch.token_ids: B lists of input_width(k) ids each; device_token_ids: (B * input_width(k),) ids
        on the device that replace them; device_seq_lens / device_num_real: (B,) on the device, replacing
        batch.seq_lens / batch.num_real (copied after the staged inputs: stream order keeps them)."""
        real = len(batch.token_ids)
        key = self.lookup(real, k)
        if key is None:
            raise ValueError(f"no CUDA graph captured for batch {real} at k={k}")
        bucket, _ = key
        q_len = self.input_width(k)
        n = real * q_len
        width = max(len(t) for t in batch.block_tables)
        if width > self.max_blocks:
            raise ValueError(f"a block table of {width} blocks exceeds the captured width {self.max_blocks}")
        self._turn ^= 1
        staging = self.staging = self._stagings[self._turn]
        np_ids = staging.ids[:n].reshape(real, q_len)
        for i, tokens in enumerate(batch.token_ids):
            np_ids[i] = tokens
        staging.seq_lens[:real] = batch.seq_lens
        staging.num_real[:real] = batch.num_real
        tables = staging.tables
        for i, table in enumerate(batch.block_tables):
            tables[i, : len(table)] = table
        staging.pad(real, bucket, q_len)
        self.device_inputs.copy_(staging.buffer, non_blocking=True)
        if device_token_ids is not None:
            self.input_ids[:n].copy_(device_token_ids)
        if device_seq_lens is not None:
            self.seq_lens[:real].copy_(device_seq_lens)
        if device_num_real is not None:
            self.num_real[:real].copy_(device_num_real)
        return key, real


class _Staging:
    """One pinned host buffer of the static inputs, with numpy views of its parts."""

    def __init__(self, size: int, max_tokens: int, max_batch: int, max_blocks: int, scratch_block: int,
                 device: torch.device):
        self.buffer = torch.zeros(size, dtype=torch.int64, pin_memory=device.type == "cuda")
        array = self.buffer.numpy()
        self.ids = array[:max_tokens]
        self.seq_lens = array[max_tokens : max_tokens + max_batch]
        self.num_real = array[max_tokens + max_batch : max_tokens + 2 * max_batch]
        self.tables = array[max_tokens + 2 * max_batch :].reshape(max_batch, max_blocks)
        self.tables[:] = scratch_block

    def pad(self, start: int, bucket: int, q_len: int) -> None:
        """Requests start..bucket-1 become padding: no real position, a context of q_len."""
        self.seq_lens[start:bucket] = q_len
        self.num_real[start:bucket] = 0
