"""The one interface every drafter implements; the engine never branches on the drafter's type.

A drafter owns everything it runs on: its KV (`kv_bytes_per_block` counts it into the shared pool,
`attach` allocates it on the target's block tables), its CUDA graphs (`capture_graphs`) and its cost
(`draft_seconds(batch, k)`, added to the target's verify forward by the start-up cost probe), so the
engine, the cost probe and `dynaspec tune` never reach into a drafter's fields.

Step loop (docs/ARCHITECTURE.md): `k = policy.draft_len(...)`; when k >= 1 `drafter.propose(batch, k)`;
the target verifies; the engine commits; then `drafter.observe(drafted)` after speculative steps, with the
requests it drafted for. Plain k = 0 steps run no drafter method at all, nor does a request with k_i = 0 in a
ragged step, so the drafter's state (n-gram pool, draft-model KV) falls behind while speculation is off
and propose() catches up on every token committed meanwhile (TensorRT-LLM
issue #16888 keeps it fresh instead, at a cost on every plain step). `catch_up_tokens(batch)` says how far
behind it is and `measure_catch_up_cost()` what catching up costs (a fixed part and per token), so the goodput planner
can price a switch from k = 0 (spec/catch_up.py). `release(request)` when a request finishes, is aborted
or is preempted; `reset()` forgets every request's traces (a shared n-gram pool learns from all of them),
for benchmarks that must not let one measurement's outputs feed the next one's drafts.

Drafters never mutate a Request: they keep per-request state in their own dicts keyed by request_id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dynaspec.models.decode_kernels import DecodeKernels
    from dynaspec.runtime.request import Request


class DeviceDrafts:
    """(B, k) draft ids a graph left on the device, with their copy to the host in flight (pinned memory
    and an event on CUDA): the verify forward takes them on the device (no host wait between drafting and
    verifying, the drafts reach the verify graph's input ids by a device copy), and the host reads them
    after the verify launch, when the copy has long landed (vLLM keeps draft ids on the device between the
    drafter and the target the same way)."""

    def __init__(self, ids: torch.Tensor, confidence: torch.Tensor | None = None) -> None:
        self.ids = ids  # (B, k) int64 on the drafter's device; valid until the drafter's next launch
        self.shape = tuple(ids.shape)
        self.has_confidence = confidence is not None  # (B, k) float32: the drafter's probability of each
        self._event: torch.cuda.Event | None = None
        if ids.device.type == "cuda":
            self._host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self._host.copy_(ids, non_blocking=True)
            self._host_confidence = None
            if confidence is not None:
                self._host_confidence = torch.empty(confidence.shape, dtype=confidence.dtype, pin_memory=True)
                self._host_confidence.copy_(confidence, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = ids.clone()
            self._host_confidence = None if confidence is None else confidence.clone()
        self._rows: list[list[int]] | None = None

    def tolist(self) -> list[list[int]]:
        """The drafts on the host (waits for the copy on first use, i.e. for the drafting graph only)."""
        if self._rows is None:
            if self._event is not None:
                self._event.synchronize()
            self._rows = self._host.tolist()
        return self._rows

    def confidence(self) -> list[list[float]]:
        """The drafts' probabilities on the host (waits for the drafting graph, as tolist)."""
        if self._event is not None:
            self._event.synchronize()
        return self._host_confidence.tolist()


class DraftProposal:
    """Draft tokens for a batch of requests.

    tokens[i]: at most k token ids for requests[i] (possibly none).
    probs[i]: (len(tokens[i]), vocab) float32 draft distribution q the tokens were sampled from, or None
    for a one-hot (deterministic) proposal such as n-gram lookup.
    on_device: the same tokens as (B, k) ids on the device (every request drafted exactly k) when a graph
    drafted them; `tokens` then reads them from the device on first use (DraftProposal.from_device).
    confidence[i]: the drafter's probability of each of tokens[i] (a model drafter's; None: the drafter has
    no distribution, n-gram), read from the device on first use like tokens (`has_confidence` asks without
    reading).
    """

    def __init__(self, tokens: list[list[int]], probs: list[torch.Tensor | None],
                 confidence: list[list[float]] | None = None) -> None:
        if len(tokens) != len(probs):
            raise ValueError(
                f"DraftProposal needs one probs entry per request: {len(tokens)} token lists, "
                f"{len(probs)} probs entries"
            )
        for i, (toks, q) in enumerate(zip(tokens, probs)):
            if q is not None and (q.dim() != 2 or q.shape[0] != len(toks)):
                raise ValueError(
                    f"DraftProposal.probs[{i}] must be (len(tokens[{i}]), vocab) = ({len(toks)}, V), "
                    f"got shape {tuple(q.shape)}"
                )
        self._tokens: list[list[int]] | None = tokens
        self.probs = probs
        self.on_device: DeviceDrafts | None = None
        self._confidence = confidence

    @classmethod
    def from_device(cls, drafts: DeviceDrafts) -> "DraftProposal":
        """k greedy drafts per request that a graph left on the device (no q: one-hot proposals)."""
        proposal = cls([], [])
        proposal._tokens, proposal.on_device = None, drafts
        proposal.probs = [None] * drafts.shape[0]
        return proposal

    @classmethod
    def empty(cls, num_requests: int) -> "DraftProposal":
        """No draft tokens for any of `num_requests` requests."""
        return cls(tokens=[[] for _ in range(num_requests)], probs=[None] * num_requests)

    @property
    def tokens(self) -> list[list[int]]:
        if self._tokens is None:
            self._tokens = self.on_device.tolist()
        return self._tokens

    @property
    def has_confidence(self) -> bool:
        return self._confidence is not None or (self.on_device is not None and self.on_device.has_confidence)

    @property
    def confidence(self) -> list[list[float]] | None:
        if self._confidence is None and self.on_device is not None and self.on_device.has_confidence:
            self._confidence = self.on_device.confidence()
        return self._confidence

    @property
    def num_drafted(self) -> list[int]:
        if self._tokens is None:
            return [self.on_device.shape[1]] * self.on_device.shape[0]
        return [len(t) for t in self._tokens]

    @property
    def max_len(self) -> int:
        return max(self.num_drafted, default=0)

    def __len__(self) -> int:
        return len(self.probs)


class Drafter:
    """Base of every drafter: the protocol, with the defaults of a drafter that needs no KV, no graphs
    and no device time (override propose; a no-speculation engine uses NoDrafter, which proposes nothing)."""

    def propose(self, requests: list[Request], k: int) -> DraftProposal:
        """Draft at most k (>= 1) tokens per request, continuing each request's committed tokens."""
        return DraftProposal.empty(len(requests))

    def observe(self, requests: list[Request]) -> None:
        """Learn from tokens committed since the last call (called after every step with k >= 1, with the
        requests that were drafted for)."""

    def release(self, request: Request) -> None:
        """Forget a finished, aborted or preempted request's state."""

    def catch_up_tokens(self, requests: list[Request]) -> int:
        """Tokens of these requests the drafter has not processed yet (what propose() would catch up on)."""
        return 0

    def measure_catch_up_seconds_per_token(self) -> float:
        """Seconds a catch-up costs per token, timed now on synthetic tokens (0.0: unknown, learned online)."""
        return 0.0

    def measure_catch_up_cost(self) -> tuple[float, float]:
        """(seconds a catch-up costs whatever its length, seconds per token), timed now (spec/catch_up.py);
        default: no fixed part and measure_catch_up_seconds_per_token()."""
        return 0.0, self.measure_catch_up_seconds_per_token()

    def reset(self) -> None:
        """Forget everything earlier requests left behind, as if freshly built (no request may be in flight)."""

    # ---------------------------------------------------------------- resources and cost
    def kv_bytes_per_block(self, block_size: int, dtype: torch.dtype) -> int:
        """Bytes of the drafter's own KV per block of the shared pool (0: it keeps none)."""
        return 0

    def attach(self, num_blocks: int, block_size: int, kernels: DecodeKernels) -> None:
        """Allocate the drafter's KV once the engine has sized the shared block pool; use `kernels`."""

    def claim_target(self) -> None:
        """Before a step: point whatever this drafter installed on the target's model object (an EAGLE head's
        feature tap) back at itself, for engines that share one copy of the target's weights (`dynaspec bench
        --rounds`: each line's engine steps in turn). Nothing for drafters that install none."""

    def capture_graphs(self, pairs: list[tuple[int, int]], max_blocks_per_seq: int, use_graphs: bool = True) -> None:
        """Capture the drafter's CUDA graphs for the (batch bucket, k >= 1) pairs the engine can speculate
        at (`use_graphs=False`: build the same fixed-shape paths, run eagerly)."""

    def compile_eager_kernels(self) -> None:
        """Launch once, at start-up, every kernel variant an eager draft step can take (Triton compiles a
        variant on its first launch, 1-2 s in which a serving step stalls); nothing for drafters without a
        model."""

    def draft_seconds(self, batch: int, k: int, repeats: int = 5) -> float:
        """Seconds drafting k tokens for `batch` requests costs, measured now on idle inputs that touch no
        request's KV (the cost probe adds it to the target's verify forward)."""
        return 0.0

    # ---------------------------------------------------------------- chained steps (engine/chained_step.py)
    def propose_chained(self, requests: list[Request], target_ids: torch.Tensor, accepted: torch.Tensor,
                        drafts: torch.Tensor, lengths: list[int], k: int) -> "DraftProposal | None":
        """Step t + 1's k drafts per request from step t's results on the device, before the host has
        verified step t: target_ids (B, 1 + k) the target's argmax rows of step t, accepted (B,) how many
        of its drafts (B, k) they accept, lengths the requests' lengths when step t was launched. None:
        this drafter cannot (the engine then verifies step t first, as always)."""
        return None

    def record_chained(self, requests: list[Request], proposal: "DraftProposal", k: int) -> None:
        """Once step t is committed: the bookkeeping propose() does after drafting, for a chained proposal."""


class NoDrafter(Drafter):
    """The drafter of an engine without speculation: never asked to propose (its policy says k = 0)."""
