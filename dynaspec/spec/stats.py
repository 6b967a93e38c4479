"""Speculative decoding statistics: acceptance per position, k histogram by batch size.

One `record()` per engine step with the step's decoding batch size, its draft length k, and per
decoding request the number of tokens drafted and accepted. Acceptance is prefix acceptance (a draft
position counts as accepted only if all earlier ones were), so position j is "drafted" when a request
drafted more than j tokens and "accepted" when it accepted more than j.

Mean accepted length follows the speculative decoding literature (Leviathan et al. 2023, "tau"): tokens
committed per target forward, i.e. accepted + 1, averaged over request-steps of steps with k >= 1.

Drafts, as vLLM counts them (vllm/v1/spec_decode/metrics.py, `SpecDecodingStats.observe_draft`, and the
`vllm:spec_decode_num_drafts` counter): one draft per request per step in which that request verified
at least one draft token. `mean_acceptance_length` is vLLM's 1 + accepted / drafts; it differs from
`mean_accepted_length` only where a request drafted nothing in a step with k >= 1 (an n-gram miss), which
vLLM does not count and tau does. The totals (`num_drafts`, `drafted`, `accepted`,
`accepted_per_position`) only grow, so Prometheus counters can be fed from them (server/metrics.py).

Per-request draft lengths (issue 20): `record(..., draft_lens=...)` takes each decoding request's own k_i
(what the scheduler let it verify, <= k). `ragged_steps` counts steps whose decoding requests had different
k_i; `draft_len_histogram` counts request-steps by batch size and k_i ({batch: {k_i: count}}). Without
draft_lens every request of the step counts at the step's k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _grow(counts: list[int], length: int) -> None:
    if len(counts) < length:
        counts.extend([0] * (length - len(counts)))


def _rates(accepted: list[int], drafted: list[int]) -> list[float]:
    return [a / d if d else 0.0 for a, d in zip(accepted, drafted)]


class SpecStats:
    """Totals and per-step record of speculation outcomes; `as_dict()` is JSON-serialisable."""

    def __init__(self) -> None:
        self.num_steps = 0
        self.num_spec_steps = 0
        self.num_spec_request_steps = 0
        self.num_drafts = 0  # request-steps with >= 1 draft token (vLLM's num_drafts)
        self.drafted = 0
        self.accepted = 0
        self.drafted_per_position: list[int] = []
        self.accepted_per_position: list[int] = []
        # batch size -> k -> number of steps
        self.k_histogram: dict[int, dict[int, int]] = {}
        # k -> (drafted per position, accepted per position)
        self.per_k: dict[int, tuple[list[int], list[int]]] = {}
        self.last_step: dict[str, Any] = {}
        self.ragged_steps = 0  # steps whose decoding requests had different draft lengths k_i
        # batch size -> k_i -> number of request-steps
        self.draft_len_histogram: dict[int, dict[int, int]] = {}

    def record(
        self, batch_size: int, k: int, drafted: Sequence[int], accepted: Sequence[int],
        draft_lens: Sequence[int] | None = None, path: str = "", trimmed: int = 0, waited: float = 0.0,
    ) -> None:
        """One step: `batch_size` decoding requests, draft length k, per request drafted / accepted counts
        and (optional) per request draft length k_i <= k; path: how its forward ran (engine/launched_step.py:
        "graph", "ragged", "mixed", "chained", "eager", "overlapped"), trimmed: draft positions the policy's
        trim left unverified, waited: seconds its verification's host read took, nearly all of it waiting for
        the device (all three for step logs: a step() call's time less `waited` is the host's own work)."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if len(drafted) != len(accepted):
            raise ValueError(
                f"drafted and accepted need one entry per request, got {len(drafted)} and {len(accepted)}"
            )
        for i, (d, a) in enumerate(zip(drafted, accepted)):
            if not 0 <= d <= k:
                raise ValueError(f"request {i}: drafted {d} tokens, allowed 0..k={k}")
            if not 0 <= a <= d:
                raise ValueError(f"request {i}: accepted {a} tokens, allowed 0..drafted={d}")
        if draft_lens is not None and (len(draft_lens) != batch_size or not all(0 <= x <= k for x in draft_lens)):
            raise ValueError(f"draft_lens needs one k_i in 0..k={k} per decoding request, got {list(draft_lens)}")

        self.num_steps += 1
        by_k = self.k_histogram.setdefault(batch_size, {})
        by_k[k] = by_k.get(k, 0) + 1
        self._record_draft_lens(batch_size, [k] * batch_size if draft_lens is None else draft_lens)
        step_drafted, step_accepted = sum(drafted), sum(accepted)
        if k >= 1:
            self.num_spec_steps += 1
            self.num_spec_request_steps += len(drafted)
            self.num_drafts += sum(1 for d in drafted if d > 0)
            self.drafted += step_drafted
            self.accepted += step_accepted
            k_drafted, k_accepted = self.per_k.setdefault(k, ([], []))
            for counts in (self.drafted_per_position, self.accepted_per_position, k_drafted, k_accepted):
                _grow(counts, k)
            for d, a in zip(drafted, accepted):
                for j in range(d):
                    self.drafted_per_position[j] += 1
                    k_drafted[j] += 1
                for j in range(a):
                    self.accepted_per_position[j] += 1
                    k_accepted[j] += 1
        self.last_step = {
            "batch_size": batch_size,
            "k": k,
            "drafted": step_drafted,
            "accepted": step_accepted,
            "acceptance_rate": step_accepted / step_drafted if step_drafted else 0.0,
            "drafted_per_request": list(drafted),
            "accepted_per_request": list(accepted),
            "path": path,
            "trimmed": trimmed,
            "verify_wait_ms": waited * 1e3,
        }

    def _record_draft_lens(self, batch_size: int, draft_lens: Sequence[int]) -> None:
        if len(set(draft_lens)) > 1:
            self.ragged_steps += 1
        by_k = self.draft_len_histogram.setdefault(batch_size, {})
        for k_i in draft_lens:
            by_k[k_i] = by_k.get(k_i, 0) + 1

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens committed per request per speculative step (accepted + 1); 0 before any such step."""
        if not self.num_spec_request_steps:
            return 0.0
        return (self.accepted + self.num_spec_request_steps) / self.num_spec_request_steps

    @property
    def mean_acceptance_length(self) -> float:
        """vLLM's mean acceptance length: 1 + accepted / drafts (drafts: request-steps with >= 1 draft
        token); 0 before any draft."""
        return 1.0 + self.accepted / self.num_drafts if self.num_drafts else 0.0

    def acceptance_per_position(self) -> list[float]:
        return _rates(self.accepted_per_position, self.drafted_per_position)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (mapping keys are strings so a JSON round trip is the identity)."""
        return {
            "num_steps": self.num_steps,
            "num_spec_steps": self.num_spec_steps,
            "num_drafts": self.num_drafts,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "mean_acceptance_length": self.mean_acceptance_length,
            "drafted_per_position": list(self.drafted_per_position),
            "accepted_per_position": list(self.accepted_per_position),
            "acceptance_per_position": self.acceptance_per_position(),
            "k_histogram": {
                str(b): {str(k): n for k, n in sorted(ks.items())} for b, ks in sorted(self.k_histogram.items())
            },
            "per_k": {
                str(k): {
                    "drafted_per_position": list(d),
                    "accepted_per_position": list(a),
                    "acceptance_per_position": _rates(a, d),
                }
                for k, (d, a) in sorted(self.per_k.items())
            },
            "last_step": dict(self.last_step),
            "ragged_steps": self.ragged_steps,
            "draft_len_histogram": {
                str(b): {str(k): n for k, n in sorted(ks.items())} for b, ks in sorted(self.draft_len_histogram.items())
            },
        }
