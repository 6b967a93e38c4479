"""The per-request bound (bench/adaptive_bound.py): hand-checked numbers on made-up costs."""

from __future__ import annotations

import pytest

from dynaspec.bench.adaptive_bound import (bound_at, bound_markdown, mixed_survivals, probed_costs_from_bench,
                                           trace_bound, trace_bound_markdown)


def test_mixed_survivals_alternate_profiles_and_extend_the_last_value():
    out = mixed_survivals(3, [[0.5], [1.0, 0.0]], 2)
    assert out == [[0.5, 0.25], [1.0, 0.0], [0.5, 0.25]]


def test_flat_cost_drafts_everything_and_gains_nothing_over_uniform():
    """Verify positions cost nothing: every request drafts to the end under both, so the per-request
    optimum equals the best uniform k (the gain lives where positions have a price)."""
    row = bound_at(2, [[0.9], [0.1]], 3, lambda batch, positions: 1.0)
    assert row["uniform_best_k"] == 3 and row["per_request_budget"] == 6
    assert row["per_request_over_uniform"] == pytest.approx(1.0)
    expected = 2 + (0.9 + 0.81 + 0.729) + (0.1 + 0.01 + 0.001)
    assert row["per_request_tokens_per_s"] == pytest.approx(expected)


def test_priced_positions_go_to_the_copy_request_only():
    """Each position costs 10% of a plain step: the copy request (0.9) drafts, the chat one (0.1) not;
    uniform k must pay for the chat request's useless positions too."""
    row = bound_at(2, [[0.9], [0.1]], 3, lambda batch, positions: 1.0 + 0.1 * positions)
    assert row["per_request_draft_lens"] == [0, 3]
    per_request = (2 + 0.9 + 0.81 + 0.729) / 1.3
    assert row["per_request_tokens_per_s"] == pytest.approx(per_request)
    uniform = max((2 + sum(0.9 ** j + 0.1 ** j for j in range(1, k + 1))) / (1 + 0.2 * k) for k in range(4))
    assert row["uniform_tokens_per_s"] == pytest.approx(uniform)
    assert row["per_request_over_uniform"] > 1.05
    assert "| 2 |" in bound_markdown([row])


def test_trace_bound_weights_each_phase_by_its_time():
    """Two phases of 10 tokens each: at concurrency 1 positions are free (everyone drafts to the end), at
    concurrency 2 a position costs a whole step (k = 0 is best for both lines). A static k held all day loses
    in one phase or the other; each phase's oracle does not."""
    def cost(batch, positions):
        return 1.0 + (positions if batch == 2 else 0.0)
    bound = trace_bound([1, 2], [10, 10], [[0.5]], 2, cost)
    fast_small = 1 + 0.5 + 0.25  # k = 2 at concurrency 1: 1.75 tokens a step
    assert bound["static_tokens_per_s"][0] == pytest.approx(20 / (10 / 1 + 10 / 2))
    assert bound["static_tokens_per_s"][2] == pytest.approx(20 / (10 / fast_small + 10 / (2 * fast_small / 5)))
    assert bound["best_static_k"] == 0
    oracle = 20 / (10 / fast_small + 10 / 2)
    assert bound["uniform_oracle_tokens_per_s"] == pytest.approx(oracle)
    assert bound["per_request_over_uniform"] == pytest.approx(1.0)  # one profile: nothing to tell apart
    assert bound["uniform_over_best_static"] == pytest.approx(oracle / bound["static_tokens_per_s"][0])
    assert "k=0" in trace_bound_markdown(bound)


def test_probed_costs_come_from_the_goodput_lines_planner_view():
    table = [{"k": 0, "probed_seconds": 0.005}, {"k": 1, "probed_seconds": 0.006}]
    result = {"points": [
        {"line": "k=1", "batch_size": 4, "planner_view": None},
        {"line": "goodput", "batch_size": 4, "planner_view": {"table": table}},
        {"line": "goodput", "batch_size": 64, "planner_view": {"table": table[:1]}},
    ]}
    assert probed_costs_from_bench(result) == [(4, 0, 0.005), (4, 1, 0.006), (64, 0, 0.005)]
    with pytest.raises(ValueError, match="--policy-lines goodput"):
        probed_costs_from_bench({"points": [result["points"][0]]})
    # a bound's own result carries the costs it was computed from (JSON keys are strings)
    kept = {"probed_step_seconds": {"4": {"0": 0.005, "1": 0.006}, "64": {"0": 0.005}}}
    assert probed_costs_from_bench(kept) == [(4, 0, 0.005), (4, 1, 0.006), (64, 0, 0.005)]
