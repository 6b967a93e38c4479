"""The CPU replays' acceptance draws (bench/closed_batch_replay.KeyedDraws): common random numbers keyed by request
and generated position, as `dynaspec bench` draws them (spec/replay.py), so policies compared on one seed see the
same numbers wherever they draft the same positions. Seeded; no clock is read."""

from __future__ import annotations

import math

from dynaspec.bench.closed_batch_replay import KeyedDraws
from dynaspec.spec.replay import AcceptanceReplay

ALPHAS = [0.3, 0.8, 0.6, 0.9]


def test_a_position_s_outcome_does_not_depend_on_what_was_drawn_before():
    """Two policies on one seed: one drafts request a at every position with k = 4, the other skips ahead and drafts
    other requests in between; wherever both draft a at a position with the same k, they get the same outcome."""
    first, second = KeyedDraws(7), KeyedDraws(7)
    along = {position: first.accepted("a", ALPHAS, position, 4) for position in range(0, 40, 2)}
    for position in range(38, -1, -2):  # the other order, and other requests' streams drawn in between
        second.accepted("b", ALPHAS, position, 3)
        assert second.accepted("a", ALPHAS, position, 4) == along[position]
    assert any(KeyedDraws(8).accepted("a", ALPHAS, p, 4) != along[p] for p in along)  # another seed, other draws


def test_a_shorter_draft_accepts_the_prefix_of_a_longer_one():
    draws = KeyedDraws(3)
    for position in range(200):
        longest = draws.accepted("r", ALPHAS, position, 4)
        assert all(draws.accepted("r", ALPHAS, position, k) == min(k, longest) for k in range(5))


def test_the_bench_s_replay_draws_the_same_numbers():
    """The bench's per-request path (AcceptanceReplay.num_accepted with a position) on the same seed and request
    id, profile for profile."""
    replay = AcceptanceReplay("acceptance_ngram_code-edit", seed=11)
    draws = KeyedDraws(11)
    for position in range(0, 300, 3):
        assert draws.accepted("req-1", replay.profiles[0], position, 3) == replay.num_accepted(3, "req-1", position)


def test_the_accepted_lengths_follow_the_conditional_rates():
    """Over 20,000 positions the first draft survives at 0.3 and the second, given the first, at 0.8 (within four
    standard deviations)."""
    draws = KeyedDraws(0)
    outcomes = [draws.accepted("r", ALPHAS, position, 2) for position in range(20_000)]
    first = sum(a >= 1 for a in outcomes)
    second = sum(a >= 2 for a in outcomes)
    assert abs(first / 20_000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20_000)
    assert abs(second / first - 0.8) < 4 * math.sqrt(0.8 * 0.2 / first)
