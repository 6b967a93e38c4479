"""The mixed-load trace of `dynaspec bench-trace`: concurrency that rises and falls, workloads mixed.

Issue 6 asks the goodput policy to beat the best single static k (and the tuned static schedule) "on a
mixed-load trace (batch size rising and falling, workloads mixed)". This module defines that trace,
deterministically, so every line of the benchmark replays exactly the same requests:

* phases: a target number of concurrently running requests per phase, e.g. 1 -> 4 -> 16 -> 64 -> 128 ->
  32 -> 4 -> 1 (`DEFAULT_PHASES`). Phase p owns `max(1, round(concurrency_p * waves))` requests (or an
  explicit `requests_per_phase[p]`, e.g. to give low-load phases as much time as peak ones): the
  driver (bench/trace_run.py) is closed-loop, admitting the phase's next request whenever fewer than its
  concurrency are in flight, and starts the next phase when the phase's last request has finished; so
  each phase runs about `waves` generations at its concurrency and then drains;
* requests: random prompt token ids (a random motif of 4..12 tokens repeated to `prompt_len`, so prompt
  lookup has something to find when acceptance is not replayed) and a generation length drawn uniformly
  from gen_len * [1 - spread, 1 + spread], greedy with ignore_eos; ids `trace-00000`, `trace-00001`, ...;
* workloads: with several replayed acceptance profiles, request `rid` replays profile
  `crc32(rid) % len(profiles)` (dynaspec.spec.replay.profile_index), the rule the engine applies.

`mixed_acceptance` gives the single per-position profile whose expected accepted length equals the mix's
at every k (for warm-starting the goodput planner and planning `draft_len_schedule: auto`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from dynaspec.spec.replay import profile_index

DEFAULT_PHASES = (1, 4, 16, 64, 128, 32, 4, 1)
MOTIF_LEN = (4, 12)


@dataclass(frozen=True)
class TraceRequest:
    """One request of the trace; `profile` indexes the replayed profiles (None without replay)."""

    index: int
    request_id: str
    phase: int
    prompt: tuple[int, ...]
    max_tokens: int
    profile: int | None


def _check_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def check_phases(phases: Sequence[int]) -> list[int]:
    """Phases as a list of concurrencies (ints >= 1, at least one)."""
    if isinstance(phases, (str, bytes)) or not isinstance(phases, Sequence) or not phases:
        raise ValueError(f"phases must be a non-empty list of concurrencies (ints >= 1), got {phases!r}")
    return [_check_int(c, f"phase {i} concurrency", 1) for i, c in enumerate(phases)]


def phase_request_counts(
    phases: Sequence[int], waves: float, requests_per_phase: Sequence[int] | None = None
) -> list[int]:
    """Requests per phase: `requests_per_phase` when given (one int >= 1 per phase), else
    max(1, round(concurrency * waves))."""
    phases = check_phases(phases)
    if requests_per_phase is not None:
        if isinstance(requests_per_phase, (str, bytes)) or not isinstance(requests_per_phase, Sequence) \
                or len(requests_per_phase) != len(phases):
            raise ValueError(
                f"requests_per_phase must give one count per phase ({len(phases)} phases), got {requests_per_phase!r}"
            )
        return [_check_int(n, f"phase {i} requests", 1) for i, n in enumerate(requests_per_phase)]
    if isinstance(waves, bool) or not isinstance(waves, (int, float)) or not 0 < waves < float("inf"):
        raise ValueError(f"waves must be a number > 0 (requests per phase = concurrency x waves), got {waves!r}")
    return [max(1, round(c * waves)) for c in phases]


def gen_len_range(gen_len: int, spread: float) -> tuple[int, int]:
    """(lowest, highest) generation length: gen_len * (1 -/+ spread), at least 1."""
    _check_int(gen_len, "gen_len", 1)
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not 0 <= spread < 1:
        raise ValueError(f"gen_len_spread must be in [0, 1), got {spread!r}")
    low = max(1, round(gen_len * (1 - spread)))
    return low, max(low, round(gen_len * (1 + spread)))


def build_trace(
    phases: Sequence[int],
    waves: float,
    prompt_len: int,
    gen_len: int,
    gen_len_spread: float,
    vocab_size: int,
    seed: int,
    num_profiles: int | None,
    requests_per_phase: Sequence[int] | None = None,
) -> list[TraceRequest]:
    """The trace's requests in admission order (phase by phase); a pure function of its arguments."""
    counts = phase_request_counts(phases, waves, requests_per_phase)
    _check_int(prompt_len, "prompt_len", 1)
    _check_int(vocab_size, "vocab_size", 2)
    low, high = gen_len_range(gen_len, gen_len_spread)
    if num_profiles is not None:
        _check_int(num_profiles, "num_profiles", 1)
    rng = random.Random(seed)
    requests = []
    for phase, count in enumerate(counts):
        for _ in range(count):
            index = len(requests)
            request_id = f"trace-{index:05d}"
            motif = [rng.randrange(vocab_size) for _ in range(rng.randint(*MOTIF_LEN))]
            prompt = tuple((motif * (prompt_len // len(motif) + 1))[:prompt_len])
            profile = None if num_profiles is None else profile_index(request_id, num_profiles)
            requests.append(TraceRequest(index, request_id, phase, prompt, rng.randint(low, high), profile))
    return requests


def mixed_acceptance(profiles: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """Conditional per-position acceptance of a mix of profiles (weights: the share of requests of each).

    Expected accepted length is linear in the prefix survival S_j = prod_{i<=j} alpha_i (Leviathan et al.
    2023), so the mix has S_j = sum_p w_p S_j^(p) and alpha_j = S_j / S_{j-1}: the same E[accepted | k]
    as the mix for every k. Profiles of different lengths repeat their last value (as the replay does).
    """
    if not profiles or len(profiles) != len(weights):
        raise ValueError(f"need one weight per profile, got {len(profiles)} profiles and {len(weights)} weights")
    if any(not p for p in profiles):
        raise ValueError("every profile needs at least one position")
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be numbers >= 0 with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    length = max(len(p) for p in profiles)
    survival = [0.0] * length
    for profile, weight in zip(profiles, weights):
        alive = 1.0
        for j in range(length):
            alive *= profile[min(j, len(profile) - 1)]
            survival[j] += weight / total * alive
    alphas, previous = [], 1.0
    for s in survival:
        alphas.append(min(1.0, s / previous) if previous > 0 else 0.0)
        previous = s
    return alphas
