"""The adaptive policy's switch rule from k = 0 (spec/catch_up.py), and the hold a "no" puts on a draining batch.

Leaving k = 0 pays the drafter's catch-up first, so a switch must earn it back over the tokens left (SmartSpec's
switching cost, Liu et al. 2024, arXiv 2406.14066). A "no" is kept: while k stays 0 the backlog only grows and
the tokens left only shrink, so asking again for the same requests, or for some of them as the batch drains,
would answer the same, and each answer costs a plan of the composition (the drain rule's, spec/drain.py) and a
pass over the requests for the backlog. In a closed batch's tail a new composition arrives at every step: on an
H100 (2026-12-07 16:58 UTC, n-gram, pure code-edit replay, 128 requests) the plain steps of such a hold took
9.5-14.7 ms while requests left, where the goodput policy's plain steps took 7.8. The hold therefore covers any
subset of the refused requests until `replan_every` observations passed (the policy's reuse of a plan), and the
policy neither plans nor asks for the backlog meanwhile.

In a draining batch the gain is the drain rule's (spec/drain.py): how much sooner than plain steps the allocation
ends the batch at the requests' mean rates, its slowest requests and the shrinking batch priced, rather than the
tokens left at the allocation's tokens a second, which assumes the batch keeps its rate to the end. On an H100
(2026-12-08 00:31 UTC, random Llama-3.2-1B drafting for the 8B, code-edit next to chat, 128 requests of 64 tokens)
that rate priced the switch at 96 ms saved against an 82 ms catch-up; the batch then ran at 0.86x no speculation.
Replayed at that card's probed prices (scripts/lab/switch_replay.py), the drain's gain is 55 ms there (refused)
and 91 ms against a 46 ms catch-up at 64 requests, where speculating ran 1.03x no speculation (paid). A draining
composition not planned yet (requests of the latest drain plan, less some that left: spec/allocation_tables.py)
carries that plan's gain.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from dynaspec.spec.adaptive_allocation import Allocation
from dynaspec.spec.catch_up import CatchUpCost, switch_pays


class SwitchHold:
    """Whether a switch from k = 0 pays its catch-up, and for which requests a refusal still holds."""

    def __init__(self) -> None:
        self._refused: Allocation | None = None  # the allocation refused
        self._refused_ids: frozenset[Hashable] | None = None  # its requests, when they were named
        self._refused_at = 0  # the policy's observation count then

    def pays(self, catch_up: CatchUpCost | None, backlog: Callable[[], tuple[int, int]] | None, allocation: Allocation,
             goodput_after: float, goodput_now: Callable[[], float], request_ids: Sequence[Hashable] | None,
             observations: int) -> bool:
        """Whether leaving k = 0 (at goodput_now() tokens/s) for `allocation` (goodput_after) earns back the
        catch-up over the tokens left, or, where the allocation was planned for a draining batch, whether the
        seconds sooner it ends the batch (its drain_gain, spec/drain.py) exceed the catch-up; a refusal of named
        requests is remembered (holds). catch_up, backlog: the drafter's catch-up price and PolicyContext.backlog
        (either None: switching is free)."""
        if catch_up is None or backlog is None:
            return True
        if allocation is self._refused:
            return False
        behind, remaining = backlog()
        price, drain_gain = catch_up.seconds(behind), allocation.drain_gain
        if drain_gain is not None and price < drain_gain:
            return True
        if drain_gain is None and switch_pays(price, remaining, goodput_now(), goodput_after):
            return True
        if request_ids is not None:
            self._refused, self._refused_ids, self._refused_at = allocation, frozenset(request_ids), observations
        return False

    def holds(self, request_ids: Sequence[Hashable] | None, observations: int, replan_every: int) -> bool:
        """Whether a refusal covers these requests (all of them among the refused ones) within replan_every
        observations of it."""
        refused = self._refused_ids
        if refused is None or request_ids is None or observations - self._refused_at >= replan_every:
            return False
        return all(rid in refused for rid in request_ids)

    def clear(self) -> None:
        """A speculative step ran: nothing is refused any more."""
        self._refused = self._refused_ids = None
