"""TTFT of requests that share a long prefix, with automatic prefix caching on vs off (issue 23).

Both engines share one copy of the weights and run in one process, alternating. Per round, a fresh
random prefix (so the cache starts cold) and `--requests` prompts = prefix + a short unique suffix, all
submitted at once ("cold" batch); then the same prompts again ("warm" batch: with caching on, the prefix
is now cached). TTFT is first-token time minus arrival (the engine's own timestamps); total is the
wall time until every request of the batch finished. The greedy tokens of the two engines are compared.

Usage: python scripts/prefix_cache_ttft.py [--model smollm2-135m-instruct] [--prefix-len 1000]
       [--requests 16] [--rounds 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams


def run_batch(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, tag: str) -> dict:
    """Submit every prompt at once, step until all finish; TTFTs, total seconds, tokens, hit rate."""
    before = engine.get_stats()
    start = time.perf_counter()
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    requests = []
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, params)
        requests.append(engine.requests[request_id])
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                tokens[out.request_id] = out.token_ids
    total = time.perf_counter() - start
    after = engine.get_stats()
    queries = after["prefix_cache_queries"] - before["prefix_cache_queries"]
    hits = after["prefix_cache_hits"] - before["prefix_cache_hits"]
    return {
        "ttft": [r.first_token_time - r.arrival_time for r in requests],
        "total": total,
        "tokens": [tokens[i] for i in ids],
        "hit_rate": hits / queries if queries else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--prefix-len", type=int, default=1000)
    parser.add_argument("--suffix-len", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                        help="the caching engine's; the other engine (built first) takes half of it")
    args = parser.parse_args()

    def config(caching: bool) -> EngineConfig:
        return EngineConfig(
            model=args.model, device=args.device, block_size=args.block_size, max_num_seqs=args.requests,
            max_model_len=args.max_model_len, max_num_batched_tokens=args.max_num_batched_tokens,
            enable_prefix_caching=caching, dtype=args.dtype,
            gpu_memory_utilization=args.gpu_memory_utilization * (1.0 if caching else 0.5),
        )

    off = LLMEngine(config(False))
    engines = {"off": off, "on": LLMEngine(config(True), loaded=off.loaded)}
    vocab = int(off.loaded.model.vocab_size)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    warm_up = torch.randint(0, vocab, (64,), generator=torch.Generator().manual_seed(10_000)).tolist()
    for name, engine in engines.items():
        run_batch(engine, [warm_up], params, f"warm-up-{name}")

    results: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        gen = torch.Generator().manual_seed(round_)
        prefix = torch.randint(0, vocab, (args.prefix_len,), generator=gen).tolist()
        prompts = [prefix + torch.randint(0, vocab, (args.suffix_len,), generator=gen).tolist() for _ in range(args.requests)]
        tokens = {}
        for name, engine in engines.items():
            for batch in ("cold", "warm"):
                result = run_batch(engine, prompts, params, f"r{round_}-{batch}")
                results.setdefault((name, batch), []).append(result)
                tokens[(name, batch)] = result["tokens"]
        same = len({str(t) for t in tokens.values()}) == 1
        print(f"round {round_}: greedy tokens identical across on/off and cold/warm: {same}")

    device = off.device
    print(f"\n{args.model} on {device}, {args.requests} requests = {args.prefix_len}-token shared prefix + "
          f"{args.suffix_len} unique tokens, max_tokens {args.max_tokens}, block_size {args.block_size}, "
          f"max_num_batched_tokens {args.max_num_batched_tokens}, {args.rounds} round(s), torch threads "
          f"{torch.get_num_threads()}")
    print("| prefix caching | batch | median TTFT (s) | mean TTFT (s) | max TTFT (s) | total (s) | hit rate |")
    print("|---|---|---|---|---|---|---|")
    for (name, batch), runs in results.items():
        ttft = [t for r in runs for t in r["ttft"]]
        total = statistics.median(r["total"] for r in runs)
        rate = statistics.mean(r["hit_rate"] for r in runs)
        print(f"| {name} | {batch} | {statistics.median(ttft):.3f} | {statistics.mean(ttft):.3f} | {max(ttft):.3f} "
              f"| {total:.2f} | {rate:.1%} |")


if __name__ == "__main__":
    main()
