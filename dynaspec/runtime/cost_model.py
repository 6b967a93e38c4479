"""Step-cost model T(batch, k): seconds for one draft + verify step of `batch` decoding requests at k.

The goodput planner (spec/planner.py) divides expected committed tokens by this cost, as SmartSpec does
(Liu et al. 2024, "Optimizing Speculative Decoding for Serving Large Language Models Using Goodput",
arXiv 2406.14066): whether speculation pays depends on how the step time grows with the batch size and
with k, which only a measurement on the current device tells (memory-bound steps are nearly flat in k,
compute-bound ones grow with batch * (1 + k)).

The table holds, per (batch bucket, k), the MEDIAN of the samples added with `add()` (the median resists
the odd slow step: a GC pause, a graph capture). `cost(batch, k)`:

* is linear in the batch size between the two nearest measured buckets that have k measured;
* extrapolates FLAT outside the measured range: below the smallest bucket it returns that bucket's cost,
  above the largest it returns the largest bucket's cost (an underestimate there: measure up to the
  largest batch you serve);
* raises ValueError for a k that no bucket measured (the planner must only choose measured k's).

Serialised form (`to_dict`, JSON or YAML file by suffix)::

    {"unit": "seconds", "device": "...", "table": {"1": {"0": 0.0071, "4": 0.0093}, "8": {...}}}

Keys may be ints or decimal strings (JSON object keys are strings).
"""

from __future__ import annotations

import json
import math
import statistics
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

_YAML_SUFFIXES = (".yaml", ".yml")
_JSON_SUFFIXES = (".json",)


# Samples kept per (batch, k) cell; older ones drop out so online measurements track the present.
MAX_SAMPLES_PER_CELL = 64


# Validation of a cost file's contents (from_dict / load: user input); the rest of the module trusts its
# callers (the cost probe, the planner), whose values are ints and positive seconds by construction.
def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def _key_int(value: Any, what: str, minimum: int) -> int:
    """An int from an int or a decimal string key (JSON object keys are strings)."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{what} must be an int, got the string {value!r}") from None
    return _check_int(value, what, minimum)


def _check_seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0.0:
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")
    return seconds


def _path_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _YAML_SUFFIXES:
        return "yaml"
    if suffix in _JSON_SUFFIXES:
        return "json"
    raise ValueError(
        f"cost model file {str(path)!r} must end in .json, .yaml or .yml (the suffix picks the format)"
    )


class StepCostModel:
    """T(batch, k) in seconds from measured samples (median per cell), linear in batch between buckets."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        # The drafter's share of each cell where a probe timed it apart (runtime/cost_probe.py): what a step's
        # drafting costs, sunk once its drafts exist. None: not separated (a tune file, hand-made tables).
        self.drafting: StepCostModel | None = None
        # batch -> k -> samples (seconds)
        self._samples: dict[int, dict[int, list[float]]] = {}
        self._medians: dict[tuple[int, int], float] = {}  # cells whose median is current
        self._costs: dict[tuple[int, int], float] = {}  # cost() answers since the last add()

    # ----------------------------------------------------------------- building
    def add(self, batch: int, k: int, seconds: float) -> None:
        """One measured step: `batch` (>= 1) decoding requests at draft length k (>= 0) took `seconds` (> 0)."""
        samples = self._samples.setdefault(batch, {}).setdefault(k, [])
        samples.append(float(seconds))
        if len(samples) > MAX_SAMPLES_PER_CELL:  # bounded memory; recent steps win the median
            del samples[0]
        self._medians.pop((batch, k), None)
        self._costs.clear()  # an interpolated cost may rest on this cell

    @classmethod
    def fit_from_measurements(
        cls, measurements: Iterable[tuple[int, int, float]], device: str | None = None
    ) -> "StepCostModel":
        """A model from (batch, k, seconds) triples, e.g. timed replays of the captured CUDA graphs."""
        model = cls(device=device)
        count = 0
        for batch, k, seconds in measurements:
            model.add(batch, k, seconds)
            count += 1
        if count == 0:
            raise ValueError("fit_from_measurements needs at least one (batch, k, seconds) measurement")
        return model

    # ----------------------------------------------------------------- queries
    @property
    def batch_sizes(self) -> list[int]:
        """Measured batch buckets, ascending."""
        return sorted(self._samples)

    @property
    def draft_lens(self) -> list[int]:
        """Every k measured at some batch bucket, ascending."""
        return sorted({k for ks in self._samples.values() for k in ks})

    def has(self, k: int) -> bool:
        """Whether k is measured at some batch bucket (so cost(batch, k) is defined)."""
        return any(k in ks for ks in self._samples.values())

    def measured_max_draft_len(self, max_draft_len: int) -> int:
        """The largest k <= max_draft_len such that every k' in 0..k has a measurement."""
        if not self.has(0):
            raise ValueError(f"the step-cost model has no measurement for k=0; measured k values: {self.draft_lens}")
        k = 0
        while k < max_draft_len and self.has(k + 1):
            k += 1
        return k

    def samples(self, batch: int, k: int) -> list[float]:
        """The samples kept at exactly (batch, k) (a copy; empty when none)."""
        return list(self._samples.get(batch, {}).get(k, ()))

    def count(self, batch: int, k: int) -> int:
        """Number of samples kept at exactly (batch, k)."""
        return len(self._samples.get(batch, {}).get(k, ()))

    def measured(self, batch: int, k: int) -> float | None:
        """Median of the samples at exactly (batch, k), or None when that cell has none (computed once
        per new sample: an online planner asks for every cell on every step)."""
        value = self._medians.get((batch, k))
        if value is None:
            samples = self._samples.get(batch, {}).get(k)
            if not samples:
                return None
            value = self._medians[batch, k] = statistics.median(samples)
        return value

    def verify_cost(self, batch: int, k: int) -> float:
        """cost(batch, k) less the drafter's share (`drafting`), i.e. what verifying already drafted positions
        costs; cost(batch, k) itself where the share is unknown."""
        return self.cost(batch, k) - (0.0 if self.drafting is None else self.drafting.cost(batch, k))

    def cost(self, batch: int, k: int) -> float:
        """Seconds for a step of `batch` decoding requests at draft length k (see module docstring);
        remembered until the next add() (an online planner asks for every k on every step)."""
        cached = self._costs.get((batch, k))
        if cached is not None:
            return cached
        seconds = self._cost(batch, k)
        self._costs[batch, k] = seconds
        return seconds

    def _cost(self, batch: int, k: int) -> float:
        buckets = [b for b in sorted(self._samples) if k in self._samples[b]]
        if not buckets:
            measured = self.draft_lens
            raise ValueError(
                f"the step-cost model has no measurement for k={k}; measured k values: "
                f"{measured if measured else 'none (the model is empty)'}"
            )
        i = bisect_left(buckets, batch)
        if i < len(buckets) and buckets[i] == batch:
            return self.measured(batch, k)  # type: ignore[return-value]
        if i == 0:
            return self.measured(buckets[0], k)  # type: ignore[return-value]
        if i == len(buckets):
            return self.measured(buckets[-1], k)  # type: ignore[return-value]
        lo, hi = buckets[i - 1], buckets[i]
        t_lo, t_hi = self.measured(lo, k), self.measured(hi, k)
        weight = (batch - lo) / (hi - lo)
        return t_lo + weight * (t_hi - t_lo)  # type: ignore[operator]

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """{"unit", "device", "table": {batch: {k: median seconds}}} with string keys (JSON-safe)."""
        return {
            "unit": "seconds",
            "device": self.device,
            "table": {
                str(b): {str(k): statistics.median(s) for k, s in sorted(ks.items())}
                for b, ks in sorted(self._samples.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StepCostModel":
        """Inverse of to_dict(); each table cell becomes one sample (its median)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a step-cost model must be a mapping with a 'table', got {type(data).__name__}")
        unit = data.get("unit", "seconds")
        if unit != "seconds":
            raise ValueError(f"step-cost model unit must be 'seconds', got {unit!r}")
        table = data.get("table")
        if not isinstance(table, Mapping) or not table:
            raise ValueError(
                "step-cost model needs a non-empty 'table' mapping batch -> {k: seconds}, "
                f"got {table!r}"
            )
        device = data.get("device")
        model = cls(device=None if device is None else str(device))
        for raw_batch, row in table.items():
            batch = _key_int(raw_batch, f"table key {raw_batch!r} (a batch size)", 1)
            if not isinstance(row, Mapping) or not row:
                raise ValueError(f"table entry for batch {batch} must be a non-empty mapping k -> seconds")
            for raw_k, seconds in row.items():
                k = _key_int(raw_k, f"table entry batch {batch}, key {raw_k!r} (a draft length)", 0)
                model.add(batch, k, _check_seconds(seconds, f"step time for batch {batch}, k {k}"))
        return model

    def save(self, path: str | Path) -> None:
        """Write to_dict() as JSON (.json) or YAML (.yaml / .yml)."""
        path = Path(path)
        fmt = _path_format(path)
        data = self.to_dict()
        text = yaml.safe_dump(data, sort_keys=False) if fmt == "yaml" else json.dumps(data, indent=2)
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> "StepCostModel":
        """Read a file written by save() (format from the suffix); a bad file's error names it."""
        path = Path(path)
        fmt = _path_format(path)
        if not path.is_file():
            raise ValueError(f"step-cost model file {str(path)!r} does not exist")
        text = path.read_text()
        try:
            data = yaml.safe_load(text) if fmt == "yaml" else json.loads(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ValueError(f"step-cost model file {str(path)!r} is not valid {fmt}: {exc}") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"step-cost model file {str(path)!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"StepCostModel(device={self.device!r}, batches={self.batch_sizes}, ks={self.draft_lens})"
