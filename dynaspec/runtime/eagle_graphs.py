"""What an EAGLE-3 head runs on: its one-layer paged KV on the target's block tables, its eager forward
over a flat batch, and its whole k-step draft chain as ONE CUDA graph per (batch bucket, k)
(head: models/eagle_head.py; drafter: spec/eagle.py; Li et al. 2025, arXiv 2503.01840).

Head position p feeds token x_p and g_{p-1}. A request with N committed tokens has target features for
positions 0 .. N - 2 in the FeatureTap (its verify / decode forwards wrote them by slot), so the head
catches up on its positions s .. N - 1 (s: what it has processed) with g = fc(features of p - 1), then
drafts: draft 1 from h_{N-1}; draft step j (1 <= j < k) feeds draft j at position N - 1 + j with
g = h_{N-2+j}, its own previous output. Drafted positions are never kept: the next catch-up recomputes
them from the target's features (EAGLE's rule), so the steady-state catch-up is the 1 + a tokens of the
last verify (a accepted drafts plus the bonus token), 1 .. k + 1 per request.

The chain graph of (bucket, k), per request i (padded requests have num_real = 0):

  step 0   1 + k positions: the 1 .. 1 + k catch-up tokens, padded at the end (padded positions write
           their K/V to the scratch block); g from the feature slots of positions p - 1 (zeros at p = 0)
           gathered in the graph from the block tables; h of row i(1 + k) + num_real - 1 -> draft 1.
  step j   one position: draft j at N - 1 + j, g = the previous step's h, context N + j -> draft j + 1.

Staging, padding, capture and replay are CudaGraphDecoder's (runtime/cuda_graphs.py), as for the draft
model's chain (runtime/chain_graphs.py). Greedy only (argmax over the head's vocabulary, mapped to the target's).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dynaspec.models.attention import warmup_block_tables
from dynaspec.models.attention_metadata import AttentionMetadata
from dynaspec.models.eagle_head import EagleHead, head_logits, normed_draft_logits, target_embed
from dynaspec.models.feature_tap import FeatureTap
from dynaspec.runtime.cuda_graphs import CudaGraphDecoder, UniformDecodeBatch
from dynaspec.runtime.kv_cache import allocate_kv_cache


class EagleHeadRunner:
    """The head's KV (num_blocks + 1 blocks, the last the scratch block) and its eager forwards."""

    def __init__(self, head: EagleHead, target: torch.nn.Module, tap: FeatureTap, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device):
        self.head, self.target, self.tap = head, target, tap
        self.block_size, self.dtype, self.device = block_size, dtype, device
        self.scratch_block = num_blocks
        self.kv_caches = allocate_kv_cache(head, num_blocks + 1, block_size, dtype, device)
        self.num_forwards = 0

    def _meta(self, query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]]) -> AttentionMetadata:
        return AttentionMetadata.build(query_lens, seq_lens, block_tables, self.block_size, self.device)

    @torch.inference_mode()
    def catch_up(self, tokens: list[list[int]], starts: list[int], block_tables: list[list[int]]) -> torch.Tensor:
        """Feed request i's tokens[i] at positions starts[i] .. with g from the target's features of the
        position before each; returns h of each request's last fed position, (B, H)."""
        ids, positions, feature_slots, valid, seq_lens, last = [], [], [], [], [], []
        bs = self.block_size
        for fed, start, table in zip(tokens, starts, block_tables):
            for p in range(start, start + len(fed)):
                prev = max(p - 1, 0)
                feature_slots.append(table[prev // bs] * bs + prev % bs)
                valid.append(p > 0)
            ids.extend(fed)
            positions.extend(range(start, start + len(fed)))
            seq_lens.append(start + len(fed))
            last.append(len(ids) - 1)
        dev = self.device
        meta = self._meta([len(t) for t in tokens], seq_lens, block_tables)
        features = self.tap.gather(torch.tensor(feature_slots, dtype=torch.int64, device=dev))  # (T, n * H)
        g = self.head.project(features, torch.tensor(valid, device=dev))  # (T, H)
        hidden = self._run(torch.tensor(ids, device=dev), g, torch.tensor(positions, device=dev), meta)
        return hidden.index_select(0, torch.tensor(last, device=dev))  # (B, H)

    def compile_eager_kernels(self, max_query_len: int) -> None:
        """On CUDA: one eager catch-up of each length 1..max_query_len + 1 on the scratch block, so Triton
        compiles the head's attention variants at start-up (ModelRunner.compile_eager_kernels); not counted
        in num_forwards."""
        if self.device.type != "cuda":
            return
        forwards = self.num_forwards
        for q_len in range(1, max_query_len + 2):  # with one KV split and with several
            for blocks in warmup_block_tables(q_len, self.block_size, self.scratch_block):
                self.catch_up([[0] * q_len], [0], [blocks])
        self.num_forwards = forwards

    @torch.inference_mode()
    def draft_step(self, token_ids: torch.Tensor, g: torch.Tensor, positions: list[int],
                   block_tables: list[list[int]]) -> torch.Tensor:
        """One draft position per request: token_ids (B,), g (B, H) (the head's previous output), at
        `positions` -> h (B, H)."""
        meta = self._meta([1] * len(positions), [p + 1 for p in positions], block_tables)
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)
        return self._run(token_ids, g, pos, meta)

    def _run(self, ids: torch.Tensor, g: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        self.num_forwards += 1
        return self.head(target_embed(self.target, ids), g, positions, self.kv_caches, meta)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """h (B, H) -> float32 logits (B, vocab) through the target's lm_head."""
        return head_logits(self.head, self.target, hidden)


class EagleChainGraphs(CudaGraphDecoder):
    """Per (bucket, k >= 1): the head's catch-up and k draft steps in one graph (module docstring).
    vocab_size: the target's (drafts are argmaxes over the first vocab_size logits)."""

    def __init__(self, runner: EagleHeadRunner, max_blocks_per_seq: int, pairs: Iterable[tuple[int, int]],
                 vocab_size: int, use_graphs: bool = True, pool=None):
        pairs = list(pairs)
        if any(k < 1 for _, k in pairs):
            raise ValueError(f"an EAGLE chain needs k >= 1; got pairs {pairs}")
        self.runner = runner
        self.vocab_size = vocab_size
        super().__init__(runner.head, runner.kv_caches, runner.block_size, max_blocks_per_seq, runner.scratch_block,
                         pairs, runner.device, use_graphs, pool)

    shares_output = False  # (bucket, k) draft ids: small, and their width differs per k

    def input_width(self, k: int) -> int:
        """Step 0 feeds up to 1 + k catch-up tokens per request."""
        return 1 + k

    def draft(self, batch: UniformDecodeBatch, k: int, device_token_ids: torch.Tensor | None = None,
              device_seq_lens: torch.Tensor | None = None, device_num_real: torch.Tensor | None = None) -> torch.Tensor:
        """batch: per request its catch-up tokens padded to 1 + k (repeat the last), seq_lens = N + 1 + k -
        num_real, num_real = the catch-up length, its block table (covering N + k slots); device_*: those
        inputs on the device instead (a chained step, engine/chained_step.py). Returns (B, k) int64 draft ids
        on the device, valid until the next launch of the pool; `confidence` then holds their (B, k)
        probabilities under the head."""
        key, real = self._stage(batch, k, device_token_ids, device_seq_lens, device_num_real)
        ids, confidence = self._launch(key)
        self.confidence = confidence[:real]  # (B, k) float32: the head's probability of each draft
        return ids[:real]

    def _slots(self, positions: torch.Tensor, real: torch.Tensor, bucket: int) -> torch.Tensor:
        """(bucket, q) positions -> their KV slots through the block tables (the scratch block where not real)."""
        tables = self.block_tables[:bucket]
        blocks = tables.gather(1, torch.div(positions, self.block_size, rounding_mode="floor"))
        slots = blocks * self.block_size + positions % self.block_size
        return torch.where(real, slots, self.scratch_slots[: positions.shape[1]])

    def _step(self, ids, g, positions, slots, seq_lens, rope=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One fixed-shape head forward: ids (bucket * q,), g (bucket * q, H), positions (bucket * q,), their KV
        slots (bucket * q,), seq_lens (bucket,), rope: their (cos, sin) if precomputed -> (h, norm(h)), each
        (bucket * q, H). No host synchronisation."""
        bucket = seq_lens.shape[0]
        q_len = positions.shape[0] // bucket
        meta = AttentionMetadata(
            slot_mapping=slots,
            query_start_loc=self.query_start[q_len][: bucket + 1],
            seq_lens=seq_lens,
            block_tables=self.block_tables[:bucket],
            query_lens_cpu=[q_len] * bucket,
            seq_lens_cpu=[self.max_blocks * self.block_size] * bucket,
            block_size=self.block_size,
        )
        runner = self.runner  # not runner._run: chain steps are counted per replay (replays_per_pair)
        return runner.head.forward_normed(target_embed(runner.target, ids), g, positions, self.kv_caches, meta, rope)

    def _pick(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """norm(h) (B, H) -> the greedy draft token ids of the target (B,): the argmax over the head's
        vocabulary, mapped back (the same token as the argmax of head_logits: the map is increasing); and the
        head's probability of each (B,) float32 (its softmax's maximum). On CUDA one kernel does the argmax,
        the map and the probability (models/greedy_pick.py)."""
        head = self.runner.head
        logits = normed_draft_logits(head, self.runner.target, normed)  # (B, draft vocab or lm_head width)
        if head.lm_head is None:
            logits = logits[:, : self.vocab_size]
        if logits.is_cuda:
            from dynaspec.models.greedy_pick import greedy_pick  # Triton is only needed on CUDA

            return greedy_pick(logits, None if head.lm_head is None else head.draft_to_target)
        logits = logits.float()
        return head.to_target(logits.argmax(dim=-1)), torch.softmax(logits, dim=-1).amax(dim=-1)

    def _forward(self, bucket: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The captured chain; (bucket, k) int64 draft ids and (bucket, k) float32 their probabilities. Every
        step's positions, KV slots, context lengths and RoPE angles are computed at once, before the first:
        a draft step is then the head's own kernels only."""
        width = 1 + k
        steps = self.arange[:width]  # (W,)
        seq_lens = self.seq_lens[:bucket]  # (bucket,) step-0 context
        num_real = self.num_real[:bucket]  # (bucket,) catch-up length; 0 for padding
        positions = (seq_lens - width).unsqueeze(1) + steps  # (bucket, W)
        real = steps.unsqueeze(0) < num_real.unsqueeze(1)  # (bucket, W)
        num_tokens = seq_lens - width + num_real  # (bucket,) N; 0 for padding
        draft_positions = num_tokens.unsqueeze(0) + self.arange[: k - 1].unsqueeze(1)  # (k - 1, bucket): N - 1 + j
        fed = bucket * width
        cos, sin = self.runner.head.midlayer.rotary_emb(
            torch.cat([positions.reshape(-1), draft_positions.reshape(-1)]), self.runner.dtype)  # (fed + .., D)
        previous = positions - 1
        feature_slots = self._slots(previous.clamp(min=0), real, bucket).reshape(-1)  # (bucket * W,)
        g = self.runner.head.project(self.runner.tap.gather(feature_slots), (previous >= 0).reshape(-1))
        hidden, normed = self._step(self.input_ids[:fed], g, positions.reshape(-1),
                                    self._slots(positions, real, bucket).reshape(-1), seq_lens,
                                    (cos[:fed], sin[:fed]))  # (bucket * W, H)
        last = self.arange[:bucket] * width + (num_real - 1).clamp(min=0)  # (bucket,)
        h = hidden.index_select(0, last)  # (bucket, H)
        ids, confidence = self._pick(normed.index_select(0, last))
        drafted, confidences = [ids], [confidence]
        if k > 1:
            draft_seq_lens = draft_positions + 1  # (k - 1, bucket): N + j
            is_real = (num_real > 0).unsqueeze(0).expand(k - 1, bucket)  # (k - 1, bucket)
            draft_slots = self._slots(draft_positions.t(), is_real.t(), bucket).t().contiguous()  # (k - 1, bucket)
            cos, sin = cos[fed:].view(k - 1, bucket, -1), sin[fed:].view(k - 1, bucket, -1)
            for j in range(1, k):
                # draft j at position N - 1 + j, context N + j
                h, normed = self._step(ids, h, draft_positions[j - 1], draft_slots[j - 1], draft_seq_lens[j - 1],
                                       (cos[j - 1], sin[j - 1]))  # (bucket, H)
                ids, confidence = self._pick(normed)
                drafted.append(ids)
                confidences.append(confidence)
        return torch.stack(drafted, dim=1), torch.stack(confidences, dim=1)  # (bucket, k) int64, float32
