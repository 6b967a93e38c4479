"""SpecStats: totals, acceptance per position, k histogram by batch size, JSON output."""

import json

import pytest

from dynaspec.spec.stats import SpecStats


def _filled() -> SpecStats:
    s = SpecStats()
    s.record(batch_size=2, k=3, drafted=[3, 3], accepted=[3, 1])
    s.record(batch_size=2, k=3, drafted=[2, 0], accepted=[0, 0])  # a request with no draft (n-gram miss)
    s.record(batch_size=9, k=0, drafted=[0] * 9, accepted=[0] * 9)  # speculation off
    s.record(batch_size=1, k=1, drafted=[1], accepted=[1])
    return s


def test_totals():
    s = _filled()
    assert (s.num_steps, s.num_spec_steps) == (4, 3)
    assert (s.drafted, s.accepted) == (9, 5)
    assert s.acceptance_rate == pytest.approx(5 / 9)
    # request-steps in spec steps: 2 + 2 + 1 = 5, committed tokens = accepted + 1 each = 5 + 5
    assert s.mean_accepted_length == pytest.approx(10 / 5)


def test_acceptance_per_position():
    s = _filled()
    assert s.drafted_per_position == [4, 3, 2]
    assert s.accepted_per_position == [3, 1, 1]
    assert s.acceptance_per_position() == pytest.approx([3 / 4, 1 / 3, 1 / 2])


def test_k_histogram_and_per_k():
    d = _filled().as_dict()
    assert d["k_histogram"] == {"1": {"1": 1}, "2": {"3": 2}, "9": {"0": 1}}
    assert d["per_k"]["3"]["drafted_per_position"] == [3, 3, 2]
    assert d["per_k"]["3"]["accepted_per_position"] == [2, 1, 1]
    assert d["per_k"]["1"]["acceptance_per_position"] == [1.0]
    assert "0" not in d["per_k"]


def test_as_dict_is_json_round_trip_identity():
    d = _filled().as_dict()
    assert json.loads(json.dumps(d)) == d


def test_last_step():
    s = _filled()
    assert s.last_step["k"] == 1 and s.last_step["batch_size"] == 1
    s.record(batch_size=2, k=2, drafted=[2, 1], accepted=[1, 0], path="chained", trimmed=1, waited=0.0025)
    assert s.last_step == {
        "batch_size": 2,
        "k": 2,
        "drafted": 3,
        "accepted": 1,
        "acceptance_rate": pytest.approx(1 / 3),
        "drafted_per_request": [2, 1],
        "accepted_per_request": [1, 0],
        "path": "chained",
        "trimmed": 1,
        "verify_wait_ms": pytest.approx(2.5),
    }


def test_empty_stats():
    s = SpecStats()
    assert s.acceptance_rate == 0.0 and s.mean_accepted_length == 0.0
    assert s.as_dict()["acceptance_per_position"] == [] and s.as_dict()["last_step"] == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=1, k=2, drafted=[1, 1], accepted=[1]), "one entry per request"),
        (dict(batch_size=1, k=2, drafted=[3], accepted=[0]), r"drafted 3 tokens, allowed 0..k=2"),
        (dict(batch_size=1, k=2, drafted=[1], accepted=[2]), r"accepted 2 tokens, allowed 0..drafted=1"),
        (dict(batch_size=1, k=-1, drafted=[], accepted=[]), "k must be >= 0"),
        (dict(batch_size=-1, k=1, drafted=[], accepted=[]), "batch_size must be >= 0"),
    ],
)
def test_record_rejects_inconsistent_counts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpecStats().record(**kwargs)


def test_num_drafts_and_vllm_mean_acceptance_length():
    s = _filled()
    # request-steps that verified >= 1 draft token (vLLM's num_drafts): 2 + 1 (the n-gram miss is not one) + 1
    assert s.num_drafts == 4
    assert s.mean_acceptance_length == pytest.approx(1 + 5 / 4)
    d = s.as_dict()
    assert (d["num_drafts"], d["mean_acceptance_length"]) == (4, pytest.approx(1 + 5 / 4))
    assert SpecStats().mean_acceptance_length == 0.0
