"""dynaspec.bench.acceptance: per-position counting, and a real (SmolLM2-135M) run of the profile pipeline.

The real-model benchmark (Qwen2.5-Coder 1.5B target) is not run here; this checks the library on the
session's SmolLM2 conversion with one short prompt per drafter.
"""

from __future__ import annotations

import pytest

from dynaspec.bench.acceptance import (
    PROFILE_FIELDS,
    AcceptanceCounts,
    engine_options,
    load_profile,
    markdown_table,
    measure_workload,
    spec_config,
    write_profiles,
)
from dynaspec.llm import LLM


def test_counts_per_position_by_hand():
    c = AcceptanceCounts(3)
    c.add(3, 3)  # all accepted
    c.add(3, 1)  # position 0 accepted, 1 rejected, 2 never tested
    c.add(2, 0)  # short draft, rejected at once
    c.add(0, 0)  # nothing drafted (n-gram miss)
    assert c.drafted_per_position == [3, 3, 2]
    assert c.reached_per_position == [3, 2, 1]
    assert c.accepted_per_position == [2, 1, 1]
    assert c.conditional_acceptance() == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert c.prefix_acceptance() == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert c.mean_accepted_length == pytest.approx((4 + 4) / 4)
    assert c.drafting_request_steps == 3
    with pytest.raises(ValueError, match="accepted must be in"):
        c.add(2, 3)
    with pytest.raises(ValueError, match="drafted must be in"):
        c.add(4, 0)


def test_bad_drafter_and_missing_draft_model_are_errors():
    with pytest.raises(ValueError, match="unknown drafter"):
        spec_config("eagle", 4, None)
    with pytest.raises(ValueError, match="needs a draft model"):
        spec_config("draft-model", 4, None)


@pytest.fixture(scope="module")
def smollm2_base(smollm2_dir):
    return LLM(str(smollm2_dir), **engine_options(1, 1024))


@pytest.mark.parametrize("drafter", ["ngram", "draft-model"])
def test_profile_from_a_real_run(smollm2_dir, smollm2_base, drafter, tmp_path):
    target = str(smollm2_dir)
    draft = target if drafter == "draft-model" else None  # self-drafting: greedy drafts all match
    spec = LLM(target, speculative_config=spec_config(drafter, 3, draft), **engine_options(1, 1024))
    result = measure_workload(
        smollm2_base, spec, drafter, "code-edit", target=target, draft=draft,
        max_draft_len=3, num_prompts=1, max_tokens=16,
    )
    assert result.mismatched_prompts == []  # greedy speculation is lossless
    # The per-step records add up to the engine's own totals.
    stats = spec.get_stats()
    assert (result.counts.drafted, result.counts.accepted) == (stats["drafted"], stats["accepted"])
    assert result.counts.accepted_per_position == stats["accepted_per_position"]

    (path,) = write_profiles([result], tmp_path, "pytest", "cpu 2 cores")
    profile = load_profile(path)
    assert set(PROFILE_FIELDS) <= set(profile)
    assert profile["name"] == f"{drafter}-code-edit" and profile["draft"] == draft
    assert profile["max_draft_len"] == 3 and profile["num_prompts"] == 1 and profile["max_tokens"] == 16
    assert len(profile["acceptance_per_position"]) == len(profile["prefix_acceptance_per_position"]) == 3
    counts = profile["counts"]
    assert counts["drafted"] > 0
    for d, r, a in zip(counts["drafted_per_position"], counts["reached_per_position"], counts["accepted_per_position"]):
        assert a <= r <= d
    assert counts["accepted"] <= counts["drafted"]
    assert all(0.0 <= x <= 1.0 for x in profile["acceptance_per_position"] + profile["prefix_acceptance_per_position"])
    assert 1.0 <= profile["mean_accepted_length"] <= 4.0
    assert profile["output_tokens"]["no_spec"] == profile["output_tokens"]["spec"] > 0
    assert profile["tokens_per_s"]["spec"] > 0 and profile["tokens_per_s"]["no_spec"] > 0
    if drafter == "draft-model":
        assert profile["mean_accepted_length"] > 3.0  # the target drafting for itself is (almost) always right
    assert f"| code-edit | {drafter} | 3 |" in markdown_table([profile])
