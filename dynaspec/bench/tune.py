"""`dynaspec tune`: pick the draft length per batch size from measured acceptance and step costs.

Goodput planning after SmartSpec (Liu et al. 2024, "Optimizing Speculative Decoding for Serving Large
Language Models Using Goodput", arXiv 2406.14066): with per-position conditional acceptance alpha_j
(Leviathan et al. 2023, arXiv 2211.17192) the expected committed tokens per request per step at draft
length k are E[accepted | k] + 1, so the predicted throughput of `batch` decoding requests is

    goodput(batch, k) = (E[accepted | k] + 1) * batch / T(batch, k)

where T(batch, k) is the measured step time (dynaspec.runtime.cost_model.StepCostModel). The tuner picks
the argmax k per batch size and compresses the choices into a TensorRT-LLM style `draft_len_schedule`
(threshold -> k, the largest threshold <= batch applies).

Pieces:
* acceptance: `measure_acceptance` runs workload prompts greedily at the static k = max_draft_len and
  counts, per position j, trials and successes with the rule of AcceptanceEstimator: a request-step that
  drafted d and accepted a tokens accepted positions 0..a-1 and rejected position a when a < d, or when
  d < k (a slot verified but not filled: an n-gram miss costs the step all the same);
* cost: `step_costs_from_sweep` (real decode steps of the bench sweep's static-k lines, median step time)
  or `probe_step_costs` (the engine's cost probe: timed forwards / graph replays, faster, no attention
  over long contexts);
* `choose_draft_lens` (pure) and `compress_schedule` (pure) make the schedule (they live in
  dynaspec.spec.goodput_schedule, shared with `draft_len_schedule: auto`); `schedule_yaml` renders it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dynaspec.spec.config import parse_speculative_config
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.goodput_schedule import (  # noqa: F401  (re-exported: tune's public names)
    Choice,
    Schedule,
    choose_draft_lens,
    compress_schedule,
    extend_alphas,
    predicted_goodput,
)

COST_SOURCES = ("steps", "probe")
# progress(description, completed, total), as in dynaspec.bench.sweep
ProgressFn = Callable[[str, float, float], None]


# ------------------------------------------------------------------------------------------ acceptance
@dataclass
class PositionCounts:
    """Trials and successes per draft position (module docstring: a short draft is a rejection)."""

    max_draft_len: int
    trials: list[int] = field(default_factory=list)
    successes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_draft_len < 1:
            raise ValueError(f"max_draft_len must be >= 1, got {self.max_draft_len}")
        self.trials = self.trials or [0] * self.max_draft_len
        self.successes = self.successes or [0] * self.max_draft_len

    def add(self, drafted: int, accepted: int) -> None:
        """One request in one step at k = max_draft_len: `drafted` proposed, `accepted` accepted."""
        if not 0 <= accepted <= drafted <= self.max_draft_len:
            raise ValueError(f"need 0 <= accepted ({accepted}) <= drafted ({drafted}) <= {self.max_draft_len}")
        for j in range(accepted):
            self.trials[j] += 1
            self.successes[j] += 1
        if accepted < self.max_draft_len:
            self.trials[accepted] += 1

    def alphas(self) -> list[float]:
        """Conditional acceptance per position; an untested position repeats the previous (0 at position 0)."""
        out: list[float] = []
        for s, t in zip(self.successes, self.trials):
            out.append(s / t if t else (out[-1] if out else 0.0))
        return out


def load_workload_file(path: str | Path) -> list[dict[str, Any]]:
    """prompts.jsonl: one JSON object per line, {"prompt": str} or {"messages": [{"role", "content"}, ...]}."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"workload file {str(path)!r} does not exist")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {n} is not valid JSON: {exc}") from None
        if isinstance(item, dict) and isinstance(item.get("prompt"), str) and item["prompt"]:
            items.append({"prompt": item["prompt"]})
        elif isinstance(item, dict) and isinstance(item.get("messages"), list) and item["messages"]:
            items.append({"messages": item["messages"]})
        else:
            raise ValueError(
                f"{path.name} line {n}: expected {{\"prompt\": \"...\"}} or {{\"messages\": [...]}}, got {line[:80]!r}"
            )
    if not items:
        raise ValueError(f"workload file {path.name} holds no prompts")
    return items


def tokenize_prompts(tokenizer, items: Sequence[dict[str, Any]], max_prompt_len: int) -> list[list[int]]:
    """Token ids per item: messages through the chat template, plain prompts encoded as they are.

    Longer prompts keep their last `max_prompt_len` tokens.
    """
    if tokenizer is None:
        raise ValueError(
            "the model has no tokenizer, so workload prompts cannot be tokenized; pass --acceptance-profile"
        )
    out = []
    for item in items:
        if "messages" in item:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError("chat 'messages' prompts need a tokenizer with a chat template")
            ids = tokenizer.apply_chat_template(
                item["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        else:
            ids = tokenizer.encode(item["prompt"])
        out.append(list(ids)[-max_prompt_len:])
    return out


def measure_acceptance(
    llm, prompts: Sequence[list[int]], max_tokens: int, batch_size: int = 1, progress: ProgressFn | None = None
) -> PositionCounts:
    """Run `prompts` greedily through a speculative `llm` (static k = max_draft_len) and count acceptance."""
    from dynaspec.bench.acceptance import Timing, run_batch
    from dynaspec.sampling_params import SamplingParams

    spec = llm.config.speculative_config
    if spec is None:
        raise ValueError("measuring acceptance needs an LLM with a speculative_config")
    counts = PositionCounts(spec.max_draft_len)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    for first in range(0, len(prompts), batch_size):
        if progress:
            progress("acceptance", float(first), float(len(prompts)))
        run_batch(llm, prompts[first : first + batch_size], params, counts, Timing())
    if progress:
        progress("acceptance", float(len(prompts)), float(len(prompts)))
    return counts


# ------------------------------------------------------------------------------------------ cost
def step_costs_from_sweep(result: Mapping[str, Any]) -> tuple[StepCostModel, dict[tuple[int, int], float]]:
    """T(batch, k) = median decode step time of each static line of a sweep (SweepResult.to_dict());
    also the measured tokens/s per (batch, k)."""
    k_of = {line["name"]: line["k"] for line in result["lines"] if line["kind"] in ("no-spec", "static")}
    cost = StepCostModel(device=result["metadata"].get("device"))
    measured: dict[tuple[int, int], float] = {}
    for p in result["points"]:
        k = k_of.get(p["line"])
        if k is None or p["num_decode_steps"] == 0:
            continue
        cost.add(p["batch_size"], k, p["median_step_time_s"])
        measured[(p["batch_size"], k)] = p["decode_tokens_per_s"]
    if not cost.batch_sizes:
        raise ValueError("the sweep measured no decode steps; raise --cost-gen-len")
    return cost, measured


def probe_step_costs(llm, batch_sizes: Sequence[int], max_draft_len: int, repeats: int = 3) -> StepCostModel:
    """T(batch, k) from the engine's cost probe (dynaspec.runtime.cost_probe): the target's verify forward
    plus what the engine's drafter says drafting costs."""
    pairs = [(b, k) for b in batch_sizes for k in range(max_draft_len + 1)]
    return llm.engine.measure_step_costs(pairs, repeats=repeats)


# ------------------------------------------------------------------------------------------ output
def tuned_spec_config(base: Mapping[str, Any], plan: Schedule) -> dict[str, Any] | None:
    """The base config (mapping) with the tuned draft length fields, validated; None when no spec pays."""
    if plan.schedule is None:
        return None
    data = parse_speculative_config(dict(base)).model_dump(mode="json", exclude_none=True)
    data.pop("replay_acceptance_profile", None)
    data.update(
        max_draft_len=plan.max_draft_len, draft_len_schedule=dict(plan.schedule),
        draft_len_policy="schedule",
    )
    data.pop("step_cost_file", None)
    parse_speculative_config(data)  # the written YAML must load
    defaults = parse_speculative_config({"decoding_type": data["decoding_type"], **(
        {"speculative_model": data["speculative_model"]} if "speculative_model" in data else {})}).model_dump(mode="json")
    keep = {"decoding_type", "max_draft_len", "draft_len_schedule", "speculative_model"}
    return {k: v for k, v in data.items() if k in keep or defaults.get(k) != v}


def schedule_yaml(
    spec: dict[str, Any] | None,
    choices: Sequence[Choice],
    plan: Schedule,
    notes: Sequence[str],
    step_cost_file: str,
    acceptance_file: str,
) -> str:
    """The schedule YAML: a comment block (predicted tok/s per batch, notes) then `speculative_config`."""
    lines = ["# dynaspec tune: draft length per batch size by predicted goodput", "#   (E[accepted | k] + 1) * batch / T(batch, k)"]
    lines += [f"# {note}" for note in notes]
    lines.append("# batch  k  predicted tok/s  (predicted tok/s of k = 0)")
    for c in choices:
        lines.append(f"# {c.batch_size:5d} {c.k:2d} {c.predicted_tokens_per_s:16.1f}  ({c.predicted_by_k.get(0, float('nan')):.1f})")
    for batch, chosen, written in plan.capped:
        lines.append(f"# batch {batch}: k {chosen} chosen but capped to {written} (no schedule value may exceed max_draft_len)")
    if spec is None:
        lines.append("# speculation does not pay at the smallest batch size: run without speculative decoding")
    lines += [
        "# online alternative: draft_len_policy: goodput (remove draft_len_schedule) with",
        f"#   step_cost_file: {step_cost_file}",
        f"#   acceptance_profile: {acceptance_file}",
    ]
    body = yaml.safe_dump({"speculative_config": spec}, sort_keys=False)
    return "\n".join(lines) + "\n" + body


def plot_tune(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """PNG (matplotlib Agg): predicted tok/s per k (thin) and of the chosen k (bold) vs measured (markers)."""
    from dynaspec.bench.plots import _color, _figure, _wrap

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = _figure()
    ax = figure.add_subplot(1, 1, 1)
    batches = [r["batch_size"] for r in rows]
    ks = sorted({int(k) for r in rows for k in r["predicted_by_k"]})
    for i, k in enumerate(ks):
        color = _color(i, max(len(ks), 2))
        ax.plot(batches, [r["predicted_by_k"][str(k)] for r in rows], "-", color=color, linewidth=1.0,
                alpha=0.7, label=f"predicted k={k}")
        measured = [(r["batch_size"], r["measured_by_k"][str(k)]) for r in rows if str(k) in r["measured_by_k"]]
        if measured:
            ax.plot(*zip(*measured), "x", color=color, markersize=6, label=f"measured k={k}")
    ax.plot(batches, [r["predicted_tokens_per_s"] for r in rows], "o-", color="black", linewidth=2.5,
            label="predicted, tuned k", zorder=5)
    chosen = [(r["batch_size"], r["measured_tokens_per_s"]) for r in rows if r["measured_tokens_per_s"] is not None]
    if chosen:
        ax.plot(*zip(*chosen), "s", color="tab:red", markersize=8, label="measured, tuned k", zorder=6)
    if len(batches) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("batch size (concurrent requests)")
    ax.set_ylabel("decode tokens/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    ax.set_title(_wrap(title), fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    return path


def summary_rows(choices: Sequence[Choice], measured: Mapping[tuple[int, int], float]) -> list[dict[str, Any]]:
    """JSON-ready rows: batch, chosen k, predicted tok/s (all k), measured tok/s (all k measured)."""
    rows = []
    for c in choices:
        by_k = {str(k): v for (b, k), v in measured.items() if b == c.batch_size}
        rows.append({
            "batch_size": c.batch_size,
            "k": c.k,
            "predicted_tokens_per_s": c.predicted_tokens_per_s,
            "measured_tokens_per_s": by_k.get(str(c.k)),
            "predicted_by_k": {str(k): v for k, v in c.predicted_by_k.items()},
            "measured_by_k": by_k,
        })
    return rows

