"""Where an EAGLE speculative step's time goes at small batch (issue 21: at batch 1 on the real Qwen2.5-Coder-1.5B a
k = 1 step took 2.20 ms against 1.77 ms for a plain one, each further draft ~0.25-0.38 ms, 2026-12-06 H100).

Builds the engine on a random-weight target (default random:qwen2.5-1.5b) with an untrained EAGLE head of the
trained head's shape (draft vocabulary 32000; step costs do not depend on what the head learned), decodes
`--gen-len` tokens at batch `--batch` with every static k of `--ks`, and prints for each k: the engine's median
step (wall, host included), then the GPU time per step of each kernel under torch.profiler (the replayed
graphs' kernels included), so the chain's kernels, the verify's and the gaps between them can be told apart.

    python scripts/eagle_step_profile.py --ks 0 1 3 --batch 1
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


def profile_k(model: str, head_dir: str, k: int, batch: int, prompt_len: int, gen_len: int, top: int) -> None:
    from dynaspec import LLM, SamplingParams
    from dynaspec.spec.config import EagleDecodingConfig

    spec = None if k == 0 else EagleDecodingConfig(max_draft_len=k, speculative_model=head_dir,
                                                   draft_len_schedule={1: k})
    llm = LLM(model=model, speculative_config=spec, max_num_seqs=max(batch, 1))
    gen = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(100, 30000, (prompt_len,), generator=gen).tolist()}
               for _ in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=gen_len, ignore_eos=True)
    llm.generate(prompts, params)  # warm-up: graphs, kernels
    engine = llm.engine
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
    print(f"\n## k = {k}, batch {batch}: {counted} steps, median step {statistics.median(steps) * 1e3:.3f} ms "
          f"(profiled, synchronized per step)")
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
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    head_dir = str(Path(tempfile.mkdtemp()) / "head")
    write_head(args.model, head_dir, args.draft_vocab_size)
    print(f"card: {torch.cuda.get_device_name()}", file=sys.stderr)
    for k in args.ks:
        profile_k(args.model, head_dir, k, args.batch, args.prompt_len, args.gen_len, args.top)


if __name__ == "__main__":
    main()
