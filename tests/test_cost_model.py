"""Step-cost model T(batch, k): medians, interpolation in batch, flat extrapolation, save/load, errors."""

import json

import pytest

from dynaspec.runtime.cost_model import StepCostModel


def _model() -> StepCostModel:
    model = StepCostModel(device="test")
    for batch, k, seconds in [(1, 0, 0.010), (1, 4, 0.014), (8, 0, 0.012), (8, 4, 0.030), (32, 0, 0.020)]:
        model.add(batch, k, seconds)
    return model


def test_median_of_samples():
    model = StepCostModel()
    for seconds in (0.010, 0.500, 0.011, 0.012, 0.009):  # one outlier
        model.add(4, 2, seconds)
    assert model.cost(4, 2) == pytest.approx(0.011)
    assert model.measured(4, 2) == pytest.approx(0.011)
    assert model.measured(4, 3) is None


def test_linear_interpolation_between_buckets():
    model = _model()
    assert model.cost(1, 4) == pytest.approx(0.014)
    assert model.cost(8, 4) == pytest.approx(0.030)
    # batch 4.5 would be the midpoint; batch 4 is 3/7 of the way from 1 to 8.
    assert model.cost(4, 4) == pytest.approx(0.014 + 3 / 7 * (0.030 - 0.014))
    assert model.cost(20, 0) == pytest.approx(0.012 + 12 / 24 * (0.020 - 0.012))


def test_flat_extrapolation_outside_measured_range():
    model = StepCostModel()
    model.add(4, 1, 0.02)
    model.add(16, 1, 0.05)
    assert model.cost(1, 1) == pytest.approx(0.02)  # below the smallest bucket
    assert model.cost(1000, 1) == pytest.approx(0.05)  # above the largest
    # k=4 is only measured at batch 8 in _model(): flat above it even though batch 32 has k=0 measured.
    assert _model().cost(32, 4) == pytest.approx(0.030)


def test_unmeasured_k_raises_with_measured_list():
    with pytest.raises(ValueError, match=r"no measurement for k=2; measured k values: \[0, 4\]"):
        _model().cost(4, 2)
    with pytest.raises(ValueError, match="the model is empty"):
        StepCostModel().cost(1, 0)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_load_round_trip(tmp_path, suffix):
    model = _model()
    model.add(8, 4, 0.9)  # a second and third sample: the saved value is the median
    model.add(8, 4, 0.031)
    path = tmp_path / f"cost{suffix}"
    model.save(path)
    loaded = StepCostModel.load(path)
    assert loaded.to_dict() == model.to_dict()
    assert loaded.device == "test"
    for batch in (1, 3, 8, 17, 32, 64):
        for k in model.draft_lens:
            assert loaded.cost(batch, k) == pytest.approx(model.cost(batch, k))


def test_from_dict_accepts_int_keys_and_json_string_keys():
    data = {"table": {1: {0: 0.01, 2: 0.02}, "8": {"0": 0.03}}}
    model = StepCostModel.from_dict(data)
    assert model.batch_sizes == [1, 8]
    assert model.draft_lens == [0, 2]
    assert StepCostModel.from_dict(json.loads(json.dumps(model.to_dict()))).to_dict() == model.to_dict()


def test_fit_from_measurements():
    model = StepCostModel.fit_from_measurements([(1, 0, 0.01), (1, 0, 0.03), (1, 0, 0.02), (2, 1, 0.05)])
    assert model.cost(1, 0) == pytest.approx(0.02)
    assert model.cost(2, 1) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="at least one"):
        StepCostModel.fit_from_measurements([])


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "needs a non-empty 'table'"),
        ({"table": {}}, "needs a non-empty 'table'"),
        ({"unit": "ms", "table": {"1": {"0": 1}}}, "unit must be 'seconds', got 'ms'"),
        ({"table": {"one": {"0": 0.1}}}, "table key 'one' \\(a batch size\\) must be an int"),
        ({"table": {"0": {"0": 0.1}}}, "table key '0' \\(a batch size\\) must be >= 1"),
        ({"table": {"1": {"-1": 0.1}}}, "table entry batch 1, key '-1' \\(a draft length\\) must be >= 0"),
        ({"table": {"1": 0.1}}, "table entry for batch 1 must be a non-empty mapping"),
        ({"table": {"1": {"0": -0.1}}}, "must be a finite number of seconds > 0"),
        ({"table": {"1": {"1": 0.0}}}, r"step time for batch 1, k 1 must be a finite number of seconds > 0"),
        ({"table": {"1": {"1": float("inf")}}}, "finite number of seconds > 0"),
    ],
)
def test_from_dict_validation(data, message):
    with pytest.raises(ValueError, match=message):
        StepCostModel.from_dict(data)


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.json, \.yaml or \.yml"):
        _model().save(tmp_path / "cost.txt")
    with pytest.raises(ValueError, match="does not exist"):
        StepCostModel.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid json"):
        StepCostModel.load(bad)
    negative = tmp_path / "negative.json"  # a bad table's error names the file and the cell
    negative.write_text(json.dumps({"table": {"4": {"2": -0.1}}}))
    with pytest.raises(ValueError, match=r"negative\.json'?: step time for batch 4, k 2 must be a finite number"):
        StepCostModel.load(negative)


def test_cost_is_remembered_until_the_next_sample():
    model = StepCostModel()
    model.add(1, 0, 0.010)
    model.add(8, 0, 0.020)
    assert model.cost(4, 0) == pytest.approx(0.010 + 3 / 7 * 0.010)
    model.add(8, 0, 0.040)  # median of (0.020, 0.040) = 0.030: the interpolation moves
    assert model.cost(4, 0) == pytest.approx(0.010 + 3 / 7 * 0.020)
