"""Every request's drafts, proposal by proposal, whichever path drafted them: `Drafter.propose` (a step
drafted after the previous one was verified) or `Drafter.propose_chained` (a chained step, drafted from the
previous step's device-side results before it is verified: engine/chained_step.py). Chained and synchronous
engines then compare request by request: the order of proposals across requests differs between them, each
request's drafts must not."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class DraftLog:
    by_request: dict[str, list[list[int]]] = field(default_factory=lambda: defaultdict(list))  # id -> drafts per step
    calls: int = 0  # proposals made (propose and propose_chained calls that drafted)
    chained: int = 0  # of which propose_chained


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
        return proposal

    drafter.propose = lambda requests, k: record(requests, propose(requests, k), False)
    drafter.propose_chained = lambda requests, *args: record(requests, propose_chained(requests, *args), True)
    return log
