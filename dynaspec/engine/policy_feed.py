"""What the engine tells its draft-length policy, and when: each step's outcome, then the releases its commit
caused, done while the NEXT step's forward runs (`feed`), so the policy's bookkeeping costs no step time.

The goodput planner's bookkeeping took 2-7% of a step on an H200 host between the sync and the next launch;
done while the next step's graph runs it costs nothing. Decisions are therefore one step behind the outcomes.
A step's outcome goes before the releases its own commit queued (`mark` / `outcome_at`): a policy learns a
request's last step before it forgets the request.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from dynaspec.engine.drafting import planned_draft_lens
from dynaspec.engine.scheduler import ScheduledDecode, SchedulerOutput
from dynaspec.spec.policy import DraftLenPolicy, StepOutcome


class PolicyFeed:
    """The policy work queued since the last `feed`, in order."""

    def __init__(self, policy: DraftLenPolicy) -> None:
        self.policy = policy
        self._pending: list[Callable[[], None]] = []

    def mark(self) -> int:
        """Where an outcome queued later (`outcome_at`) goes: before what is queued after this call."""
        return len(self._pending)

    def outcome_at(self, mark: int, outcome: StepOutcome) -> None:
        self._pending.insert(mark, lambda: self.policy.observe(outcome))

    def release(self, request_id: Hashable) -> None:
        """A request left (finished, failed, aborted, preempted): after its queued outcome."""
        self._pending.append(lambda: self.policy.release(request_id))

    def feed(self, decodes: Sequence[ScheduledDecode]) -> None:
        """Do the queued work, then let the policy refresh what is due for these decoding requests."""
        pending, self._pending = self._pending, []
        for work in pending:
            work()
        if decodes:
            self.policy.refresh(len(decodes), [d.request.request_id for d in decodes])


def verified_outcome(sched: SchedulerOutput, drafts: list[list[int]], committed: list[list[int]],
                     seconds: float | None, catch_up_tokens: int | None,
                     confidence: dict[Hashable, list[float]]) -> StepOutcome:
    """A verified decode step's outcome: per decoding request its drafted and accepted counts, its k_i (and
    the k_i before trimming), the drafter's confidences where it trimmed; committed indexes the decodes
    first."""
    decoding = [d.request for d in sched.decodes]
    return StepOutcome(
        request_ids=[r.request_id for r in decoding], draft_len=sched.draft_len, drafted=[len(d) for d in drafts],
        accepted=[max(0, len(c) - 1) for c in committed[: len(decoding)]], draft_lens=[d.max_draft for d in sched.decodes],
        planned=planned_draft_lens(sched.decodes), seconds=seconds, catch_up_tokens=catch_up_tokens,
        confidence=[confidence[r.request_id] for r in decoding] if confidence else (),
    )
