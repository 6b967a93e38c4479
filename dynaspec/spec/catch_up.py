"""Price of a drafter's catch-up: the work a speculative step does first for tokens committed without it.

A drafter only sees tokens when it proposes (spec/drafter.py: plain k = 0 steps do no draft work at all),
so the first speculative step after plain ones first brings the drafter up to date with every token
committed meanwhile, prompts of newly admitted requests included: the n-gram drafter indexes them (pure
Python, ~1-3 us a token on the GPU hosts measured), a draft model runs them through its own forward. At
batch 256 after 60 plain steps that is ~50k tokens and a 140 ms step (NVIDIA H200, docs/benchmarks.md),
fourteen plain steps' worth, which no k > 0 earns back over the few steps left in a batch's tail.

Switching from k = 0 to k > 0 is therefore an investment, the switching cost of Liu et al. 2024
(SmartSpec, arXiv 2406.14066) applied to the drafter's state: it pays when the time the faster k saves
on the tokens still to generate exceeds the catch-up,

    seconds_per_token * backlog_tokens  <  remaining_tokens * (1 / goodput(0) - 1 / goodput(k)).

`CatchUpCost` holds seconds per backlog token: a prior measured at start-up (the drafter times its own
catch-up on synthetic tokens) and, once steps that caught up were timed, the median of what those steps
took beyond their predicted T(batch, k), per backlog token.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import median

# Recent catch-up samples kept (seconds per token); their median replaces the prior.
MAX_CATCH_UP_SAMPLES = 32
# Tokens a request is assumed to still generate at most when pricing a switch: max_tokens bounds what is
# left, but a request may stop at EOS long before a large max_tokens.
HORIZON_TOKENS_PER_REQUEST = 256


class CatchUpCost:
    """Seconds per token of drafter catch-up: a start-up prior, then the median of observed steps."""

    def __init__(self, prior_seconds_per_token: float = 0.0) -> None:
        if (
            isinstance(prior_seconds_per_token, bool)
            or not isinstance(prior_seconds_per_token, (int, float))
            or not math.isfinite(prior_seconds_per_token)
            or prior_seconds_per_token < 0
        ):
            raise ValueError(
                f"prior_seconds_per_token must be a finite number of seconds >= 0, got {prior_seconds_per_token!r}"
            )
        self.prior = float(prior_seconds_per_token)
        self._samples: deque[float] = deque(maxlen=MAX_CATCH_UP_SAMPLES)

    @property
    def seconds_per_token(self) -> float:
        return median(self._samples) if self._samples else self.prior

    def seconds(self, tokens: int) -> float:
        """Predicted seconds to catch up on `tokens` backlog tokens."""
        return self.seconds_per_token * max(0, int(tokens))

    def observe(self, tokens: int, extra_seconds: float) -> None:
        """A step that caught up on `tokens` tokens took `extra_seconds` beyond its predicted step time."""
        if tokens > 0 and math.isfinite(extra_seconds):
            self._samples.append(max(0.0, float(extra_seconds)) / tokens)

    def __len__(self) -> int:
        return len(self._samples)


def switch_pays(catch_up_seconds: float, remaining_tokens: float, goodput_now: float, goodput_after: float) -> bool:
    """Whether moving from goodput_now to goodput_after (tokens/s) over `remaining_tokens` earns back the
    catch-up (see the module docstring)."""
    if goodput_after <= goodput_now:
        return False
    if catch_up_seconds <= 0:
        return True
    return remaining_tokens * (1.0 / goodput_now - 1.0 / goodput_after) > catch_up_seconds
