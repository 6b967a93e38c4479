"""Plot issue 20's sweep: every line's decode tokens/s over no spec against the concurrency, the adaptive line
bold, goodput dashed, and the bound (scripts/adaptive_bound.py: the per-request and the uniform optimum over no
spec, GPU time only) as a shaded band, so the gap between what was measured and what per-request draft lengths
could give is visible.

Usage: python scripts/plot_adaptive_sweep.py OUT.png bench.json [bound.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0].startswith("-"):
        print(__doc__)
        return 2
    result = json.loads(Path(argv[1]).read_text())
    by_batch: dict[int, dict[str, float]] = {}
    for p in result["points"]:
        by_batch.setdefault(p["batch_size"], {})[p["line"]] = p["decode_tokens_per_s"]
    batches = sorted(by_batch)
    base = [by_batch[b]["no spec"] for b in batches]
    figure, ax = plt.subplots(figsize=(7, 4.5))
    names = [n for n in by_batch[batches[0]] if n.startswith("k=")]
    for name in names:
        ax.plot(batches, [by_batch[b][name] / n for b, n in zip(batches, base)], marker="o", markersize=3,
                linewidth=1.0, label=name)
    ax.axhline(1.0, color="gray", linewidth=1.0, label="no spec")
    for name, style in (("goodput", dict(color="black", linestyle="--", linewidth=1.8, marker="s")),
                        ("adaptive", dict(color="crimson", linewidth=2.5, marker="D"))):
        if name in by_batch[batches[0]]:
            ax.plot(batches, [by_batch[b][name] / n for b, n in zip(batches, base)], markersize=5, label=name,
                    zorder=5, **style)
    if len(argv) > 2:
        rows = {r["batch"]: r for r in json.loads(Path(argv[2]).read_text())["rows"]}
        shown = [b for b in batches if b in rows]
        ax.fill_between(shown, [rows[b]["uniform_tokens_per_s"] / rows[b]["no_spec_tokens_per_s"] for b in shown],
                        [rows[b]["per_request_over_no_spec"] for b in shown], color="crimson", alpha=0.15,
                        label="bound: uniform -> per-request optimum (GPU time)")
    meta = result.get("metadata", {})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("concurrency (requests in the batch)")
    ax.set_ylabel("decode tokens/s / no spec")
    ax.set_title(f"per-request draft lengths, code-edit + chat replay ({meta.get('device_name', '')})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(argv[0], dpi=110)
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
