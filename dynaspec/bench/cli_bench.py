"""`dynaspec bench`: the decode-throughput sweep (dynaspec.bench.sweep) from the command line.

Loaded lazily by dynaspec/cli.py (`LAZY_COMMANDS["bench"]`).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DRAFTERS = ("ngram", "draft-model")
DEFAULT_MAX_DRAFT_LEN = 6
DEFAULT_PROMPT_LEN = 128


def parse_int_list(text: str, what: str, minimum: int) -> list[int]:
    """'1,2,4', a range '0-6', or a mix '0-2,4' -> sorted distinct ints >= minimum; ValueError otherwise."""
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        ranged = re.fullmatch(r"(\d+)-(\d+)", part)
        if ranged:
            low, high = int(ranged.group(1)), int(ranged.group(2))
            if low > high:
                raise ValueError(f"{what} range {part!r} is empty (start > end)")
            values.update(range(low, high + 1))
            continue
        try:
            values.add(int(part))
        except ValueError:
            raise ValueError(f"{what} entry {part!r} is not an int (expected e.g. '1,2,4' or '0-6')") from None
    bad = sorted(v for v in values if v < minimum)
    if bad:
        raise ValueError(f"{what} must be >= {minimum}, got {bad[0]}")
    return sorted(values)


def speculative_config_from_options(
    spec_config: Path | None,
    drafter: str | None,
    draft_model: str | None,
    draft_len_schedule: str | None,
    max_draft_len: int | None,
) -> dict[str, Any] | None:
    """The base speculative config (a mapping) from a YAML file and/or --drafter, or None for no drafter."""
    from dynaspec.spec.config import parse_draft_len_schedule_option

    data: dict[str, Any] | None = None
    if spec_config is not None:
        if not spec_config.is_file():
            raise ValueError(f"spec config file not found: {spec_config}")
        loaded = yaml.safe_load(spec_config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"spec config file {spec_config} must hold a mapping")
        data = dict(loaded.get("speculative_config", loaded))
    if drafter is not None:
        if drafter not in DRAFTERS:
            raise ValueError(f"--drafter must be one of {', '.join(DRAFTERS)}, got {drafter!r}")
        if data is not None:
            raise ValueError("pass either --spec-config or --drafter, not both")
        if drafter == "draft-model":
            if not draft_model:
                raise ValueError("--drafter draft-model needs --draft-model NAME (zoo name, random:<preset>, HF dir)")
            data = {"decoding_type": "DraftTarget", "speculative_model": draft_model}
        else:
            data = {"decoding_type": "NGram"}
        data["max_draft_len"] = DEFAULT_MAX_DRAFT_LEN
    elif draft_model is not None:
        raise ValueError("--draft-model needs --drafter draft-model")
    if data is None:
        if draft_len_schedule is not None or max_draft_len is not None:
            raise ValueError("--draft-len-schedule / --max-draft-len need a drafter (--drafter or --spec-config)")
        return None
    if max_draft_len is not None:
        data["max_draft_len"] = max_draft_len
        if data.get("draft_len_schedule") and draft_len_schedule is None:
            raise ValueError("--max-draft-len changes max_draft_len; give the matching --draft-len-schedule too")
    if draft_len_schedule is not None:
        data["draft_len_schedule"] = parse_draft_len_schedule_option(draft_len_schedule)
    return data


def _fail(console: Console, message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def bench_command(
    model: Annotated[str, typer.Option(help="zoo name, random:<preset>, HF directory or .gguf file")] = "random:llama-3.1-8b",
    spec_config: Annotated[Optional[Path], typer.Option(help="YAML file with a speculative_config")] = None,
    drafter: Annotated[Optional[str], typer.Option(help="ngram | draft-model (instead of --spec-config)")] = None,
    draft_model: Annotated[Optional[str], typer.Option(help="draft model for --drafter draft-model")] = None,
    draft_len_schedule: Annotated[Optional[str], typer.Option(help="the schedule line, e.g. '1:4,8:2,32:0', or 'auto' (needs acceptance_profile in --spec-config)")] = None,
    max_draft_len: Annotated[Optional[int], typer.Option(help="largest k (default: the config's, or 6)")] = None,
    ks: Annotated[Optional[str], typer.Option(help="static k's to sweep, e.g. '0-6' or '0,2,4' (0 = no spec); default 0..max_draft_len")] = None,
    batch_sizes: Annotated[Optional[str], typer.Option(help="e.g. '1,8,64' (default 1,2,4,... up to --max-batch)")] = None,
    max_batch: Annotated[int, typer.Option(help="largest batch of the default batch sizes")] = 256,
    prompt_len: Annotated[Optional[int], typer.Option(help="random prompt tokens per request (default 128; not with --workload)")] = None,
    workload: Annotated[Optional[str], typer.Option(help="real prompts instead of random ids: code-edit | chat | summarise | humaneval (the model's own acceptance; output tokens checked against no spec)")] = None,
    gen_len: Annotated[int, typer.Option(help="tokens generated per request (ignore_eos)")] = 128,
    acceptance_profile: Annotated[Optional[str], typer.Option(help="BENCHMARK ONLY: replay this acceptance profile (JSON path or shipped name)")] = None,
    schedule_line: Annotated[bool, typer.Option(help="add the configured schedule as its own line")] = True,
    compare_hf: Annotated[bool, typer.Option(help="also time HF transformers generate on the same weights")] = False,
    hf_batch_sizes: Annotated[str, typer.Option(help="batch sizes for --compare-hf (must be in the sweep)")] = "1,64",
    out_dir: Annotated[Path, typer.Option(help="where bench.json, bench.md and the PNGs go")] = Path("bench-out"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    enforce_eager: Annotated[bool, typer.Option(help="no CUDA graphs")] = False,
    warmup: Annotated[bool, typer.Option(help="one short run per config before timing")] = True,
    rounds: Annotated[int, typer.Option(help="> 1: all lines side by side on one copy of the weights, each point measured this many times in rotated order (median)")] = 1,
    plots: Annotated[bool, typer.Option(help="write PNG plots")] = True,
) -> None:
    """Sweep batch sizes x draft lengths; print a table, write JSON, markdown and PNG plots."""
    from dynaspec.bench import report
    from dynaspec.bench.sweep import SweepSettings, default_batch_sizes, run_sweep

    console = Console()
    try:
        spec = speculative_config_from_options(spec_config, drafter, draft_model, draft_len_schedule, max_draft_len)
        batches = parse_int_list(batch_sizes, "--batch-sizes", 1) if batch_sizes else default_batch_sizes(max_batch)
        draft_lens = parse_int_list(ks, "--ks", 0) if ks else None
        hf_batches = None
        if compare_hf:
            requested = parse_int_list(hf_batch_sizes, "--hf-batch-sizes", 1)
            hf_batches = [b for b in requested if b in batches]
            if batch_sizes and len(hf_batches) != len(requested):
                missing = sorted(set(requested) - set(batches))
                raise ValueError(f"--hf-batch-sizes {missing} are not in the sweep's batch sizes {batches}")
            if not hf_batches:
                raise ValueError(f"none of --hf-batch-sizes {requested} is in the sweep's batch sizes {batches}")
        if workload is not None and prompt_len is not None:
            raise ValueError("--prompt-len sets random prompts; --workload prompts keep their real length")
        settings = SweepSettings(
            model=model, speculative_config=spec, batch_sizes=batches, draft_lens=draft_lens,
            include_schedule=schedule_line, prompt_len=DEFAULT_PROMPT_LEN if prompt_len is None else prompt_len,
            gen_len=gen_len, workload=workload,
            acceptance_profile=acceptance_profile, device=device, dtype=dtype, seed=seed,
            enforce_eager=enforce_eager, warmup=warmup, rounds=rounds,
            command_line=shlex.join(sys.argv),
        )
        settings.validate()
    except (ValueError, TypeError) as exc:
        _fail(console, str(exc))
    try:
        with Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        ) as bar:
            task = bar.add_task("sweep", total=1)

            def progress(description: str, completed: float, total: float) -> None:
                bar.update(task, description=description, completed=completed, total=total)

            result = run_sweep(settings, progress=progress, hf_batch_sizes=hf_batches).to_dict()
    except (ValueError, TypeError) as exc:
        _fail(console, str(exc))
    for table in report.rich_tables(result):
        console.print(table)
    written = [report.write_json(result, out_dir / "bench.json"), report.write_markdown(result, out_dir / "bench.md")]
    if plots:
        from dynaspec.bench.plots import plot_sweep

        written += plot_sweep(result, out_dir)
    for caveat in result["metadata"].get("caveats") or []:
        console.print(f"[yellow]{caveat}[/]")
    console.print("[dim]wrote " + ", ".join(str(p) for p in written) + "[/]")
