"""`dynaspec bench`: the decode-throughput sweep (dynaspec.bench.sweep) from the command line.

Loaded lazily by dynaspec/cli.py (`LAZY_COMMANDS["bench"]`).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dynaspec.cli_options import MaxModelLen, TensorParallelSize

DRAFTERS = ("ngram", "draft-model")
DEFAULT_MAX_DRAFT_LEN = 6
DEFAULT_PROMPT_LEN = 128
CUDA_DEFAULT_MODEL = "random:llama-3.1-8b"
CPU_DEFAULT_MODEL = "random:qwen2.5-0.5b"  # ~2 GB of float32 weights: fits a laptop's memory


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
    from dynaspec.config_loader import build_spec_config, read_spec_section
    from dynaspec.spec.config import parse_draft_len_schedule_option

    data: dict[str, Any] | None = None
    if spec_config is not None:
        data = read_spec_section(spec_config)
        if data is None:
            raise ValueError(f"spec config file {spec_config} has `speculative_config: null` (no speculation); "
                             "give a drafter, or drop --spec-config")
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
    where = f"speculative_config of {spec_config}" if spec_config is not None else "the speculative config"
    build_spec_config(data, where)  # unknown keys and bad values: one line naming them
    return data


def default_model(device: str) -> str:
    """The bench's model when --model is not given: Llama-3.1-8B shapes on a GPU, a 0.5B shape elsewhere."""
    import torch

    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return CUDA_DEFAULT_MODEL if on_cuda else CPU_DEFAULT_MODEL


def weight_bytes(model: str, dtype: str, on_cuda: bool) -> tuple[int, int] | None:
    """(parameters, bytes) of the model's weights from its shapes (a random: preset or an HF directory's
    config.json), or None when they are not known without loading it."""
    from dynaspec.models.presets import get_preset_config, num_parameters

    if model.startswith("random:"):
        config = get_preset_config(model.removeprefix("random:"))  # an unknown preset: ValueError naming them
    elif (Path(model) / "config.json").is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    else:
        return None
    try:
        params = num_parameters(config)
    except (AttributeError, TypeError):  # an architecture the shape formula does not cover
        return None
    if dtype == "auto":
        dtype = "bfloat16" if on_cuda else "float32"
    return params, params * (4 if dtype == "float32" else 2)


def available_bytes(on_cuda: bool, gpu_memory_utilization: float) -> tuple[int, str]:
    """(bytes, description) the weights may use: the GPU's memory x gpu_memory_utilization, or the RAM
    available now on a CPU."""
    if on_cuda:
        import torch

        _, total = torch.cuda.mem_get_info()
        return int(total * gpu_memory_utilization), f"the GPU ({gpu_memory_utilization:.0%} of {total / 1e9:.1f} GB)"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "this machine's available RAM"
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's free RAM"


def check_fits(models: list[str], dtype: str, device: str, gpu_memory_utilization: float,
               tensor_parallel_size: int = 1) -> None:
    """ValueError when the weights of `models` (target and draft) cannot fit the device, before loading; with
    tensor parallelism, the first model's shard (a draft model is kept whole on each rank)."""
    import torch

    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    sizes = [(m, weight_bytes(m, dtype, on_cuda)) for m in models]
    known = [(m, size) for m, size in sizes if size is not None]
    if not known:
        return
    need = sum(size[1] / (tensor_parallel_size if m == models[0] else 1) for m, size in known)
    have, where = available_bytes(on_cuda, gpu_memory_utilization)
    if need > have:
        what = " + ".join(f"{m} ({p / 1e9:.2f} B parameters)" for m, (p, _) in known)
        hint = f"a smaller model (e.g. --model {CPU_DEFAULT_MODEL})" if not on_cuda else "a smaller model"
        if dtype in ("auto", "float32") and not on_cuda:
            hint += " or --dtype bfloat16"
        raise ValueError(f"{what} needs about {need / 1e9:.1f} GB for its weights alone, more than the "
                         f"{have / 1e9:.1f} GB of {where}; choose {hint}")


def engine_flags(model, device, dtype, max_model_len, max_num_seqs, gpu_memory_utilization, tensor_parallel_size=None):
    """The engine flags, checked by EngineConfig like `generate`'s and `serve`'s (the sweep builds one
    engine per line with its own context length and batch from them)."""
    from dynaspec.config import EngineConfig
    from dynaspec.config_loader import validate_model

    flags = dict(model=model or default_model(device), device=device, dtype=dtype, max_model_len=max_model_len,
                 max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization,
                 tensor_parallel_size=tensor_parallel_size)
    flags = {k: v for k, v in flags.items() if v is not None}
    return validate_model(EngineConfig, flags, sources={k: "--" + k.replace("_", "-") for k in flags})


def _fail(console: Console, message: str) -> None:
    """`error: message` on one line (as text, not rich markup), exit status 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)


def bench_command(
    model: Annotated[Optional[str], typer.Option(help=f"zoo name, random:<preset>, HF directory or .gguf file (default: {CUDA_DEFAULT_MODEL} on a GPU, {CPU_DEFAULT_MODEL} on a CPU)")] = None,
    spec_config: Annotated[Optional[Path], typer.Option(help="YAML file with a speculative_config")] = None,
    drafter: Annotated[Optional[str], typer.Option(help="ngram | draft-model (instead of --spec-config)")] = None,
    draft_model: Annotated[Optional[str], typer.Option(help="draft model for --drafter draft-model")] = None,
    draft_len_schedule: Annotated[Optional[str], typer.Option(help="the schedule line, e.g. '1:4,8:2,32:0', or 'auto' (needs acceptance_profile in --spec-config)")] = None,
    max_draft_len: Annotated[Optional[int], typer.Option(help="largest k (default: the config's, or 6)")] = None,
    ks: Annotated[Optional[str], typer.Option(help="static k's to sweep, e.g. '0-6' or '0,2,4' (0 = no spec); default 0..max_draft_len")] = None,
    batch_sizes: Annotated[Optional[str], typer.Option(help="e.g. '1,8,64' (default 1,2,4,... up to --max-batch)")] = None,
    max_batch: Annotated[int, typer.Option(help="largest batch of the default batch sizes")] = 256,
    prompt_len: Annotated[Optional[int], typer.Option(help="random prompt tokens per request (default 128; not with --workload)")] = None,
    workload: Annotated[Optional[str], typer.Option(help="real prompts instead of random ids: code-edit | chat | summarise | humaneval, or several joined by commas (their prompts alternate); the model's own acceptance, output tokens checked against no spec")] = None,
    gen_len: Annotated[int, typer.Option(help="tokens generated per request (ignore_eos)")] = 128,
    acceptance_profile: Annotated[Optional[str], typer.Option(help="BENCHMARK ONLY: replay this acceptance profile (JSON path or shipped name)")] = None,
    schedule_line: Annotated[bool, typer.Option(help="add the configured schedule as its own line")] = True,
    policy_lines: Annotated[Optional[str], typer.Option(help="more policy lines on the same drafter: goodput, adaptive or both ('goodput,adaptive')")] = None,
    compare_hf: Annotated[bool, typer.Option(help="also time HF transformers generate on the same weights")] = False,
    hf_batch_sizes: Annotated[str, typer.Option(help="batch sizes for --compare-hf (must be in the sweep)")] = "1,64",
    out_dir: Annotated[Path, typer.Option(help="where bench.json, bench.md and the PNGs go")] = Path("bench-out"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    max_model_len: MaxModelLen = None,
    max_num_seqs: Annotated[Optional[int], typer.Option(help="largest batch swept (caps the default batch sizes; larger --batch-sizes are refused)")] = None,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(help="fraction of GPU memory the weights may take before the bench refuses the model (default 0.85)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    enforce_eager: Annotated[bool, typer.Option(help="no CUDA graphs")] = False,
    deterministic: Annotated[bool, typer.Option(help="batch-invariant kernels on every line (EngineConfig.deterministic)")] = False,
    cudagraph_mode: Annotated[Optional[str], typer.Option(help="FULL | FULL_DECODE_ONLY (only decode and verify steps as graphs); default: FULL, or FULL_DECODE_ONLY with --deterministic")] = None,
    warmup: Annotated[bool, typer.Option(help="one short run per config before timing")] = True,
    rounds: Annotated[int, typer.Option(help="> 1: all lines side by side on one copy of the weights, each point measured this many times in rotated order (median)")] = 1,
    tensor_parallel_size: TensorParallelSize = None,
    plots: Annotated[bool, typer.Option(help="write PNG plots")] = True,
) -> None:
    """Sweep batch sizes x draft lengths; print a table, write JSON, markdown and PNG plots."""
    from dynaspec.bench import report
    from dynaspec.bench.sweep import SweepSettings, default_batch_sizes, run_sweep
    from dynaspec.spec.config import parse_speculative_config

    console = Console()
    try:
        engine = engine_flags(model, device, dtype, max_model_len, max_num_seqs, gpu_memory_utilization,
                              tensor_parallel_size)
        model = engine.model
        spec = speculative_config_from_options(spec_config, drafter, draft_model, draft_len_schedule, max_draft_len)
        batches = parse_int_list(batch_sizes, "--batch-sizes", 1) if batch_sizes else default_batch_sizes(
            min(max_batch, max_num_seqs or max_batch))
        if max_num_seqs is not None and max(batches) > max_num_seqs:
            raise ValueError(f"--batch-sizes {max(batches)} is above --max-num-seqs {max_num_seqs}")
        context = (DEFAULT_PROMPT_LEN if prompt_len is None else prompt_len) + gen_len + (spec or {}).get(
            "max_draft_len", 0)
        if max_model_len is not None and workload is None and context > max_model_len:
            raise ValueError(f"--prompt-len + --gen-len + max_draft_len = {context} tokens is above --max-model-len "
                             f"{max_model_len}")
        draft_lens = parse_int_list(ks, "--ks", 0) if ks else None
        hf_batches = None
        if compare_hf and engine.tensor_parallel_size > 1:
            raise ValueError("--compare-hf: comparing with HF transformers needs the whole model in one process; "
                             f"--tensor-parallel-size {engine.tensor_parallel_size} shards it")
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
            include_schedule=schedule_line,
            policy_lines=[p.strip() for p in policy_lines.split(",") if p.strip()] if policy_lines else (),
            prompt_len=DEFAULT_PROMPT_LEN if prompt_len is None else prompt_len,
            gen_len=gen_len, workload=workload,
            acceptance_profile=acceptance_profile, device=device, dtype=dtype, seed=seed,
            enforce_eager=enforce_eager, deterministic=deterministic, cudagraph_mode=cudagraph_mode, warmup=warmup,
            rounds=rounds, tensor_parallel_size=engine.tensor_parallel_size,
            command_line=shlex.join(sys.argv),
        )
        settings.validate()
        draft_model = parse_speculative_config(spec).draft_model if spec else None
        check_fits([model, *([draft_model] if draft_model else [])], dtype, device, engine.gpu_memory_utilization,
                   engine.tensor_parallel_size)
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
