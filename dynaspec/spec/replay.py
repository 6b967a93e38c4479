"""Benchmark-only acceptance replay: accept drafts by a recorded per-position acceptance profile.

Random-weight models of real shapes (for GPU timing) accept nothing on their own. Replaying a profile
recorded with real models on a real workload (dynaspec/bench/data, written by the issue-3 benchmark)
gives the step loop realistic accepted lengths: position j of a chain is accepted with the profile's
conditional probability alpha_j given positions < j were. Every output made this way is labelled:
the tokens are NOT the model's output, only the timing is meaningful.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "bench" / "data"


def resolve_profile_path(name_or_path: str) -> Path:
    """A JSON path, or the name of a profile shipped under dynaspec/bench/data (with or without .json)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = DATA_DIR / (name_or_path if name_or_path.endswith(".json") else f"{name_or_path}.json")
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in DATA_DIR.glob("*.json")) if DATA_DIR.is_dir() else []
    raise ValueError(
        f"acceptance profile {name_or_path!r} is neither a file nor a shipped profile; shipped: {', '.join(known) or 'none'}"
    )


def load_acceptance(name_or_path: str) -> list[float]:
    """The profile's conditional acceptance per draft position, validated to lie in [0, 1]."""
    path = resolve_profile_path(name_or_path)
    data = json.loads(path.read_text())
    alphas = data.get("acceptance_per_position") if isinstance(data, dict) else None
    if not isinstance(alphas, list) or not alphas:
        raise ValueError(f"{path}: 'acceptance_per_position' must be a non-empty list of probabilities")
    if not all(isinstance(a, (int, float)) and 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"{path}: acceptance_per_position values must lie in [0, 1], got {alphas}")
    return [float(a) for a in alphas]


class AcceptanceReplay:
    """Draws accepted lengths from a profile (positions past its end reuse its last value)."""

    def __init__(self, name_or_path: str, seed: int = 0):
        self.name = Path(name_or_path).stem
        self.alphas = load_acceptance(name_or_path)
        self.rng = random.Random(seed)

    def alpha(self, position: int) -> float:
        return self.alphas[min(position, len(self.alphas) - 1)]

    def num_accepted(self, num_drafted: int) -> int:
        accepted = 0
        while accepted < num_drafted and self.rng.random() < self.alpha(accepted):
            accepted += 1
        return accepted
