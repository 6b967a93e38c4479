"""SamplingParams bounds every numeric field at the boundary with a clear error, and treats
near-zero temperatures as greedy (issue 24: top_k >= 2**63 and seed=2**64 overflowed inside the engine,
temperature=1e-40 sampled NaN garbage)."""

from __future__ import annotations

import math

import pytest
import torch

from dynaspec.sampling_params import (
    GREEDY_BELOW,
    MAX_INT32,
    MAX_SEED,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    SamplingParams,
)

# (field, bad value, a word the message must contain)
BAD = [
    ("top_k", 2**63, "less than or equal"),
    ("top_k", 2**31, "less than or equal"),
    ("top_k", -2, "greater than or equal"),
    ("seed", 2**64, "less than or equal"),
    ("seed", 2**63, "less than or equal"),
    ("seed", -1, "greater than or equal"),
    ("max_tokens", 0, "greater than or equal"),
    ("max_tokens", 2**31, "less than or equal"),
    ("max_tokens", 10**30, "less than or equal"),
    ("temperature", -0.1, "greater than or equal"),
    ("temperature", 101.0, "less than or equal"),
    ("temperature", math.nan, "finite"),
    ("temperature", math.inf, "finite"),
    ("top_p", 0.0, "greater than"),
    ("top_p", 1.5, "less than or equal"),
    ("top_p", math.nan, "finite"),
    ("min_p", -0.5, "greater than or equal"),
    ("min_p", 2.0, "less than or equal"),
    ("stop", [""], "non-empty"),
    ("stop", ["x"] * (MAX_STOP_STRINGS + 1), "at most"),
    ("stop", ["y" * (MAX_STOP_STRING_CHARS + 1)], "at most"),
    ("stop_token_ids", [-1], "token ids in"),
    ("stop_token_ids", [2**63], "token ids in"),
    ("stop_token_ids", [1] * (MAX_STOP_TOKEN_IDS + 1), "at most"),
    ("max_tokens", "lots", "integer"),
    ("temperature", "hot", "number"),
]


@pytest.mark.parametrize("field,value,words", BAD, ids=[f"{f}={str(v)[:20]}" for f, v, _ in BAD])
def test_out_of_bounds_value_is_a_value_error_naming_the_field(field, value, words):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert field in message
    assert words in message, message


def test_unknown_field_is_refused():
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(best_of=2)


def test_largest_values_fit_the_engine_types():
    params = SamplingParams(top_k=MAX_INT32, seed=MAX_SEED, max_tokens=MAX_INT32, temperature=100.0,
                            stop_token_ids=[MAX_INT32])
    torch.Generator().manual_seed(params.seed)  # no overflow
    torch.tensor([params.top_k], dtype=torch.int64)


@pytest.mark.parametrize("temperature", [1e-40, 1e-10, 9.99e-6, 0.0, 5e-324])
def test_near_zero_temperature_is_greedy(temperature):
    params = SamplingParams(temperature=temperature)
    assert params.temperature == 0.0
    assert params.is_greedy


def test_temperature_at_the_threshold_samples():
    assert not SamplingParams(temperature=GREEDY_BELOW).is_greedy
    assert SamplingParams(temperature=GREEDY_BELOW).temperature == GREEDY_BELOW


def test_is_greedy_holds_even_when_validation_is_bypassed():
    copied = SamplingParams().model_copy(update={"temperature": 1e-40})
    assert copied.is_greedy


def test_top_k_zero_means_off_and_stop_string_becomes_list():
    params = SamplingParams(top_k=0, stop="END")
    assert params.top_k == -1
    assert params.stop == ["END"]
