"""Put several `dynaspec bench` runs of one workload (one drafter each, same prompts and batch sizes) into one
table: per batch size, no speculation's tokens/s and, per drafter, its best static k and each policy line
as a ratio over the no-spec line of its own run; the points whose greedy tokens equal no spec's; and the
first drafter's mean accepted length per k.

Usage: python3 scripts/drafter_compare.py OUT.md NAME=bench.json [NAME=bench.json ...]
(scripts/gpu_eagle_qwen.sh runs it with eagle, draft-model and ngram.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _points(path: Path) -> dict[tuple[str, int], dict]:
    data = json.loads(path.read_text())
    return {(p["line"], p["batch_size"]): p for p in data["points"]}


def _cell(points: dict, line: str, batch: int) -> float | None:
    point = points.get((line, batch))
    return point["decode_tokens_per_s"] if point else None


def compare(runs: dict[str, dict[tuple[str, int], dict]]) -> str:
    batches = sorted({b for points in runs.values() for _, b in points})
    policy_lines = {name: sorted({line for line, _ in points if line != "no spec" and not line.startswith("k=")})
                    for name, points in runs.items()}
    header = ["batch", "no spec tok/s"]
    for name in runs:
        header.append(f"{name}: best static")
        header += [f"{name}: {line}" for line in policy_lines[name]]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for batch in batches:
        first = next(iter(runs.values()))
        base_first = _cell(first, "no spec", batch)
        row = [str(batch), f"{base_first:.1f}" if base_first else "-"]
        for name, points in runs.items():
            base = _cell(points, "no spec", batch)
            static = {line: points[(line, batch)]["decode_tokens_per_s"] for line, b in points
                      if b == batch and line.startswith("k=")}
            if base and static:
                best = max(static, key=static.get)
                row.append(f"{best} {static[best] / base:.2f}x")
            else:
                row.append("-")
            for line in policy_lines[name]:
                value = _cell(points, line, batch)
                row.append(f"{value / base:.2f}x" if value and base else "-")
        rows.append("| " + " | ".join(row) + " |")
    lines = ["Ratios: tokens/s over the no-spec line of the same run (same prompts, batch sizes and card).", "",
             *rows, "", "Greedy tokens equal to no spec's, every request:", ""]
    for name, points in runs.items():
        checked = [p for p in points.values() if p["line"] != "no spec" and p.get("same_tokens_as_no_spec") is not None]
        same = sum(bool(p["same_tokens_as_no_spec"]) for p in checked)
        lines.append(f"- {name}: {same} of {len(checked)} (line, batch) points")
    name, points = next(iter(runs.items()))
    ks = sorted({int(line[2:]) for line, _ in points if line.startswith("k=")})
    lines += ["", f"{name}: mean accepted length (tokens per request per step) at static k:", "",
              "| batch | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for batch in batches:
        cells = [f"{points[(f'k={k}', batch)]['mean_accepted_length']:.2f}" if (f"k={k}", batch) in points else "-"
                 for k in ks]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in arg for arg in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    runs = {}
    for arg in argv[1:]:
        name, path = arg.split("=", 1)
        if Path(path).is_file():
            runs[name] = _points(Path(path))
        else:
            print(f"{name}: {path} not found (that run failed?); left out", file=sys.stderr)
    if not runs:
        return 1
    text = compare(runs)
    Path(argv[0]).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
