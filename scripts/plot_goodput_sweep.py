"""Plot goodput sweeps (issue 6): per `dynaspec bench` JSON, every line's decode tokens/s relative to no
spec against the batch size, the goodput line bold, so it can be seen tracking the upper envelope of the
static lines (the >= 0.98 x best static target is the shaded band under that envelope).

Usage: python scripts/plot_goodput_sweep.py OUT.png bench.json [bench.json ...]
(each JSON gets its own panel, titled by its acceptance profile)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goodput_ratio import ratios  # noqa: E402


def panel(ax, result: dict, title: str) -> None:
    """One sweep: static lines thin, goodput bold, the best static envelope x [0.98, 1] shaded."""
    rows = ratios(result)
    batches = [r["batch"] for r in rows]
    base = [r["static"]["no spec"] for r in rows]
    for name in rows[0]["static"]:
        ax.plot(batches, [r["static"][name] / b for r, b in zip(rows, base)], marker="o", markersize=3,
                linewidth=1.0, label=name)
    envelope = [r["best_tok_s"] / b for r, b in zip(rows, base)]
    ax.fill_between(batches, [0.98 * e for e in envelope], envelope, color="gray", alpha=0.3,
                    label="0.98-1.00 x best static")
    if rows[0]["goodput_tok_s"] is not None:
        ax.plot(batches, [r["goodput_tok_s"] / b for r, b in zip(rows, base)], color="black", linewidth=2.5,
                marker="s", markersize=5, label="goodput", zorder=5)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("batch size (concurrent requests)")
    ax.set_ylabel("decode tokens/s / no spec")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0].startswith("-"):
        print(__doc__)
        return 2
    out, paths = argv[0], argv[1:]
    figure, axes = plt.subplots(1, len(paths), figsize=(6 * len(paths), 4.5), squeeze=False)
    for ax, path in zip(axes[0], paths):
        with open(path) as f:
            result = json.load(f)
        meta = result.get("metadata", {})
        profile = (meta.get("replay_profile") or {}).get("name") or Path(path).parent.name
        device = meta.get("device_name") or meta.get("device") or ""
        panel(ax, result, f"{profile} ({device})")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
