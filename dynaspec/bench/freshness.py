"""Fresh across k = 0: a drafter's acceptance after a phase of plain decoding, against the same request's
acceptance before it and against a run that never stopped drafting (TensorRT-LLM #16888: a drafter left stale
by k = 0 steps silently collapses acceptance). Issue 21's check for the EAGLE head (tests/test_eagle_smollm2.py,
scripts/fresh_across_k0.py on real weights).

A request r decodes alone under the schedule {1: k, 2: 0}; with a gap, a second request joins after
`gap_at` steps and turns speculation off until it finishes, then r drafts again. Greedy, so r's tokens are
the same with or without the gap, and "after" is compared over the same output positions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# (output length of r before the step, the step's k, accepted, drafted)
StepRow = tuple[int, int, int, int]


def acceptance_by_phase(make_engine: Callable[[], object], prompt: list[int], other: list[int] | None,
                        max_tokens: int, other_tokens: int, gap_at: int) -> tuple[list[StepRow], int, int]:
    """Run r (and, with `other`, the second request joining after `gap_at` steps): every decode step's row,
    the number of k = 0 steps and gap_end (r's output length after the last k = 0 step; 0 without one)."""
    from dynaspec.sampling_params import SamplingParams

    engine = make_engine()
    engine.add_request("r", prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    request = engine.requests["r"]
    steps: list[StepRow] = []
    step, seen = 0, None
    while engine.has_unfinished_requests():
        if other is not None and step == gap_at:
            params = SamplingParams(temperature=0.0, max_tokens=other_tokens, ignore_eos=True)
            engine.add_request("other", other, params)
        before = request.num_output_tokens
        engine.step()
        step += 1
        last = engine.stats.last_step
        if last is seen or not last:  # a prefill-only step records nothing
            continue
        seen = last
        steps.append((before, last["k"], last["accepted"], last["drafted"]))
    plain = [s for s in steps if s[1] == 0]
    return steps, len(plain), (plain[-1][0] + 1 if plain else 0)


@dataclass(frozen=True)
class Freshness:
    """Acceptance (accepted / drafted) of r's speculative steps before and after the plain phase, and of the
    run without a gap over the positions "after" covers; the plain phase's length in steps."""

    before: float
    after: float
    never_stopped: float
    plain_steps: int
    drafted: tuple[int, int, int]  # drafted positions behind before, after, never_stopped


def measure_freshness(make_engine: Callable[[], object], prompt: list[int], other: list[int],
                      max_tokens: int = 40, other_tokens: int = 5, gap_at: int = 4) -> Freshness:
    """The two runs (with the gap, without) and their rates."""
    steps, plain_steps, gap_end = acceptance_by_phase(make_engine, prompt, other, max_tokens, other_tokens, gap_at)
    reference, _, _ = acceptance_by_phase(make_engine, prompt, None, max_tokens, other_tokens, gap_at)

    def rate(rows: list[StepRow]) -> tuple[float, int]:
        drafted = sum(r[3] for r in rows)
        return (sum(r[2] for r in rows) / drafted if drafted else 0.0), drafted

    before, d_before = rate([r for r in steps if r[1] > 0 and r[0] < gap_end])
    after, d_after = rate([r for r in steps if r[1] > 0 and r[0] >= gap_end])
    never, d_never = rate([r for r in reference if r[0] >= gap_end])
    return Freshness(before, after, never, plain_steps, (d_before, d_after, d_never))
