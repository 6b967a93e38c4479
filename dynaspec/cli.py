"""Command line: `dynaspec generate | serve | bench | tune | bench-trace | train-head` (typer + rich).

`generate` and `serve` live here and import the engine inside their bodies. The benchmark commands live
in dynaspec/bench/ (the `bench` extra) and are imported only when one of them runs or prints its own
help (`LAZY_COMMANDS`), so `dynaspec --help` loads neither dynaspec.bench nor matplotlib.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from dynaspec.cli_options import (
    CudagraphMode, Deterministic, Device, Dtype, GpuMemoryUtilization, MaxModelLen, MaxNumSeqs, TensorParallelSize, engine_options,
    print_version)

console = Console()


@dataclass(frozen=True)
class LazyCommand:
    """A command imported only when it runs: `module.function` is a typer command function; `help` is
    the first paragraph of its docstring, shown by `dynaspec --help` without importing the module."""

    module: str
    function: str
    help: str
    needs_bench_extra: bool = True


LAZY_COMMANDS: dict[str, LazyCommand] = {
    "bench": LazyCommand(
        "dynaspec.bench.cli_bench", "bench_command",
        "Sweep batch sizes x draft lengths; print a table, write JSON, markdown and PNG plots.",
    ),
    "tune": LazyCommand(
        "dynaspec.bench.cli_tune", "tune_command",
        "Measure acceptance and step costs, choose k per batch size, write the draft_len_schedule YAML.",
    ),
    "bench-trace": LazyCommand(
        "dynaspec.bench.cli_trace", "bench_trace_command",
        "Replay a mixed-load trace (concurrency rising and falling, workloads mixed) on every line: no spec, "
        "each static k, the schedule and the goodput policy; tokens/s overall and per phase.",
    ),
    "train-head": LazyCommand(
        "dynaspec.train_head.command", "train_head_command",
        "Train an EAGLE-3 draft head for a target by self-distillation; print a held-out acceptance estimate.",
        needs_bench_extra=False,
    ),
}
# What `pip install 'dynaspec[bench]'` adds (pyproject.toml); the lazy commands need all of it.
BENCH_EXTRA_MODULES = ("matplotlib",)
BENCH_EXTRA_HINT = "pip install -e '.[bench]' (from a checkout) or pip install 'dynaspec[bench]'"


def load_lazy_command(name: str) -> typer.main.click.Command:
    """Import LAZY_COMMANDS[name] and build its click command; a clear error when the bench extra is
    missing (checked with find_spec, which imports nothing)."""
    lazy = LAZY_COMMANDS[name]
    missing = [m for m in BENCH_EXTRA_MODULES if lazy.needs_bench_extra and importlib.util.find_spec(m) is None]
    if missing:
        _fail(f"`dynaspec {name}` needs the bench extra ({', '.join(missing)} is not installed): {BENCH_EXTRA_HINT}")
    single = typer.Typer(add_completion=False)
    single.command(name)(getattr(importlib.import_module(lazy.module), lazy.function))
    return typer.main.get_command(single)


class LazyGroup(TyperGroup):
    """The top-level group: the commands registered on `app`, then LAZY_COMMANDS, listed by name and
    help alone and imported when resolved (a command line that runs one, or asks for its --help)."""

    def list_commands(self, ctx) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_COMMANDS if n not in self.commands)]

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            return TyperCommand(cmd_name, help=LAZY_COMMANDS[cmd_name].help)
        return command

    def resolve_command(self, ctx, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        if name in LAZY_COMMANDS and name not in self.commands:
            command = self.commands[name] = load_lazy_command(name)
        return name, command, rest


app = typer.Typer(
    cls=LazyGroup, add_completion=False, no_args_is_help=True,
    help="dynaspec: dynamic-draft-length speculative decoding",
)


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=print_version,
                                          help="print the version and exit")] = False,
) -> None:
    """dynaspec: dynamic-draft-length speculative decoding"""


DEFAULT_PROMPT = "Write a Python function that checks whether a number is prime."
SCHEDULE_HELP = (
    "batch:k pairs, e.g. '1:4,8:2,32:0', or 'auto' (planned at start-up from measured step costs and the "
    "spec config's acceptance_profile)"
)


@contextmanager
def _progress_bar():
    """A rich progress bar fed by the engine's `progress(description, completed, total)` callback."""
    with Progress(
        TextColumn("[bold blue]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(description: str, completed: float, total: float) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total or 1)
            bar.update(tasks[description], completed=completed, total=total or 1)

        yield update


def _engine_config(model: str | None, config: Path | None, spec_config: Path | None, schedule: str | None, **options):
    """The EngineConfig of a command line (dynaspec/config_loader.py: one line per error, ValueError)."""
    from dynaspec.config_loader import load_engine_config

    return load_engine_config(model, config, spec_config, schedule, options)


def _fail(message: str) -> None:
    """Print `error: message` (as text, not rich markup) and exit with status 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="prompt text (a default coding prompt when omitted)")] = None,
    model: Annotated[Optional[str], typer.Option(help="zoo name, random:<preset>, HF directory or .gguf file")] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    top_k: Annotated[int, typer.Option()] = -1,
    seed: Annotated[Optional[int], typer.Option(help="per-request seed")] = None,
    chat: Annotated[bool, typer.Option(help="wrap the prompt in the model's chat template")] = True,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of engine options")] = None,
    spec_config: Annotated[Optional[Path], typer.Option(help="YAML file with a speculative_config")] = None,
    draft_len_schedule: Annotated[Optional[str], typer.Option(help=SCHEDULE_HELP)] = None,
    device: Device = None,
    dtype: Dtype = None,
    max_model_len: MaxModelLen = None,
    max_num_seqs: MaxNumSeqs = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    deterministic: Deterministic = None,
    tensor_parallel_size: TensorParallelSize = None,
    cudagraph_mode: CudagraphMode = None,
) -> None:
    """Generate a completion for PROMPT and print it with a throughput summary."""
    from dynaspec.engine.startup_heap import skip_collections_at_exit
    from dynaspec.llm import LLM
    from dynaspec.sampling_params import SamplingParams

    skip_collections_at_exit()  # the process ends with this command: its exit need not walk the heap

    try:
        engine_config = _engine_config(model, config, spec_config, draft_len_schedule, **engine_options(
            device=device, dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization, deterministic=deterministic,
            tensor_parallel_size=tensor_parallel_size, cudagraph_mode=cudagraph_mode))
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        with _progress_bar() as progress:
            llm = LLM(config=engine_config, progress=progress)
    except (ValueError, TypeError) as exc:
        _fail(str(exc))
    loaded = llm.engine.loaded
    if loaded.is_random:
        console.print(f"[yellow]{loaded.name}: RANDOM WEIGHTS, output text is meaningless[/]")
    text = prompt or DEFAULT_PROMPT
    start = time.perf_counter()
    try:
        if chat and llm.tokenizer is not None and getattr(llm.tokenizer, "chat_template", None):
            out = llm.chat([{"role": "user", "content": text}], params)[0]
        else:
            out = llm.generate([text], params)[0]
    except (ValueError, TypeError) as exc:
        _fail(str(exc))
    elapsed = time.perf_counter() - start
    console.print(out.text if llm.tokenizer is not None else str(out.token_ids))
    n = len(out.token_ids)
    ttft = out.metrics.time_to_first_token if out.metrics else None
    console.print(
        f"[dim]{loaded.name} on {llm.engine.device.type}: {n} tokens in {elapsed:.2f} s = "
        f"{n / max(elapsed, 1e-9):.1f} tok/s (TTFT {ttft or 0:.3f} s, finish: {out.finish_reason})[/]"
    )
    stats = llm.get_stats()
    if stats.get("speculative"):
        _print_spec_stats(stats)


def _print_schedule(stats: dict) -> None:
    """The draft_len_schedule in force; for `auto` also what it was planned from."""
    schedule = stats.get("draft_len_schedule")
    auto = stats.get("auto_schedule")
    if schedule is None:
        return
    text = ", ".join(f"{t}: {k}" for t, k in schedule.items())
    if auto is None:
        console.print(f"[dim]draft_len_schedule: {{{text}}}[/]")
        return
    console.print(
        f"draft_len_schedule (auto): {{{text}}}  [dim](step costs: {auto['step_costs']}, acceptance: "
        f"{auto['acceptance_profile']})[/]"
    )
    picks = ", ".join(f"{c['batch_size']}->{c['k']}" for c in auto["choices"])
    console.print(f"[dim]  k per batch size by predicted goodput: {picks}[/]")


def _print_spec_stats(stats: dict) -> None:
    _print_schedule(stats)
    table = Table(title="speculation", show_header=True)
    table.add_column("drafted")
    table.add_column("accepted")
    table.add_column("acceptance")
    table.add_column("mean accepted length")
    table.add_column("acceptance per position")
    per_position = ", ".join(f"{a:.2f}" for a in stats.get("acceptance_rate_per_position", []))
    table.add_row(
        str(stats.get("num_drafted", 0)), str(stats.get("num_accepted", 0)),
        f"{stats.get('acceptance_rate', 0.0):.2%}", f"{stats.get('mean_accepted_length', 0.0):.2f}", per_position,
    )
    console.print(table)


@app.command()
def serve(
    model: Annotated[Optional[str], typer.Option(help="zoo name, random:<preset>, HF directory or .gguf file")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port, 1..65535")] = 8000,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of engine options")] = None,
    spec_config: Annotated[Optional[Path], typer.Option(help="YAML file with a speculative_config")] = None,
    draft_len_schedule: Annotated[Optional[str], typer.Option(help=SCHEDULE_HELP)] = None,
    served_model_name: Annotated[Optional[str], typer.Option()] = None,
    max_queue: Annotated[int, typer.Option(help="waiting requests before 429 (>= 1)")] = 256,
    api_key: Annotated[Optional[str], typer.Option(help="require `Authorization: Bearer KEY` on /v1/* (401 without)")] = None,
    device: Device = None,
    dtype: Dtype = None,
    max_model_len: MaxModelLen = None,
    max_num_seqs: MaxNumSeqs = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    deterministic: Deterministic = None,
    tensor_parallel_size: TensorParallelSize = None,
    cudagraph_mode: CudagraphMode = None,
) -> None:
    """Serve an OpenAI-compatible HTTP API with Prometheus metrics."""
    from dynaspec.config_loader import validate_model
    from dynaspec.server import ServerOptions, check_listen_address, run_server

    # Every option is checked here, before run_server starts the engine (which loads the model).
    try:
        options = validate_model(ServerOptions, dict(
            host=host, port=port, served_model_name=served_model_name, max_queue=max_queue, api_key=api_key),
            sources={name: "--" + name.replace("_", "-") for name in ServerOptions.model_fields})
        engine_config = _engine_config(model, config, spec_config, draft_len_schedule, **engine_options(
            device=device, dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization, deterministic=deterministic,
            tensor_parallel_size=tensor_parallel_size, cudagraph_mode=cudagraph_mode))
        check_listen_address(options.host, options.port)
    except (ValueError, TypeError) as exc:
        _fail(str(exc))
    run_server(engine_config, **options.model_dump())


if __name__ == "__main__":
    app()
