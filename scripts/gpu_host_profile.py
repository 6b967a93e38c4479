"""Where a speculative step's host time goes: cProfile of `LLMEngine.step` for one config (issue 6).

Usage: python scripts/gpu_host_profile.py MODEL BATCH[,BATCH...] SPEC [SPEC ...]
  SPEC: `static:K` (draft_len_schedule {1: K}) or `goodput` (draft_len_policy goodput, code-edit profile).
n-gram drafter, max_draft_len 4, acceptance replayed from the code-edit profile, prompts of 128 random ids,
64 generated tokens after a 16-token warm-up batch. Prints ms per decode step, the graph replay alone, the
25 functions with the most own time and the 30 dynaspec functions with the most cumulative time, per SPEC.
"""

from __future__ import annotations

import cProfile
import pstats
import random
import sys
import time

import torch

from dynaspec.config import EngineConfig
from dynaspec.runtime.cost_probe import forward_seconds
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import NGramDecodingConfig

PROFILE = "acceptance_ngram_code-edit"


def build(model: str, batch: int, spec_name: str) -> LLMEngine:
    common = dict(max_draft_len=4, replay_acceptance_profile=PROFILE)
    if spec_name == "goodput":
        spec = NGramDecodingConfig(draft_len_policy="goodput", acceptance_profile="dynaspec/bench/data/acceptance_ngram_code-edit.json", **common)
    elif spec_name.startswith("static:"):
        k = int(spec_name.split(":")[1])
        spec = NGramDecodingConfig(**{**common, "max_draft_len": k}, draft_len_schedule={1: k})
    else:
        raise ValueError(f"SPEC must be static:K or goodput, got {spec_name!r}")
    config = EngineConfig(model=model, max_num_seqs=batch, max_model_len=512, num_kv_blocks=batch * 40 + 4,
                          speculative_config=spec)
    return LLMEngine(config)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(engine: LLMEngine, batch: int, gen_len: int, rng: random.Random, profiler: cProfile.Profile | None):
    params = SamplingParams(temperature=0.0, max_tokens=gen_len, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"p{rng.getrandbits(32)}", [rng.randrange(engine.vocab_size) for _ in range(128)], params)
    while any(r.num_computed_tokens < len(r.prompt_token_ids) for r in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    _sync()
    steps, started, ks = 0, time.perf_counter(), {}
    if profiler:
        profiler.enable()
    while engine.has_unfinished_requests():
        engine.step()
        _sync()
        steps += 1
        k = engine.get_stats()["last_step"].get("k")
        ks[k] = ks.get(k, 0) + 1
    if profiler:
        profiler.disable()
    return (time.perf_counter() - started) / max(steps, 1) * 1e3, ks


def main(argv: list[str]) -> int:
    model, batches, specs = argv[0], [int(b) for b in argv[1].split(",")], argv[2:]
    for batch, spec_name in [(b, s) for b in batches for s in specs]:
        engine = build(model, batch, spec_name)
        rng = random.Random(0)
        run(engine, batch, 16, rng, None)
        runs = [run(engine, batch, 64, rng, None) for _ in range(3)]
        profiler = cProfile.Profile()
        ms_prof, _ = run(engine, batch, 64, rng, profiler)
        timings = "; ".join(f"{ms:.2f} ms/step (k: {ks})" for ms, ks in runs)
        k = 4 if spec_name == "goodput" else int(spec_name.split(":")[1])
        replay = forward_seconds(engine.runner, batch, k, repeats=50) * 1e3 if engine.runner.can_replay(batch, k) else float("nan")
        print(f"=== {spec_name} batch {batch}: {timings}; {ms_prof:.2f} under cProfile; graph replay at k={k} {replay:.3f} ms")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats("dynaspec", 30)
        del engine
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
