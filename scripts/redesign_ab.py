"""Issue 19's side-by-side: decode tokens/s per (line, batch) of two `dynaspec bench` output folders run in
one GPU call (the old commit and this tree), and their ratios. Usage:
    python3 scripts/redesign_ab.py OUT/core-old OUT/core-new [OUT/sweep-old OUT/sweep-new ...]
(pairs of folders holding bench.json; prints one markdown table per pair)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def points(folder: str) -> dict[tuple[str, int], float]:
    data = json.loads((Path(folder) / "bench.json").read_text())
    return {(p["line"], p["batch_size"]): p["decode_tokens_per_s"] for p in data["points"]}


def table(old_dir: str, new_dir: str) -> str:
    old, new = points(old_dir), points(new_dir)
    rows = ["| line | batch | old tok/s | new tok/s | new / old |", "|---|---:|---:|---:|---:|"]
    for key in sorted(old.keys() & new.keys(), key=lambda k: (k[1], k[0])):
        rows.append(f"| {key[0]} | {key[1]} | {old[key]:.1f} | {new[key]:.1f} | {new[key] / old[key]:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    folders = sys.argv[1:]
    for old_dir, new_dir in zip(folders[::2], folders[1::2]):
        print(f"### {Path(old_dir).name} vs {Path(new_dir).name}\n\n{table(old_dir, new_dir)}\n")
