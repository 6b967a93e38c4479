"""The one interface every drafter implements; the engine never branches on the drafter's type.

Step loop (docs/ARCHITECTURE.md): `k = policy.draft_len(...)`; when k >= 1 `drafter.propose(batch, k)`;
the target verifies; the engine commits; then `drafter.observe(running)` after speculative steps. Plain
k = 0 steps run no drafter method at all, so the drafter's state (n-gram pool, draft-model KV) falls
behind while speculation is off and propose() catches up on every token committed meanwhile (TensorRT-LLM
issue #16888 keeps it fresh instead, at a cost on every plain step). `catch_up_tokens(batch)` says how far
behind it is and `measure_catch_up_seconds_per_token()` what catching up costs, so the goodput planner
can price a switch from k = 0 (spec/catch_up.py). `release(request)` when a request finishes, is aborted
or is preempted; `reset()` forgets every request's traces (a shared n-gram pool learns from all of them),
for benchmarks that must not let one measurement's outputs feed the next one's drafts.

Drafters never mutate a Request: they keep per-request state in their own dicts keyed by request_id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from dynaspec.runtime.request import Request


@dataclass
class DraftProposal:
    """Draft tokens for a batch of requests.

    tokens[i]: at most k token ids for requests[i] (possibly none).
    probs[i]: (len(tokens[i]), vocab) float32 draft distribution q the tokens were sampled from, or None
    for a one-hot (deterministic) proposal such as n-gram lookup.
    """

    tokens: list[list[int]]
    probs: list[torch.Tensor | None]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.probs):
            raise ValueError(
                f"DraftProposal needs one probs entry per request: {len(self.tokens)} token lists, "
                f"{len(self.probs)} probs entries"
            )
        for i, (toks, q) in enumerate(zip(self.tokens, self.probs)):
            if q is not None and (q.dim() != 2 or q.shape[0] != len(toks)):
                raise ValueError(
                    f"DraftProposal.probs[{i}] must be (len(tokens[{i}]), vocab) = ({len(toks)}, V), "
                    f"got shape {tuple(q.shape)}"
                )

    @classmethod
    def empty(cls, num_requests: int) -> "DraftProposal":
        """No draft tokens for any of `num_requests` requests."""
        return cls(tokens=[[] for _ in range(num_requests)], probs=[None] * num_requests)

    @property
    def num_drafted(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @property
    def max_len(self) -> int:
        return max((len(t) for t in self.tokens), default=0)

    def __len__(self) -> int:
        return len(self.tokens)


@runtime_checkable
class Drafter(Protocol):
    """Proposes draft tokens. Implement all three methods (or subclass this and override propose)."""

    def propose(self, requests: list[Request], k: int) -> DraftProposal:
        """Draft at most k (>= 1) tokens per request, continuing each request's committed tokens."""
        ...

    def observe(self, requests: list[Request]) -> None:
        """Learn from tokens committed since the last call (called every step, after commit)."""
        return None

    def release(self, request: Request) -> None:
        """Forget a finished, aborted or preempted request's state."""
        return None

    def catch_up_tokens(self, requests: list[Request]) -> int:
        """Tokens of these requests the drafter has not processed yet (what propose() would catch up on)."""
        return 0

    def measure_catch_up_seconds_per_token(self) -> float:
        """Seconds a catch-up costs per token, timed now on synthetic tokens (0.0: unknown, learned online)."""
        return 0.0

    def reset(self) -> None:
        """Forget everything earlier requests left behind, as if freshly built (no request may be in flight)."""
        return None
