"""An acceptance profile file: the per-position acceptance a previous run measured, read and checked.

A profile warm-starts the planners' estimates (spec/acceptance_estimator.py) and feeds `dynaspec tune`; it is user
input, so every value is checked with a message that names the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _check_probabilities(values: Any, what: str) -> list[float]:
    """A profile file's list of probabilities, or a ValueError naming the field (user input)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{what} must be a non-empty list of probabilities in [0, 1], got {values!r}")
    result = []
    for j, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{what}[{j}] must be a number in [0, 1], got {value!r}")
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{what}[{j}] must be in [0, 1], got {value!r}")
        result.append(float(value))
    return result


def load_acceptance_profile(path: str | Path) -> list[float]:
    """`acceptance_per_position` of a profile JSON ({"acceptance_per_position": [alpha_0, ...], ...}).

    SpecStats.as_dict() has this key, so a stats dump of a previous run is a valid profile.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"acceptance profile {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"acceptance profile {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "acceptance_per_position" not in data:
        raise ValueError(
            f"acceptance profile {str(path)!r} must be a JSON object with 'acceptance_per_position': "
            f"[conditional acceptance of position j given all earlier accepted, ...]"
        )
    return _check_probabilities(data["acceptance_per_position"], f"{path.name}: acceptance_per_position")
