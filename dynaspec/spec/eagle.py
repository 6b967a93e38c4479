"""EAGLE-3 drafter: a one-layer head on the target's own hidden states proposes k tokens (Li et al. 2025,
arXiv 2503.01840; EAGLE, Li et al. 2024, arXiv 2401.15077). Head: models/eagle_head.py; its KV, eager
forwards and chain graphs: runtime/eagle_graphs.py.

Resources. `attach` allocates the head's one-layer KV on the target's block tables AND the feature cache
(models/feature_tap.py: the tapped layers' residual streams per KV slot, paged like the KV), and installs
the tap on the target, so every target forward (prefill, plain decode, verify; eager or a captured graph,
which the engine captures after `attach`) writes the features of the tokens it processes. Both count in
`kv_bytes_per_block`. No extra target forward, and a k = 0 step runs no drafter method: it only pays the
tap's scatter.

Catch-up. Before drafting for a request of N tokens, the head feeds every position it has not processed,
s .. N - 1 (a whole prompt, tokens committed while k was 0, or the 1 + a tokens of the last verify), each
with the target's features of the position before, read by slot from the feature cache: the head is
never stale after a plain phase (TensorRT-LLM issue #16888). Drafted positions are never kept (they were
fed the head's own hidden, not the target's features): after a propose the head has processed N.

Drafting: greedy batches go through ONE replay of the (bucket, k) chain graph, whose first step feeds up to
1 + k catch-up positions (a longer catch-up is fed ahead eagerly, nothing drafted, up to its last 1 + k:
ChainDrafter._feed_ahead); otherwise (a sampled request, no chain for the batch) eagerly, step by
step, keeping q (the head's distribution after the request's sampling processing) for rejection sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynaspec.models.decode_kernels import DecodeKernels
from dynaspec.models.eagle_head import EagleHead
from dynaspec.models.feature_tap import FeatureTap, feature_bytes_per_block, install_feature_tap
from dynaspec.models.loader import LoadedModel
from dynaspec.runtime.eagle_graphs import EagleChainGraphs, EagleHeadRunner
from dynaspec.runtime.host_copy import to_device
from dynaspec.runtime.kv_cache import kv_bytes_per_block
from dynaspec.runtime.request import Request
from dynaspec.spec.chain_drafter import ChainDrafter, pick_drafts
from dynaspec.spec.drafter import DraftProposal


@dataclass
class _HeadState:
    num_computed: int = 0  # positions of the request the head has processed with the target's features


class EagleDrafter(ChainDrafter):
    def __init__(self, head: EagleHead, target: LoadedModel, dtype: torch.dtype, device: torch.device, seed: int = 0):
        super().__init__()
        self.head = head
        self.target = target
        self.dtype, self.device = dtype, device
        self.vocab_size = int(target.model.vocab_size)
        self.hidden_size = int(target.hf_config.hidden_size)
        # Used for sampled requests without their own seed; seeded requests use their own generator.
        self.generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.tap: FeatureTap | None = None
        self.runner: EagleHeadRunner | None = None
        self.chain: EagleChainGraphs | None = None

    # ------------------------------------------------------------------ resources and cost
    def kv_bytes_per_block(self, block_size: int, dtype: torch.dtype) -> int:
        """The head's one-layer KV plus the target features of a block (both on the target's block tables)."""
        features = feature_bytes_per_block(self.hidden_size, len(self.head.layers_to_capture), block_size, dtype)
        return kv_bytes_per_block(self.head, block_size, dtype) + features

    def attach(self, num_blocks: int, block_size: int, kernels: DecodeKernels) -> None:
        """Allocate the head's KV and the feature cache (num_blocks + the scratch block), install the tap on
        the target, before the engine captures the target's graphs, and route the head's inference through
        the target's decode kernels (EagleDecoderLayer.set_decode_kernels). Another EAGLE engine on the same
        copy of the target keeps its own tap: the target graphs each engine captures store into the tap installed
        while they were captured, and claim_target re-installs this one before each of this engine's steps
        for its eager forwards."""
        self.tap = FeatureTap(self.head.layers_to_capture, self.hidden_size, (num_blocks + 1) * block_size,
                              self.dtype, self.device)
        install_feature_tap(self.target.model, self.tap)
        self.head.midlayer.set_decode_kernels(kernels)
        self.head.norm.decode_kernels = kernels
        self.runner = EagleHeadRunner(self.head, self.target.model, self.tap, num_blocks, block_size, self.dtype,
                                      self.device)

    def claim_target(self) -> None:
        """The target's eager forwards write this drafter's feature cache (one attribute set; another EAGLE engine
        on the same weights may have installed its own since this engine's last step)."""
        if self.tap is not None and self.target.model.model.feature_tap is not self.tap:
            install_feature_tap(self.target.model, self.tap)

    def capture_graphs(self, pairs: list[tuple[int, int]], max_blocks_per_seq: int, use_graphs: bool = True) -> None:
        """The whole-chain graph of every (bucket, k >= 1) pair (`use_graphs=False`: the same fixed-shape
        chain, run eagerly: CPU tests)."""
        if self.runner is None:
            raise RuntimeError("EagleDrafter.attach() must be called before capture_graphs()")
        pairs = sorted({(b, k) for b, k in pairs if k >= 1})
        if pairs:
            self.chain = EagleChainGraphs(self.runner, max_blocks_per_seq, pairs, self.vocab_size, use_graphs)
            self.chain.capture()

    def _single_step_seconds(self, batch: int, repeats: int) -> float:
        """Seconds of one eager single-position head step for `batch` requests in the scratch block."""
        import time

        runner = self.runner
        ids = torch.zeros(batch, dtype=torch.int64, device=self.device)
        g = torch.zeros(batch, self.hidden_size, dtype=self.dtype, device=self.device)
        tables = [[runner.scratch_block]] * batch
        runner.draft_step(ids, g, [0] * batch, tables)  # warm-up
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(repeats):
            runner.draft_step(ids, g, [0] * batch, tables)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - start) / repeats

    # ------------------------------------------------------------------ drafting (ChainDrafter's hooks)
    def _catch_up_start(self, request: Request) -> int:
        state = self._state.setdefault(request.request_id, _HeadState())
        state.num_computed = min(state.num_computed, request.num_tokens - 1)
        return state.num_computed

    def _chain_width(self, k: int) -> int:
        """The chain's catch-up step takes up to 1 + k positions (the bonus token and all k accepted drafts)."""
        return 1 + k

    def _feed(self, requests: list[Request], starts: list[int], ends: list[int]) -> None:
        """The head over positions starts[i] .. ends[i] - 1 (the target's features of the position before
        each), its KV written, no token drafted."""
        fed = [r.tokens_from(s)[: e - s] for r, s, e in zip(requests, starts, ends)]
        self.runner.catch_up(fed, starts, [r.block_ids for r in requests])
        for request, end in zip(requests, ends):
            self._state[request.request_id].num_computed = end

    def _feed_scratch(self, num_tokens: int) -> None:
        runner = self.runner
        runner.catch_up([[0] * num_tokens], [0], [[runner.scratch_block] * -(-num_tokens // runner.block_size)])

    def _chained_inputs(self, target_ids, accepted, drafts, lengths, k):
        """Step t's accepted drafts and bonus token (the target's argmax rows 0..a), padded with the last:
        1 + k positions, a + 1 real, the context L + 1 + k (L: the length at step t's launch)."""
        steps = torch.arange(1 + k, device=target_ids.device).unsqueeze(0)  # (1, 1 + k)
        fed = target_ids.gather(1, torch.minimum(steps, accepted.unsqueeze(1)))  # (B, 1 + k)
        seq_lens = to_device(lengths, target_ids.device) + 1 + k
        return fed, seq_lens, accepted + 1

    def _record(self, requests: list[Request], proposal: DraftProposal, k: int) -> None:
        """Drafted positions are never kept: the head has processed every committed position."""
        for request in requests:
            self._state[request.request_id].num_computed = request.num_tokens

    def _draft_steps(self, requests: list[Request], starts: list[int], k: int):
        """Eager: the catch-up of any length, then k - 1 single-position steps, picking on the host."""
        runner = self.runner
        tables = [r.block_ids for r in requests]
        h = runner.catch_up([r.tokens_from(s) for r, s in zip(requests, starts)], starts, tables)  # (B, H)
        tokens: list[list[int]] = [[] for _ in requests]
        probs: list[list[torch.Tensor]] = [[] for _ in requests]
        confidence: list[list[float]] = [[] for _ in requests]
        for step in range(k):
            if step > 0:
                ids = torch.tensor([t[-1] for t in tokens], dtype=torch.int64, device=self.device)
                h = runner.draft_step(ids, h, [r.num_tokens - 1 + step for r in requests], tables)
            logits = runner.logits(h)[:, : self.vocab_size]  # (B, vocab)
            for i, token in enumerate(pick_drafts(requests, logits, probs, step, self.generator, confidence)):
                tokens[i].append(token)
        return tokens, probs, confidence
