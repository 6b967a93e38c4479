"""Acceptance profiles and tokens/s of speculative decoding on a real model pair (issue 3's benchmark).

A workload (dynaspec.bench.workloads) runs greedily through a target LLM twice, side by side in one
process and interleaved prompt by prompt: once without speculation and once with a drafter (n-gram
prompt lookup, or a draft model; Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"). Interleaving keeps the two timings under the same machine load, so the
tokens/s *ratio* is meaningful even when other jobs share the CPU. Greedy outputs must be
token-identical with and without speculation (speculation is lossless); every mismatch is recorded.

Per engine step the engine's stats (`LLM.get_stats()["last_step"]`) give, per decoding request, the
number of draft tokens proposed and accepted (prefix acceptance: position j is accepted only if
positions 0..j-1 were). From those request-steps (steps with k >= 1 only):

* drafted_per_position[j]: request-steps that drafted more than j tokens;
* reached_per_position[j]: request-steps that drafted more than j tokens AND accepted positions 0..j-1
  (so position j was actually tested);
* accepted_per_position[j]: request-steps that accepted more than j tokens.

Profile JSON (one file per (drafter, workload), `dynaspec/bench/data/acceptance_<drafter>_<workload>.json`;
the GPU benchmarks replay these):

```
name                             "<drafter>-<workload>"
drafter                          "ngram" | "draft-model"
target                           target model spec, e.g. "qwen2.5-coder-1.5b-instruct"
draft                            draft model spec, or null for n-gram
workload                         "code-edit" | "summarise" | "humaneval" | "chat"
max_draft_len                    k used at every step (batch 1, no draft_len_schedule)
acceptance_per_position          [j] = accepted[j] / reached[j]: P(position j accepted | positions < j
                                 were accepted and position j was drafted); conditional
prefix_acceptance_per_position   [j] = accepted[j] / drafted[j]: P(positions 0..j all accepted | j
                                 drafted); unconditional (SpecStats.acceptance_per_position)
mean_accepted_length             tokens committed per target forward per request (accepted + 1),
                                 averaged over request-steps with k >= 1 ("tau" in the literature)
num_prompts, max_tokens          workload size (greedy, temperature 0)
measured_on                      "cpu 2 cores"
date                             ISO date of the run
command                          the exact command line that produced the file
```

Extra fields, for readers who want the raw data: `counts` (request_steps, drafted, accepted,
drafted_per_position, reached_per_position, accepted_per_position), `draft_rate` (fraction of
request-steps that proposed at least one token: n-gram lookup often finds nothing),
`mean_draft_len`, `acceptance_rate` (accepted / drafted), `batch_size`, `tokens_per_s` (no_spec,
spec, ratio; end to end, prefill included) and `decode_tokens_per_s` (no_spec, spec, ratio;
first token to last), `output_tokens`, `greedy_identical`, `mismatched_prompts`, `seed`.
"""

from __future__ import annotations

import datetime
import gc
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynaspec.bench.workloads import WORKLOADS, workload
from dynaspec.llm import LLM
from dynaspec.outputs import RequestOutput
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig

DRAFTERS = ("ngram", "draft-model")
PROFILE_FIELDS = (
    "name",
    "drafter",
    "target",
    "draft",
    "workload",
    "max_draft_len",
    "acceptance_per_position",
    "prefix_acceptance_per_position",
    "mean_accepted_length",
    "num_prompts",
    "max_tokens",
    "measured_on",
    "date",
    "command",
)


@dataclass
class AcceptanceCounts:
    """Per-position draft / acceptance counts over request-steps (see the module docstring)."""

    max_draft_len: int
    request_steps: int = 0
    drafted: int = 0
    accepted: int = 0
    drafting_request_steps: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    reached_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_draft_len < 1:
            raise ValueError(f"max_draft_len must be >= 1, got {self.max_draft_len}")
        for counts in (self.drafted_per_position, self.reached_per_position, self.accepted_per_position):
            counts.extend([0] * (self.max_draft_len - len(counts)))

    def add(self, drafted: int, accepted: int) -> None:
        """One decoding request in one step with k >= 1: `drafted` tokens proposed, `accepted` accepted."""
        if not 0 <= drafted <= self.max_draft_len:
            raise ValueError(f"drafted must be in 0..max_draft_len={self.max_draft_len}, got {drafted}")
        if not 0 <= accepted <= drafted:
            raise ValueError(f"accepted must be in 0..drafted={drafted}, got {accepted}")
        self.request_steps += 1
        self.drafted += drafted
        self.accepted += accepted
        self.drafting_request_steps += drafted > 0
        for j in range(drafted):
            self.drafted_per_position[j] += 1
            if accepted >= j:
                self.reached_per_position[j] += 1
            if accepted > j:
                self.accepted_per_position[j] += 1

    def conditional_acceptance(self) -> list[float]:
        return [a / r if r else 0.0 for a, r in zip(self.accepted_per_position, self.reached_per_position)]

    def prefix_acceptance(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position)]

    @property
    def mean_accepted_length(self) -> float:
        return (self.accepted + self.request_steps) / self.request_steps if self.request_steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_steps": self.request_steps,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "drafting_request_steps": self.drafting_request_steps,
            "drafted_per_position": list(self.drafted_per_position),
            "reached_per_position": list(self.reached_per_position),
            "accepted_per_position": list(self.accepted_per_position),
        }


@dataclass
class Timing:
    """Output tokens and seconds of a set of runs; decode time excludes the time to the first token."""

    tokens: int = 0
    seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class RunResult:
    """One (drafter, workload) measurement: acceptance counts, timings, lossless check."""

    drafter: str
    workload: str
    target: str
    draft: str | None
    max_draft_len: int
    num_prompts: int
    max_tokens: int
    batch_size: int
    seed: int
    counts: AcceptanceCounts
    no_spec: Timing
    spec: Timing
    mismatched_prompts: list[int]

    def profile(self, command: str, measured_on: str, date: str | None = None) -> dict[str, Any]:
        """The profile JSON of this run (schema in the module docstring)."""
        c = self.counts
        return {
            "name": f"{self.drafter}-{self.workload}",
            "drafter": self.drafter,
            "target": self.target,
            "draft": self.draft,
            "workload": self.workload,
            "max_draft_len": self.max_draft_len,
            "acceptance_per_position": c.conditional_acceptance(),
            "prefix_acceptance_per_position": c.prefix_acceptance(),
            "mean_accepted_length": c.mean_accepted_length,
            "num_prompts": self.num_prompts,
            "max_tokens": self.max_tokens,
            "measured_on": measured_on,
            "date": date or datetime.date.today().isoformat(),
            "command": command,
            "acceptance_rate": c.accepted / c.drafted if c.drafted else 0.0,
            "draft_rate": c.drafting_request_steps / c.request_steps if c.request_steps else 0.0,
            "mean_draft_len": c.drafted / c.request_steps if c.request_steps else 0.0,
            "counts": c.as_dict(),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "output_tokens": {"no_spec": self.no_spec.tokens, "spec": self.spec.tokens},
            "tokens_per_s": _ratio(self.no_spec.tokens_per_s, self.spec.tokens_per_s),
            "decode_tokens_per_s": _ratio(self.no_spec.decode_tokens_per_s, self.spec.decode_tokens_per_s),
            "greedy_identical": not self.mismatched_prompts,
            "mismatched_prompts": list(self.mismatched_prompts),
        }


def _ratio(no_spec: float, spec: float) -> dict[str, float]:
    return {"no_spec": no_spec, "spec": spec, "ratio": spec / no_spec if no_spec > 0 else 0.0}


def spec_config(drafter: str, max_draft_len: int, draft_model: str | None, max_matching_ngram_size: int = 3):
    """The speculative config of `drafter` ("ngram" or "draft-model")."""
    if drafter == "ngram":
        return NGramDecodingConfig(max_draft_len=max_draft_len, max_matching_ngram_size=max_matching_ngram_size)
    if drafter == "draft-model":
        if not draft_model:
            raise ValueError("the draft-model drafter needs a draft model (zoo name, HF directory or .gguf)")
        return DraftTargetDecodingConfig(max_draft_len=max_draft_len, speculative_model=draft_model)
    raise ValueError(f"unknown drafter {drafter!r}; choose from {', '.join(DRAFTERS)}")


def engine_options(batch_size: int, max_model_len: int, block_size: int = 16) -> dict[str, Any]:
    """Engine options sized for `batch_size` sequences of `max_model_len` (+ draft slots) on CPU."""
    blocks_per_seq = -(-(max_model_len + 32) // block_size)
    return {
        "device": "cpu",
        "dtype": "float32",
        "max_num_seqs": batch_size,
        "max_model_len": max_model_len,
        "block_size": block_size,
        "num_kv_blocks": batch_size * blocks_per_seq,
    }


def prompt_ids(llm: LLM, conversations: Sequence[list[dict]]) -> list[list[int]]:
    """Token ids of each chat conversation through the target tokenizer's chat template."""
    if llm.tokenizer is None or not getattr(llm.tokenizer, "chat_template", None):
        raise ValueError("the benchmark workloads are chat conversations; the target needs a chat template")
    return [
        list(llm.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
        for c in conversations
    ]


def run_batch(
    llm: LLM, prompts: Sequence[list[int]], params: SamplingParams, counts: AcceptanceCounts | None, timing: Timing
) -> list[list[int]]:
    """Run `prompts` together to completion; add their acceptance records to `counts` and time to `timing`.

    Returns the output token ids in prompt order.
    """
    engine = llm.engine
    ids = [f"bench-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    steps_seen = llm.get_stats()["num_steps"]
    start = time.perf_counter()
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, list(prompt), params)
    finished: dict[str, RequestOutput] = {}
    while len(finished) < len(ids):
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        if counts is not None:
            stats = llm.get_stats()
            if stats["num_steps"] != steps_seen:
                steps_seen = stats["num_steps"]
                last = stats["last_step"]
                if last["k"] >= 1:
                    for d, a in zip(last["drafted_per_request"], last["accepted_per_request"]):
                        counts.add(d, a)
    timing.seconds += time.perf_counter() - start
    outs = [finished[i] for i in ids]
    timing.tokens += sum(len(o.token_ids) for o in outs)
    metrics = [o.metrics for o in outs if o.metrics is not None and o.metrics.first_token_time is not None]
    if len(metrics) == len(outs) and outs:
        # From the moment every request has its first token to the last finish: pure decoding.
        decode_start = max(m.first_token_time for m in metrics)
        decode_end = max(m.finish_time or decode_start for m in metrics)
        timing.decode_seconds += decode_end - decode_start
        timing.decode_tokens += sum(max(0, len(o.token_ids) - 1) for o in outs)
    return [list(o.token_ids) for o in outs]


def warm_up(llm: LLM, prompt: list[int], max_tokens: int = 8) -> None:
    """One short untimed generation (first forwards allocate and are slow)."""
    run_batch(llm, [prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens), None, Timing())


def measure_workload(
    base: LLM,
    spec: LLM,
    drafter: str,
    workload_name: str,
    *,
    target: str,
    draft: str | None,
    max_draft_len: int,
    num_prompts: int,
    max_tokens: int,
    batch_size: int = 1,
    seed: int = 0,
) -> RunResult:
    """Run `num_prompts` prompts of `workload_name` through `base` and `spec`, interleaved per batch."""
    if workload_name not in WORKLOADS:
        raise ValueError(f"unknown workload {workload_name!r}; choose from {', '.join(WORKLOADS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = prompt_ids(base, workload(workload_name, num_prompts, seed))
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    counts = AcceptanceCounts(max_draft_len)
    no_spec, with_spec = Timing(), Timing()
    mismatched: list[int] = []
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first : first + batch_size]
        reference = run_batch(base, chunk, params, None, no_spec)
        got = run_batch(spec, chunk, params, counts, with_spec)
        mismatched += [first + i for i, (r, g) in enumerate(zip(reference, got)) if r != g]
    return RunResult(
        drafter=drafter,
        workload=workload_name,
        target=target,
        draft=draft,
        max_draft_len=max_draft_len,
        num_prompts=len(prompts),
        max_tokens=max_tokens,
        batch_size=batch_size,
        seed=seed,
        counts=counts,
        no_spec=no_spec,
        spec=with_spec,
        mismatched_prompts=mismatched,
    )


def run_benchmark(
    target: str,
    drafters: Sequence[str],
    workloads: Sequence[str],
    *,
    draft_model: str | None,
    max_draft_len: int | dict[str, int] = 4,
    max_matching_ngram_size: int = 3,
    num_prompts: int = 3,
    max_tokens: int = 96,
    batch_size: int = 1,
    max_model_len: int = 2048,
    seed: int = 0,
    log=print,
    on_result=None,
) -> list[RunResult]:
    """Every (drafter, workload) pair; one no-spec LLM for the whole run, one spec LLM per drafter.

    Only two engines live at a time (the target's weights twice plus the draft model), which keeps a
    1.5B fp32 target within a small machine's memory. `on_result(result)` is called as each pair
    finishes (to write its profile at once).
    """
    for d in drafters:
        if d not in DRAFTERS:
            raise ValueError(f"unknown drafter {d!r}; choose from {', '.join(DRAFTERS)}")
    for w in workloads:
        if w not in WORKLOADS:
            raise ValueError(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    options = engine_options(batch_size, max_model_len)
    base = LLM(target, **options)
    warm = prompt_ids(base, workload("chat", 1, seed))[0]
    results: list[RunResult] = []
    for drafter in drafters:
        k = max_draft_len[drafter] if isinstance(max_draft_len, dict) else max_draft_len
        config = spec_config(drafter, k, draft_model, max_matching_ngram_size)
        spec = LLM(target, speculative_config=config, **options)
        warm_up(base, warm)  # loading the second engine may have evicted the first one's pages
        warm_up(spec, warm)
        draft = draft_model if drafter == "draft-model" else None
        for w in workloads:
            t0 = time.perf_counter()
            result = measure_workload(
                base, spec, drafter, w, target=target, draft=draft, max_draft_len=k,
                num_prompts=num_prompts, max_tokens=max_tokens, batch_size=batch_size, seed=seed,
            )
            results.append(result)
            log(summary_line(result) + f" [{time.perf_counter() - t0:.0f} s]")
            if on_result is not None:
                on_result(result)
        del spec
        gc.collect()
    return results


def summary_line(r: RunResult) -> str:
    acc = ", ".join(f"{a:.2f}" for a in r.counts.conditional_acceptance())
    return (
        f"{r.drafter:11s} {r.workload:9s} accept/pos [{acc}] tau {r.counts.mean_accepted_length:.2f} "
        f"tok/s {r.no_spec.tokens_per_s:.2f} -> {r.spec.tokens_per_s:.2f} "
        f"(x{r.spec.tokens_per_s / r.no_spec.tokens_per_s if r.no_spec.tokens_per_s else 0:.2f}) "
        f"identical={not r.mismatched_prompts}"
    )


def write_profiles(results: Sequence[RunResult], out_dir: str | Path, command: str, measured_on: str) -> list[Path]:
    """One JSON profile per result, `acceptance_<drafter>_<workload>.json` (batch 1) or `..._b<N>.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        suffix = "" if r.batch_size == 1 else f"_b{r.batch_size}"
        path = out / f"acceptance_{r.drafter}_{r.workload}{suffix}.json"
        path.write_text(json.dumps(r.profile(command, measured_on), indent=2) + "\n")
        paths.append(path)
    return paths


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read a profile JSON and check that it has every schema field."""
    data = json.loads(Path(path).read_text())
    missing = [f for f in PROFILE_FIELDS if f not in data]
    if missing:
        raise ValueError(f"{path}: not an acceptance profile, missing fields {', '.join(missing)}")
    return data


def markdown_table(profiles: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per profile (workload x drafter), for docs/benchmarks.md."""
    k = max(p["max_draft_len"] for p in profiles)
    head = (
        "| workload | drafter | k | " + " | ".join(f"acc[{j}]" for j in range(k))
        + " | mean acc. len | tok/s no-spec | tok/s spec | ratio | decode ratio | identical | prompts x max_tokens |"
    )
    sep = "|" + "---|" * (head.count("|") - 1)
    rows = []
    for p in profiles:
        acc = [f"{a:.2f}" for a in p["acceptance_per_position"]] + ["-"] * (k - p["max_draft_len"])
        t, d = p["tokens_per_s"], p["decode_tokens_per_s"]
        rows.append(
            f"| {p['workload']} | {p['drafter']} | {p['max_draft_len']} | " + " | ".join(acc)
            + f" | {p['mean_accepted_length']:.2f} | {t['no_spec']:.2f} | {t['spec']:.2f} | {t['ratio']:.2f}"
            + f" | {d['ratio']:.2f} | {'yes' if p['greedy_identical'] else 'NO'} | {p['num_prompts']} x {p['max_tokens']} |"
        )
    return "\n".join([head, sep, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m dynaspec.bench.acceptance --help`."""
    import argparse
    import shlex
    import sys

    parser = argparse.ArgumentParser(prog="python -m dynaspec.bench.acceptance", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--draft-model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--drafters", default=",".join(DRAFTERS), help="comma-separated: ngram,draft-model")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ",".join(WORKLOADS))
    parser.add_argument("--ngram-max-draft-len", type=int, default=4)
    parser.add_argument("--draft-model-max-draft-len", type=int, default=4)
    parser.add_argument("--max-matching-ngram-size", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--measured-on", default="cpu 2 cores")
    parser.add_argument("--allow-mismatch", action="store_true", help="exit 0 even if greedy outputs differ")
    args = parser.parse_args(argv)
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "dynaspec.bench.acceptance", *(argv or sys.argv[1:])])
    results = run_benchmark(
        args.target,
        [d.strip() for d in args.drafters.split(",") if d.strip()],
        [w.strip() for w in args.workloads.split(",") if w.strip()],
        draft_model=args.draft_model,
        max_draft_len={"ngram": args.ngram_max_draft_len, "draft-model": args.draft_model_max_draft_len},
        max_matching_ngram_size=args.max_matching_ngram_size,
        num_prompts=args.num_prompts,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        max_model_len=args.max_model_len,
        seed=args.seed,
        log=lambda line: print(line, flush=True),
        on_result=lambda r: print(f"wrote {write_profiles([r], args.out_dir, command, args.measured_on)[0]}", flush=True),
    )
    paths = write_profiles(results, args.out_dir, command, args.measured_on)
    print(markdown_table([load_profile(p) for p in paths]))
    bad = [f"{r.drafter}/{r.workload} prompts {r.mismatched_prompts}" for r in results if r.mismatched_prompts]
    if bad:
        print("GREEDY MISMATCH (speculation changed the output): " + "; ".join(bad), flush=True)
        return 0 if args.allow_mismatch else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
