"""PNG plots of a sweep (matplotlib, Agg backend): decode tokens/s and step time vs batch size.

One line per k ("no spec" is k = 0), the schedule's line drawn last (on top) in bold, HF transformers
`generate` as markers when measured, and the HBM-bandwidth floor dashed; log2 x axis. Titles carry the
caveats (random weights, replayed acceptance). Reads the JSON-shaped dict of `SweepResult.to_dict()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynaspec.bench.report import batch_sizes, line_names, title

PLOTS = {
    "tokens_per_s": ("decode tokens/s", "decode_tokens_per_s", "tokens_per_s", 1.0),
    "step_time": ("mean decode step time (ms)", "mean_step_time_s", "step_time_s", 1e3),
}


def _figure():
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = Figure(figsize=(9, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def plot_sweep(result: dict[str, Any], out_dir: str | Path, prefix: str = "bench") -> list[Path]:
    """Write `<prefix>_tokens_per_s.png` and `<prefix>_step_time.png` into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = line_names(result)
    static = [n for n in names if n != "schedule"]
    cmap_size = max(len(static), 2)
    paths = []
    for key, (ylabel, point_field, floor_field, scale) in PLOTS.items():
        figure = _figure()
        ax = figure.add_subplot(1, 1, 1)
        for i, name in enumerate(static):
            _plot_line(ax, result, name, point_field, scale, color=_color(i, cmap_size), width=1.4, zorder=2)
        if "schedule" in names:
            _plot_line(ax, result, "schedule", point_field, scale, color="black", width=3.0, zorder=5)
        hf = result.get("hf") or []
        if hf:
            hf_field = "decode_tokens_per_s" if key == "tokens_per_s" else "mean_step_time_s"
            for cache, marker in (("dynamic", "s"), ("static", "D")):
                rows = [h for h in hf if h.get("cache", "dynamic") == cache]
                if rows:
                    label = "HF generate" + (" (static cache)" if cache == "static" else " (default)")
                    ax.plot([h["batch_size"] for h in rows], [h[hf_field] * scale for h in rows], marker,
                            color="tab:red", markersize=8, label=label, zorder=4)
        floor = result.get("floor") or []
        if floor:
            label = "HBM floor (no spec)" if key == "tokens_per_s" else "HBM floor (weights + KV read)"
            ax.plot([f["batch_size"] for f in floor], [f[floor_field] * scale for f in floor], "--",
                    color="gray", linewidth=1.5, label=label, zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes(result))
        ax.set_xticklabels([str(b) for b in batch_sizes(result)])
        if key == "tokens_per_s":
            ax.set_yscale("log")
        ax.set_xlabel("batch size (concurrent requests)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        ax.set_title(_wrap(title(result)), fontsize=9)
        figure.tight_layout()
        path = out_dir / f"{prefix}_{key}.png"
        figure.savefig(path)
        paths.append(path)
    return paths


def _plot_line(ax, result, name, field, scale, color, width, zorder) -> None:
    points = sorted((p for p in result["points"] if p["line"] == name), key=lambda p: p["batch_size"])
    if points:
        ax.plot([p["batch_size"] for p in points], [p[field] * scale for p in points], "o-", color=color,
                linewidth=width, markersize=3 + width, label=name, zorder=zorder)


def _color(i: int, n: int):
    from matplotlib import colormaps

    return colormaps["viridis"](i / max(n - 1, 1) * 0.9)


def _wrap(text: str, width: int = 110) -> str:
    words, lines, current = text.split(" "), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    lines.append(current)
    return "\n".join(lines)
