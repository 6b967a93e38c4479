"""Sweep results as a rich table, JSON and a markdown table. Everything reads the JSON-shaped dict of
`SweepResult.to_dict()`, so a saved bench.json can be re-rendered. Random weights and acceptance replay
are stated in every title and caption (`metadata.caveats`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table


def prompts_label(meta: dict[str, Any]) -> str:
    """'prompt 128' (random token ids) or 'workload code-edit (prompts 210-540 tok)' (real prompts)."""
    workload = meta.get("workload")
    if not workload:
        return f"prompt {meta.get('prompt_len')}"
    return (
        f"workload {workload['name']} (prompts {workload['prompt_tokens_min']}-{workload['prompt_tokens_max']} tok)"
    )


def title(result: dict[str, Any]) -> str:
    meta = result["metadata"]
    base = (
        f"dynaspec bench: {meta.get('model_name') or meta['model']} on {meta.get('device_name')} "
        f"({meta.get('dtype')}), {prompts_label(meta)}, gen {meta.get('gen_len')}"
    )
    caveats = meta.get("caveats") or []
    return base + ("" if not caveats else " - " + "; ".join(caveats))


def line_names(result: dict[str, Any]) -> list[str]:
    return [line["name"] for line in result["lines"]]


def _point(result: dict[str, Any], line: str, batch: int) -> dict[str, Any] | None:
    for p in result["points"]:
        if p["line"] == line and p["batch_size"] == batch:
            return p
    return None


def _by_batch(rows: list[dict[str, Any]] | None) -> dict[int, dict[str, Any]]:
    return {r["batch_size"]: r for r in rows or []}


def batch_sizes(result: dict[str, Any]) -> list[int]:
    return sorted({p["batch_size"] for p in result["points"]})


def hf_fastest(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per batch size, HF generate's fastest measured configuration (default or static cache)."""
    best: dict[int, dict[str, Any]] = {}
    for row in result.get("hf") or []:
        held = best.get(row["batch_size"])
        if held is None or row["decode_tokens_per_s"] > held["decode_tokens_per_s"]:
            best[row["batch_size"]] = row
    return best


def hf_default(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per batch size, HF generate with its default DynamicCache."""
    return {r["batch_size"]: r for r in result.get("hf") or [] if r.get("cache", "dynamic") == "dynamic"}


def hf_ratio(result: dict[str, Any], point: dict[str, Any]) -> float | None:
    """Our tokens/s over HF generate's fastest configuration at the same batch size (None where HF was
    not measured)."""
    hf = hf_fastest(result).get(point["batch_size"])
    if not hf or not hf["decode_tokens_per_s"]:
        return None
    return point["decode_tokens_per_s"] / hf["decode_tokens_per_s"]


def summary_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Tokens/s pivot: one row per batch size, one column per line, then HF, floor and best-vs-HF."""
    names = line_names(result)
    hf, default = hf_fastest(result), hf_default(result)
    floor = _by_batch(result.get("floor"))
    header = ["batch"] + [f"{n} tok/s" for n in names]
    if hf:
        header += ["HF generate tok/s (default / static cache)", "best / HF default", "best / HF fastest"]
    if floor:
        header += ["floor tok/s (no spec)"]
    rows = []
    for batch in batch_sizes(result):
        points = [_point(result, n, batch) for n in names]
        row = [str(batch)] + [_num(p["decode_tokens_per_s"]) if p else "" for p in points]
        if hf:
            h, d = hf.get(batch), default.get(batch)
            best = max((p["decode_tokens_per_s"] for p in points if p), default=0.0)
            measured = [r for r in result["hf"] if r["batch_size"] == batch]
            row += [
                " / ".join(_num(r["decode_tokens_per_s"]) for r in measured),
                _ratio(best / d["decode_tokens_per_s"]) if d and d["decode_tokens_per_s"] else "",
                _ratio(best / h["decode_tokens_per_s"]) if h and h["decode_tokens_per_s"] else "",
            ]
        if floor:
            f = floor.get(batch)
            row += [_num(f["tokens_per_s"]) if f else ""]
        rows.append(row)
    return header, rows


def has_token_check(result: dict[str, Any]) -> bool:
    """Whether the points compare their greedy tokens with no spec's (workload mode with a no-spec line)."""
    return any(p.get("same_tokens_as_no_spec") is not None for p in result["points"])


def same_tokens_cell(point: dict[str, Any]) -> str:
    """'yes', 'NO (3/4 requests, first diff at token 17)', or '' where not compared."""
    same = point.get("same_tokens_as_no_spec")
    if same is None:
        return ""
    if same:
        return "yes"
    batch = point["batch_size"]
    return (
        f"NO ({point.get('requests_same_as_no_spec')}/{batch} requests same, "
        f"first diff at token {point.get('first_divergence')})"
    )


def detail_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per (line, batch): tokens/s, mean and slowest step time (a slowest step far above the mean is a
    one-off cost inside the timed decode: a kernel compiled mid-run, scripts/step_stalls.py names it), accepted
    length, k match, same tokens as no spec (workload mode), vs HF, vs floor."""
    has_hf = bool(result.get("hf"))
    floor = _by_batch(result.get("floor"))
    token_check = has_token_check(result)
    header = ["line", "batch", "tok/s", "step ms", "slowest step ms", "mean accepted len", "acceptance", "k matched"]
    if token_check:
        header.append("same tokens as no-spec")
    if has_hf:
        header.append("vs HF (fastest)")
    if floor:
        header.append("floor step ms")
    rows = []
    for name in line_names(result):
        for batch in batch_sizes(result):
            p = _point(result, name, batch)
            if p is None:
                continue
            rate = p.get("acceptance_rate")
            row = [
                name, str(batch), _num(p["decode_tokens_per_s"]), f"{p['mean_step_time_s'] * 1e3:.2f}",
                _slowest_step(p), f"{p['mean_accepted_length']:.2f}", "" if rate is None else f"{rate:.0%}",
                f"{p['k_match_fraction']:.0%} (k={p['nominal_k']})",
            ]
            if token_check:
                row.append(same_tokens_cell(p))
            if has_hf:
                ratio = hf_ratio(result, p)
                row.append("" if ratio is None else _ratio(ratio))
            if floor:
                f = floor.get(batch)
                row.append(f"{f['step_time_s'] * 1e3:.2f}" if f else "")
            rows.append(row)
    return header, rows


def _slowest_step(point: dict[str, Any]) -> str:
    """The longest decode step of a point, ms (step_log rows start with the step's ms)."""
    log = point.get("step_log") or []
    return f"{max(row[0] for row in log):.2f}" if log else ""


def envelope_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["batch", "no spec tok/s", "best static", "best static tok/s", "schedule tok/s", "schedule / best static"]
    rows = []
    for e in result.get("envelope") or []:
        best, sched = e.get("best_static_tokens_per_s"), e.get("schedule_tokens_per_s")
        rows.append([
            str(e["batch_size"]), _num(e.get("no_spec_tokens_per_s")), e.get("best_static_line") or "",
            _num(best), _num(sched), _ratio(sched / best) if sched and best else "",
        ])
    return header, rows


def rich_tables(result: dict[str, Any]) -> list[Table]:
    """The summary (tokens/s by batch) and detail tables, captioned with the caveats."""
    caption = "; ".join(result["metadata"].get("caveats") or []) or None
    tables = []
    for name, (header, rows) in (("decode tokens/s", summary_rows(result)), ("per point", detail_rows(result))):
        table = Table(title=f"{title(result)}\n{name}", caption=caption, show_lines=False)
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def markdown(result: dict[str, Any]) -> str:
    """A self-describing markdown report: title, caveats, metadata, then the three tables."""
    meta = result["metadata"]
    out = [f"## {title(result)}", ""]
    for caveat in meta.get("caveats") or []:
        out.append(f"**{caveat}**  ")
    bandwidth = meta.get("copy_bandwidth_bytes_per_s")
    profile = meta.get("replay_profile") or {}
    out += [
        "",
        f"- model: `{meta['model']}` (random weights: {'yes' if meta.get('is_random') else 'no'})",
        f"- drafter: {meta.get('drafter') or 'none'}"
        + (f", draft model `{meta['draft_model']}`" if meta.get("draft_model") else ""),
        f"- acceptance replay: {profile.get('name') + ' ' + str(profile.get('acceptance_per_position')) if profile else 'no'}",
        _prompts_line(result),
        f"- device: {meta.get('device_name')} ({meta.get('device')}), dtype {meta.get('dtype')}, "
        f"CUDA graphs: {'on' if meta.get('cuda_graphs') else 'off'}",
        f"- copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write)" if bandwidth else "- floor: not computed (not CUDA)",
        _hf_line(result),
        f"- date: {meta.get('date')}",
        f"- command: `{meta.get('command_line')}`",
        f"- timing: {meta.get('timing')}",
        "",
    ]
    for name, (header, rows) in (
        ("Decode tokens/s by batch size", summary_rows(result)),
        ("Envelope: schedule vs best static k", envelope_rows(result)),
        ("Every point", detail_rows(result)),
    ):
        caption = " (" + "; ".join(meta.get("caveats")) + ")" if meta.get("caveats") else ""
        out += [f"### {name}{caption}", "", _md_table(header, rows), ""]
    return "\n".join(out)


def _prompts_line(result: dict[str, Any]) -> str:
    meta = result["metadata"]
    workload = meta.get("workload")
    if not workload:
        return f"- prompts: {meta.get('prompt_len')} random token ids per request"
    line = (
        f"- prompts: workload `{workload['name']}` (dynaspec.bench.workloads), chat template applied, "
        f"{workload['num_distinct_prompts']} distinct prompts cycled to fill each batch, "
        f"{workload['prompt_tokens_min']}-{workload['prompt_tokens_max']} tokens (mean "
        f"{workload['prompt_tokens_mean']}); the model's own acceptance"
    )
    if has_token_check(result):
        compared = [p for p in result["points"] if p.get("same_tokens_as_no_spec") is not None and p["line"] != "no spec"]
        same = sum(1 for p in compared if p["same_tokens_as_no_spec"])
        line += f"; greedy tokens identical to no spec at {same} of {len(compared)} (line, batch) points"
    return line


def _hf_line(result: dict[str, Any]) -> str:
    rows = result.get("hf") or []
    if not rows:
        return "- HF transformers generate: not measured"
    parts = [
        f"batch {r['batch_size']}: {r['cache']} cache" + (", torch.compile (auto)" if r.get("torch_compile") else "")
        + f" {_num(r['decode_tokens_per_s'])} tok/s"
        for r in rows
    ]
    return "- HF transformers generate (same weights, decode only): " + "; ".join(parts)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def write_markdown(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result) + "\n")
    return path


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x"
