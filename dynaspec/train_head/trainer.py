"""The train-head recipe: prompts -> the target's answers and features (one engine pass) -> EAGLE-3
training-time test with AdamW -> a head directory that EagleDecodingConfig loads, and a held-out report.

Recipe (EAGLE-3, Li et al. 2025, arXiv 2503.01840; self-distillation as in its paper and SpecForge): the
target answers every prompt with the engine (the training prompts `answers_per_prompt` times at `temperature`,
greedily by default; the held-out prompts once, greedily), its tapped features are
recorded in the same pass (train_head/record.py); the head (random init, float32) is trained on the
training prompts' answers with the unrolled loss of train_head/ttt.py (`ttt_steps` depths, weights 0.8^j) against
the target's next-token distribution at each position (`labels="target"`, recorded in the same pass;
train_head/soft_labels.py) or the answer's tokens (`labels="tokens"`),
AdamW over length-grouped batches (train_head/batching.py) with linear warm-up and cosine decay, gradient
clipping at 1; the held-out prompts (never trained on)
give the acceptance estimate at the end. With `draft_vocab_size` the head predicts over the training answers'
most used tokens (train_head/draft_vocab.py), its own lm_head starting from the target's rows of them.
A run may save its recorded answers (`save_examples`) and a later one train on them (`load_examples`),
continuing the head the first wrote (`init_head`): training over several time-limited runs
(train_head/example_store.py).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dynaspec.config import EngineConfig
from dynaspec.models.eagle_head import EagleHead, EagleHeadConfig, load_head, random_head, save_head, target_lm_head
from dynaspec.models.feature_tap import check_layers_to_capture, default_layers_to_capture
from dynaspec.models.loader import load_model
from dynaspec.sampling_params import SamplingParams
from dynaspec.train_head.batching import length_grouped_batches
from dynaspec.train_head.draft_vocab import draft_vocabulary
from dynaspec.train_head.example_store import load_examples, save_examples
from dynaspec.train_head.prompts import collect_prompts, held_out_split, prompt_token_ids
from dynaspec.train_head.record import Example, record_answers
from dynaspec.train_head.ttt import acceptance_estimate, make_batch, ttt_loss

# Share of options.time_limit_s that answering may take before its unfinished requests are aborted.
ANSWERING_SHARE = 0.5

# (phase, done, total): "generate" (requests finished), "train" (optimizer steps)
Progress = Callable[[str, int, int], None]


@dataclass
class TrainOptions:
    """What `dynaspec train-head` takes (validated at the CLI)."""

    model: str
    sources: list[str] | Path
    num_prompts: int
    out: Path
    steps: int = 600
    lr: float = 1e-3
    max_tokens: int = 256
    ttt_steps: int = 3
    batch_size: int = 8
    eval_fraction: float = 0.1
    max_seq_len: int = 2048
    layers_to_capture: list[int] | None = None
    temperature: float = 0.0
    answers_per_prompt: int = 1  # answers per training prompt (> 1 needs temperature > 0: sampled, seeds differ)
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    # first seed of the sampled answers (None: seed): a run that continues a head (init_head) draws new answers
    # to the same prompts, with the same held-out split (seed), from another range
    answer_seed: int | None = None
    max_num_seqs: int = 64
    draft_vocab_size: int | None = 32000  # EAGLE-3's draft vocabulary (None, or >= the target's: its lm_head)
    warmup_fraction: float = 0.05
    time_limit_s: float | None = None  # end optimizing within this many seconds of train_head's start (None: no limit);
    # answering stops at ANSWERING_SHARE of it
    save_examples: Path | None = None  # write the recorded answers and features here (train_head/example_store.py)
    load_examples: Path | None = None  # train on the answers a run saved there instead of answering the prompts
    init_head: Path | None = None  # continue training this head directory (else a random head)
    # "target": the target's next-token distribution at each position (train_head/soft_labels.py); "tokens": the
    # answer's next token
    labels: str = "target"
    engine_options: dict = field(default_factory=dict)


@dataclass
class TrainReport:
    out: Path
    num_train_prompts: int
    num_held_out_prompts: int
    train_tokens: int  # answer tokens trained on
    final_loss: float
    steps_run: int  # options.steps, or fewer to fit options.time_limit_s
    held_out: dict  # ttt.acceptance_estimate


def _generation_config(options: TrainOptions, loaded, num_prompts: int, longest_prompt: int) -> EngineConfig:
    """The engine that answers the prompts: enough KV blocks for max_num_seqs full answers (set explicitly:
    the feature cache is sized by it), no speculation."""
    block_size = 16
    max_len = longest_prompt + options.max_tokens + 1
    seqs = min(options.max_num_seqs, num_prompts)
    blocks = seqs * -(-max_len // block_size) + 1
    return EngineConfig(
        model=options.model, device=options.device, dtype=options.dtype, block_size=block_size,
        num_kv_blocks=blocks, max_num_seqs=seqs, max_model_len=max_len, seed=options.seed, **options.engine_options,
    )


def train_head(options: TrainOptions, progress: Progress | None = None, log: Callable[[str], None] = print,
               clock: Callable[[], float] = time.monotonic) -> TrainReport:
    """Run the recipe (module docstring); returns the report, writes the head to options.out. clock: seconds,
    for options.time_limit_s (injected by tests)."""
    began = clock()
    progress = progress or (lambda phase, done, total: None)
    torch.manual_seed(options.seed)
    probe = EngineConfig(model=options.model, device=options.device, dtype=options.dtype)
    loaded = load_model(options.model, dtype=probe.resolved_dtype(), device=probe.resolved_device())
    if loaded.tokenizer is None:
        raise ValueError(f"model {options.model!r} has no tokenizer: train-head needs text prompts")
    device = probe.resolved_device()
    start = None if options.init_head is None else _continued_head(options, loaded, device)
    if start is not None:
        layers = tuple(start.config.layers_to_capture)
        log(f"continuing the head of {options.init_head} (tapped layers {list(layers)})")
    else:
        num_layers = int(loaded.hf_config.num_hidden_layers)
        layers = check_layers_to_capture(options.layers_to_capture or default_layers_to_capture(num_layers), num_layers)

    if options.load_examples is not None:
        train, held = load_examples(options.load_examples, loaded.name, list(layers))
        log(f"loaded {len(train)} training and {len(held)} held-out answers from {options.load_examples}")
        if options.labels == "target" and any(e.final is None for e in train):
            raise ValueError(f"{options.load_examples} was saved without the target's final hidden states, which "
                             "--labels target needs: train on it with --labels tokens, or answer again")
    else:
        train, held = _record(options, loaded, layers, progress, log, clock, began)
        if options.save_examples is not None:
            log(f"answers saved to {save_examples(options.save_examples, train, held, loaded.name, list(layers))}")
    answered = clock()
    head = start if start is not None else _new_head(options, loaded, layers, train, device, log)
    target = loaded.model
    final_loss, steps_run = _optimize(head, target, train, options, device, progress, log, clock, began)
    trained = clock()
    peak = (f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
            if device.type == "cuda" else "")
    log(f"trained {steps_run} steps in {trained - answered:.1f} s ({(trained - answered) / steps_run:.3f} s a step{peak})")
    head.eval()
    save_head(head, options.out)
    held_batches = [make_batch(held[i : i + options.batch_size], device, torch.float32, options.max_seq_len)
                    for i in range(0, len(held), options.batch_size)]
    with _training_precision(target):
        estimate = acceptance_estimate(head, target, held_batches, options.ttt_steps)
    train_tokens = sum(len(e.token_ids) - e.prompt_len for e in train)
    return TrainReport(options.out, len(train), len(held), train_tokens, final_loss, steps_run, estimate)


def _record(options: TrainOptions, loaded, layers: tuple[int, ...], progress: Progress, log: Callable[[str], None],
            clock: Callable[[], float], began: float) -> tuple[list[Example], list[Example]]:
    """The target answers the prompts (held-out ones first); (training, held-out) examples."""
    prompts = collect_prompts(options.sources, options.num_prompts, options.seed)
    train_prompts, held_prompts = held_out_split(prompts, options.eval_fraction, options.seed)
    held_keys = {id(p) for p in held_prompts}
    # The engine serves requests in this order: the held-out prompts first, then the training prompts' first
    # answers, their second answers, ... (answering that stops at the time limit keeps the estimate and the
    # most distinct prompts)
    jobs = [(p, True, 0) for p in prompts if id(p) in held_keys]
    jobs += [(p, False, copy) for copy in range(options.answers_per_prompt) for p in prompts if id(p) not in held_keys]
    ids, is_held, params = [], [], []
    for prompt, held_out, copy in jobs:
        ids.append(prompt_token_ids(loaded.tokenizer, prompt)[: options.max_seq_len - options.max_tokens])
        is_held.append(held_out)
        params.append(_answer_params(options, held_out, copy))
    log(f"{len(train_prompts)} training prompts ({options.answers_per_prompt} answers each), {len(held_prompts)} "
        f"held out; tapped layers {list(layers)}")

    config = _generation_config(options, loaded, len(ids), max(len(i) for i in ids))
    answering = clock()
    stop = None
    if options.time_limit_s is not None:  # answering may take half the limit; the rest is training's
        def stop() -> bool:
            return clock() - began > ANSWERING_SHARE * options.time_limit_s
    examples = record_answers(loaded, config, layers, ids, params, lambda n: progress("generate", n, len(ids)), stop,
                              record_final=options.labels == "target")
    answered = clock()
    stopped = options.time_limit_s is not None and answered - began > ANSWERING_SHARE * options.time_limit_s
    cut = f", stopped at {ANSWERING_SHARE:.0%} of the time limit" if stopped else ""
    log(f"recorded {len(examples)} of {len(ids)} answers ({sum(len(e.token_ids) - e.prompt_len for e in examples)} "
        f"answer tokens) in {answered - answering:.1f} s{cut}")
    # record_answers keeps request order minus failed requests: match examples back by their prompt ids
    train, held = _split_examples(examples, ids, is_held)
    if not train or not held:
        raise ValueError("no answers recorded for the training or the held-out prompts (all too short?)")
    return train, held


def _new_head(options: TrainOptions, loaded, layers: tuple[int, ...], train: list[Example], device: torch.device,
              log: Callable[[str], None]) -> EagleHead:
    """A random float32 head in training mode; with a draft vocabulary, its lm_head starts from the target's
    rows of the training answers' most used tokens."""
    head_config = EagleHeadConfig.for_target(loaded.hf_config, loaded.name, list(layers), options.draft_vocab_size)
    head = random_head(head_config, loaded.hf_config, options.seed)
    if head.lm_head is not None:  # the answers' most used tokens; their rows of the target's lm_head to start from
        vocab, covered = draft_vocabulary(train, head_config.draft_vocab_size, head_config.target.vocab_size)
        with torch.no_grad():
            head.draft_to_target.copy_(vocab)
            head.lm_head.weight.copy_(target_lm_head(loaded.model)[vocab.to(device)].float().cpu())
        log(f"draft vocabulary: {len(vocab)} of {head_config.target.vocab_size} tokens, {covered:.1%} of the "
            "training answers' tokens")
    return head.to(device=device, dtype=torch.float32).train()


def _continued_head(options: TrainOptions, loaded, device: torch.device) -> EagleHead:
    """The head of options.init_head, float32, in training mode (its tapped layers and draft vocabulary are
    kept: --layers, if given, must name the same layers)."""
    head = load_head(options.init_head, loaded.hf_config, loaded.name, torch.float32, device)
    taps = list(head.config.layers_to_capture)
    if options.layers_to_capture is not None and list(options.layers_to_capture) != taps:
        raise ValueError(f"--layers {options.layers_to_capture} differs from the layers the head of --init-head "
                         f"taps ({taps}); leave --layers out to keep them")
    return head.train().requires_grad_(True)


def _answer_params(options: TrainOptions, held_out: bool, copy: int) -> SamplingParams:
    """A held-out prompt is answered once, greedily (the acceptance estimate is greedy decoding's); a training
    prompt's copies at options.temperature, each with its own seed when sampled (answer_seed + copy)."""
    temperature = 0.0 if held_out else options.temperature
    first = options.seed if options.answer_seed is None else options.answer_seed
    seed = first + copy if temperature > 0 else None
    return SamplingParams(temperature=temperature, max_tokens=options.max_tokens, seed=seed)


def _split_examples(examples: list[Example], ids: list[list[int]], is_held: list[bool]):
    train, held = [], []
    cursor = 0
    for prompt, held_out in zip(ids, is_held):
        if cursor < len(examples) and examples[cursor].token_ids[: len(prompt)] == prompt \
                and examples[cursor].prompt_len == len(prompt):
            (held if held_out else train).append(examples[cursor])
            cursor += 1
    return train, held


def _training_precision(target: torch.nn.Module):
    """Where the float32 head meets the frozen target: a float32 target is used as is; a 16-bit target (bf16 on
    CUDA) runs the head's matmuls and the lm_head under autocast in the target's dtype, with float32 master
    weights, the optimizer and the loss in float32 (mixed-precision training, as SpecForge trains EAGLE-3 heads:
    a float32 lm_head over ~150k vocabulary rows would dominate every step)."""
    dtype = next(target.parameters()).dtype
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=next(target.parameters()).device.type, dtype=dtype)


# steps timed to fit a time limit: from the end of step _TIMED_FROM (after warm-up costs) to the end of _TIMED_TO
_TIMED_FROM, _TIMED_TO = 5, 25


class _StepPlan:
    """The optimizer's step count and its learning-rate schedule (linear warm-up, cosine decay to 0). With a
    time limit, the count is cut once steps _TIMED_FROM.._TIMED_TO are timed, so the schedule still decays
    to 0 inside the limit."""

    def __init__(self, steps: int, warmup_fraction: float):
        self.steps = steps
        self.warmup_fraction = warmup_fraction

    @property
    def warmup(self) -> int:
        return max(1, int(self.steps * self.warmup_fraction))

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))))

    def fit(self, seconds_per_step: float, seconds_left: float, done: int) -> bool:
        """Cut the count to what fits in seconds_left (at least done + 1); True when it was cut."""
        fitting = done + max(1, int(seconds_left / seconds_per_step))
        if fitting >= self.steps:
            return False
        self.steps = fitting
        return True


def _optimize(head, target, train: list[Example], options: TrainOptions, device, progress: Progress,
              log: Callable[[str], None], clock: Callable[[], float], began: float) -> tuple[float, int]:
    """AdamW over length-grouped batches of the training examples for options.steps steps, or fewer to end
    within options.time_limit_s of `began` (a clock() reading); the last loss and the steps run."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=0.0, betas=(0.9, 0.95))
    plan = _StepPlan(options.steps, options.warmup_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, plan.factor)
    rng = random.Random(options.seed)
    lengths = [len(example.token_ids) - 1 for example in train]  # positions make_batch lays out
    batches: list[list[int]] = []
    loss_value = float("nan")
    timed_from = began
    step = 0
    # the frozen target's embedding and lm_head (their grads flow to the head only)
    target.requires_grad_(False)
    while step < plan.steps:
        if not batches:  # a new epoch, in batches of similar lengths (train_head/batching.py)
            batches = length_grouped_batches(lengths, options.batch_size, rng)
        chosen = [train[i] for i in batches.pop()]
        batch = make_batch(chosen, device, torch.float32, options.max_seq_len, soft_labels=options.labels == "target")
        with _training_precision(target):  # entered per step: autocast caches its weight casts until it exits
            loss, _ = ttt_loss(head, target, batch, options.ttt_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())  # also waits for the step (the clock below times finished work)
        step += 1
        if options.time_limit_s is not None and step in (_TIMED_FROM, _TIMED_TO):
            now = clock()
            if step == _TIMED_FROM:
                timed_from = now
            elif plan.fit((now - timed_from) / (_TIMED_TO - _TIMED_FROM), options.time_limit_s - (now - began), step):
                log(f"{options.steps} steps would not end within the time limit ({options.time_limit_s:g} s): "
                    f"training {plan.steps} steps (the schedule laid over them)")
        progress("train", step, plan.steps)
    return loss_value, plan.steps
