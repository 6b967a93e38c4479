"""Where a sweep's decode steps went, by how they ran: per (batch, line), the steps of each (path, policy reason)
with their mean milliseconds a step() call, the mean of their verification's wait for the device, and the rest
(host work the device did not cover). Reads bench.json step logs with the verify-wait column (bench since
2026-12-07 23:30 UTC; older logs show "-" for the wait). For issue 20's draft-model lines at 64-128, whose steady
chained steps pay while the steps around each finished request and the unchained ones do not
(docs/lab/adaptive_runs.md).

    python scripts/lab/step_paths.py adaptive-draft/bench.json [--batches 64,128] [--lines adaptive,k=2]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path)
    parser.add_argument("--batches", default="", help="comma-separated batch sizes (default: every one)")
    parser.add_argument("--lines", default="", help="comma-separated line names (default: every one)")
    args = parser.parse_args()
    batches = {int(b) for b in args.batches.split(",") if b}
    lines = {name for name in args.lines.split(",") if name}
    points = json.loads(args.bench_json.read_text())["points"]
    print("| batch | line | path | reason | steps | mean ms | mean wait ms | mean host ms | tokens a step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in sorted(points, key=lambda p: (p["batch_size"], p["line"])):
        if (batches and p["batch_size"] not in batches) or (lines and p["line"] not in lines):
            continue
        groups: dict[tuple[str, str], list[list]] = defaultdict(list)
        for row in p["step_log"]:
            groups[(row[6], row[5])].append(row)
        for (path, reason), rows in sorted(groups.items(), key=lambda g: -len(g[1])):
            n = len(rows)
            ms = sum(r[0] for r in rows) / n
            waits = [r[8] for r in rows if len(r) > 8]
            wait = f"{sum(waits) / n:.2f}" if len(waits) == n else "-"
            host = f"{ms - sum(waits) / n:.2f}" if len(waits) == n else "-"
            tokens = sum(r[1] + r[4] for r in rows) / n  # a decoding request commits its accepted drafts + 1
            print(f"| {p['batch_size']} | {p['line']} | {path} | {reason or '-'} | {n} | {ms:.2f} | {wait} | {host} "
                  f"| {tokens:.0f} |")


if __name__ == "__main__":
    main()
