"""Benchmark-only acceptance replay: accept drafts by a recorded per-position acceptance profile.

Random-weight models of real shapes (for GPU timing) accept nothing on their own. Replaying a profile
recorded with real models on a real workload (dynaspec/bench/data, written by the issue-3 benchmark)
gives the step loop realistic accepted lengths: position j of a chain is accepted with the profile's
conditional probability alpha_j given positions < j were. Every output made this way is labelled:
the tokens are NOT the model's output, only the timing is meaningful.

Mixed workloads: several profiles (names / paths joined by commas, e.g.
"acceptance_ngram_code-edit,acceptance_ngram_chat") are replayed side by side. Request `rid` replays
profile number `crc32(rid as UTF-8) % number of profiles` (`profile_index`): stable across runs, engines
and processes, so a benchmark that gives its requests the same ids gives them the same workloads on
every line. The engine names the request with each accepted length it asks for.

Common random numbers: given the position of a chain's first draft in its request's sequence, position
j of the chain is accepted iff u(request, position + j) < alpha_j, where u(request, i) is the i-th value of
a uniform stream seeded by the replay seed and the request id. Every engine replaying the same requests
then sees the same uniforms at the same sequence positions, so two lines that draft the same k there
accept the same lengths, and lines with different k differ by their k, not by their draws (the classic
variance reduction for comparing policies by simulation: Law, "Simulation Modeling and Analysis",
ch. 11). Within one request the uniforms a step examines are never examined again: the next chain starts
after the first rejected position. Without a position, draws come from one stream in call order.
"""

from __future__ import annotations

import json
import random
import zlib
from array import array
from collections.abc import Hashable, Sequence
from pathlib import Path

from dynaspec.spec.verifier import TargetAcceptance

# Uniforms drawn at a time per request (sequence positions): a block covers a few hundred steps.
UNIFORM_BLOCK = 256

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


def split_profile_names(names_or_paths: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (stripped); ValueError for an empty list or name."""
    names = names_or_paths.split(",") if isinstance(names_or_paths, str) else list(names_or_paths)
    names = [str(n).strip() for n in names]
    if not names or not all(names):
        raise ValueError(f"acceptance replay needs one or more profile names or paths, got {names_or_paths!r}")
    return names


def profile_index(request_id: Hashable, num_profiles: int) -> int:
    """Which of `num_profiles` profiles request `request_id` replays: crc32 of its id (str) modulo the count."""
    return zlib.crc32(str(request_id).encode("utf-8")) % num_profiles


class AcceptanceReplay:
    """Draws accepted lengths from one or more profiles (positions past a profile's end reuse its last value)."""

    def __init__(self, names_or_paths: str | Sequence[str], seed: int = 0):
        names = split_profile_names(names_or_paths)
        self.names = [Path(n).stem for n in names]
        self.name = "+".join(self.names)
        self.profiles = [load_acceptance(n) for n in names]
        self.alphas = self.profiles[0]
        self.seed = seed
        self.rng = random.Random(seed)
        self._uniforms = KeyedUniforms(seed)
        self._alphas: dict[Hashable, list[float]] = {}  # request id -> its profile's alphas

    @property
    def is_mixed(self) -> bool:
        """Several profiles: each accepted length needs the request it belongs to."""
        return len(self.profiles) > 1

    def profile_for(self, request_id: Hashable) -> int:
        """Index of the profile `request_id` replays (always 0 with a single profile)."""
        return profile_index(request_id, len(self.profiles))

    def alpha(self, position: int, profile: int = 0) -> float:
        alphas = self.profiles[profile]
        return alphas[min(position, len(alphas) - 1)]

    def num_accepted(self, num_drafted: int, request_id: Hashable | None = None, position: int | None = None) -> int:
        """Accepted length of a chain of `num_drafted` drafts of `request_id` (needed with several profiles)
        whose first draft sits at sequence index `position` (common random numbers; None: call order)."""
        if request_id is None and (self.is_mixed or position is not None):
            raise RuntimeError("acceptance replay of several profiles or at a position needs the request id")
        if position is None:
            profile = 0 if request_id is None else self.profile_for(request_id)
            draws = iter(self.rng.random, None)  # one stream, in call order
            accepted = 0
            while accepted < num_drafted and next(draws) < self.alpha(accepted, profile):
                accepted += 1
            return accepted
        # the per-request path runs for every drafted request of every benchmark step: one look-up, no calls
        uniforms, alphas = self._request(request_id, position + num_drafted)
        last = len(alphas) - 1
        accepted = 0
        while accepted < num_drafted and uniforms[position + accepted] < alphas[accepted if accepted < last else last]:
            accepted += 1
        return accepted

    def _request(self, request_id: Hashable, length: int) -> tuple[array, list[float]]:
        """u(request_id, 0..length-1) at least, and the alphas of the profile it replays; the stream continues
        where it stopped when grown."""
        alphas = self._alphas.get(request_id)
        if alphas is None:
            alphas = self._alphas[request_id] = self.profiles[self.profile_for(request_id)]
        return self._uniforms.at_least(request_id, length), alphas

    def release(self, request_id: Hashable) -> None:
        """Forget a finished request's uniforms (a request id used again starts its stream afresh)."""
        self._uniforms.release(request_id)
        self._alphas.pop(request_id, None)


class KeyedUniforms:
    """Each request's own uniforms u(request, 0..), from a stream seeded by (seed, request id) and grown in blocks as
    asked: common random numbers, the same at a position whatever was drawn before or for other requests (the
    replays of `dynaspec bench` and of bench/closed_batch_replay.py draw from it)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._streams: dict[Hashable, tuple[array, random.Random]] = {}  # request id -> (u so far, its generator)

    def at_least(self, request_id: Hashable, length: int) -> array:
        """u(request_id, 0..length-1) at least; the stream continues where it stopped when grown."""
        entry = self._streams.get(request_id)
        if entry is None:
            entry = self._streams[request_id] = (array("d"), random.Random(f"{self.seed}:{request_id}"))
        uniforms, stream = entry
        if len(uniforms) < length:
            draw = stream.random
            uniforms.extend(draw() for _ in range(max(length - len(uniforms), UNIFORM_BLOCK)))
        return uniforms

    def release(self, request_id: Hashable) -> None:
        """Forget a request's uniforms."""
        self._streams.pop(request_id, None)


class ReplayedAcceptance(TargetAcceptance):
    """BENCHMARK ONLY: the acceptance strategy of `verify` (spec/verifier.py) that replays recorded
    profiles: every position the step allows is verified (drafts completed with the request's last token,
    one-hot), and a drafted request's accepted length is drawn by the replay at its draft position."""

    def __init__(self, names_or_paths: str | Sequence[str], seed: int = 0) -> None:
        self.replay = AcceptanceReplay(names_or_paths, seed)
        self.name = self.replay.name

    def complete_drafts(self, drafts, probs, limits, fill):
        drafts = [d + [f] * (limit - len(d)) for d, limit, f in zip(drafts, limits, fill)]
        return drafts, [None] * len(probs)

    def forced_lengths(self, batch):
        return [
            self.replay.num_accepted(len(d), rid, pos) if d else None
            for d, rid, pos in zip(batch.drafts, batch.request_ids, batch.positions)
        ]

    def release(self, request_id: Hashable) -> None:
        self.replay.release(request_id)


def acceptance_strategy(spec: object | None, seed: int) -> TargetAcceptance:
    """The verification strategy of a speculative config: the target's verdict, or (benchmark only, with
    `replay_acceptance_profile`) replayed acceptance."""
    profile = getattr(spec, "replay_acceptance_profile", None)
    return TargetAcceptance() if profile is None else ReplayedAcceptance(profile, seed)
