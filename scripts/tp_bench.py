"""Tensor parallelism on GPUs: decode tokens/s of a random-weight model at TP 1, 2, 4 (issue 25).

For each tensor_parallel_size and batch size: one engine (CUDA graphs, bf16), `batch` requests of
`--prompt-len` tokens prefilled, then `--rounds` plain decode steps timed one by one (median), and the
fraction of the per-GPU HBM floor that step reaches: each GPU reads its 1/N of the weights and its KV
heads' share of the KV cache per decode step, at `--hbm-tbps` (default from the card: H100 SXM 3.35,
H200 4.8 TB/s). Rank 0 times the step; its all-reduces wait for every rank, so the time is the sharded
step's. Usage (one H100/H200 per rank):

    python scripts/tp_bench.py --tp 1 2 4 --batches 1 64 --out tp_bench.json
    python scripts/tp_bench.py --model random:llama-3.1-70b --tp 4 8 --batches 1 64   # where memory allows

Every rank loads the full model before it shards it (models/tensor_parallel.py), so the model must fit
one GPU once (8B bf16: 16 GB).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams

HBM_TBPS = {"H100": 3.35, "H200": 4.8}  # SXM cards' HBM bandwidth, TB/s


def card_bandwidth(name: str) -> float | None:
    return next((tbps for card, tbps in HBM_TBPS.items() if card in name), None)


def bytes_per_gpu(engine: LLMEngine, batch: int, context: int) -> int:
    """Bytes one GPU reads in a decode step: its weight shard plus its KV heads over every context."""
    model = engine.loaded.model  # rank 0's shard: its parameters are what each rank holds
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if model.lm_head is not None:  # an untied embedding table: a step reads only its batch's rows
        embedding = model.model.embed_tokens.weight
        weights -= embedding.numel() * embedding.element_size()
    kv = 2 * model.num_layers * model.num_kv_heads * model.head_dim * 2 * batch * context  # K and V, bf16
    return weights + kv


def decode_seconds(engine: LLMEngine, batch: int, prompt_len: int, rounds: int) -> float:
    """Median seconds of one plain decode step of `batch` requests (after their prefill)."""
    params = SamplingParams(temperature=0, max_tokens=rounds + 16, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"tp-{time.monotonic_ns()}-{i}", [1 + (i % 1000)] * prompt_len, params)
    while any(r.num_output_tokens == 0 for r in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    while engine.has_unfinished_requests():
        engine.step()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=64)
    parser.add_argument("--hbm-tbps", type=float, default=None, help="per-GPU HBM bandwidth (default: from the card)")
    parser.add_argument("--out", default=None, help="JSON file of the results")
    args = parser.parse_args()
    card = torch.cuda.get_device_name(0)
    tbps = args.hbm_tbps or card_bandwidth(card)
    if tbps is None:
        parser.error(f"unknown HBM bandwidth of {card!r}: pass --hbm-tbps")
    max_batch = max(args.batches)
    max_model_len = args.prompt_len + args.rounds + 64
    rows = []
    for tp in args.tp:
        if tp > torch.cuda.device_count():
            print(f"TP {tp}: skipped, {torch.cuda.device_count()} GPUs visible")
            continue
        config = EngineConfig(model=args.model, dtype="bfloat16", device="cuda", tensor_parallel_size=tp,
                              max_num_seqs=max_batch, max_model_len=max_model_len,
                              num_kv_blocks=max_batch * (-(-max_model_len // 16) + 1) + 2,
                              max_num_batched_tokens=max(8192, max_batch * args.prompt_len))
        engine = LLMEngine(config)
        try:
            for batch in args.batches:
                seconds = decode_seconds(engine, batch, args.prompt_len, args.rounds)
                context = args.prompt_len + args.rounds // 2
                floor = bytes_per_gpu(engine, batch, context) / (tbps * 1e12)
                row = dict(tp=tp, batch=batch, step_ms=seconds * 1e3, tokens_per_s=batch / seconds,
                           hbm_floor_ms=floor * 1e3, floor_fraction=floor / seconds)
                rows.append(row)
                print(f"TP {tp} batch {batch:4d}: {row['step_ms']:.3f} ms/step, {row['tokens_per_s']:.0f} tok/s, "
                      f"HBM floor {row['hbm_floor_ms']:.3f} ms ({row['floor_fraction']:.0%} of it)", flush=True)
        finally:
            engine.shutdown()
            del engine
            gc.collect()
            torch.cuda.empty_cache()
    report = dict(model=args.model, card=card, cards=torch.cuda.device_count(), hbm_tbps=tbps,
                  date=time.strftime("%Y-%m-%d"), prompt_len=args.prompt_len, rounds=args.rounds, rows=rows)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
