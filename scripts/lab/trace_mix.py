"""Where a bench-trace line's steps went, by the mix of requests in flight: per line and phase, the steps and seconds
of each (requests per replayed profile, speculative or plain) group, from trace.json's timeline
(`in_flight_by_profile`). Lab tool for issue 20's concurrency-4 question (adaptive 4-5% under goodput in the
diurnal closed loop at equal step costs: were its plain steps the all-chat batches?).

    python scripts/lab/trace_mix.py trace.json [--phases 2,6] [--lines goodput,adaptive]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--phases", default=None, help="phase indexes, e.g. '2,6' (default: all)")
    parser.add_argument("--lines", default="goodput,adaptive")
    args = parser.parse_args()
    data = json.loads(args.trace.read_text())
    names = [p["name"] for p in data["metadata"].get("replay_profiles", [])]
    phases = None if args.phases is None else {int(p) for p in args.phases.split(",")}
    wanted = args.lines.split(",")
    for result in data["results"]:
        if result["line"] not in wanted:
            continue
        timeline = result["timeline"]
        if "in_flight_by_profile" not in timeline:
            raise SystemExit(f"{args.trace}: no in_flight_by_profile in the timeline (recorded since 2026-12-07)")
        groups: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0])  # steps, seconds
        for i, phase in enumerate(timeline["phase"]):
            if phases is not None and phase not in phases or timeline["k"][i] is None:
                continue
            key = (phase, tuple(timeline["in_flight_by_profile"][i]), timeline["k"][i] > 0)
            group = groups[key]
            group[0] += 1
            group[1] += timeline["seconds"][i]
        print(f"{result['line']} (in flight per profile: {', '.join(names)})")
        print("| phase | mix | speculative | steps | seconds | ms a step |")
        print("|---|---|---|---|---|---|")
        for (phase, mix, speculative), (steps, seconds) in sorted(groups.items()):
            print(f"| {phase} | {'/'.join(map(str, mix))} | {'yes' if speculative else 'no'} | {steps} | {seconds:.3f} "
                  f"| {seconds / steps * 1e3:.2f} |")


if __name__ == "__main__":
    main()
