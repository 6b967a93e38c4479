"""The step's drafts: what the drafter proposes for each decode, capped at its max_draft, completed by the
verification strategy, and the requests whose tokens the drafter failed on (fault isolation).

A drafter that raises for a batch is asked again request by request: the requests it still fails on are
named (the engine finishes them with an error), the others keep their drafts and go on.

Drafts a graph left on the device (a chain drafter's greedy batch: spec/drafter.py's DeviceDrafts) stay
there when every decode takes all k of them: the uniform verify forward takes its input ids from the
device, and the host reads the drafts only after launching it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from dynaspec.engine.scheduler import ScheduledDecode, SchedulerOutput
from dynaspec.runtime.host_copy import to_device
from dynaspec.spec.drafter import DeviceDrafts, DraftProposal, Drafter
from dynaspec.spec.verifier import TargetAcceptance


# DraftLenPolicy.trim_drafts: (request ids, limits, each request's draft probabilities) -> drafts kept
Trim = Callable[[Sequence[Hashable], Sequence[int], Sequence[Sequence[float]]], list[int]]


class StepDrafts:
    """The drafts of one step, per decode: `lengths`, `probs` (q or None), `errors` ({decode index:
    message}), `tokens` (host lists; read from the device on first use when `on_device` holds them)."""

    def __init__(self, tokens: list[list[int]] | None, probs: list[torch.Tensor | None], errors: dict[int, str],
                 on_device: DeviceDrafts | None = None, confidence: list[list[float]] | None = None) -> None:
        self._tokens = tokens
        self.probs = probs
        self.errors = errors
        self.on_device = on_device  # (B, k): every decode's k drafts, when a graph left them on the device
        # per decode, the drafter's probability of each draft kept (read only for a policy that trims)
        self.confidence: list[list[float]] = confidence or []
        self.lengths = [len(t) for t in tokens] if tokens is not None else [on_device.shape[1]] * on_device.shape[0]

    @property
    def tokens(self) -> list[list[int]]:
        if self._tokens is None:
            self._tokens = self.on_device.tolist()
        return self._tokens

    def input_ids(self, last_tokens: list[int]) -> torch.Tensor | None:
        """(B * (1 + k),) verify input ids on the device, each request's last token then its k drafts (None
        when the drafts are on the host)."""
        if self.on_device is None:
            return None
        drafts = self.on_device.ids  # (B, k)
        last = to_device(last_tokens, drafts.device, drafts.dtype)
        return torch.cat([last.unsqueeze(1), drafts], dim=1).reshape(-1)


def propose_drafts(drafter: Drafter, acceptance: TargetAcceptance, sched: SchedulerOutput,
                   trim: Trim | None = None) -> StepDrafts:
    """Every decode's drafts (empty at k = 0: no drafter method runs then). trim: the policy's trim_drafts
    (None: verify every draft), asked when the drafter gave its probability of each draft; it lowers each
    decode's max_draft to what that request verifies."""
    num = len(sched.decodes)
    wanted = [i for i, d in enumerate(sched.decodes) if d.max_draft > 0]
    if sched.draft_len == 0 or not wanted:
        return StepDrafts([[] for _ in range(num)], [None] * num, {})
    limits = [d.max_draft for d in sched.decodes]
    drafts: list[list[int]] = [[] for _ in sched.decodes]
    probs: list[torch.Tensor | None] = [None for _ in sched.decodes]
    errors: dict[int, str] = {}
    confidence: list[list[float]] = []  # per decode, the probabilities of the drafts it keeps (trimming only)
    try:
        proposal = drafter.propose([sched.decodes[i].request for i in wanted], sched.draft_len)
        if trim is not None and proposal.has_confidence:
            limits = _trimmed(sched, wanted, limits, proposal.confidence, trim)
            by_decode = dict(zip(wanted, proposal.confidence))
            confidence = [list(by_decode.get(i, ()))[:limit] for i, limit in enumerate(limits)]
        if proposal.on_device is not None and len(wanted) == num and all(limit == sched.draft_len for limit in limits):
            # Every decode takes all k drafts: nothing to cap, nothing for the strategy to complete.
            return StepDrafts(None, list(proposal.probs), {}, proposal.on_device, confidence)
        _take(proposal, sched, wanted, drafts, probs)
    except Exception:  # noqa: BLE001 - find the requests it fails on, keep the others
        confidence = []
        for i in wanted:
            try:
                _take(drafter.propose([sched.decodes[i].request], sched.draft_len), sched, [i], drafts, probs)
            except Exception as exc:  # noqa: BLE001 - attributable to this request
                errors[i] = f"the drafter failed on this request's tokens: {type(exc).__name__}: {exc}"
    limits = [0 if i in errors else limit for i, limit in enumerate(limits)]
    drafts, probs = acceptance.complete_drafts(drafts, probs, limits, [d.request.last_token_id for d in sched.decodes])
    return StepDrafts(drafts, probs, errors, confidence=confidence)


def planned_draft_lens(decodes: list[ScheduledDecode]) -> list[int]:
    """Each decode's k_i as the policy gave it, before trim_drafts lowered it (StepOutcome.planned); empty
    when no trim ran this step."""
    if all(d.planned_draft is None for d in decodes):
        return []
    return [d.policy_draft for d in decodes]


def trimmed_count(decodes: list[ScheduledDecode]) -> int:
    """Draft positions the policy's trim left unverified this step (0 where no trim ran)."""
    planned = planned_draft_lens(decodes)
    return sum(planned) - sum(d.max_draft for d in decodes) if planned else 0


def _trimmed(sched: SchedulerOutput, wanted: list[int], limits: list[int], confidence: list[list[float]],
             trim: Trim) -> list[int]:
    """Each decode's max_draft lowered to what trim keeps of its drafts; the new limits."""
    kept = trim([sched.decodes[i].request.request_id for i in wanted], [limits[i] for i in wanted], confidence)
    for i, k_i in zip(wanted, kept):
        sched.decodes[i].planned_draft = sched.decodes[i].max_draft
        sched.decodes[i].max_draft = min(sched.decodes[i].max_draft, k_i)
    return [d.max_draft for d in sched.decodes]


def _take(proposal: DraftProposal, sched: SchedulerOutput, indices: list[int], drafts, probs) -> None:
    """Each proposed row j (for decode indices[j]) capped at the decode's max_draft."""
    for j, i in enumerate(indices):
        drafts[i] = list(proposal.tokens[j][: sched.decodes[i].max_draft])
        q = proposal.probs[j]
        probs[i] = None if q is None else q[: len(drafts[i])]
