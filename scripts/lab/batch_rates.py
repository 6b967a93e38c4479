"""Each line's whole-batch rate (prefill included) and its prefill / decode times, from one or more bench.json
files: the draft-model lines at 64-256 lose in the prefill phase, which `decode_tokens_per_s` leaves out
(docs/lab/adaptive_runs.md, 2026-12-07 evening); with `prefill_step_log` (bench since 2026-12-07), how that
phase's steps ran (path and k per step); with the step logs' verify-wait column (since 2026-12-07 23:30 UTC), the
decode phase's host work: each step() call's time less its verification's wait for the device, summed (a step
whose wait is near 0 had the device idle while the host worked).

    python scripts/lab/batch_rates.py old/bench.json new/bench.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path, nargs="+")
    args = parser.parse_args()
    for path in args.bench_json:
        points = json.loads(path.read_text())["points"]
        print(f"## {path}\n")
        print("| batch | line | batch tok/s | prefill ms | decode ms | decode host ms (steps waiting < 0.5 ms) "
              "| prefill steps by (path, k) |")
        print("|---|---|---|---|---|---|---|")
        for p in sorted(points, key=lambda p: (p["batch_size"], p["line"])):
            steps = Counter(f"{row[6] or 'prefill'} k={row[2]}" for row in p.get("prefill_step_log") or [])
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(steps.items()))
            waits = [(row[0], row[8]) for row in p["step_log"] if len(row) > 8]
            host = (f"{sum(ms - wait for ms, wait in waits):,.0f} ({sum(wait < 0.5 for _, wait in waits)})"
                    if waits else "-")
            print(f"| {p['batch_size']} | {p['line']} | {p['batch_tokens_per_s']:,.0f} | "
                  f"{p['prefill_time_s'] * 1e3:,.0f} | {p['decode_time_s'] * 1e3:,.0f} | {host} | {kinds} |")
        print()


if __name__ == "__main__":
    main()
