"""Start-up of `LLM()` with defaults (the default zoo model, already converted): wall time and resident
memory growth, one fresh interpreter per measurement; and `dynaspec generate "Hi" --max-tokens 1` end to
end (process start to exit, `python -m dynaspec.cli`); two checkouts alternating (issue 23).
Usage: python scripts/startup_ab.py OLD_CHECKOUT NEW_CHECKOUT [--repeats 3]"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

MEASURE = r'''
import time
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
import dynaspec, torch
from dynaspec import LLM
start, before = time.perf_counter(), rss_mib()
llm = LLM()
print("RESULT", time.perf_counter() - start, rss_mib() - before, llm.engine.num_total_blocks)
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, int, float]]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        for name, root in (("old", args.old), ("new", args.new)):
            out = subprocess.run([sys.executable, "-c", MEASURE], cwd=root, capture_output=True, text=True, check=True)
            _, seconds, rss, blocks = next(l for l in out.stdout.splitlines() if l.startswith("RESULT")).split()
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dynaspec.cli", "generate", "Hi", "--max-tokens", "1"], cwd=root,
                           capture_output=True, check=True)
            results[name].append((float(seconds), float(rss), int(blocks), time.perf_counter() - start))
    for name, rows in results.items():
        print(f"{name}: LLM() median wall {statistics.median(r[0] for r in rows):.2f} s, "
              f"median RSS +{statistics.median(r[1] for r in rows):.0f} MiB, KV blocks {rows[0][2]}; "
              f"generate end to end median {statistics.median(r[3] for r in rows):.2f} s "
              f"(all: {', '.join(f'{r[3]:.2f}' for r in rows)})")


if __name__ == "__main__":
    main()
