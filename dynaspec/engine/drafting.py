"""The step's drafts: what the drafter proposes for each decode, capped at its max_draft, completed by the
verification strategy, and the requests whose tokens the drafter failed on (fault isolation).

A drafter that raises for a batch is asked again request by request: the requests it still fails on are
named (the engine finishes them with an error), the others keep their drafts and go on.
"""

from __future__ import annotations

import torch

from dynaspec.engine.scheduler import SchedulerOutput
from dynaspec.spec.drafter import Drafter
from dynaspec.spec.verifier import TargetAcceptance


def propose_drafts(
    drafter: Drafter, acceptance: TargetAcceptance, sched: SchedulerOutput
) -> tuple[list[list[int]], list[torch.Tensor | None], dict[int, str]]:
    """(drafts, draft q or None, {decode index: error}) per decode; empty lists at k = 0 (no drafter
    method runs then)."""
    drafts: list[list[int]] = [[] for _ in sched.decodes]
    probs: list[torch.Tensor | None] = [None for _ in sched.decodes]
    wanted = [i for i, d in enumerate(sched.decodes) if d.max_draft > 0]
    if sched.draft_len == 0 or not wanted:
        return drafts, probs, {}
    errors: dict[int, str] = {}
    try:
        _take(drafter, sched, wanted, drafts, probs)
    except Exception:  # noqa: BLE001 - find the requests it fails on, keep the others
        for i in wanted:
            try:
                _take(drafter, sched, [i], drafts, probs)
            except Exception as exc:  # noqa: BLE001 - attributable to this request
                errors[i] = f"the drafter failed on this request's tokens: {type(exc).__name__}: {exc}"
    limits = [0 if i in errors else d.max_draft for i, d in enumerate(sched.decodes)]
    drafts, probs = acceptance.complete_drafts(drafts, probs, limits, [d.request.last_token_id for d in sched.decodes])
    return drafts, probs, errors


def _take(drafter: Drafter, sched: SchedulerOutput, indices: list[int], drafts, probs) -> None:
    proposal = drafter.propose([sched.decodes[i].request for i in indices], sched.draft_len)
    for j, i in enumerate(indices):
        drafts[i] = list(proposal.tokens[j][: sched.decodes[i].max_draft])
        q = proposal.probs[j]
        probs[i] = None if q is None else q[: len(drafts[i])]
