"""The `dynaspec generate` command: output, summary, speculation table, clear errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dynaspec.cli import app
from tests.tiny_models import make_tiny_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("cli"), "llama"))


def test_generate_on_the_default_model(smollm2_prepared):
    result = runner.invoke(
        app,
        ["generate", "Say hi.", "--max-tokens", "8", "--model", str(smollm2_prepared.path)],
    )
    assert result.exit_code == 0, result.output
    assert "tok/s" in result.output


def test_generate_with_spec_config_and_schedule(tiny, tmp_path, smollm2_prepared):
    spec = tmp_path / "spec.yaml"
    spec.write_text("speculative_config:\n  decoding_type: NGram\n  max_draft_len: 4\n")
    result = runner.invoke(
        app,
        [
            "generate", "def f(x): return x\n" * 3, "--model", str(smollm2_prepared.path), "--max-tokens", "12",
            "--spec-config", str(spec), "--draft-len-schedule", "1:4,8:2,32:0", "--no-chat",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "speculation" in result.output and "acceptance" in result.output


def test_engine_options_from_yaml(tmp_path, smollm2_prepared):
    config = tmp_path / "engine.yaml"
    config.write_text(f"model: {smollm2_prepared.path}\nmax_num_seqs: 4\nblock_size: 8\n")
    result = runner.invoke(app, ["generate", "Hi", "--config", str(config), "--max-tokens", "4"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-model"], "smollm2-135m-instruct"),
        (["--temperature", "-1"], "temperature"),
        (["--draft-len-schedule", "1:4"], "speculative config"),
        (["--config", "/nonexistent.yaml"], "not found"),
    ],
)
def test_bad_input_gives_a_clear_message(args, message):
    result = runner.invoke(app, ["generate", "hello", *args])
    assert result.exit_code == 2
    assert message in result.output
