"""Price of a drafter's catch-up: the work a speculative step does first for tokens committed without it.

A drafter only sees tokens when it proposes (spec/drafter.py: plain k = 0 steps do no draft work at all),
so the first speculative step after plain ones first brings the drafter up to date with every token
committed meanwhile, prompts of newly admitted requests included: the n-gram drafter indexes them (pure
Python), a draft model runs them through its own forward. After many plain steps at a large batch that
is tens of thousands of tokens, many plain steps' worth, which no k > 0 earns back over the few steps
left in a batch's tail (docs/lab/planner_history.md).

Switching from k = 0 to k > 0 is therefore an investment, the switching cost of Liu et al. 2024
(SmartSpec, arXiv 2406.14066) applied to the drafter's state: it pays when the time the faster k saves
on the tokens still to generate exceeds the catch-up,

    seconds_per_token * backlog_tokens  <  remaining_tokens * (1 / goodput(0) - 1 / goodput(k)).

`CatchUpCost` prices a catch-up of n tokens as fixed + n x seconds per token. The fixed part is what one
catch-up costs whatever its length: a model drafter's catch-up is one eager forward over every backlog token
(ChainDrafter._feed_ahead), whose launches cost the same for 400 tokens as for 6,400 (on an H100 the EAGLE
head's first speculative step at batch 1 took ~3.5 ms beyond its predicted step; priced per token through
the origin, the 6,400-token backlog of a batch of 16 came to ~56 ms, and the catch-up rule held both policies
at k = 0 for every step at batch 16 and 64, docs/lab/benchmarks.md). Both parts are measured at start-up (the
drafter times its own catch-up of a short and a long synthetic backlog: Drafter.measure_catch_up_cost; the
n-gram drafter indexes in pure Python, no fixed part). The per-token part is the least-squares slope through
the origin of what steps that caught up took beyond their predicted T(batch, k) and the fixed part, against
their backlog, sum(tokens * (extra - fixed)) / sum(tokens^2), each sum discounted by
1 - 1/CATCH_UP_MEMORY_SAMPLES per new sample (a recency weighting that keeps a large catch-up's weight above
many later small ones'), with the start-up probe as its first sample: a catch-up of PROBE_BACKLOG_TOKENS
tokens. A step that caught up on ten tokens mostly measures the noise of the step time, one that caught up
on 20,000 measures the price, so large catch-ups weigh most (a per-sample median let the many small ones
price the large ones at nearly nothing; on an H100, 2026-12-06, the one batch-1 catch-up of ~170 tokens
replaced the probe's price outright and priced every later backlog from its noise).
"""

from __future__ import annotations

import math

from dynaspec.spec.step_overhead import timed_short

# Memory of the catch-up fit, in samples: older samples' weights decay by 1 - 1 / this per new sample.
CATCH_UP_MEMORY_SAMPLES = 32
# Tokens a request is assumed to still generate at most when pricing a switch: max_tokens bounds what is
# left, but a request may stop at EOS long before a large max_tokens.
HORIZON_TOKENS_PER_REQUEST = 256
# The long synthetic backlog the model drafters time at start-up (ChainDrafter.measure_catch_up_cost); the
# probe's price counts as one observed catch-up of this many tokens.
PROBE_BACKLOG_TOKENS = 2048


class CatchUpCost:
    """Seconds of drafter catch-up: a fixed part and a per-token part (a start-up prior, then a fit)."""

    def __init__(self, prior_seconds_per_token: float = 0.0, fixed_seconds: float = 0.0,
                 prior_tokens: int = PROBE_BACKLOG_TOKENS) -> None:
        """prior_seconds_per_token, fixed_seconds: the drafter's start-up measurement (>= 0); a positive prior
        is the fit's first sample, weighing as a catch-up of prior_tokens tokens (0 where nothing was timed:
        the first real sample then sets the price)."""
        self.prior = float(prior_seconds_per_token)
        self.fixed = max(0.0, float(fixed_seconds))
        self._num_samples = 0
        weight = float(prior_tokens) ** 2 if self.prior > 0 else 0.0
        self._tokens_times_extra = weight * self.prior  # discounted sum(tokens * extra seconds)
        self._tokens_squared = weight  # discounted sum(tokens^2)

    @property
    def seconds_per_token(self) -> float:
        """The discounted sum(tokens * extra) / sum(tokens^2), at least 0; the prior before any sample."""
        if not self._tokens_squared:
            return self.prior
        return max(0.0, self._tokens_times_extra / self._tokens_squared)

    def seconds(self, tokens: int) -> float:
        """Predicted seconds to catch up on `tokens` backlog tokens (0 for none)."""
        tokens = max(0, int(tokens))
        return self.fixed + self.seconds_per_token * tokens if tokens else 0.0

    def observe(self, tokens: int, extra_seconds: float, predicted_seconds: float | None = None) -> bool:
        """A step that caught up on `tokens` tokens took `extra_seconds` beyond its predicted step time
        (negative when it ran faster: kept, so that noise averages out); the fixed part is taken off first.
        predicted_seconds (that prediction): a step timed short against it (step_overhead.timed_short) is no
        sample: on an H100 (2026-12-07 13:03 UTC, the draft model's batch-4 point) the first speculative step
        after a prefill, catching up on a 128-token prompt, read 1.1 ms against a predicted 11, a catch-up of
        -10 ms. Returns whether it was kept."""
        if predicted_seconds is not None and timed_short(predicted_seconds + extra_seconds, predicted_seconds):
            return False
        if tokens > 0 and math.isfinite(extra_seconds):
            keep = 1.0 - 1.0 / CATCH_UP_MEMORY_SAMPLES
            self._tokens_times_extra = keep * self._tokens_times_extra + tokens * (float(extra_seconds) - self.fixed)
            self._tokens_squared = keep * self._tokens_squared + float(tokens) * tokens
            self._num_samples += 1
            return True
        return False

    def __len__(self) -> int:
        """Samples observed so far."""
        return self._num_samples


def switch_pays(catch_up_seconds: float, remaining_tokens: float, goodput_now: float, goodput_after: float) -> bool:
    """Whether moving from goodput_now to goodput_after (tokens/s) over `remaining_tokens` earns back the
    catch-up (see the module docstring)."""
    if goodput_after <= goodput_now:
        return False
    if catch_up_seconds <= 0:
        return True
    return remaining_tokens * (1.0 / goodput_now - 1.0 / goodput_after) > catch_up_seconds


def describe_catch_up(catch_up: CatchUpCost | None) -> dict[str, float | int]:
    """A drafter's catch-up price now, JSON-ready (policies' view()); zeros where switching is free (None)."""
    if catch_up is None:
        return {"catch_up_seconds_per_token": 0.0, "catch_up_fixed_seconds": 0.0, "catch_up_samples": 0}
    return {"catch_up_seconds_per_token": catch_up.seconds_per_token, "catch_up_fixed_seconds": catch_up.fixed,
            "catch_up_samples": len(catch_up)}
