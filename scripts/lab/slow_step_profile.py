"""What the host does in a line's slow step() calls: `dynaspec bench` with every engine step() call profiled on
its own (cProfile), per engine (the bench's lines) the calls that took over --slow-ms merged into one profile and the
rest into another, then the functions whose time per call differs most between the two (cumulative, so a caller
shows with its callees).

Lab tool for issue 20 (H100, 2026-12-08 00:32 UTC, the draft-model sweep at batch 128: the adaptive line's calls at
each finish took 17-22 ms with ~2 ms of it waiting for the device, against ~12 ms (6.7 waiting) for its steady
chained calls; docs/lab/adaptive_runs.md). cProfile slows Python code, so read the differences, not the times.

    python scripts/lab/slow_step_profile.py OUT_DIR --slow-ms 15 -- <dynaspec bench arguments>
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

from dynaspec.bench.cli_bench import bench_command
from dynaspec.engine.engine import LLMEngine


def main() -> None:
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--slow-ms", type=float, default=15.0)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(sys.argv[1:split])
    args.out.mkdir(parents=True, exist_ok=True)
    merged: dict[tuple[int, bool], pstats.Stats] = {}  # (engine, slow) -> its calls' profiles merged
    calls: dict[tuple[int, bool], int] = {}
    engines: list[int] = []  # in the order they first stepped (the bench's lines)
    step = LLMEngine.step

    def profiled(self):
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        try:
            return step(self)
        finally:
            profile.disable()
            if id(self) not in engines:
                engines.append(id(self))
            key = (engines.index(id(self)), (time.perf_counter() - start) * 1e3 > args.slow_ms)
            calls[key] = calls.get(key, 0) + 1
            stats = pstats.Stats(profile)
            if key in merged:
                merged[key].add(stats)
            else:
                merged[key] = stats

    LLMEngine.step = profiled
    import typer
    app = typer.Typer()
    app.command()(bench_command)
    try:
        app(sys.argv[split + 1:] + ["--out-dir", str(args.out / "bench"), "--no-plots"], standalone_mode=False)
    finally:
        LLMEngine.step = step
    for engine in range(len(engines)):
        if (engine, True) not in merged or (engine, False) not in merged:
            print(f"engine {engine} (the bench's lines in order): {calls.get((engine, True), 0)} slow calls, "
                  f"{calls.get((engine, False), 0)} others; nothing to compare")
            continue
        per_call: dict[bool, dict[str, float]] = {}
        for slow in (True, False):
            stats = merged[engine, slow]
            stats.dump_stats(str(args.out / f"engine{engine}-{'slow' if slow else 'other'}.prof"))
            per_call[slow] = {f"{Path(f).name}:{line}:{fn}": cum / calls[engine, slow] * 1e3
                              for (f, line, fn), (_, _, _, cum, _) in stats.stats.items()}
        print(f"engine {engine}: {calls[engine, True]} calls over {args.slow_ms} ms, {calls[engine, False]} others; "
              "ms a call (cumulative), largest differences (slow - other):")
        keys = set(per_call[True]) | set(per_call[False])
        for key in sorted(keys, key=lambda k: -(per_call[True].get(k, 0.0) - per_call[False].get(k, 0.0)))[:args.top]:
            slow, other = per_call[True].get(key, 0.0), per_call[False].get(key, 0.0)
            print(f"  {slow - other:+8.3f}  ({slow:.3f} vs {other:.3f})  {key}")


if __name__ == "__main__":
    main()
