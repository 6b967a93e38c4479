"""Online model of the time a real decode step spends beyond its probed GPU time.

The start-up probe (runtime/cost_probe.py) times CUDA-graph replays only. A real step also runs host
work (scheduling, drafting, verification, committing, detokenising) that grows with the number of
requests and with the tokens they commit, so the probe alone makes longer drafts and larger batches
look cheaper than they are, and a planner that trusts it explores the wrong k's (SmartSpec, Liu et al.
2024, arXiv 2406.14066, models the step time as a function of batch size and verified tokens for the
same reason). This model learns the residual

    residual(batch, k) ~= a + f * [k > 0] + d * k  +  b * batch + s * batch * [k > 0] + c * batch * k

(per step: fixed work, fixed work of a speculative step, work per draft position of the chain; per request: work
per request, work per request on speculative steps only, e.g. n-gram indexing and verification bookkeeping, which
plain and overlapped k = 0 steps skip, work per drafted token) by least squares over the MEDIAN residual of each
observed (batch, k) cell (of its most recent samples), each cell weighted by its sample count (as if every sample
stood at its cell's median: on an H100, 2026-12-06, an unweighted fit priced a batch-4 plain step 1.0 ms above its
probe where 127 samples measured 0.16 ms, bent by single-step cells) and under Huber's loss (huber_fit: a cell of
one wild step, such as an eager 55 ms one, is weighed down), with only the terms the observed cells can identify,
in that order (a term collinear with the earlier ones, e.g. the per-drafted-token one while every step ran the
same k, stays 0: see identifiable_columns) and with every term but a kept >= 0 (see nonnegative_fit; a term fixed
at 0 there makes room for the next identifiable one), so one observed (batch, k) corrects the prediction of cells
never run yet. The per-step terms come first: from cells at one batch size only, a speculative step's extra time
cannot be told apart between per step and per request, and per request it grows with every batch the policy has not
run. On an H100 (2026-12-06, the EAGLE head for Qwen2.5-Coder-1.5B) a speculative step's residual was 0.26-0.36 ms
at batch 1, 0.21-0.41 at 4, 0.26-0.67 at 16: mostly per step; fitted per request from batch 1 it came to ~4 ms at
batch 16, a price under which k = 0 always wins and which no speculative step is then run to correct. Read per
step, it is too low where host work grows with the batch, which the first speculative step at that batch corrects;
not where a small batch's residual is the larger one: the draft model's speculative steps on an H100 (2026-12-07,
random Llama-3.1-8B) ran 3.3 ms over their probe at batch 1 and 0.4 ms at batch 4, and read per step the batch-1
residual held k = 0 for batch 4's first 19 steps (docs/lab/adaptive_runs.md, the draft-model sweep). For the same
reason a speculative step at a batch larger than any speculative step seen is priced as at the largest one seen (same
mean k): the per-request and per-drafted-token terms are fitted on the batches run, and extrapolated they only grow.
On an H100 (2026-12-06, the same head) adaptive's fit from batches 1-4 priced 6.7 ms of host work per step at batch 16
and k = 6 (a per-drafted-token term of 70 us), so it ran k = 0 at batch 16 where static k = 2 ran 1.25x no spec. A
one-off slow step (the n-gram drafter indexing every prompt on the first speculative step, a page fault, a
preemption) does not bend the fit, and a step timed before its GPU work ran (an overlapped step at a ramp or a
tail: `add`) is left out. Predictions are clamped at 0 and are 0 before `min_samples` samples arrive. The planner
asks for predictions every step, so the fit is redone only when a sample lands in a speculative cell the last fit
did not have, or after `refit_every` new samples. A new k = 0 cell does not force a refit: in a closed batch's tail
every step has a new batch size, and a refit per step (a rank test and a least squares) would run on every one.
Measurements behind these choices: docs/lab/planner_history.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from statistics import median

import numpy as np

# Columns of the residual model (module docstring), in the order identifiable_columns keeps them.
COLUMNS = ("a: per step", "f: per speculative step", "d: per draft position", "b: per request",
           "s: per request when speculating", "c: per drafted token")
NONNEGATIVE_COLUMNS = (1, 2, 3, 4, 5)  # every term but a: host work is never negative
CUT_SHORT_FRACTION = 0.5  # a step measured below this share of its probed GPU time was timed short (add)


def timed_short(measured_seconds: float, predicted_seconds: float) -> bool:
    """Whether a step measured below CUT_SHORT_FRACTION of its predicted (probed) time had its timing cut short
    (StepOverheadModel.add): a sample of nothing, for the overhead fit, the ragged premium and the catch-up price."""
    return measured_seconds < CUT_SHORT_FRACTION * predicted_seconds


class StepOverheadModel:
    """The residual model above: samples of (batch, k, measured - probed seconds), a fit, predictions.

    max_samples: the most recent samples kept; min_samples (1..max_samples): samples before the first
    fit (predictions are 0 until then); refit_every (>= 1): new samples that make a refit due.
    """

    def __init__(self, max_samples: int = 256, min_samples: int = 3, refit_every: int = 8) -> None:
        self.min_samples = min_samples
        self.refit_every = refit_every
        self._samples: deque[tuple[int, int, float]] = deque(maxlen=max_samples)
        self._coef: tuple[float, ...] | None = None  # COLUMNS' coefficients
        self._fitted_cells: set[tuple[int, int]] = set()
        self._added_since_fit = 0
        self._used_for: tuple[frozenset, list[int]] = (frozenset(), [])  # cells -> identifiable columns
        self._largest_speculative_batch = 0  # of the fitted cells with k > 0 (speculative_line)
        self._plain_cells = False  # whether the fit saw plain (k = 0) steps (predict at k = 0)
        self._last_added = False  # whether the latest add() kept its step (a short one after it pairs with it)
        self._short: tuple[int, float, float] | None = None  # (batch, k, residual) of a short step left to pair

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, batch: int, k: float, residual_seconds: float, probed_seconds: float | None = None) -> bool:
        """One real step: measured seconds minus the probe's seconds for the same (batch, k); k may be a
        ragged step's mean draft length (drafted positions / batch: the model's terms stay per token).

        probed_seconds (the probe's price the residual is taken from): a step measured at less than
        CUT_SHORT_FRACTION of it did not run its GPU work in that time but had its timing cut short, and is
        dropped. An overlapped plain step is timed launch to launch, and the first one after a synchronous
        step (a batch ramping up, or its tail) comes back before its forward has run: on an H100
        (2026-12-06, the EAGLE head for Qwen2.5-Coder-1.5B) such steps measured 0.36-0.53 ms against ~1.9 ms,
        in cells (batch 2 of a ramp to 4; batches 13-15 of a tail at 16) where they were the only samples,
        so the fit ran a line through them: a per-step term of -1 ms and a per-request one of +0.5 ms priced
        a speculative step at batch 4 at 3.2 ms of host work (0.4 ms measured), and the adaptive policy ran
        k = 0 for a whole batch-4 phase where static k = 4 ran 1.47x no spec.

        What such a step did not measure, a neighbour at the same (batch, k) did: steps are timed back to back,
        so host work that delays one step's end (the policy planning the next step on the critical path) moves
        time from the next step's window into this one's. The pair's two residuals are then averaged into one
        sample: with the step just added when the short one follows it, else with the next one. On an H100
        (2026-12-07 16:32 UTC, the draft model at batch 128) two chained k = 1 steps read 19.7 and 4.7 ms
        against a probed 10.5: the long one alone priced a speculative step there 9 ms above its probe, and
        the adaptive policy held k = 0 for 16 steps where static k = 1 ran 12 ms steps. Returns whether the
        step was kept as a sample of its own."""
        batch, residual_seconds = int(batch), float(residual_seconds)
        short, self._short = self._short, None
        last_added, self._last_added = self._last_added, False
        if probed_seconds is not None and timed_short(probed_seconds + residual_seconds, probed_seconds):
            if last_added and self._samples[-1][:2] == (batch, k):
                self._samples[-1] = (batch, k, (self._samples[-1][2] + residual_seconds) / 2)
                self._added_since_fit += 1
            else:
                self._short = (batch, k, residual_seconds)
            return False
        if short is not None and short[:2] == (batch, k):
            residual_seconds = (residual_seconds + short[2]) / 2
        self._last_added = True
        self._samples.append((batch, k, residual_seconds))
        self._added_since_fit += 1
        new_speculative_cell = k > 0 and (int(batch), k) not in self._fitted_cells
        if new_speculative_cell or self._added_since_fit >= self.refit_every:
            self._coef = None
        return True

    def refit_if_due(self) -> None:
        """Redo the fit now if a sample made it due (callers with idle time, such as the planner while a
        step's graph runs, keep the next prediction from paying for it)."""
        self._fit()

    @property
    def coefficients(self) -> tuple[float, ...]:
        """(a, f, d, b, s, c) of COLUMNS, in seconds (0s before enough samples)."""
        coef = self._fit()
        return (0.0,) * len(COLUMNS) if coef is None else coef

    def _fit(self) -> tuple[float, ...] | None:
        if len(self._samples) < self.min_samples:
            return None
        if self._coef is None:
            cells = self._grouped()
            keys = np.asarray(list(cells), dtype=np.float64)  # (cells, 2): batch, k
            medians = np.asarray([median(v) for v in cells.values()], dtype=np.float64)  # (cells,)
            # each cell's row scaled by sqrt(its samples): the squared error of every sample against its cell's
            # median (a cell of 127 steps outweighs one of a single step; the median still ignores outliers)
            weights = np.sqrt(np.asarray([len(v) for v in cells.values()], dtype=np.float64))  # (cells,)
            features = _features(keys[:, 0], keys[:, 1])
            cell_set = frozenset(cells)
            if cell_set != self._used_for[0]:  # the identifiable terms change only with the set of cells
                self._used_for = (cell_set, identifiable_columns(features))
            coef = huber_fit(features, medians, weights, self._used_for[1], NONNEGATIVE_COLUMNS)
            self._coef = tuple(float(x) for x in coef)
            self._fitted_cells = set(cells)
            self._largest_speculative_batch = max((batch for batch, k in cells if k > 0), default=0)
            self._plain_cells = any(k <= 0 for _, k in cells)
            self._added_since_fit = 0
        return self._coef

    @property
    def largest_speculative_batch(self) -> int:
        """The largest batch a speculative cell of the fit has (0 before a fit): beyond it speculative_line
        extrapolates."""
        self._fit()
        return self._largest_speculative_batch

    def cells(self) -> list[dict[str, float]]:
        """The observed (batch, k) cells the fit runs over: each one's median residual (seconds) and sample count,
        for reports (a bent fit is read from them)."""
        return [{"batch": batch, "k": k, "median_seconds": median(v), "samples": len(v)}
                for (batch, k), v in sorted(self._grouped().items())]

    def _grouped(self) -> dict[tuple[int, float], list[float]]:
        """The kept samples' residuals by (batch, k) cell."""
        cells: dict[tuple[int, float], list[float]] = {}
        for batch, k, residual in self._samples:
            cells.setdefault((batch, k), []).append(residual)
        return cells

    def predict(self, batch: int, k: float) -> float:
        """Expected extra seconds of a real step over the probed time at (batch, k); >= 0. A plain step (k = 0)
        gets 0 until plain steps were seen: from speculative cells alone the per-step term also carries their
        speculative work, which a plain step does not do."""
        if k <= 0:
            coef = self._fit()
            return 0.0 if coef is None or not self._plain_cells else max(0.0, coef[0] + coef[3] * batch)
        base, per_position = self.speculative_line(batch)
        return max(0.0, base + per_position * batch * k)

    def speculative_line(self, batch: int) -> tuple[float, float]:
        """(base, per drafted position) of a speculative step at this batch: predict(batch, k) for k > 0 is
        max(0, base + per_position * batch * k), for callers pricing many draft budgets at one batch (a
        ragged step's k is its mean draft length: the per-position term d is then d / batch a position).
        Beyond the largest batch a speculative step was seen at, the line of that batch for the same mean k
        (module docstring: extrapolated, the per-request terms only grow)."""
        coef = self._fit()
        if coef is None:
            return 0.0, 0.0
        a, f, d, b, spec, c = coef
        seen = self._largest_speculative_batch
        if 0 < seen < batch:  # residual(seen, k) at k = positions / batch
            return a + f + (b + spec) * seen, (c * seen + d) / batch
        return a + f + (b + spec) * batch, c + d / batch


def identifiable_columns(features: np.ndarray, excluded: frozenset[int] = frozenset()) -> list[int]:
    """Columns of `features` (but `excluded`) kept in order while each raises the rank: a term the observed cells
    cannot tell apart from the ones before it gets coefficient 0 instead of a share of a minimum-norm solution
    (steps seen only at k = 4 fit a + b * batch, not a large c * batch * k that would price other k's)."""
    used: list[int] = []
    for j in range(features.shape[1]):
        if j not in excluded and np.linalg.matrix_rank(features[:, used + [j]]) > len(used):
            used.append(j)
    return used


def nonnegative_fit(
    features: np.ndarray, targets: np.ndarray, used: list[int], nonnegative: tuple[int, ...],
    refill: Callable[[frozenset[int]], list[int]] | None = None,
) -> np.ndarray:
    """Least-squares coefficients over the columns `used` (others 0) with those in `nonnegative` >= 0:
    while the fit gives one of them a negative value, the most negative is fixed at 0 and the rest refit
    (the active-set idea of Lawson & Hanson's NNLS, 1974, one column at a time). refill(fixed): the
    identifiable columns once those fixed at 0 are left out (identifiable_columns), so a later term the
    dropped one had shadowed takes its place; None: the rest of `used` only.

    Host work per request or per drafted token is never negative; an unconstrained fit over cells at
    nearby k's turns noise between them into a negative per-drafted-token term and a large per-request
    one, which overprices small k's at large batches. Refilled: from cells at batch 4 (k = 4) and batch 128
    (k = 1), the per-draft-position term comes before the per-request one and fits negative (the cell with the
    smaller k has the larger residual); dropped alone, it left a per-step term that priced batch 128 at
    batch 4's host work (a replay of an H100's prices, 2026-12-07: 0.39 ms predicted against 2.86 ms), where
    the per-request term fits both cells."""
    free, fixed = list(used), frozenset()
    while True:
        coef = np.zeros(features.shape[1])
        if free:
            coef[free] = np.linalg.lstsq(features[:, free], targets, rcond=None)[0]
        negative = [j for j in free if j in nonnegative and coef[j] < 0]
        if not negative:
            return coef
        dropped = min(negative, key=lambda j: coef[j])
        fixed = fixed | {dropped}
        free = [j for j in refill(fixed) if j not in fixed] if refill is not None else [j for j in free if j != dropped]


HUBER_TUNING = 1.345  # Huber's constant: 95% efficiency under Gaussian noise
HUBER_SCALE_FLOOR_SECONDS = 20e-6  # residuals below this are never outliers (timer and launch jitter)


def huber_fit(
    features: np.ndarray, targets: np.ndarray, weights: np.ndarray, used: list[int], nonnegative: tuple[int, ...],
    iterations: int = 20,
) -> np.ndarray:
    """nonnegative_fit of the cells (rows scaled by `weights`) under Huber's loss (Huber 1964), by iteratively
    reweighted least squares: a cell whose residual is beyond HUBER_TUNING robust scales (1.4826 x the median
    absolute residual, at least HUBER_SCALE_FLOOR_SECONDS) is weighted down by how far beyond it is.

    A cell's median protects it from one slow step among many, not a cell of one step: on an H100 (2026-12-06,
    the EAGLE head for Qwen2.5-Coder-1.5B) the only step at k = 7 ran eager for 55 ms, and in least squares that
    one cell set a per-draft-position term of 1.8 ms and a per-step term of -6.2 ms, which priced the speculative
    steps at batch 64 ~3 ms above what they measured for the rest of the run."""
    robust = np.ones_like(targets)
    coef = np.zeros(features.shape[1])
    refills: dict[frozenset[int], list[int]] = {}  # row scaling keeps the rank: one answer per fixed set

    def refill(fixed: frozenset[int]) -> list[int]:
        if fixed not in refills:
            refills[fixed] = identifiable_columns(features, fixed)
        return refills[fixed]

    for _ in range(iterations):
        scale = weights * np.sqrt(robust)
        coef = nonnegative_fit(features * scale[:, None], targets * scale, used, nonnegative, refill)
        residuals = np.abs(targets - features @ coef)
        cut = HUBER_TUNING * max(1.4826 * float(np.median(residuals)), HUBER_SCALE_FLOOR_SECONDS)
        updated = np.minimum(1.0, cut / np.maximum(residuals, 1e-12))
        if np.allclose(updated, robust, rtol=1e-3, atol=1e-6):
            break
        robust = updated
    return coef


def _features(batch: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(n, 6) regressors of COLUMNS: [1, [k > 0], k, batch, batch * [k > 0], batch * k]."""
    speculative = (k > 0).astype(np.float64)
    return np.stack([np.ones(len(batch)), speculative, k, batch, batch * speculative, batch * k], axis=1)
