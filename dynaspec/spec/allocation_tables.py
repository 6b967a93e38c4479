"""The adaptive policy's allocations by batch composition, and the provisional k_i a new composition gets where
the decision is asked (spec/adaptive.py).

An allocation is planned per batch of decoding request ids and reused until `replan_every` observations arrived;
refresh() plans the due ones while the GPU runs a step. In serving the batch changes almost every step (a request
finishes, another is admitted), and refresh() plans for the batch of the step that is running, so each new
composition was planned where the next decision is asked, on the critical path: the dev CPU's profile of a closed
batch of 256 requests (tiny Llama, n-gram, code-edit + chat replay) had 140 of 145 plans there, ~2 ms each (a new
batch size also prices its budgets cold), and in the same sweep on an H100 (2026-12-07 00:40 UTC, tree cae3fe4)
the steps of the batch's tail, where requests finished, took 13-20 ms against no speculation's 10. (The goodput
planner keys its tables by batch size alone above small batches, so a new composition costs it nothing.)

A new composition (one neither planned nor answered before) that shares at least `PROVISIONAL_MIN_SHARED` of its
requests with the latest plan of its kind (a draining batch's, planned by the drain rule, or not) now gets that plan's
k_i for the requests they share, and for a request the plan did not know its k where the plan was uniform (a
uniform step stays uniform: it can chain, and pays no ragged premium), else 0; that answers one decision, and
refresh() plans the composition properly while its step runs. Prices move little when a batch of 256 loses or
gains a few requests, and the provisional answer lasts one step. Measured in the same sweep (H100, 2026-12-07
02:08 UTC, with the engine refreshing for the step it launched): the tail's steps ran as no speculation's, and
adaptive went from 0.92x to 0.99x the best other line at batch 256.

A draining batch's composition that only lost requests of the latest drain plan (not voided since) inherits its
k_i for as long as it lasts one step: refresh() passes it over once, and plans it if it is asked again (it lasted).
The drain rule priced those requests' leaving already (its steps cost what the shrinking batch costs, spec/drain.py),
so a finish the plan foresaw is little news, and in a closed batch's tail the composition changes at most steps.
Planned at every finish instead, a closed batch of 128 draft-model requests spent most of each call after a finish
planning the new composition (H100, 2026-12-08: those calls took 17-22 ms of host work against 6 for a steady
chained step, the plan ~13 ms of them under cProfile), where the device ran a 12 ms step. Inherited until the plan
was due instead (replan_every observations), a composition that held for 8 steps kept a stale k = 4 that its own
plan would have dropped (the n-gram closed batch of 64 replayed at an H100's prices, scripts/lab/sweep_drain_replay.py:
0.885x no speculation against 0.930x, seed 0).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

from dynaspec.spec.adaptive_allocation import Allocation

# The share of a new composition's requests the latest plan must have decided for its k_i to stand in.
PROVISIONAL_MIN_SHARED = 0.75


@dataclass(frozen=True)
class _Entry:
    observations: int  # the policy's observation count when planned
    allocation: Allocation
    provisional: bool  # answered from the latest plan, not planned (a miss for refresh())
    passes: int = 0  # refresh() calls that pass a provisional entry over before planning it (an inherited one: 1)


@dataclass(frozen=True)
class _LatestPlan:
    index: dict[Hashable, int]  # request id -> its row in `allocation`
    allocation: Allocation
    current: bool = True  # False once clear() voided it: it answers one decision, and nothing inherits it


class AllocationTables:
    """Allocations by key (the decoding request ids in batch order, and whether the drain rule planned it)."""

    def __init__(self, max_tables: Callable[[], int]) -> None:
        self.max_tables = max_tables  # the policy's settings.max_tables, read when a table is added
        self._entries: dict[tuple[Hashable, ...], _Entry] = {}
        self._latest: dict[bool, _LatestPlan] = {}  # the latest plan for named requests, drained or not

    def get(self, key: tuple[Hashable, ...], observations: int, replan_every: int, critical: bool) -> Allocation | None:
        """The allocation kept for `key` unless due (planned `replan_every` observations ago or more); a provisional
        one only on the critical path (refresh() plans it), but an inherited one's first refresh() passes it over,
        due or not: the releases that made the composition are observations too."""
        entry = self._entries.get(key)
        if entry is not None and entry.passes and not critical:
            self._entries[key] = replace(entry, passes=entry.passes - 1)
            return entry.allocation
        if entry is None or observations - entry.observations >= replan_every:
            return None
        return None if entry.provisional and not critical else entry.allocation

    def knows(self, key: tuple[Hashable, ...]) -> bool:
        """Whether `key` was planned or answered before (a due replan of it is not a new composition)."""
        return key in self._entries

    def put(self, key: tuple[Hashable, ...], observations: int, allocation: Allocation,
            request_ids: Sequence[Hashable] | None = None, provisional: bool = False, passes: int = 0) -> None:
        """Keep `allocation` for `key` (its last element: whether the drain rule planned it); a planned one for
        named requests becomes the latest plan of its kind; passes: refresh() calls that pass a provisional one
        over (an inherited one's, module docstring)."""
        if len(self._entries) >= self.max_tables():  # keys of batches long gone
            self._entries.clear()
        self._entries[key] = _Entry(observations, allocation, provisional, passes)
        if request_ids is not None and not provisional:
            self._latest[bool(key[-1])] = _LatestPlan({rid: row for row, rid in enumerate(request_ids)}, allocation)

    def provisional_draft_lens(self, request_ids: Sequence[Hashable], draining: bool) -> list[int] | None:
        """k_i for these requests from the latest plan of the same kind (drained or not: module docstring), or
        None when it shares too few of them."""
        latest = self._latest.get(draining)
        if latest is None or not request_ids:
            return None
        rows = [latest.index.get(rid) for rid in request_ids]
        shared = sum(row is not None for row in rows)
        if shared < PROVISIONAL_MIN_SHARED * len(request_ids) or shared == len(latest.index) == len(request_ids):
            return None  # too few shared, or the latest plan's own requests (a plan voided by clear())
        planned = latest.allocation.draft_lens
        unknown = planned[0] if len(set(planned)) == 1 else 0
        return [unknown if row is None else planned[row] for row in rows]

    def inherits(self, request_ids: Sequence[Hashable]) -> bool:
        """Whether these requests are some of the latest drain plan's own (a draining batch that only lost requests)
        and that plan was not voided (module docstring)."""
        latest = self._latest.get(True)
        if latest is None or not latest.current or len(request_ids) >= len(latest.index):
            return False
        return all(rid in latest.index for rid in request_ids)

    def latest_drain_gain(self) -> float | None:
        """The latest drain plan's Allocation.drain_gain: an inherited composition's stand-in, so that a switch
        from k = 0 there is weighed by the drain's end as the plan's own composition was (spec/switch_hold.py)."""
        latest = self._latest.get(True)
        return None if latest is None else latest.allocation.drain_gain

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every allocation (their prices or estimates are outdated): each composition is planned again.
        The latest plans stay, for one provisional decision each where a new composition (not the latest plan's
        own requests) is asked before refresh() planned it. Planned on the critical path instead, a draining
        batch's new compositions were planned where they were asked after every clear, and the plan's host time
        (several ms at 100 requests on an H100 host) lengthened those steps, which read as steps over their price
        and cleared the tables again (H100, 2026-12-07 16:32 UTC, the draft model's tail at batch 128: steps of
        18.5 ms where static k = 1 ran 12.5)."""
        self._entries.clear()
        self._latest = {kind: replace(plan, current=False) for kind, plan in self._latest.items()}
