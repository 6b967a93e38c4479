"""Command-line options shared by `generate`, `serve` and `bench` (typer `Annotated` types).

The engine flags map one to one onto EngineConfig fields (dynaspec/config.py) and are validated by it
through dynaspec/config_loader.py, like the same keys in a `--config` YAML. Imports typer only, so the
top-level `dynaspec --help` stays light.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

MaxModelLen = Annotated[Optional[int], typer.Option(
    help="context length: prompt + generated tokens per request (default: the model's)")]
MaxNumSeqs = Annotated[Optional[int], typer.Option(help="requests decoded together at most (default 64)")]
Dtype = Annotated[Optional[str], typer.Option(help="auto | float32 | bfloat16 | float16")]
Device = Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")]
GpuMemoryUtilization = Annotated[Optional[float], typer.Option(
    help="fraction of GPU memory for weights and KV cache, in (0, 0.98] (default 0.85; CUDA only)")]
Deterministic = Annotated[Optional[bool], typer.Option(
    "--deterministic/--no-deterministic",
    help="batch-invariant kernels: the same tokens at any batch size, with or without speculation (slower)")]

TensorParallelSize = Annotated[Optional[int], typer.Option(
    help="shard the model over this many ranks (processes; one GPU each on CUDA), default 1; must divide "
         "the attention heads")]

CudagraphMode = Annotated[Optional[str], typer.Option(
    help="FULL: CUDA graphs for decode and verify steps and for the steps that prefill new prompts beside "
         "decodes (default); FULL_DECODE_ONLY: decode and verify steps only (the default with --deterministic "
         "or tensor parallelism)")]

ENGINE_FLAGS = ("max_model_len", "max_num_seqs", "dtype", "device", "gpu_memory_utilization", "deterministic",
                "tensor_parallel_size", "cudagraph_mode")


def engine_options(**flags: Any) -> dict[str, Any]:
    """The EngineConfig fields given on the command line (None: not given)."""
    unknown = sorted(set(flags) - set(ENGINE_FLAGS))
    if unknown:
        raise TypeError(f"not engine flags: {', '.join(unknown)}; engine flags: {', '.join(ENGINE_FLAGS)}")
    return {name: value for name, value in flags.items() if value is not None}


def print_version(value: bool) -> None:
    """The eager `--version` callback: print `dynaspec <version>` and exit (imports no torch)."""
    if value:
        from dynaspec import __version__

        typer.echo(f"dynaspec {__version__}")
        raise typer.Exit()
