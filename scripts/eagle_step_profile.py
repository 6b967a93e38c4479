"""Where an EAGLE speculative step's time goes at small batch (issue 21: at batch 1 on the real Qwen2.5-Coder-1.5B a
k = 1 step took 2.20 ms against 1.77 ms for a plain one, each further draft ~0.25-0.38 ms, 2026-12-06 H100).

Builds the engine on a random-weight target (default random:qwen2.5-1.5b) with an untrained EAGLE head of the
trained head's shape (draft vocabulary 32000; step costs do not depend on what the head learned), decodes
`--gen-len` tokens at batch `--batch` with every static k of `--ks`, and prints for each k: the engine's median
step (wall, host included), then the GPU time per step of each kernel under torch.profiler (the replayed
graphs' kernels included), so the chain's kernels, the verify's and the gaps between them can be told apart.
With `--draft-model` (e.g. random:llama-3.2-1b for `--model random:llama-3.1-8b`) the drafter is that draft model
instead of a head; `--replay` replays an acceptance profile (as `dynaspec bench --acceptance-profile`). Each k also
prints the engine's start-up probe T(batch, k) (its drafting share apart) and the median of real steps run without
a synchronization between them (chained or overlapped as in `dynaspec bench`), so a gap between what the planners
are told a step costs and what it costs shows (issue 20: on an H100, 2026-12-07, the draft model's k = 4 steps at
batch 1 ran 3.3 ms beyond their probe, at batch 2-4 0.4 ms).

    python scripts/eagle_step_profile.py --ks 0 1 3 --batch 1
    python scripts/eagle_step_profile.py --model random:llama-3.1-8b --draft-model random:llama-3.2-1b \
        --replay acceptance_draft-model_code-edit --ks 4 --batch 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def write_head(model: str, out: str, draft_vocab_size: int) -> None:
    from dynaspec.models.eagle_head import EagleHeadConfig, random_head, save_head
    from dynaspec.models.presets import get_preset_config

    hf_config = get_preset_config(model.removeprefix("random:"))
    config = EagleHeadConfig.for_target(hf_config, model, draft_vocab_size=draft_vocab_size or None)
    save_head(random_head(config, hf_config), out)


def speculative_config(k: int, head_dir: str | None, draft_model: str | None, replay: str | None):
    """Static k with the head in head_dir, or with draft_model; None at k = 0 (no speculation)."""
    from dynaspec.spec.config import DraftTargetDecodingConfig, EagleDecodingConfig

    if k == 0:
        return None
    kind, model = (DraftTargetDecodingConfig, draft_model) if draft_model else (EagleDecodingConfig, head_dir)
    return kind(max_draft_len=k, speculative_model=model, draft_len_schedule={1: k}, replay_acceptance_profile=replay)


def unsynchronized_steps(engine, prompts: list[dict], params) -> list[float]:
    """Seconds of each step of one batch run as `dynaspec bench` runs it: no synchronization between steps."""
    for i, p in enumerate(prompts):
        engine.add_request(f"u{i}", p["prompt_token_ids"], params)
    steps: list[float] = []
    torch.cuda.synchronize()
    last = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        now = time.perf_counter()
        steps.append(now - last)
        last = now
    return steps


def profile_k(model: str, spec, k: int, batch: int, prompt_len: int, gen_len: int, top: int) -> None:
    from dynaspec import LLM, SamplingParams

    llm = LLM(model=model, speculative_config=spec, max_num_seqs=max(batch, 1))
    gen = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(100, 30000, (prompt_len,), generator=gen).tolist()}
               for _ in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)
    llm.generate(prompts, params)  # warm-up: graphs, kernels
    engine = llm.engine
    probe = engine.measure_step_costs([(batch, k)], repeats=20)
    drafting = probe.drafting.measured(batch, k) if probe.drafting is not None else None
    free = unsynchronized_steps(engine, prompts, params)[2:]  # the first two: prefill, the first decode
    print(f"\n## k = {k}, batch {batch}: probe T = {probe.measured(batch, k) * 1e3:.3f} ms (drafting "
          f"{(drafting or 0.0) * 1e3:.3f}); real steps unsynchronized: median {statistics.median(free) * 1e3:.3f} ms "
          f"over {len(free)} (last path {engine.get_stats().get('last_step', {}).get('path')})")
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p["prompt_token_ids"], params)
    steps: list[float] = []
    done = 0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        while engine.has_unfinished_requests():
            start = time.perf_counter()
            outputs = engine.step()
            torch.cuda.synchronize()
            steps.append(time.perf_counter() - start)
            done += sum(1 for o in outputs if o.finished)
    counted = len(steps)
    print(f"profiled, synchronized per step: {counted} steps, median {statistics.median(steps) * 1e3:.3f} ms")
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    print(f"GPU busy {total / counted / 1e3:.3f} ms a step; top kernels (us a step, calls a step):")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        if e.self_device_time_total <= 0:
            continue
        print(f"  {e.self_device_time_total / counted:8.1f}  {e.count / counted:5.1f}  {e.key[:110]}")
    del llm, engine
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:qwen2.5-1.5b")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 3])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--draft-vocab-size", type=int, default=32000)
    parser.add_argument("--draft-model", default=None, help="a draft model instead of an untrained head")
    parser.add_argument("--replay", default=None,
                        help="an acceptance profile to replay (e.g. acceptance_ngram_code-edit)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    head_dir = None
    if args.draft_model is None:
        head_dir = str(Path(tempfile.mkdtemp()) / "head")
        write_head(args.model, head_dir, args.draft_vocab_size)
    print(f"card: {torch.cuda.get_device_name()}", file=sys.stderr)
    for k in args.ks:
        spec = speculative_config(k, head_dir, args.draft_model, args.replay)
        profile_k(args.model, spec, k, args.batch, args.prompt_len, args.gen_len, args.top)


if __name__ == "__main__":
    main()
