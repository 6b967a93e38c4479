"""Prompt-lookup (n-gram) drafter with TensorRT-LLM's NGram pool semantics.

Reference: TensorRT-LLM `NGramPoolManager` (tensorrt_llm/_torch/speculative/ngram.py) and prompt lookup
decoding (Saxena 2023). The pool maps a pattern (tuple of 1..max_matching_ngram_size tokens) to the
continuations (up to max_draft_len tokens) that followed it. To draft, the request's longest suffix
n-gram is looked up first, then shorter ones down to 1; the first hit gives the draft.

Options (NGramDecodingConfig):
* is_keep_all: keep every distinct continuation of a pattern (at most `max_continuations_per_key`),
  or only one: the longest (ties broken by is_use_oldest).
* is_use_oldest: propose the oldest continuation, or the newest.
* is_public_pool: one pool shared by all requests, or one pool per request, freed by release().
* max_pool_entries: bound on the continuations held by a pool (the shared one, or each private one);
  beyond it the least recently used patterns are evicted.

A continuation cut short by the end of the sequence is extended in place (it keeps its age) as tokens
arrive: each update re-indexes only the last max_draft_len - 1 old positions plus the new ones, so the
work per step is O(new tokens). A continuation that is a prefix of a stored one adds nothing.

Each update goes through one NGramPool.index call per request, which leaves the pool exactly as the
per-pattern inserts of the manager would (LRU order and evictions included; tests/test_ngram_equivalence.py
checks proposals and pools against the previous, insert-per-pattern implementation), with the common
cases inlined and no list per pattern.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from dynaspec.runtime.request import RequestStatus
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.drafter import DraftProposal, Drafter

if TYPE_CHECKING:
    from dynaspec.runtime.request import Request

Pattern = tuple[int, ...]
Continuation = tuple[int, ...]


class NGramPool:
    """pattern -> continuations, with LRU eviction of whole patterns past `max_entries` continuations.

    Storage, invisible through the methods: a pattern with one continuation maps to that tuple (which
    the garbage collector stops tracking), one with several to a list of them, oldest first.
    """

    def __init__(self, *, keep_all: bool, use_oldest: bool, max_entries: int, max_per_key: int) -> None:
        self.keep_all = keep_all
        self.use_oldest = use_oldest
        self.max_entries = max_entries
        self.max_per_key = max_per_key if keep_all else 1
        self._map: OrderedDict[Pattern, Continuation | list[Continuation]] = OrderedDict()
        self.num_entries = 0

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, pattern: Pattern) -> bool:
        return pattern in self._map

    def continuations(self, pattern: Pattern) -> list[Continuation]:
        """Stored continuations of `pattern`, oldest first (a copy; does not count as a use)."""
        conts = self._map.get(pattern)
        if conts is None:
            return []
        return [conts] if type(conts) is tuple else list(conts)

    def lookup(self, pattern: Pattern) -> Continuation | None:
        conts = self._map.get(pattern)
        if conts is None:
            return None
        self._map.move_to_end(pattern)
        if type(conts) is tuple:
            return conts
        return conts[0] if self.use_oldest else conts[-1]

    def insert(self, pattern: Pattern, cont: Continuation) -> None:
        """Record that `cont` followed `pattern`; the pattern becomes the most recently used."""
        cont = tuple(cont)
        conts = self._map.get(pattern)
        if conts is None:
            self._map[pattern] = cont
            self.num_entries += 1
        else:
            self._map.move_to_end(pattern)
            if type(conts) is tuple:
                merged = self._merge_one(conts, cont)
                if merged is not conts:
                    self._map[pattern] = merged
            elif cont:  # (an empty continuation is a prefix of any: already known)
                self._merge_list(conts, cont)
        self._evict()

    def index(self, tokens: Continuation, first: int, cut: int, max_draft_len: int, max_ngram: int) -> None:
        """insert(tokens[e-n:e], tokens[e:e+max_draft_len]) for e in first..len(tokens)-1 and, for each e,
        n = 1..min(max_ngram, e), in that order: the same pool as those insert calls, with less work.

        `cut`: positions e < cut were indexed before, with the continuation tokens[e:cut] (cut short by
        the then end of the sequence); a pattern holding just that one gets it extended directly.
        Patterns are tuple slices, and a pattern met again costs a dict look-up, a move_to_end and,
        for a single stored continuation, a comparison or two; no per-insert call or list.
        """
        table, keep_all = self._map, self.keep_all
        add, to_end, evict = table.setdefault, table.move_to_end, table.popitem
        merge_one, merge_list = self._merge_one, self._merge_list
        limit, count = self.max_entries, self.num_entries
        newest = not self.use_oldest
        lengths = range(1, max_ngram + 1)
        for e in range(first, len(tokens)):
            cont = tokens[e : e + max_draft_len]
            stale = tokens[e:cut] if cut - max_draft_len < e < cut else None  # a proper prefix of cont
            for n in lengths if e >= max_ngram else range(1, e + 1):
                pattern = tokens[e - n : e]
                conts = add(pattern, cont)
                if conts is cont:  # a new pattern
                    count += 1
                    while count > limit:  # evict the least recently used patterns
                        conts = evict(last=False)[1]
                        count -= 1 if type(conts) is tuple else len(conts)
                    continue
                to_end(pattern)
                self.num_entries = count
                if type(conts) is not tuple:
                    merge_list(conts, cont)
                elif conts == cont:
                    continue
                elif not keep_all:  # keep the longer; equal lengths: the newer unless is_use_oldest
                    if len(cont) > len(conts) or (newest and len(cont) == len(conts)):
                        table[pattern] = cont
                    continue
                elif conts == stale:  # ours, cut short: extend it
                    table[pattern] = cont
                    continue
                else:
                    merged = merge_one(conts, cont)
                    if merged is not conts:
                        table[pattern] = merged
                if self.num_entries > limit:
                    self._evict()
                count = self.num_entries
        self.num_entries = count

    def _merge_one(self, old: Continuation, cont: Continuation) -> Continuation | list[Continuation]:
        """The value of a pattern holding the single continuation `old` once `cont` followed it again."""
        m, n = len(old), len(cont)
        if m >= n:
            if old[:n] == cont:  # equal, or a prefix of it: already known
                return old
        elif cont[:m] == old:  # extends a continuation that was cut short: keep its age
            return cont
        if not self.keep_all:  # keep the longer; equal lengths: the newer unless is_use_oldest
            return cont if n > m or (n == m and not self.use_oldest) else old
        if self.max_per_key == 1:  # full: see _place
            return old if self.use_oldest else cont
        self.num_entries += 1
        return [old, cont]

    def _merge_list(self, conts: list[Continuation], cont: Continuation) -> None:
        """Add the non-empty `cont` to a pattern's list of continuations, in place: the first stored
        one it relates to decides (equal or a prefix of it: nothing; extends it: replaces it), else
        _place. Only continuations starting with the same token can relate, which skips the rest."""
        first, n = cont[0], len(cont)
        for i, old in enumerate(conts):
            if old[0] == first:
                m = len(old)
                if m >= n:
                    if old[:n] == cont:  # equal, or a prefix of it: already known
                        return
                elif cont[:m] == old:  # extends a continuation that was cut short: keep its age
                    conts[i] = cont
                    return
        self._place(conts, cont)

    def _place(self, conts: list[Continuation], cont: Continuation) -> None:
        """Append a continuation unrelated to the stored ones, within max_per_key."""
        if len(conts) < self.max_per_key:
            conts.append(cont)
            self.num_entries += 1
        elif not self.use_oldest:  # full: drop the oldest, which newest-first lookup never proposes
            del conts[0]
            conts.append(cont)
        # full and oldest-first: the new continuation would never be proposed; drop it.

    def _evict(self) -> None:
        while self.num_entries > self.max_entries:
            _, conts = self._map.popitem(last=False)
            self.num_entries -= 1 if type(conts) is tuple else len(conts)


def code_like_tokens(rng: random.Random, count: int, vocab: int) -> list[int]:
    """Synthetic token ids for timing the pool: Zipf-like frequencies (p(t) ~ 1/t) with 40% of the text
    copied from earlier spans of 2-12 tokens, as code is."""
    out: list[int] = []
    while len(out) < count:
        if out and rng.random() < 0.4:
            start = rng.randrange(len(out))
            out.extend(out[start : start + rng.randint(2, 12)])
        else:
            out.append(int(vocab ** rng.random()) - 1)
    return out[:count]


class NGramDrafter(Drafter):
    """Drafter (spec/drafter.py) proposing continuations of earlier occurrences of the current suffix."""

    def __init__(self, config: NGramDecodingConfig, max_continuations_per_key: int = 8) -> None:
        if not isinstance(config, NGramDecodingConfig):
            raise TypeError(f"NGramDrafter needs an NGramDecodingConfig, got {type(config).__name__}")
        if max_continuations_per_key < 1:
            raise ValueError(f"max_continuations_per_key must be >= 1, got {max_continuations_per_key}")
        self.config = config
        self.max_draft_len = config.max_draft_len
        self.max_ngram = config.max_matching_ngram_size
        self._max_per_key = max_continuations_per_key
        self._public: NGramPool | None = self._new_pool() if config.is_public_pool else None
        self._private: dict[str, NGramPool] = {}
        self._seen: dict[str, int] = {}  # request_id -> number of its tokens indexed

    def _new_pool(self) -> NGramPool:
        c = self.config
        return NGramPool(
            keep_all=c.is_keep_all,
            use_oldest=c.is_use_oldest,
            max_entries=c.max_pool_entries,
            max_per_key=self._max_per_key,
        )

    def pool(self, request_id: str) -> NGramPool:
        """The pool used for `request_id` (the shared one when is_public_pool)."""
        if self._public is not None:
            return self._public
        pool = self._private.get(request_id)
        if pool is None:
            pool = self._private[request_id] = self._new_pool()
        return pool

    def num_tracked_requests(self) -> int:
        return len(self._seen)

    def _index(self, request: Request) -> None:
        """Add the patterns ending at positions not indexed yet (and re-extend cut-short continuations)."""
        rid = request.request_id
        total = request.num_tokens
        seen = self._seen.get(rid, 0)
        if seen > total:  # the request was rebuilt shorter: index it afresh
            seen = 0
        if seen == total:
            return
        # Patterns end at e (pattern = tokens[e-n:e], continuation = tokens[e:e+draft]); those indexed
        # before with a continuation cut at `seen` start at seen - draft + 1.
        first_end = max(1, seen - self.max_draft_len + 1)
        base = max(0, first_end - self.max_ngram)
        toks = tuple(request.tokens_from(base))
        self.pool(rid).index(toks, first_end - base, seen - base, self.max_draft_len, self.max_ngram)
        self._seen[rid] = total

    def propose(self, requests: list[Request], k: int) -> DraftProposal:
        """At most k tokens per request, longest matching suffix n-gram first."""
        tokens: list[list[int]] = []
        for request in requests:  # catch up on every request first, so a shared pool sees all of them
            self._index(request)
        for request in requests:  # near max_tokens too: the commit stops the request there (engine/scheduler.py)
            draft: list[int] = []
            pool = self.pool(request.request_id)
            tail = request.tokens_from(max(0, request.num_tokens - self.max_ngram))
            for n in range(len(tail), 0, -1):
                cont = pool.lookup(tuple(tail[-n:]))
                if cont is not None:
                    draft = list(cont[:k])
                    break
            tokens.append(draft)
        return DraftProposal(tokens=tokens, probs=[None] * len(tokens))

    def observe(self, requests: list[Request]) -> None:
        """Index tokens committed since the last call (the engine calls it with the requests it drafted for;
        the others catch up in their next propose)."""
        for request in requests:
            if request.status != RequestStatus.FINISHED:
                self._index(request)

    def catch_up_tokens(self, requests: list[Request]) -> int:
        """Tokens of these requests not indexed yet (prompts of requests never proposed for included)."""
        seen = self._seen
        return sum(max(0, r.num_tokens - seen.get(r.request_id, 0)) for r in requests)

    def measure_catch_up_seconds_per_token(self, num_tokens: int = 4096, repeats: int = 3) -> float:
        """Best of `repeats` timings of indexing `num_tokens` code_like_tokens into a fresh pool, per token."""
        toks = tuple(code_like_tokens(random.Random(0), num_tokens, 32000))
        best = float("inf")
        for _ in range(repeats):
            pool = self._new_pool()
            start = time.perf_counter()
            pool.index(toks, 1, 0, self.max_draft_len, self.max_ngram)
            best = min(best, time.perf_counter() - start)
        return best / num_tokens

    def release(self, request: Request) -> None:
        """Forget the request's progress; its private pool (if any) is freed."""
        self._seen.pop(request.request_id, None)
        self._private.pop(request.request_id, None)

    def reset(self) -> None:
        """An empty pool: what finished requests taught the shared pool is forgotten too (release keeps it)."""
        self._public = self._new_pool() if self.config.is_public_pool else None
        self._private.clear()
        self._seen.clear()
