"""Find the engine steps that stall, and what they ran: `dynaspec bench` in this process with every
LLMEngine.step() profiled (cProfile); a step longer than --threshold-ms prints its engine's line so far and
the functions that took its time (cumulative, our code and Triton/torch Python frames). A Triton JIT
compile, a CUDA graph captured late or an eager fallback shows up by name.

Usage: python scripts/step_stalls.py [--threshold-ms 25] [--random-head DIR] -- BENCH ARGS...
  --random-head DIR: first write an untrained EAGLE head for the bench's --model into DIR (for a random-weight
  target: step costs do not depend on what the head learned), to be named by the bench's --spec-config.
Example (GPU): python scripts/step_stalls.py --random-head /tmp/rhead -- --model random:qwen2.5-1.5b
  --spec-config /tmp/rhead.yaml --ks 0-3 --policy-lines adaptive --batch-sizes 1,16 --prompt-len 160 --gen-len 64
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time

import torch


def write_random_head(model: str, out: str) -> None:
    from dynaspec.models.eagle_head import EagleHeadConfig, random_head, save_head

    if model.startswith("random:"):  # the preset's config: no random target built on the CPU first
        from dynaspec.models.presets import get_preset_config

        hf_config = get_preset_config(model.removeprefix("random:"))
    else:
        from dynaspec.models.loader import load_model

        hf_config = load_model(model, dtype=torch.float32, device=torch.device("cpu")).hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, model), hf_config)
    print(f"random head for {model} written to {save_head(head, out)}", file=sys.stderr)


def install(threshold_s: float, top: int) -> None:
    from dynaspec.engine.engine import LLMEngine

    original = LLMEngine.step
    counter = {"steps": 0}

    def profiled_step(self):
        counter["steps"] += 1
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        try:
            return original(self)
        finally:
            profiler.disable()
            elapsed = time.perf_counter() - start
            if elapsed > threshold_s:
                last = self.get_stats().get("last_step")
                print(f"--- stall: step {counter['steps']} ({self.num_steps} of this engine), {elapsed * 1e3:.1f} ms, "
                      f"last step {last}", file=sys.stderr)
                for order, rows in (("cumulative", top), ("tottime", top // 2)):
                    stream = io.StringIO()
                    pstats.Stats(profiler, stream=stream).sort_stats(order).print_stats(rows)
                    body = stream.getvalue().splitlines()
                    start_row = next((i for i, line in enumerate(body) if "ncalls" in line), 0)
                    print(f"by {order}:", "\n".join(body[start_row : start_row + rows + 1]), sep="\n", file=sys.stderr)

    LLMEngine.step = profiled_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold-ms", type=float, default=25.0)
    parser.add_argument("--top", type=int, default=25, help="functions printed per stall")
    parser.add_argument("--random-head", default=None)
    parser.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if args.random_head:
        write_random_head(bench_args[bench_args.index("--model") + 1], args.random_head)
    install(args.threshold_ms / 1e3, args.top)
    from dynaspec.cli import app

    sys.argv = ["dynaspec", "bench", *bench_args]
    app()


if __name__ == "__main__":
    main()
