"""A speculative price read off too few steps near a batch, checked by speculating there (issue 20).

The adaptive policy prices a speculative step at its probed GPU time plus the host-overhead fit
(spec/step_overhead.py), a plain step at its probe plus the plain residual. Near a batch where the fit's
speculative cells hold few steps, the speculative part is a reading of other batches or of one or two steps, and
where it makes k = 0 win nothing corrects it: plain steps teach the plain price only, and an exploration from
k = 0 waits until 1% of the decisions' time covers two steps and the drafter's catch-up (at batch 4, more than
the 128 steps of a bench point). On an H100 (2026-12-07):
- random Llama-3.1-8B with a draft model: speculative steps at batch 1 ran 3.3 ms over their probe (0.4 ms at
  batch 2 and 4, seen later); the fit read it as a per-step term, and adaptive ran k = 0 for the first 19 steps
  of batch 4 (0.84x static k = 3);
- the EAGLE head for Qwen2.5-Coder-1.5B on chat: two warm-up steps at batch 4, 1.1 ms over their probe, priced
  every speculative step there ~0.8 ms too high; adaptive ran k = 0 for all 128 steps at batch 4 and 16 (1.01x no
  spec where static k = 3 ran 1.18x, k = 1 1.07x).
The rule: when the plan holds k = 0 at a batch where the fit's speculative cells within a factor `span` of it hold
fewer than `min_samples` steps, and the plan priced optimistically (a speculative step's host work that of a plain
step: what the probe alone says speculating costs) would speculate, that plan runs for `steps` decisions (the
first after plain steps pays the drafter's catch-up, which teaches the catch-up's price, not the fit), and the
plans are redone with what they measured. Once per neighbourhood: a batch within `span` of one probed is not
probed again (a closed batch's tail visits every batch below it). Optimism where an error does not correct
itself, as UCB is for rewards (Auer, Cesa-Bianchi and Fischer 2002); an error the other way (a price too low)
runs the steps that measure it.
"""

from __future__ import annotations

from dynaspec.spec.step_overhead import StepOverheadModel


class PriceProbe:
    """When to run speculation to measure its price (module docstring); min_samples >= 1, span > 1, steps >= 1."""

    def __init__(self, min_samples: int = 4, span: float = 2.0, steps: int = 2) -> None:
        self.min_samples = min_samples
        self.span = span
        self.steps = steps
        self.probed: list[int] = []  # the batches probed, in order
        self._decisions_left = 0
        self._observations_left = 0

    @property
    def running(self) -> bool:
        """Whether a probe started and has decisions left."""
        return self._decisions_left > 0

    def due(self, batch: int, overhead: StepOverheadModel) -> bool:
        """Whether a probe at this batch would measure a speculative price read off too few steps (the caller
        checks that the optimistic plan speculates)."""
        if any(b / self.span <= batch <= b * self.span for b in self.probed):
            return False
        return overhead.speculative_samples_near(batch, self.span) < self.min_samples

    def start(self, batch: int) -> None:
        self.probed.append(batch)
        self._decisions_left = self._observations_left = self.steps

    def decided(self) -> None:
        """One of the probe's decisions was made."""
        self._decisions_left = max(0, self._decisions_left - 1)

    def observed_speculative_step(self) -> bool:
        """One of the probe's speculative steps was observed; True at its last (the plans are then redone)."""
        if self._observations_left == 0:
            return False
        self._observations_left -= 1
        return self._observations_left == 0

    def cancel(self) -> None:
        """The optimistic plan stopped speculating mid-probe (its requests left): nothing more to run."""
        self._decisions_left = self._observations_left = 0
