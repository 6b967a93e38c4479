"""The price of deterministic mode (issue 22): decode tokens/s, default vs `deterministic=True`, at batch 1,
16, 64, without speculation and with n-gram speculation, on random weights, in one process.

Four engines share one copy of the weights (bf16, CUDA graphs): {default, deterministic} x {no speculation,
n-gram k = --k}. The speculative lines replay a shipped acceptance profile (`--profile`, benchmark-only
replayed acceptance, spec/replay.py) so both modes verify the same accepted lengths on random weights;
the kernels a step runs are the mode's. For each round, batch and line (the lines in a rotated order each
round), `batch` requests of `--prompt-len` random tokens are prefilled, then the decode phase is timed to
the end (`--gen-len` tokens each); the table gives the median over rounds of generated tokens / second
and deterministic's ratio to default. Usage (one GPU):

    python scripts/deterministic_price.py --out deterministic_price   # writes .json and .md
    python scripts/deterministic_price.py --model random:llama-3.1-8b --batches 1 16 64 --rounds 3

The engines share one model object, whose kernels are set per engine (`set_decode_kernels`) before each
measurement: eager steps run the module's current kernels, graphs the ones they were captured with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.models.decode_kernels import decode_kernels_for
from dynaspec.sampling_params import SamplingParams


def build_engines(args) -> dict[tuple[str, str], LLMEngine]:
    """(mode, speculation) -> engine, all on the first engine's weights."""
    max_len = args.prompt_len + args.gen_len + args.k + 16
    blocks = max(args.batches) * (-(-max_len // 16) + 1) + 2
    common = dict(model=args.model, dtype="bfloat16", device="cuda", max_num_seqs=max(args.batches),
                  max_model_len=max_len, num_kv_blocks=blocks,
                  max_num_batched_tokens=max(8192, max(args.batches) * (1 + args.k)))
    ngram = dict(decoding_type="NGram", max_draft_len=args.k, replay_acceptance_profile=args.profile)
    engines: dict[tuple[str, str], LLMEngine] = {}
    loaded = None
    for mode in ("default", "deterministic"):
        for spec_name, spec in (("none", None), (f"ngram k={args.k}", ngram)):
            config = EngineConfig(deterministic=mode == "deterministic", speculative_config=spec, **common)
            engine = LLMEngine(config, loaded=loaded)
            loaded = engine.loaded
            engines[(mode, spec_name)] = engine
    return engines


def decode_tokens_per_second(engine: LLMEngine, batch: int, args, round_index: int) -> tuple[float, float]:
    """(generated tokens / s of the decode phase, mean committed tokens per request-step)."""
    config = engine.config
    engine.loaded.model.set_decode_kernels(
        decode_kernels_for(engine.device, config.dependent_launch, config.deterministic))
    gen = torch.Generator().manual_seed(1000 * round_index + batch)
    params = SamplingParams(temperature=0, max_tokens=args.gen_len, ignore_eos=True)
    ids = [f"price-r{round_index}-b{batch}-{i}" for i in range(batch)]  # the same in both modes: same replay
    for rid in ids:
        prompt = torch.randint(0, min(1000, engine.loaded.model.vocab_size), (args.prompt_len,), generator=gen)
        engine.add_request(rid, prompt.tolist(), params)
    produced = {rid: 0 for rid in ids}
    while min(produced.values()) == 0:  # prefill (and the first token) outside the timed window
        for out in engine.step():
            produced[out.request_id] = len(out.token_ids)
    first = sum(produced.values())
    steps = 0
    torch.cuda.synchronize()
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            produced[out.request_id] = len(out.token_ids)
        steps += 1
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    generated = sum(produced.values()) - first
    return generated / seconds, generated / max(1, steps * batch)


def markdown(report: dict) -> str:
    lines = [f"# Deterministic mode: price ({report['model']}, {report['card']}, {report['date']})", "",
             f"bf16, CUDA graphs, prompt {report['prompt_len']} + {report['gen_len']} generated tokens, "
             f"median of {report['rounds']} interleaved rounds; speculative lines replay `{report['profile']}`.", "",
             "| batch | speculation | default tok/s | deterministic tok/s | deterministic / default | "
             "tokens per request-step (default / det.) |", "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['batch']} | {row['speculation']} | {row['default_tok_s']:.0f} | "
                     f"{row['deterministic_tok_s']:.0f} | {row['ratio']:.3f} | "
                     f"{row['default_tokens_per_step']:.2f} / {row['deterministic_tokens_per_step']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--k", type=int, default=4, help="n-gram draft length of the speculative lines")
    parser.add_argument("--profile", default="acceptance_ngram_code-edit", help="replayed acceptance profile (shipped name)")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="deterministic_price", help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    engines = build_engines(args)
    lines = sorted(engines)
    samples: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for batch in args.batches:
            rotated = lines[r % len(lines):] + lines[:r % len(lines)]
            for mode, spec in rotated:
                result = decode_tokens_per_second(engines[(mode, spec)], batch, args, r)
                samples.setdefault((mode, spec, batch), []).append(result)
                print(f"round {r} batch {batch:3d} {mode:13s} {spec:10s}: {result[0]:9.0f} tok/s", flush=True)
    rows = []
    for batch in args.batches:
        for spec in sorted({s for _, s in lines}):
            med = {mode: statistics.median(t for t, _ in samples[(mode, spec, batch)])
                   for mode in ("default", "deterministic")}
            per_step = {mode: statistics.median(a for _, a in samples[(mode, spec, batch)])
                        for mode in ("default", "deterministic")}
            rows.append(dict(batch=batch, speculation=spec, default_tok_s=med["default"],
                             deterministic_tok_s=med["deterministic"], ratio=med["deterministic"] / med["default"],
                             default_tokens_per_step=per_step["default"],
                             deterministic_tokens_per_step=per_step["deterministic"]))
    report = dict(model=args.model, card=torch.cuda.get_device_name(0), date=time.strftime("%Y-%m-%d"),
                  prompt_len=args.prompt_len, gen_len=args.gen_len, rounds=args.rounds, k=args.k,
                  profile=args.profile, rows=rows, samples={f"{m}|{s}|{b}": v for (m, s, b), v in samples.items()})
    with open(f"{args.out}.json", "w") as fh:
        json.dump(report, fh, indent=2)
    with open(f"{args.out}.md", "w") as fh:
        fh.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
