"""`dynaspec bench-trace`: replay the mixed-load trace (dynaspec.bench.trace_run) from the command line.

Loaded lazily by dynaspec/cli.py (`LAZY_COMMANDS["bench-trace"]`). Writes trace.json,
trace.md and (unless --no-plots) trace.png into --out-dir.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dynaspec.bench.cli_bench import (
    CPU_DEFAULT_MODEL, CUDA_DEFAULT_MODEL, _fail, default_model, parse_int_list, speculative_config_from_options)
from dynaspec.bench.trace import DEFAULT_PHASES

DEFAULT_PROFILES = "acceptance_ngram_code-edit,acceptance_ngram_chat"
NONE = "none"


def parse_phases(text: str, option: str = "--phases", what: str = "concurrencies") -> list[int]:
    """'1,4,16,4' -> [1, 4, 16, 4] (order kept, repeats allowed); ValueError naming the option and the bad
    entry (`option`, `what`: for a message about another per-phase list, e.g. --requests-per-phase)."""
    phases = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"{option} entry {part!r} is not an int (expected e.g. '1,4,16,64,16,1')") from None
        if value < 1:
            raise ValueError(f"{option} entries are {what} >= 1, got {value}")
        phases.append(value)
    return phases


def bench_trace_command(
    model: Annotated[Optional[str], typer.Option(help=f"zoo name, random:<preset>, HF directory or .gguf file (default: {CUDA_DEFAULT_MODEL} on a GPU, {CPU_DEFAULT_MODEL} on a CPU)")] = None,
    spec_config: Annotated[Optional[Path], typer.Option(help="YAML file with a speculative_config (the drafter)")] = None,
    drafter: Annotated[Optional[str], typer.Option(help="ngram | draft-model (instead of --spec-config)")] = None,
    draft_model: Annotated[Optional[str], typer.Option(help="draft model for --drafter draft-model")] = None,
    max_draft_len: Annotated[Optional[int], typer.Option(help="largest k (default: the config's, or 6)")] = None,
    profiles: Annotated[str, typer.Option(help="BENCHMARK ONLY: acceptance profiles replayed, one per request by crc32(request id); 'none' = the model's own acceptance")] = DEFAULT_PROFILES,
    planning_profile: Annotated[Optional[str], typer.Option(help="acceptance JSON for the goodput warm start and the auto schedule (default: the mix of --profiles)")] = None,
    schedule: Annotated[str, typer.Option(help="the schedule line: 'auto' (planned at start-up), e.g. '1:4,16:2,64:0', or 'none'")] = "auto",
    goodput: Annotated[bool, typer.Option(help="run the draft_len_policy: goodput line")] = True,
    adaptive: Annotated[bool, typer.Option(help="run the draft_len_policy: adaptive line (per-request draft lengths)")] = False,
    ks: Annotated[Optional[str], typer.Option(help="static k's, e.g. '0-4' (0 = no spec); default 0..max_draft_len")] = None,
    phases: Annotated[str, typer.Option(help="concurrency per phase, in order")] = ",".join(map(str, DEFAULT_PHASES)),
    waves: Annotated[float, typer.Option(help="requests per phase = concurrency x waves")] = 2.0,
    requests_per_phase: Annotated[Optional[str], typer.Option(help="requests of each phase, e.g. '2,4,8,128,8,4,2' (instead of --waves)")] = None,
    prompt_len: Annotated[int, typer.Option(help="prompt tokens per request (random ids)")] = 128,
    gen_len: Annotated[int, typer.Option(help="mean tokens generated per request (ignore_eos)")] = 64,
    gen_len_spread: Annotated[float, typer.Option(help="generation lengths uniform in gen_len x [1 - s, 1 + s]")] = 0.5,
    out_dir: Annotated[Path, typer.Option(help="where trace.json, trace.md and trace.png go")] = Path("bench-trace-out"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    enforce_eager: Annotated[bool, typer.Option(help="no CUDA graphs")] = False,
    cudagraph_mode: Annotated[Optional[str], typer.Option(help="FULL | FULL_DECODE_ONLY (only decode and verify steps as graphs); default: FULL, or FULL_DECODE_ONLY with --deterministic")] = None,
    warmup: Annotated[bool, typer.Option(help="one short batch at each concurrency of --phases before each line")] = True,
    plots: Annotated[bool, typer.Option(help="write trace.png")] = True,
) -> None:
    """Replay a mixed-load trace (concurrency rising and falling, workloads mixed) on every line:
    no spec, each static k, the schedule and the goodput policy; tokens/s overall and per phase."""
    from dynaspec.bench import trace_report
    from dynaspec.bench.trace_run import TraceSettings, run_trace

    console = Console()
    try:
        spec = speculative_config_from_options(spec_config, drafter, draft_model, None, max_draft_len)
        if spec is None:
            raise ValueError("bench-trace compares speculative lines: give --drafter ngram | draft-model, or --spec-config")
        settings = TraceSettings(
            model=model or default_model(device), speculative_config=spec,
            profiles=None if profiles.strip().lower() == NONE else profiles.split(","),
            planning_profile=planning_profile,
            schedule=None if schedule.strip().lower() == NONE else schedule,
            goodput=goodput, adaptive=adaptive, draft_lens=parse_int_list(ks, "--ks", 0) if ks else None,
            phases=parse_phases(phases), waves=waves, prompt_len=prompt_len, gen_len=gen_len,
            requests_per_phase=(
                parse_phases(requests_per_phase, "--requests-per-phase", "request counts") if requests_per_phase else None
            ),
            gen_len_spread=gen_len_spread, device=device, dtype=dtype, seed=seed, enforce_eager=enforce_eager, cudagraph_mode=cudagraph_mode,
            warmup=warmup, command_line=shlex.join(sys.argv),
        )
        settings.validate()
    except (ValueError, TypeError) as exc:
        _fail(console, str(exc))
    try:
        with Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), console=console, transient=True,
        ) as bar:
            task = bar.add_task("trace", total=1)

            def progress(description: str, completed: float, total: float) -> None:
                bar.update(task, description=description, completed=completed, total=total or 1)

            result = run_trace(settings, out_dir, progress=progress)
    except (ValueError, TypeError) as exc:
        _fail(console, str(exc))
    for table in trace_report.rich_tables(result):
        console.print(table)
    written = [trace_report.write_json(result, out_dir / "trace.json"), trace_report.write_markdown(result, out_dir / "trace.md")]
    if plots:
        written.append(trace_report.plot_trace(result, out_dir / "trace.png"))
    for caveat in result["metadata"].get("caveats") or []:
        console.print(f"[yellow]{caveat}[/]")
    console.print("[dim]wrote " + ", ".join(str(p) for p in written) + "[/]")
