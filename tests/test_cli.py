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


# --- engine flags, server options checked before the model loads, --version, bench on this device -----


class _Stop(Exception):
    """Raised by the fakes below once they have seen what they were given."""


def test_generate_flags_reach_the_engine_config(monkeypatch, tmp_path):
    import dynaspec.llm

    seen = {}

    def fake_llm(config, progress=None):
        seen["config"] = config
        raise _Stop

    monkeypatch.setattr(dynaspec.llm, "LLM", fake_llm)
    config = tmp_path / "engine.yaml"
    config.write_text("model: m\nmax_num_seqs: 2\n")
    result = runner.invoke(app, [
        "generate", "hi", "--config", str(config), "--max-model-len", "512", "--max-num-seqs", "8",
        "--dtype", "bfloat16", "--gpu-memory-utilization", "0.5", "--device", "cpu",
    ])
    assert isinstance(result.exception, _Stop), result.output
    c = seen["config"]
    assert (c.model, c.max_model_len, c.max_num_seqs, c.dtype, c.gpu_memory_utilization, c.device) == (
        "m", 512, 8, "bfloat16", 0.5, "cpu")


@pytest.fixture
def no_server(monkeypatch):
    """run_server and the engine refuse to run: what they would get is recorded in the returned dict."""
    import dynaspec.engine.engine
    import dynaspec.server

    seen = {}

    def fake_run_server(engine_config, **options):
        seen.update(engine_config=engine_config, **options)

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(dynaspec.server, "run_server", fake_run_server)
    monkeypatch.setattr(dynaspec.engine.engine, "LLMEngine", refuse)
    return seen


def test_serve_flags_reach_the_engine_config_and_the_server(no_server):
    from dynaspec.server.background import free_port

    port = free_port()
    result = runner.invoke(app, [
        "serve", "--model", "m", "--port", str(port), "--max-queue", "5", "--api-key", "sk-1",
        "--max-model-len", "256", "--max-num-seqs", "4", "--dtype", "float32", "--gpu-memory-utilization", "0.6",
    ])
    assert result.exit_code == 0, result.output
    c = no_server["engine_config"]
    assert (c.model, c.max_model_len, c.max_num_seqs, c.dtype, c.gpu_memory_utilization) == ("m", 256, 4, "float32", 0.6)
    assert (no_server["port"], no_server["max_queue"], no_server["api_key"]) == (port, 5, "sk-1")


@pytest.mark.parametrize("args, message", [
    (["--port", "99999"], "--port: Input should be less than or equal to 65535 (got 99999)"),
    (["--port", "0"], "--port: Input should be greater than or equal to 1"),
    (["--max-queue", "0"], "--max-queue: Input should be greater than or equal to 1 (got 0)"),
    (["--api-key", "two words"], "--api-key: the API key must be a non-empty string without spaces"),
    (["--served-model-name", ""], "--served-model-name: String should have at least 1 character"),
    (["--max-num-seqs", "0"], "--max-num-seqs: Input should be greater than or equal to 1 (got 0)"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization: Input should be less than or equal to 0.98"),
    (["--dtype", "int4"], "--dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16' (got 'int4')"),
    (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' cannot be resolved"),
])
def test_serve_options_fail_before_the_model_loads(no_server, args, message):
    result = runner.invoke(app, ["serve", "--model", "m", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {message}"] or (
        len(result.output.strip().splitlines()) == 1 and message in result.output), result.output
    assert not no_server  # run_server never called


def test_serve_refuses_a_port_in_use_before_the_model_loads(no_server):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--model", "m", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and not no_server


VERSION_IN_A_FRESH_INTERPRETER = """
import json, sys
sys.argv = ["dynaspec", "--version"]
from dynaspec.cli import app
try:
    app()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"exit": code, "torch": "torch" in sys.modules}))
"""


def test_version_prints_the_version_without_importing_torch():
    import dynaspec

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"dynaspec {dynaspec.__version__}"
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", VERSION_IN_A_FRESH_INTERPRETER], cwd=root, capture_output=True,
                         text=True, check=True)
    assert run.stdout.splitlines()[0] == f"dynaspec {dynaspec.__version__}"
    assert json.loads(run.stdout.splitlines()[-1]) == {"exit": 0, "torch": False}


def test_bench_defaults_to_a_model_that_fits_a_cpu_and_refuses_one_that_does_not(monkeypatch):
    from dynaspec.bench import cli_bench, sweep

    assert cli_bench.default_model("cpu") == "random:qwen2.5-0.5b"
    assert cli_bench.default_model("cuda") == "random:llama-3.1-8b"

    def refuse(*args, **kwargs):
        raise AssertionError("the sweep must not run")

    monkeypatch.setattr(sweep, "run_sweep", refuse)
    monkeypatch.setattr(cli_bench, "available_bytes", lambda on_cuda, utilization: (4 * 10**9, "this machine's RAM"))
    result = runner.invoke(app, ["bench", "--model", "random:llama-3.1-8b", "--device", "cpu", "--ks", "0",
                                 "--batch-sizes", "1"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1
    assert "random:llama-3.1-8b (8.03 B parameters) needs about 32.1 GB for its weights alone, more than the 4.0 GB" in line
    assert "--model random:qwen2.5-0.5b" in line and "--dtype bfloat16" in line
    params, size = cli_bench.weight_bytes("random:qwen2.5-0.5b", "auto", on_cuda=False)
    assert size == 4 * params and size < 4 * 10**9  # the CPU default fits where the 8B shape does not


@pytest.mark.parametrize("args, message", [
    (["--max-num-seqs", "4", "--batch-sizes", "8"], "--batch-sizes 8 is above --max-num-seqs 4"),
    (["--max-model-len", "64"], "is above --max-model-len 64"),
    (["--dtype", "f8"], "--dtype: Input should be"),
    (["--gpu-memory-utilization", "0"], "--gpu-memory-utilization: Input should be greater than 0"),
])
def test_bench_engine_flags_are_checked_first(monkeypatch, args, message):
    from dynaspec.bench import sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    result = runner.invoke(app, ["bench", "--device", "cpu", "--ks", "0", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
