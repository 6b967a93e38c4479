"""Where a line's decode steps spend host time: `dynaspec bench` with every measured point run under cProfile,
one profile per line, then the functions whose time per decode step differs most between two lines.

Lab tool for issue 20's unexplained gap (H100, 2026-12-07: at batch 64, pure code-edit replay, adaptive ran
uniform k = 4 steps of 14.8-15.2 ms where static k = 4 ran 13.0-13.4 ms through the same graph). cProfile slows
Python code, so compare lines with each other, not with unprofiled step times.

    python scripts/lab/host_profile.py OUT_DIR -- <dynaspec bench arguments>
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

from dynaspec.bench import sweep
from dynaspec.bench.cli_bench import bench_command


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    bench_args = sys.argv[sys.argv.index("--") + 1:]
    profiles: dict[str, cProfile.Profile] = {}
    steps: dict[str, int] = {}
    measure = sweep._measure

    def profiled(engine, line, batch, *args, **kwargs):
        profile = profiles.setdefault(line.name, cProfile.Profile())
        profile.enable()
        try:
            point = measure(engine, line, batch, *args, **kwargs)
        finally:
            profile.disable()
        steps[line.name] = steps.get(line.name, 0) + point.num_decode_steps
        return point

    sweep._measure = profiled
    import typer
    app = typer.Typer()
    app.command()(bench_command)
    try:
        app(bench_args + ["--out-dir", str(out / "bench"), "--no-plots"], standalone_mode=False)
    finally:
        sweep._measure = measure
    per_step: dict[str, dict[str, float]] = {}
    for name, profile in profiles.items():
        stats = pstats.Stats(profile)
        stats.dump_stats(str(out / f"{name.replace('/', '_').replace(' ', '_')}.prof"))
        n = max(1, steps[name])
        per_step[name] = {f"{Path(f).name}:{line}:{fn}": tt / n * 1e3
                          for (f, line, fn), (_, _, tt, _, _) in stats.stats.items()}
        total = sum(per_step[name].values())
        print(f"{name}: {steps[name]} decode steps, {total:.3f} ms of profiled self time a step")
    names = list(per_step)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            keys = set(per_step[a]) | set(per_step[b])
            diff = sorted(keys, key=lambda k: -abs(per_step[a].get(k, 0.0) - per_step[b].get(k, 0.0)))
            print(f"\n{a} - {b}, ms a decode step (self time), largest differences:")
            for k in diff[:25]:
                print(f"  {per_step[a].get(k, 0.0) - per_step[b].get(k, 0.0):+8.3f}  "
                      f"({per_step[a].get(k, 0.0):.3f} vs {per_step[b].get(k, 0.0):.3f})  {k}")


if __name__ == "__main__":
    main()
