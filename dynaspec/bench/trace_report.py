"""Mixed-load trace results (bench/trace_run.py) as rich tables, markdown, JSON and a PNG.

Everything reads the JSON-shaped result dict, so a saved trace.json can be re-rendered. The caveats
(random weights, ACCEPTANCE REPLAYED) head every title and caption.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table


def title(result: dict[str, Any]) -> str:
    meta = result["metadata"]
    phases = " -> ".join(str(c) for c in meta["phases"])
    base = (
        f"dynaspec bench-trace: {meta.get('model_name') or meta['model']} ({meta.get('drafter')}, max k "
        f"{meta.get('max_draft_len')}) on {meta.get('device_name')} ({meta.get('dtype')}); concurrency {phases}; "
        f"{meta['num_requests']} requests, prompt {meta['prompt_len']}, gen {meta['gen_len_range'][0]}-"
        f"{meta['gen_len_range'][1]}"
    )
    caveats = meta.get("caveats") or []
    return base + ("" if not caveats else " - " + "; ".join(caveats))


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _yes_no(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "no"


def line_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per line: tokens/s overall and per phase, wall time, mean k, checks."""
    phases = result["metadata"]["phases"]
    header = ["line", "tok/s", "wall s", "wall tok/s", "mean k", "acceptance"]
    header += [f"ph{p} c={c} tok/s" for p, c in enumerate(phases)]
    header += ["schedule in force", "all max_tokens", "same tokens as no spec"]
    rows = []
    for r in result["results"]:
        schedule = r.get("draft_len_schedule")
        rows.append(
            [r["line"], _num(r["tokens_per_s"]), f"{r['wall_time_s']:.2f}", _num(r["wall_tokens_per_s"]),
             f"{r['mean_k']:.2f}", "" if r.get("acceptance_rate") is None else f"{r['acceptance_rate']:.0%}"]
            + [_num(p["tokens_per_s"]) for p in r["per_phase"]]
            + ["" if schedule is None else ", ".join(f"{t}:{k}" for t, k in schedule.items()),
               _yes_no(r["all_max_tokens"]), _yes_no(r["tokens_match_no_spec"])]
        )
    return header, rows


def comparison_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The headline ratios: goodput / best static k (no spec included), goodput / schedule, and goodput /
    the per-phase best static line (the best static k of each phase, switched for free)."""
    c = result["comparison"]
    header = ["best static line", "best static tok/s", "goodput tok/s", "schedule tok/s",
              "goodput / best static", "goodput / schedule", "schedule / best static",
              "per-phase best static tok/s", "goodput / per-phase best static"]
    rows = [[
        c["best_static_line"] or "", _num(c["best_static_tokens_per_s"]), _num(c["goodput_tokens_per_s"]),
        _num(c["schedule_tokens_per_s"]), _ratio(c["goodput_over_best_static"]), _ratio(c["goodput_over_schedule"]),
        _ratio(c["schedule_over_best_static"]), _num(c.get("per_phase_best_static_tokens_per_s")),
        _ratio(c.get("goodput_over_per_phase_best_static")),
    ]]
    if c.get("adaptive_tokens_per_s") is not None:  # the per-request line ran (--adaptive)
        header += ["adaptive tok/s", "adaptive / best static", "adaptive / goodput"]
        rows[0] += [_num(c["adaptive_tokens_per_s"]), _ratio(c.get("adaptive_over_best_static")),
                    _ratio(c.get("adaptive_over_goodput"))]
    return header, rows


def phase_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per phase: the best static line there, goodput and the schedule."""
    header = ["phase", "concurrency", "best static (tok/s)", "goodput tok/s", "schedule tok/s", "goodput k histogram"]
    goodput = next((r for r in result["results"] if r["line"] == "goodput"), None)
    adaptive = any(p.get("adaptive_tokens_per_s") is not None for p in result["comparison"]["per_phase"])
    if adaptive:
        header.insert(5, "adaptive tok/s")
    rows = []
    for p in result["comparison"]["per_phase"]:
        hist = goodput["per_phase"][p["phase"]]["k_histogram"] if goodput else {}
        best = f"{p['best_static_line']} ({_num(p['best_static_tokens_per_s'])})" if p["best_static_line"] else ""
        row = [str(p["phase"]), str(p["concurrency"]), best, _num(p["goodput_tokens_per_s"]),
               _num(p["schedule_tokens_per_s"]), ", ".join(f"k={k}: {n}" for k, n in hist.items())]
        if adaptive:
            row.insert(5, _num(p.get("adaptive_tokens_per_s")))
        rows.append(row)
    return header, rows


def rich_tables(result: dict[str, Any]) -> list[Table]:
    caption = "; ".join(result["metadata"].get("caveats") or [])
    tables = []
    for name, (header, rows) in (
        ("lines", line_rows(result)), ("goodput vs static", comparison_rows(result)), ("per phase", phase_rows(result)),
    ):
        table = Table(title=f"bench-trace: {name}", caption=caption or None)
        for column in header:
            table.add_column(column, justify="left" if column in ("line", "best static line") else "right")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    meta = result["metadata"]
    parts = [f"## {title(result)}", ""]
    for caveat in meta.get("caveats") or []:
        parts.append(f"**{caveat}**  ")
    parts += [
        "",
        f"Command: `{meta.get('command_line')}` ({meta.get('date')}, torch {meta.get('torch_version')}).",
        f"Requests per phase: {meta['requests_per_phase']}; {meta['total_tokens']} generated tokens per line. "
        f"{meta['timing']}.",
    ]
    if meta.get("acceptance_replay"):
        mix = ", ".join(f"{p['name']} ({p['requests']} requests)" for p in meta["replay_profiles"])
        parts.append(f"Workloads: {mix}; {meta['workload_assignment']}. Replayed acceptance commits drafts "
                     "the target would not have produced, so speculative lines' tokens differ from no spec by design.")
    planning = meta.get("planning_profile")
    if planning:
        alphas = ", ".join(f"{a:.3f}" for a in planning["acceptance_per_position"])
        parts.append(f"Planning acceptance (goodput warm start, schedule 'auto'): [{alphas}] from {planning['source']}.")
    for header, rows in (comparison_rows(result), line_rows(result), phase_rows(result)):
        parts += ["", _md_table(header, rows)]
    return "\n".join(parts) + "\n"


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def write_markdown(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result))
    return path


def plot_trace(result: dict[str, Any], path: str | Path) -> Path:
    """PNG: requests in flight (top) and k chosen per step (middle) over time for goodput, the schedule and the
    best static line, each on its own clock; tokens/s per phase for every line (bottom)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dynaspec.bench.plots import _color, _wrap

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(10, 10), dpi=110)
    FigureCanvasAgg(figure)
    flight, chosen, bars = (figure.add_subplot(3, 1, i) for i in (1, 2, 3))
    results = result["results"]
    shown = ("goodput", "schedule", result["comparison"]["best_static_line"])
    for i, r in enumerate(results):
        if r["line"] not in shown:
            continue
        t = r["timeline"]
        color = "black" if r["line"] == "goodput" else "tab:red" if r["line"] == "schedule" else _color(i, len(results))
        label = r["line"] if r["line"] in ("goodput", "schedule") else f"{r['line']} (best static)"
        flight.step(t["start_s"], t["in_flight"], where="post", color=color, linewidth=1.5, label=label)
        points = [(s, k) for s, k in zip(t["start_s"], t["k"]) if k is not None]
        if points:
            chosen.step(*zip(*points), where="post", color=color, linewidth=1.5, label=label)
    flight.set_ylabel("requests in flight")
    flight.set_yscale("symlog", base=2, linthresh=1)
    flight.legend(fontsize=7, ncol=4)
    chosen.set_ylabel("k chosen per step")
    chosen.set_xlabel("seconds since the trace started (each line's own clock)")
    chosen.legend(fontsize=7)
    phases = result["metadata"]["phases"]
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        color = "black" if r["line"] == "goodput" else "tab:red" if r["line"] == "schedule" else _color(i, len(results))
        xs = [p + (i - (len(results) - 1) / 2) * width for p in range(len(phases))]
        bars.bar(xs, [p["tokens_per_s"] for p in r["per_phase"]], width=width, color=color, label=r["line"])
    bars.set_xticks(range(len(phases)))
    bars.set_xticklabels([f"phase {p}\n{c} concurrent" for p, c in enumerate(phases)], fontsize=7)
    bars.set_ylabel("tokens/s")
    bars.set_yscale("log")
    bars.legend(fontsize=7, ncol=4)
    for ax in (flight, chosen, bars):
        ax.grid(True, alpha=0.3)
    flight.set_title(_wrap(title(result), 120), fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path
