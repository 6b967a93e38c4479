"""One config loader (dynaspec/config_loader.py): `--config` and `--spec-config` YAML and the command-line
flags go through the same pydantic models; every failure is one line naming the file, key or flag and
what is allowed, and nothing loads a model first."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import dynaspec.llm
from dynaspec.bench.cli_bench import speculative_config_from_options
from dynaspec.cli import app
from dynaspec.config import EngineConfig
from dynaspec.config_loader import ConfigError, load_engine_config
from dynaspec.spec.config import NGramDecodingConfig

runner = CliRunner()


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to build an LLM fails the test: the errors must come before the model loads."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(dynaspec.llm, "LLM", refuse)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("text", [
    "decoding_type: NGram\nmax_draft_len: 4\nmax_draft_length: 2\n",
    "speculative_config:\n  decoding_type: NGram\n  max_draft_length: 2\n",
])
def test_unknown_spec_keys_are_named_with_the_allowed_ones(tmp_path, text):
    spec = _write(tmp_path, "spec.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_engine_config("m", spec_config=spec)
    message = str(caught.value)
    assert "unknown key 'max_draft_length'" in message and str(spec) in message
    assert "did you mean 'max_draft_len'?" in message
    assert "allowed keys: " in message and "max_matching_ngram_size" in message and "draft_len_schedule" in message


def test_unknown_engine_keys_are_named_with_the_allowed_ones(tmp_path):
    config = _write(tmp_path, "engine.yaml", "model: m\nmax_num_seq: 4\n")
    for load in (lambda: load_engine_config(config=config), lambda: EngineConfig.from_yaml(config)):
        with pytest.raises(ConfigError, match=r"unknown key 'max_num_seq' in .*engine.yaml; did you mean "
                                              r"'max_num_seqs'\? allowed keys: model, dtype, device"):
            load()


def test_unknown_keys_inside_the_engine_yamls_speculative_config(tmp_path):
    config = _write(tmp_path, "engine.yaml", "model: m\nspeculative_config:\n  decoding_type: DraftTarget\n"
                                             "  speculative_model: d\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"unknown key 'colour' in speculative_config of .*engine.yaml "
                                          r"\(decoding_type DraftTarget\); allowed keys: .*speculative_model_dir"):
        load_engine_config(config=config)


def test_a_spec_file_with_other_top_level_keys_is_refused(tmp_path):
    spec = _write(tmp_path, "spec.yaml", "model: m\nspeculative_config:\n  decoding_type: NGram\n")
    with pytest.raises(ConfigError, match="unknown top-level key 'model' beside speculative_config"):
        load_engine_config("m", spec_config=spec)


def test_bench_reads_spec_files_with_the_same_loader(tmp_path):
    spec = _write(tmp_path, "spec.yaml", "decoding_type: NGram\nis_public: false\n")
    with pytest.raises(ConfigError, match="unknown key 'is_public'.*did you mean 'is_public_pool'"):
        speculative_config_from_options(spec, None, None, None, None)


@pytest.mark.parametrize("flag", ["--config", "--spec-config"])
def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, flag, no_model_load):
    bad = _write(tmp_path, "bad.yaml", "decoding_type: NGram\nmax_draft_len: [4\nis_keep_all: true\n")
    line = _one_error_line(runner.invoke(app, ["generate", "hi", flag, str(bad)]))
    assert f"{bad}:3:12: YAML syntax error: expected ',' or ']'" in line.replace("\n", "")


@pytest.mark.parametrize("text, kind", [("- 1\n- 2\n", "a list"), ("hello\n", "the str 'hello'"), ("42\n", "the int 42"),
                                        ("speculative_config: [1, 2]\n", "a list")])
def test_a_spec_yaml_that_is_not_a_mapping_is_a_clear_error(tmp_path, text, kind, no_model_load):
    spec = _write(tmp_path, "spec.yaml", text)
    line = _one_error_line(runner.invoke(app, ["generate", "hi", "--spec-config", str(spec)]))
    assert "must hold a mapping" in line or "must be a mapping" in line
    assert kind in line


def test_auto_with_a_missing_profile_fails_at_validation(tmp_path, no_model_load):
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=r"acceptance_profile '.*nope.json' does not exist: .*acceptance_ngram_chat"):
        NGramDecodingConfig(draft_len_schedule="auto", acceptance_profile=str(missing))
    spec = _write(tmp_path, "spec.yaml", f"decoding_type: NGram\ndraft_len_schedule: auto\n"
                                         f"acceptance_profile: {missing}\n")
    line = _one_error_line(runner.invoke(app, ["generate", "hi", "--spec-config", str(spec)]))
    assert "does not exist" in line and str(spec) in line


def test_a_profile_with_bad_content_fails_at_validation(tmp_path):
    bad = _write(tmp_path, "p.json", '{"acceptance_per_position": [1.5]}')
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        NGramDecodingConfig(draft_len_schedule="auto", acceptance_profile=str(bad))


def test_a_shipped_profile_name_resolves_to_its_file():
    config = NGramDecodingConfig(draft_len_schedule="auto", acceptance_profile="acceptance_ngram_chat")
    assert config.acceptance_profile.endswith("bench/data/acceptance_ngram_chat.json")


def test_flags_go_through_the_same_model(tmp_path):
    config = _write(tmp_path, "engine.yaml", "model: m\nmax_num_seqs: 4\ndtype: float32\n")
    loaded = load_engine_config(config=config, options={"max_num_seqs": 8, "max_model_len": None})
    assert (loaded.max_num_seqs, loaded.dtype, loaded.max_model_len) == (8, "float32", None)
    with pytest.raises(ConfigError, match=r"^--max-num-seqs: Input should be greater than or equal to 1 \(got 0\)$"):
        load_engine_config(config=config, options={"max_num_seqs": 0})
    with pytest.raises(ConfigError, match=r"^dtype \(in .*e2.yaml\): Input should be 'auto', 'float32'"):
        load_engine_config(config=_write(tmp_path, "e2.yaml", "dtype: f8\n"))


def test_an_empty_spec_file_needs_a_decoding_type(tmp_path):
    spec = _write(tmp_path, "spec.yaml", "")
    with pytest.raises(ConfigError, match="has no decoding_type; decoding_type must be one of NGram, DraftTarget"):
        load_engine_config("m", spec_config=spec)
    null = _write(tmp_path, "null.yaml", "speculative_config: null\n")
    assert load_engine_config("m", spec_config=null).speculative_config is None  # what `tune` writes for "no spec"
