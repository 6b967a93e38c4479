"""Where a `dynaspec train-head` optimizer step spends its time: the trainer's own loop
(train_head/trainer.py `_optimize`, training-time test of train_head/ttt.py) on synthetic examples shaped
like the real run (a random-weight target of a preset's shapes, random token ids and features), a few
steps timed, then a few under torch.profiler, its top kernels / ops printed.

The real Qwen2.5-Coder-1.5B run of 2026-12-05 (H200) took 0.586 s a step at batch 8, TTT depth 5, several
times what its FLOPs need; this finds out why without moving the real weights.

Usage: python scripts/profile_train_step.py [--model random:qwen2.5-1.5b] [--prompt-len 300]
  [--answer-len 350] [--batch-size 8] [--ttt-steps 5] [--steps 6] [--profile-steps 3] [--draft-vocab-size N]
  [--num-examples 256]
  [--device auto]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:qwen2.5-1.5b")
    parser.add_argument("--prompt-len", type=int, default=300)
    parser.add_argument("--answer-len", type=int, default=350)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ttt-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--num-examples", type=int, default=256,
                        help="synthetic examples (32 batches of 8: every timed step meets new shapes, as a real run)")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps then run under torch.profiler (0: none)")
    parser.add_argument("--draft-vocab-size", type=int, default=None, help="EAGLE-3's draft vocabulary (default: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    from dynaspec.config import EngineConfig
    from dynaspec.models.eagle_head import EagleHeadConfig, random_head
    from dynaspec.models.feature_tap import default_layers_to_capture
    from dynaspec.models.loader import load_model
    from dynaspec.train_head.record import Example
    from dynaspec.train_head.trainer import TrainOptions, _optimize

    probe = EngineConfig(model=args.model, device=args.device, dtype=args.dtype)
    device, dtype = probe.resolved_device(), probe.resolved_dtype()
    loaded = load_model(args.model, dtype=dtype, device=device)
    config = loaded.hf_config
    layers = default_layers_to_capture(int(config.num_hidden_layers))
    head_config = EagleHeadConfig.for_target(config, args.model, list(layers), args.draft_vocab_size)
    head = random_head(head_config, config).to(device).train()
    rng = random.Random(0)
    vocab = int(config.vocab_size)
    width = len(layers) * int(config.hidden_size)
    examples = []
    for i in range(args.num_examples):  # lengths spread +-30% as real answers are: most batches a new shape
        prompt = max(2, int(args.prompt_len * rng.uniform(0.7, 1.3)))
        answer = max(2, int(args.answer_len * rng.uniform(0.7, 1.3)))
        ids = [rng.randrange(vocab) for _ in range(prompt + answer)]
        examples.append(Example(ids, prompt, torch.randn(len(ids) - 1, width).to(dtype)))
    options = TrainOptions(model=args.model, sources=[], num_prompts=1, out=Path("/dev/null"),
                           steps=args.steps, batch_size=args.batch_size, ttt_steps=args.ttt_steps)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(steps: int) -> float:
        options.steps = steps
        sync()
        start = time.perf_counter()
        _optimize(head, loaded.model, examples, options, device, lambda *a: None, lambda m: None, time.monotonic,
                  time.monotonic())
        sync()
        return (time.perf_counter() - start) / steps

    run(2)  # warm-up: allocator, kernels
    vocab = f", draft vocabulary {head_config.draft_vocab_size}" if head_config.draft_vocab_size else ""
    print(f"{args.model} ({dtype}, {device}){vocab}, batch {args.batch_size}, TTT depth {args.ttt_steps}, sequences "
          f"~{args.prompt_len} + {args.answer_len} tokens: {run(args.steps):.3f} s a step (mean of {args.steps})")
    if args.profile_steps == 0:
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run(args.profile_steps)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=70))
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
