"""Every request's drafts, proposal by proposal, whichever path drafted them: `Drafter.propose` (a step
drafted after the previous one was verified) or `Drafter.propose_chained` (a chained step, drafted from the
previous step's device-side results before it is verified: engine/chained_step.py). Chained and synchronous
engines then compare request by request: the order of proposals across requests differs between them, each
request's drafts must not. A chained step is launched before the step before it is verified, so a request
that the earlier step finishes (its max_tokens, an EOS) may be in one last chained proposal that is never
verified: `drafts_equal` allows that one, and only as a request's last, chained proposal."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class DraftLog:
    by_request: dict[str, list[list[int]]] = field(default_factory=lambda: defaultdict(list))  # id -> drafts per step
    calls: int = 0  # proposals made (propose and propose_chained calls that drafted)
    chained: int = 0  # of which propose_chained
    last_chained: dict[str, bool] = field(default_factory=dict)  # id -> whether its last proposal was chained

    def drafts_equal(self, synchronous: "DraftLog") -> bool:
        """Every request's drafts equal those of an engine that never chains, but for one trailing chained
        proposal of a request the step before finished (module docstring)."""
        if set(self.by_request) != set(synchronous.by_request):
            return False
        for request_id, drafts in self.by_request.items():
            expected = synchronous.by_request[request_id]
            extra = len(drafts) - len(expected)
            if drafts[: len(expected)] != expected or extra not in (0, 1) or (extra and not self.last_chained[request_id]):
                return False
        return True


def spy_drafts(drafter) -> DraftLog:
    """Wrap the drafter's propose and propose_chained; the log fills in as the engine runs."""
    log = DraftLog()
    propose, propose_chained = drafter.propose, drafter.propose_chained

    def record(requests, proposal, chained: bool):
        if proposal is not None:
            log.calls += 1
            log.chained += chained
            for request, tokens in zip(requests, proposal.tokens):
                log.by_request[request.request_id].append(list(tokens))
                log.last_chained[request.request_id] = chained
        return proposal

    drafter.propose = lambda requests, k: record(requests, propose(requests, k), False)
    drafter.propose_chained = lambda requests, *args: record(requests, propose_chained(requests, *args), True)
    return log
