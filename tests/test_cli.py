"""The `dynaspec` command line: `generate` (output, summary, speculation table, clear errors) and the
benchmark commands loaded lazily (`dynaspec --help` imports neither dynaspec.bench nor matplotlib)."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynaspec import cli
from dynaspec.cli import LAZY_COMMANDS, app
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


HELP_IN_A_FRESH_INTERPRETER = """
import json, sys
sys.argv = ["dynaspec", "--help"]
from dynaspec.cli import app
try:
    app()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""


def test_top_level_help_imports_neither_the_bench_package_nor_matplotlib_nor_torch():
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", HELP_IN_A_FRESH_INTERPRETER], cwd=root, capture_output=True, text=True, check=True,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["exit"] in (0, None)
    for name in ("generate", "serve", *LAZY_COMMANDS):
        assert name in run.stdout
    loaded = report["modules"]
    assert not [m for m in loaded if m == "matplotlib" or m.startswith("matplotlib.")]
    assert not [m for m in loaded if m == "dynaspec.bench" or m.startswith("dynaspec.bench.")]
    assert "torch" not in loaded and "transformers" not in loaded  # dynaspec/__init__.py imports on first use


@pytest.mark.parametrize("name", list(LAZY_COMMANDS))
def test_lazy_command_help_is_its_own(name):
    lazy = LAZY_COMMANDS[name]
    function = getattr(importlib.import_module(lazy.module), lazy.function)
    first_paragraph = inspect.getdoc(function).split("\n\n")[0]
    assert " ".join(lazy.help.split()) == " ".join(first_paragraph.split())
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "--model" in result.output


def test_bench_command_without_the_bench_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(cli, "BENCH_EXTRA_MODULES", ("dynaspec_no_such_module",))
    result = runner.invoke(app, ["bench", "--ks", "0"])
    assert result.exit_code == 2
    assert "pip install -e '.[bench]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
