"""`dynaspec tune`: measure acceptance and T(batch, k), write the goodput-optimal draft_len_schedule.

Loaded lazily by dynaspec/cli.py (`LAZY_COMMANDS["tune"]`). The pieces live in
dynaspec.bench.tune; the step timing is the bench sweep's (dynaspec.bench.sweep) or the engine's probe.
"""

from __future__ import annotations

import gc
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dynaspec.bench.cli_bench import _fail, parse_int_list, speculative_config_from_options
from dynaspec.bench.workloads import WORKLOADS


def _check_args(spec, workload, workload_name, acceptance_profile, out: Path, num_prompts, max_tokens, cost, plot):
    from dynaspec.bench.tune import COST_SOURCES

    if spec is None:
        raise ValueError("tune needs a drafter: --drafter ngram | draft-model (with --draft-model), or --spec-config")
    sources = sum(x is not None for x in (workload, workload_name, acceptance_profile))
    if sources != 1:
        raise ValueError(
            "give exactly one acceptance source: --workload prompts.jsonl, --workload-name "
            f"{'|'.join(WORKLOADS)}, or --acceptance-profile P"
        )
    if workload_name is not None and workload_name not in WORKLOADS:
        raise ValueError(f"--workload-name must be one of {', '.join(WORKLOADS)}, got {workload_name!r}")
    if num_prompts < 1 or max_tokens < 1:
        raise ValueError(f"--num-prompts and --max-tokens must be >= 1, got {num_prompts} and {max_tokens}")
    if cost not in COST_SOURCES:
        raise ValueError(f"--cost must be one of {', '.join(COST_SOURCES)}, got {cost!r}")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"--out must be a .yaml / .yml file, got {str(out)!r}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise ValueError(f"--plot must be a .png file, got {str(plot)!r}")


def tune_command(
    model: Annotated[str, typer.Option(help="zoo name, random:<preset>, HF directory or .gguf file")],
    out: Annotated[Path, typer.Option(help="schedule YAML to write (step costs and acceptance JSON go next to it)")],
    drafter: Annotated[Optional[str], typer.Option(help="ngram | draft-model (instead of --spec-config)")] = None,
    draft_model: Annotated[Optional[str], typer.Option(help="draft model for --drafter draft-model")] = None,
    spec_config: Annotated[Optional[Path], typer.Option(help="YAML file with a speculative_config")] = None,
    workload: Annotated[Optional[Path], typer.Option(help="prompts.jsonl: {\"prompt\": ...} or {\"messages\": [...]} per line")] = None,
    workload_name: Annotated[Optional[str], typer.Option(help="built-in workload: " + " | ".join(WORKLOADS))] = None,
    acceptance_profile: Annotated[Optional[str], typer.Option(help="BENCHMARK ONLY: take acceptance from this profile and replay it in the measured steps")] = None,
    num_prompts: Annotated[int, typer.Option(help="workload prompts run for acceptance")] = 8,
    max_tokens: Annotated[int, typer.Option(help="tokens generated per workload prompt")] = 128,
    batch_sizes: Annotated[str, typer.Option(help="batch sizes to plan for, e.g. '1,2,4,8'")] = "1,2,4,8,16,32",
    max_draft_len: Annotated[int, typer.Option(help="largest k considered (acceptance is measured at this k)")] = 6,
    cost: Annotated[str, typer.Option(help="steps: time real decode steps (the bench sweep; measured tok/s too) | probe: the engine's cost probe (faster)")] = "steps",
    cost_prompt_len: Annotated[int, typer.Option(help="random prompt tokens per request for --cost steps")] = 64,
    cost_gen_len: Annotated[int, typer.Option(help="tokens per request for --cost steps (short is fine)")] = 24,
    acceptance_batch_size: Annotated[int, typer.Option(help="workload prompts run together")] = 1,
    max_model_len: Annotated[int, typer.Option(help="context length of the acceptance run")] = 2048,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of predicted vs measured tokens/s")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Measure acceptance and step costs, choose k per batch size, write the draft_len_schedule YAML."""
    from dynaspec.bench import tune
    from dynaspec.bench.sweep import SweepSettings, load_acceptance_profile, run_sweep

    console = Console()
    try:
        spec = speculative_config_from_options(spec_config, drafter, draft_model, None, None)
        _check_args(spec, workload, workload_name, acceptance_profile, out, num_prompts, max_tokens, cost, plot)
        spec.pop("draft_len_schedule", None)
        spec["max_draft_len"] = max_draft_len
        spec.update(draft_len_policy="schedule", step_cost_file=None)
        from dynaspec.spec.config import parse_speculative_config

        static_spec = parse_speculative_config(spec)  # validates max_draft_len and the drafter fields
        batches = parse_int_list(batch_sizes, "--batch-sizes", 1)
        items = tune.load_workload_file(workload)[:num_prompts] if workload is not None else None
        profile = load_acceptance_profile(acceptance_profile) if acceptance_profile is not None else None
    except (ValueError, TypeError) as exc:
        _fail(console, str(exc))

    notes: list[str] = []
    measured: dict[tuple[int, int], float] = {}
    try:
        with Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), console=console, transient=True,
        ) as bar:
            task = bar.add_task("tune", total=1)

            def progress(description: str, completed: float, total: float) -> None:
                bar.update(task, description=description, completed=completed, total=total or 1)

            llm = None
            if profile is not None:
                alphas = tune.extend_alphas(profile["acceptance_per_position"], max_draft_len)
                notes.append(f"acceptance: replayed profile '{profile['name']}' (BENCHMARK ONLY), not measured")
            else:
                alphas, llm = _measure_acceptance(
                    tune, model, static_spec, items, workload_name, num_prompts, max_tokens,
                    acceptance_batch_size, max_model_len, device, dtype, seed, progress,
                )
                source = str(workload) if workload is not None else f"workload '{workload_name}'"
                notes.append(f"acceptance: measured on {min(num_prompts, len(items or [])) or num_prompts} prompts of "
                             f"{source} at k={max_draft_len}, greedy, {max_tokens} tokens each")
            notes.append("acceptance per position: [" + ", ".join(f"{a:.3f}" for a in alphas) + "]")
            if cost == "probe":
                del llm
                gc.collect()
                probe_len = cost_prompt_len + cost_gen_len + max_draft_len + 1  # the probe needs no long context
                llm = _llm(model, static_spec, max(batches), probe_len, device, dtype, seed)
                progress("cost probe", 0.0, 1.0)
                costs = tune.probe_step_costs(llm, batches, max_draft_len)
                notes.append("T(batch, k): the engine's cost probe (timed forwards of the step shapes, short context)")
            else:
                del llm
                gc.collect()
                settings = SweepSettings(
                    model=model, speculative_config=static_spec, batch_sizes=batches,
                    draft_lens=list(range(max_draft_len + 1)), include_schedule=False,
                    prompt_len=cost_prompt_len, gen_len=cost_gen_len, acceptance_profile=acceptance_profile,
                    device=device, dtype=dtype, seed=seed, command_line=shlex.join(sys.argv),
                )
                result = run_sweep(settings, progress=progress).to_dict()
                costs, measured = tune.step_costs_from_sweep(result)
                notes.append(
                    f"T(batch, k): median of real decode steps (bench sweep, random prompts of {cost_prompt_len} "
                    f"tokens, {cost_gen_len} generated)"
                )
                notes.append(
                    "measured tok/s: static-k lines with "
                    + ("the replayed acceptance" if profile else "the model's acceptance on random prompts, not the workload's")
                )
                notes += [f"CAVEAT: {c}" for c in result["metadata"].get("caveats") or []]
            llm = None
        choices = tune.choose_draft_lens(alphas, costs, batches, max_draft_len)
        plan = tune.compress_schedule({c.batch_size: c.k for c in choices})
        tuned = tune.tuned_spec_config(spec, plan)
    except (ValueError, TypeError) as exc:
        _fail(console, str(exc))

    out.parent.mkdir(parents=True, exist_ok=True)
    cost_path = out.with_name(out.stem + ".step_costs.json")
    acceptance_path = out.with_name(out.stem + ".acceptance.json")
    costs.save(cost_path)
    acceptance_path.write_text(json.dumps({"acceptance_per_position": alphas, "max_draft_len": max_draft_len}, indent=2) + "\n")
    out.write_text(tune.schedule_yaml(tuned, choices, plan, notes, str(cost_path), str(acceptance_path)))
    rows = tune.summary_rows(choices, measured)
    written = [out, cost_path, acceptance_path]
    if plot is not None:
        written.append(tune.plot_tune(rows, plot, f"dynaspec tune: {model}, {static_spec.decoding_type}, " + "; ".join(notes[:1])))
    _print_summary(console, rows, notes, plan)
    console.print("[dim]wrote " + ", ".join(str(p) for p in written) + "[/]")


def _llm(model, spec, max_batch, max_model_len, device, dtype, seed):
    from dynaspec.bench.acceptance import engine_options
    from dynaspec.llm import LLM

    options = engine_options(max_batch, max_model_len)
    options.update(device=device, dtype=dtype, seed=seed)
    return LLM(model, speculative_config=spec, **options)


def _measure_acceptance(tune, model, spec, items, workload_name, num_prompts, max_tokens, batch_size,
                        max_model_len, device, dtype, seed, progress):
    from dynaspec.bench.workloads import workload as builtin_workload

    if items is None:
        items = [{"messages": m} for m in builtin_workload(workload_name, num_prompts, seed)]
    llm = _llm(model, spec, batch_size, max_model_len, device, dtype, seed)
    room = max_model_len - max_tokens - spec.max_draft_len - 1
    if room < 1:
        raise ValueError(f"--max-model-len {max_model_len} leaves no room for a prompt next to --max-tokens {max_tokens}")
    prompts = tune.tokenize_prompts(llm.tokenizer, items, room)
    counts = tune.measure_acceptance(llm, prompts, max_tokens, batch_size, progress)
    if sum(counts.trials) == 0:
        raise ValueError("the acceptance run drafted nothing; raise --max-tokens or --num-prompts")
    return counts.alphas(), llm


def _print_summary(console: Console, rows, notes, plan) -> None:
    table = Table(title="dynaspec tune: draft length per batch size", caption="\n".join(notes))
    for column in ("batch", "chosen k", "predicted tok/s", "predicted no-spec tok/s", "measured tok/s (chosen k)",
                   "best measured static"):
        table.add_column(column, justify="right")
    for r in rows:
        best = max(r["measured_by_k"].items(), key=lambda kv: kv[1]) if r["measured_by_k"] else None
        m = r["measured_tokens_per_s"]
        table.add_row(
            str(r["batch_size"]), str(r["k"]), f"{r['predicted_tokens_per_s']:.1f}",
            f"{r['predicted_by_k'].get('0', float('nan')):.1f}", "" if m is None else f"{m:.1f}",
            "" if best is None else f"k={best[0]}: {best[1]:.1f}",
        )
    console.print(table)
    for batch, chosen, written in plan.capped:
        console.print(f"[yellow]batch {batch}: k={chosen} chosen, capped to {written} (max_draft_len is batch 1's k)[/]")
    if plan.schedule is None:
        console.print("[yellow]speculation does not pay at the smallest batch size: wrote speculative_config: null[/]")
