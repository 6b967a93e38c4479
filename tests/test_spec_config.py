"""Speculative configs: TensorRT-LLM field names, YAML parsing, draft_len_schedule validation."""

import json

import pytest
import yaml
from pydantic import ValidationError

from dynaspec.spec.config import (
    DraftTargetDecodingConfig,
    NGramDecodingConfig,
    parse_draft_len_schedule,
    parse_speculative_config,
    validate_draft_len_schedule,
)


def test_ngram_defaults_match_tensorrt_llm_names():
    c = NGramDecodingConfig()
    assert (c.decoding_type, c.max_draft_len, c.max_matching_ngram_size) == ("NGram", 4, 3)
    assert c.is_keep_all and c.is_use_oldest and c.is_public_pool
    assert c.max_pool_entries == 65536 and c.draft_len_schedule is None and c.max_concurrency is None


def test_yaml_ngram_parses():
    data = yaml.safe_load(
        "speculative_config:\n"
        "  decoding_type: NGram\n"
        "  max_draft_len: 4\n"
        "  max_matching_ngram_size: 2\n"
        "  is_public_pool: false\n"
        "  draft_len_schedule: {32: 0, 1: 4, 8: 2}\n"
    )
    c = parse_speculative_config(data["speculative_config"])
    assert isinstance(c, NGramDecodingConfig)
    assert c.max_matching_ngram_size == 2 and c.is_public_pool is False
    assert list(c.draft_len_schedule.items()) == [(1, 4), (8, 2), (32, 0)]  # stored sorted


def test_yaml_draft_target_parses_with_either_model_field_name():
    c = parse_speculative_config(
        yaml.safe_load("{decoding_type: DraftTarget, max_draft_len: 3, speculative_model: tiny-draft}")
    )
    assert isinstance(c, DraftTargetDecodingConfig)
    assert (c.max_draft_len, c.speculative_model) == (3, "tiny-draft")
    legacy = parse_speculative_config({"decoding_type": "DraftTarget", "speculative_model_dir": "/m"})
    assert legacy.speculative_model == "/m"


def test_json_string_keys_are_coerced():
    c = parse_speculative_config(json.loads('{"decoding_type": "NGram", "draft_len_schedule": {"1": 4, "16": 1}}'))
    assert c.draft_len_schedule == {1: 4, 16: 1}


def test_schedule_given_as_cli_text_in_config():
    c = NGramDecodingConfig(max_draft_len=4, draft_len_schedule="1:4,8:2,32:0")
    assert c.draft_len_schedule == {1: 4, 8: 2, 32: 0}


def test_parse_passes_config_objects_through():
    c = NGramDecodingConfig(max_draft_len=2)
    assert parse_speculative_config(c) is c


def test_missing_decoding_type():
    with pytest.raises(ValueError, match="needs a decoding_type: one of NGram, DraftTarget"):
        parse_speculative_config({"max_draft_len": 4})


def test_unknown_decoding_type():
    with pytest.raises(ValueError, match="decoding_type 'Medusa' is not supported"):
        parse_speculative_config({"decoding_type": "Medusa"})


def test_not_a_mapping():
    with pytest.raises(TypeError, match="must be a mapping"):
        parse_speculative_config(["NGram"])


def test_unknown_field_rejected_with_its_name():
    with pytest.raises(ValidationError, match="max_draft_tokens"):
        parse_speculative_config({"decoding_type": "NGram", "max_draft_tokens": 4})


def test_draft_target_needs_model():
    with pytest.raises(ValidationError, match="speculative_model"):
        parse_speculative_config({"decoding_type": "DraftTarget"})


@pytest.mark.parametrize("value", [0, 33, -1])
def test_max_draft_len_range(value):
    with pytest.raises(ValidationError, match="max_draft_len"):
        NGramDecodingConfig(max_draft_len=value)


def test_max_draft_len_bounds_accepted():
    assert NGramDecodingConfig(max_draft_len=1).max_draft_len == 1
    assert NGramDecodingConfig(max_draft_len=32).max_draft_len == 32


def test_max_concurrency_at_least_one():
    with pytest.raises(ValidationError, match="max_concurrency"):
        DraftTargetDecodingConfig(speculative_model="m", max_concurrency=0)
    assert DraftTargetDecodingConfig(speculative_model="m", max_concurrency=1).max_concurrency == 1


def test_configs_are_frozen():
    c = NGramDecodingConfig()
    with pytest.raises(ValidationError):
        c.max_draft_len = 2


# --- draft_len_schedule rules, each with its message naming the entry ---------------------------


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({1: 4, 0: 2}, r"entry 0: 2: the key \(a batch-size threshold\) must be >= 1, got 0"),
        ({1: 4, -3: 2}, r"entry -3: 2: the key \(a batch-size threshold\) must be >= 1"),
        ({1: 4, 8: -1}, r"entry 8: -1: the value \(a draft length\) must be >= 0, got -1"),
        ({2: 4, 8: 2}, r"must contain key 1 .*got thresholds \[2, 8\]"),
        ({1: 3, 8: 2}, r"entry 1: 3: the draft length for batch size 1 must equal max_draft_len \(4\)"),
        ({1: 4, 8: 5}, r"entry 8: 5: the draft length must not exceed max_draft_len \(4\)"),
        ({1: 4, "x": 2}, r"entry 'x': 2: the key \(a batch-size threshold\) must be an int"),
        ({1: 4, 8: 2.5}, r"entry 8: 2.5: the value \(a draft length\) must be an int"),
        ({1: 4, 8: True}, r"entry 8: True: the value \(a draft length\) must be an int, got the bool"),
        ({1.0: 4}, r"entry 1.0: 4: the key .* must be an int"),
        ({}, r"must not be empty"),
    ],
)
def test_schedule_validation_messages(schedule, message):
    with pytest.raises(ValueError, match=message):
        validate_draft_len_schedule(schedule, max_draft_len=4)
    with pytest.raises(ValidationError, match=message):
        NGramDecodingConfig(max_draft_len=4, draft_len_schedule=schedule)
    with pytest.raises(ValidationError, match=message):
        DraftTargetDecodingConfig(max_draft_len=4, speculative_model="m", draft_len_schedule=schedule)


def test_schedule_duplicate_after_coercion():
    with pytest.raises(ValueError, match="threshold 8 appears more than once"):
        validate_draft_len_schedule({1: 4, 8: 2, "8": 1}, max_draft_len=4)


def test_schedule_not_a_mapping():
    with pytest.raises(ValueError, match="must be a mapping of batch-size threshold -> draft length"):
        validate_draft_len_schedule([(1, 4)], max_draft_len=4)


def test_valid_schedule_stored_sorted_and_allows_zero():
    c = NGramDecodingConfig(max_draft_len=6, draft_len_schedule={64: 0, 4: 3, 1: 6, 16: 1})
    assert list(c.draft_len_schedule) == [1, 4, 16, 64]
    assert c.draft_len_schedule[64] == 0


def test_schedule_only_key_one():
    assert NGramDecodingConfig(max_draft_len=2, draft_len_schedule={1: 2}).draft_len_schedule == {1: 2}


# --- CLI text form ------------------------------------------------------------------------------


def test_parse_cli_schedule():
    assert parse_draft_len_schedule("1:4,8:2,32:0") == {1: 4, 8: 2, 32: 0}
    assert list(parse_draft_len_schedule(" 32:0 , 1:4, 8:2 ")) == [1, 8, 32]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "has an empty entry"),
        ("1:4,,8:2", "has an empty entry"),
        ("1:4,8-2", r"entry '8-2' is not 'threshold:draft_len'"),
        ("1:4,8:2:1", r"entry '8:2:1' is not 'threshold:draft_len'"),
        ("1:4,8:", r"entry '8:' is not 'threshold:draft_len'"),
        ("1:4,a:2", r"entry 'a': '2': the key \(a batch-size threshold\) must be an int"),
        ("1:4,8:x", r"entry '8': 'x': the value \(a draft length\) must be an int"),
        ("1:4,8:2,8:1", r"entry '8:1': threshold 8 appears more than once"),
        ("2:4", "must contain key 1"),
        ("1:4,0:1", r"the key \(a batch-size threshold\) must be >= 1, got 0"),
    ],
)
def test_parse_cli_schedule_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_draft_len_schedule(text)


def test_parse_cli_schedule_type():
    with pytest.raises(TypeError, match="must be a str"):
        parse_draft_len_schedule({1: 4})


# --- a schedule without key 1: both readings of the keys, and this schedule converted ------------------


def test_a_schedule_without_key_1_explains_both_forms_and_converts_it():
    with pytest.raises(ValueError) as caught:
        validate_draft_len_schedule({4: 3, 16: 1}, max_draft_len=3)
    message = str(caught.value)
    assert "must contain key 1" in message and "got thresholds [4, 16]" in message
    assert "LOWER bounds (TensorRT-LLM's first form, PR #8194)" in message
    assert "the entry with the largest key <= the number of requests decoding applies" in message
    assert "inclusive UPPER bounds" in message and "k = 0 above the largest key" in message
    assert "{1: k1, b1+1: k2, ..., b(n-1)+1: kn, bn+1: 0}" in message
    assert "if {4: 3, 16: 1} is in TensorRT-LLM's later form, here it reads {1: 3, 5: 1, 17: 0}" in message
    # The conversion it proposes is a valid schedule that gives every batch size the later form's k.
    converted = validate_draft_len_schedule({1: 3, 5: 1, 17: 0}, max_draft_len=3)
    for batch in range(1, 40):
        later_form = next((k for bound, k in sorted({4: 3, 16: 1}.items()) if batch <= bound), 0)
        ours = converted[max(t for t in converted if t <= batch)]
        assert ours == later_form, batch


def test_the_cli_schedule_without_key_1_gives_the_same_explanation():
    with pytest.raises(ValueError, match=r"must contain key 1.*here it reads \{1: 4, 9: 2, 33: 0\}"):
        NGramDecodingConfig(max_draft_len=4, draft_len_schedule="8:4,32:2")


def test_every_shipped_bench_config_builds():
    """bench/*.yaml (what scripts/gpu_session.sh runs on the GPU) are valid speculative configs, their acceptance
    profiles present."""
    from pathlib import Path

    from dynaspec.config_loader import build_spec_config, read_spec_section

    root = Path(__file__).resolve().parent.parent
    configs = sorted((root / "bench").glob("*.yaml"))
    assert len(configs) >= 7
    for path in configs:
        spec = build_spec_config(read_spec_section(path))
        assert spec.max_draft_len >= 1, path
        if spec.acceptance_profile is not None:
            assert (root / spec.acceptance_profile).is_file(), (path, spec.acceptance_profile)
