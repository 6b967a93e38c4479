"""Host (CPU) cost of the n-gram drafter: the reference implementation vs the current one.

Per implementation, the pure-Python work a speculative step waits for:
* catch-up: the first propose() over `--batch` fresh requests of `--prompt-len` tokens (every prompt indexed);
* per step: observe() after each request gained 1..k+1 tokens (the pool update), and the propose() after
  it (suffix lookups), over `--steps` steps.
The reference is tests/ngram_reference.py (the drafter before the fast indexing rewrite). Both see the same
token streams and their proposals are checked to be identical.

Two ways to count the garbage collector:
* default: gc.collect() before and the collector off during each run: interpreter work only, runs of the two
  implementations alternate, min and median of `--repeats`;
* --fresh-process: each run in a new interpreter (dynaspec imported, so torch's objects are on the heap, as
  in a server) with the collector on, as a server's first speculative steps would see it.

    PYTHONPATH=. python scripts/bench_ngram_host.py [--all-configs] [--fresh-process]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import statistics
import subprocess
import sys
import time

from dynaspec.runtime.request import Request, RequestStatus
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.ngram import NGramDrafter, code_like_tokens
from tests import ngram_reference

IMPLEMENTATIONS = {"reference": ngram_reference.NGramDrafter, "current": NGramDrafter}


def uniform_tokens(rng: random.Random, count: int, vocab: int) -> list[int]:
    """Uniformly random tokens (what `random:` model benchmarks feed): almost no repeated n-grams."""
    return [rng.randrange(vocab) for _ in range(count)]


WORKLOADS = {"repetitive": (code_like_tokens, 32000), "uniform": (uniform_tokens, 128256)}


def make_streams(workload: str, args: argparse.Namespace, k: int) -> list[tuple[list[int], list[list[int]]]]:
    """Per request: its prompt and the tokens committed at each step (1..k+1 of them)."""
    make, vocab = WORKLOADS[workload]
    rng = random.Random(0)
    streams = []
    for _ in range(args.batch):
        text = make(rng, args.prompt_len + args.steps * (k + 1), vocab)
        prompt, rest = text[: args.prompt_len], text[args.prompt_len :]
        chunks = []
        for _ in range(args.steps):
            n = rng.randint(1, k + 1)
            chunks.append(rest[:n])
            rest = rest[n:]
        streams.append((prompt, chunks))
    return streams


def _requests(streams) -> list[Request]:
    return [
        Request(
            request_id=f"r{i}",
            prompt=None,
            prompt_token_ids=list(prompt),
            params=SamplingParams(max_tokens=1 << 20),
            output_token_ids=[],
            status=RequestStatus.RUNNING,
        )
        for i, (prompt, _) in enumerate(streams)
    ]


def run_once(cls, config: NGramDecodingConfig, streams, k: int) -> dict:
    """One catch-up then the steps; seconds per phase, full (generation 2) collections, the proposals."""
    full_collections = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full_collections.append(1)

    gc.callbacks.append(callback)
    try:
        drafter = cls(config)
        requests = _requests(streams)
        t0 = time.perf_counter()
        proposals = [drafter.propose(requests, k).tokens]
        catch_up = time.perf_counter() - t0
        observe, propose = [], []
        for step in range(len(streams[0][1])):
            for request, (_, chunks) in zip(requests, streams):
                request.output_token_ids.extend(chunks[step])
            t0 = time.perf_counter()
            drafter.observe(requests)
            t1 = time.perf_counter()
            proposals.append(drafter.propose(requests, k).tokens)
            observe.append(t1 - t0)
            propose.append(time.perf_counter() - t1)
    finally:
        gc.callbacks.remove(callback)
    return {
        "catch_up": catch_up, "observe": observe, "propose": propose,
        "full_collections": len(full_collections), "proposals": proposals,
    }


def _config(index: int) -> NGramDecodingConfig:
    """Config `index` of the keep_all x use_oldest x public grid (0: the defaults)."""
    keep_all, use_oldest, public = list(itertools.product((True, False), repeat=3))[index]
    return NGramDecodingConfig(
        max_draft_len=4, max_matching_ngram_size=3,
        is_keep_all=keep_all, is_use_oldest=use_oldest, is_public_pool=public,
    )


def _summary(runs: list[dict]) -> dict:
    """Milliseconds: catch-up and per-step observe / propose (min and median over runs), worst step."""
    ms = lambda xs: [1e3 * x for x in xs]  # noqa: E731
    catch_up = ms(r["catch_up"] for r in runs)
    observe = ms(statistics.mean(r["observe"]) for r in runs)
    propose = ms(statistics.mean(r["propose"]) for r in runs)
    worst = ms(max(r["observe"]) for r in runs)
    return {
        "catch_up": (min(catch_up), statistics.median(catch_up)),
        "observe": (min(observe), statistics.median(observe)),
        "propose": (min(propose), statistics.median(propose)),
        "worst_observe": max(worst),
        "full_collections": max(r["full_collections"] for r in runs),
    }


def bench_in_process(config: NGramDecodingConfig, workload: str, args) -> dict[str, dict]:
    """Collector off during runs; implementations alternate; proposals must match."""
    k = config.max_draft_len
    streams = make_streams(workload, args, k)
    runs: dict[str, list[dict]] = {name: [] for name in IMPLEMENTATIONS}
    for _ in range(args.repeats):
        for name, cls in IMPLEMENTATIONS.items():
            gc.collect()
            gc.disable()
            try:
                runs[name].append(run_once(cls, config, streams, k))
            finally:
                gc.enable()
    if runs["reference"][0]["proposals"] != runs["current"][0]["proposals"]:
        raise SystemExit(f"proposals differ ({workload}, {config})")
    return {name: _summary(r) for name, r in runs.items()}


def bench_fresh_processes(config_index: int, workload: str, args) -> dict[str, dict]:
    """Each run in a new interpreter with the collector on (see --child)."""
    runs: dict[str, list[dict]] = {name: [] for name in IMPLEMENTATIONS}
    for _ in range(args.repeats):
        for name in IMPLEMENTATIONS:
            cmd = [
                sys.executable, __file__, "--child", name, "--config-index", str(config_index),
                "--workloads", workload, "--batch", str(args.batch), "--prompt-len", str(args.prompt_len),
                "--steps", str(args.steps),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    if runs["reference"][0]["proposals"] != runs["current"][0]["proposals"]:
        raise SystemExit(f"proposals differ ({workload}, config {config_index})")
    return {name: _summary(r) for name, r in runs.items()}


def child(args) -> None:
    """--child: one run with the collector on, as JSON on stdout."""
    config = _config(args.config_index)
    streams = make_streams(args.workloads, args, config.max_draft_len)
    print(json.dumps(run_once(IMPLEMENTATIONS[args.child], config, streams, config.max_draft_len)))


def _row(workload: str, config: NGramDecodingConfig, r: dict[str, dict], fresh: bool) -> str:
    ref, new = r["reference"], r["current"]

    def pair(key: str, i: int) -> str:
        a, b = ref[key][i], new[key][i]
        return f"{a:7.2f} / {b:6.2f} ({a / b:4.1f}x)"

    flags = f"{config.is_keep_all!s:<5} {config.is_use_oldest!s:<5} {config.is_public_pool!s:<5}"
    cells = [f"{workload:<10} {flags}", pair("catch_up", 1), pair("observe", 1)]
    if fresh:
        cells.append(f"{ref['worst_observe']:7.2f} / {new['worst_observe']:6.2f}")
        cells.append(f"{ref['full_collections']} / {new['full_collections']}")
    else:
        cells += [pair("catch_up", 0), pair("observe", 0), f"{ref['propose'][1]:5.3f} / {new['propose'][1]:5.3f}"]
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", default="repetitive,uniform")
    parser.add_argument("--all-configs", action="store_true", help="all keep_all/use_oldest/public combinations")
    parser.add_argument("--fresh-process", action="store_true", help="runs in new interpreters, collector on")
    parser.add_argument("--child", choices=sorted(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--config-index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    mode = "fresh interpreter per run, collector on" if args.fresh_process else "collector off, runs alternate"
    print(f"batch {args.batch}, prompts of {args.prompt_len} tokens, {args.steps} steps of 1..k+1 tokens, "
          f"{args.repeats} runs each ({mode}); ms, reference / current (speed-up)")
    if args.fresh_process:
        print("workload   keep  old   pub   | catch-up median           | observe/step median       "
              "| worst observe   | full GCs")
    else:
        print("workload   keep  old   pub   | catch-up median           | observe/step median       "
              "| catch-up min              | observe/step min          | propose/step median")
    for workload in args.workloads.split(","):
        for index in range(8 if args.all_configs else 1):
            config = _config(index)
            if args.fresh_process:
                result = bench_fresh_processes(index, workload, args)
            else:
                result = bench_in_process(config, workload, args)
            print(_row(workload, config, result, args.fresh_process), flush=True)


if __name__ == "__main__":
    main()
