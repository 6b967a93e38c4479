"""`dynaspec train-head`: the command's options, their validation and its output (rich progress, report).

Registered lazily by dynaspec/cli.py (LAZY_COMMANDS), so `dynaspec --help` imports none of this; torch
and the engine are imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynaspec.cli_options import Device, Dtype


class TrainHeadArgs(BaseModel):
    """The numeric options, bounded (one clear line per violation)."""

    model_config = ConfigDict(extra="forbid")
    num_prompts: int = Field(ge=2)
    steps: int = Field(ge=1)
    lr: float = Field(gt=0, le=1.0)
    max_tokens: int = Field(ge=2)
    ttt_steps: int = Field(ge=1, le=16)
    batch_size: int = Field(ge=1)
    eval_fraction: float = Field(gt=0, lt=1)
    max_num_seqs: int = Field(ge=1)
    temperature: float = Field(ge=0)
    time_limit: Optional[float] = Field(default=None, gt=0)
    answers_per_prompt: int = Field(default=1, ge=1)
    draft_vocab_size: int = Field(default=32000, ge=0)
    labels: Literal["target", "tokens"] = "target"


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--layers {text!r} must be comma-separated layer indices, e.g. '1,14,26'") from None


def train_head_command(
    model: Annotated[str, typer.Option(help="the target: zoo name, HF directory, HF id in the local cache")],
    out: Annotated[Path, typer.Option(help="directory to write the head to (config.json + model.safetensors)")],
    workload: Annotated[str, typer.Option(help="comma-separated prompt sources (code-edit, summarise, humaneval, "
                                               "chat, stdlib, pydoc, questions) or a .jsonl file of prompts")] = "stdlib,pydoc,questions",
    num_prompts: Annotated[int, typer.Option(help="prompts to answer (train + held out), >= 2")] = 256,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 600,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (linear warm-up, cosine decay)")] = 1e-3,
    max_tokens: Annotated[int, typer.Option(help="tokens the target generates per answer")] = 256,
    ttt_steps: Annotated[int, typer.Option(help="training-time-test depths (the head fed its own outputs)")] = 3,
    batch_size: Annotated[int, typer.Option(help="answers per optimizer step")] = 8,
    eval_fraction: Annotated[float, typer.Option(help="share of the prompts held out for the estimate")] = 0.1,
    layers: Annotated[Optional[str], typer.Option(help="target layers to tap, e.g. '1,14,26' (default: EAGLE-3's "
                                                       "low / middle / high)")] = None,
    temperature: Annotated[float, typer.Option(help="the target's sampling temperature for its answers to the training "
                                                  "prompts (0: greedy; held-out prompts are answered greedily)")] = 0.0,
    answers_per_prompt: Annotated[int, typer.Option(help="answers per training prompt (> 1 needs --temperature > 0: "
                                                         "sampled, each with its own seed)")] = 1,
    max_num_seqs: Annotated[int, typer.Option(help="answers generated together")] = 64,
    draft_vocab_size: Annotated[int, typer.Option(help="EAGLE-3's draft vocabulary: the head predicts over this many "
                                                  "of the target's tokens (the training answers' most used) "
                                                  "through an lm_head of its own; 0, or a target with no more "
                                                  "tokens: through the target's lm_head")] = 32000,
    time_limit: Annotated[Optional[float], typer.Option(help="seconds: end optimizing within this long of the start; "
                                                         "answering stops at half of it (held-out prompts are "
                                                         "answered first), the step count is cut to fit, timed "
                                                         "over the first steps, and the schedule laid over the "
                                                         "steps run")] = None,
    save_examples: Annotated[Optional[Path], typer.Option(help="write the recorded answers and the target's features "
                                                            "to this file, for a later --load-examples")] = None,
    load_examples: Annotated[Optional[Path], typer.Option(help="train on the answers a run saved with --save-examples "
                                                            "(same target and tapped layers) instead of answering "
                                                            "prompts; --workload and --num-prompts are not used")] = None,
    init_head: Annotated[Optional[Path], typer.Option(help="continue training this head directory (its tapped layers "
                                                        "and draft vocabulary) instead of a random head")] = None,
    labels: Annotated[str, typer.Option(help="what the head learns at each position: 'target' (the target's "
                                             "next-token distribution, recorded in the same pass: soft labels, "
                                             "as EAGLE-3's SpecForge) or 'tokens' (the answer's next token)")] = "target",
    seed: Annotated[int, typer.Option(help="the prompts' order, the held-out split, the head's start, the batches")] = 0,
    answer_seed: Annotated[Optional[int], typer.Option(help="first seed of the sampled answers (default: --seed): "
                                                       "continuing a head (--init-head) on new answers to the same "
                                                       "prompts, same held-out split")] = None,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """Train an EAGLE-3 draft head for a target by self-distillation; print a held-out acceptance estimate."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    try:
        args = TrainHeadArgs(num_prompts=num_prompts, steps=steps, lr=lr, max_tokens=max_tokens, ttt_steps=ttt_steps,
                             batch_size=batch_size, eval_fraction=eval_fraction, max_num_seqs=max_num_seqs,
                             temperature=temperature, time_limit=time_limit, answers_per_prompt=answers_per_prompt,
                             draft_vocab_size=draft_vocab_size, labels=labels)
        if answers_per_prompt > 1 and temperature == 0:
            raise ValueError(f"--answers-per-prompt {answers_per_prompt} needs --temperature > 0: greedy answers to one "
                             "prompt are all the same")
        if load_examples is not None and save_examples is not None:
            raise ValueError("--save-examples with --load-examples would only copy the file: give one of them")
        from dynaspec.train_head.prompts import parse_sources

        sources = parse_sources(workload)
        tapped = _layers(layers)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "--" + str(first["loc"][0]).replace("_", "-")
        console.print(f"[red]error:[/] {name}: {first['msg']} (got {first.get('input')!r})")
        raise typer.Exit(2) from None
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None

    from dynaspec.train_head.trainer import TrainOptions, train_head

    options = TrainOptions(model=model, sources=sources, out=out, layers_to_capture=tapped, seed=seed,
                           answer_seed=answer_seed,
                           device=device or "auto", dtype=dtype or "auto", time_limit_s=args.time_limit,
                           draft_vocab_size=args.draft_vocab_size or None, save_examples=save_examples,
                           load_examples=load_examples, init_head=init_head,
                           **args.model_dump(exclude={"time_limit", "draft_vocab_size"}))
    columns = (TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task({"generate": "answering", "train": "training"}.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done)

        try:
            report = train_head(options, progress, log=console.print)
        except ValueError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    held = report.held_out
    console.print(f"head written to {report.out} ({report.num_train_prompts} training answers, "
                  f"{report.train_tokens} answer tokens; {report.steps_run} steps, final loss {report.final_loss:.3f})")
    console.print(f"held out ({report.num_held_out_prompts} prompts, {held['held_out_positions']} positions): "
                  "accuracy per depth " + ", ".join(f"{a:.2f}" for a in held["accuracy_per_depth"]))
    console.print("mean accepted length at k: " + ", ".join(
        f"k={k}: {v:.2f}" for k, v in held["mean_accepted_length"].items()))
