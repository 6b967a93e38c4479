"""BENCHMARK ONLY: tells a mixed-profile AcceptanceReplay which request each of a step's drafts is for.

The engine asks the replay for one accepted length per proposed request, in the order in which it passed
the requests to the drafter's propose() (spec/replay.py). This wrapper forwards every Drafter call to the
real drafter and, on propose(), hands the replay that request order first. Other attributes (e.g. the
draft model's `runner`, which the cost probe times) are the wrapped drafter's.
"""

from __future__ import annotations

from typing import Any

from dynaspec.spec.drafter import DraftProposal, Drafter
from dynaspec.spec.replay import AcceptanceReplay


class ReplayOrderDrafter:
    """A Drafter that announces each step's request order to the acceptance replay."""

    def __init__(self, drafter: Drafter, replay: AcceptanceReplay) -> None:
        self.drafter = drafter
        self.replay = replay

    def propose(self, requests: list, k: int) -> DraftProposal:
        self.replay.expect([r.request_id for r in requests])
        return self.drafter.propose(requests, k)

    def observe(self, requests: list) -> None:
        self.drafter.observe(requests)

    def release(self, request) -> None:
        self.drafter.release(request)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this wrapper lacks (runner, ...): they are the wrapped drafter's.
        return getattr(self.__dict__["drafter"], name)
