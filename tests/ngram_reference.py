"""REFERENCE ONLY: the n-gram drafter as it was before the fast indexing rewrite (commit 54f995f).

A verbatim copy of `dynaspec/spec/ngram.py` at that commit (NGramPool + NGramDrafter, TensorRT-LLM
NGramPoolManager semantics: one `insert` per pattern, re-inserting the last max_draft_len - 1 positions
on every update to extend cut-short continuations). tests/test_ngram_equivalence.py checks that the
production drafter proposes exactly what this one does; scripts/bench_ngram_host.py times both.
Do not import it from the package.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from dynaspec.runtime.request import RequestStatus
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.drafter import DraftProposal

if TYPE_CHECKING:
    from dynaspec.runtime.request import Request

Pattern = tuple[int, ...]
Continuation = tuple[int, ...]


class NGramPool:
    """pattern -> continuations, with LRU eviction of whole patterns past `max_entries` continuations."""

    def __init__(self, *, keep_all: bool, use_oldest: bool, max_entries: int, max_per_key: int) -> None:
        self.keep_all = keep_all
        self.use_oldest = use_oldest
        self.max_entries = max_entries
        self.max_per_key = max_per_key if keep_all else 1
        self._map: OrderedDict[Pattern, list[Continuation]] = OrderedDict()
        self.num_entries = 0

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, pattern: Pattern) -> bool:
        return pattern in self._map

    def continuations(self, pattern: Pattern) -> list[Continuation]:
        """Stored continuations of `pattern`, oldest first (a copy; does not count as a use)."""
        return list(self._map.get(pattern, ()))

    def lookup(self, pattern: Pattern) -> Continuation | None:
        conts = self._map.get(pattern)
        if not conts:
            return None
        self._map.move_to_end(pattern)
        return conts[0] if self.use_oldest else conts[-1]

    def insert(self, pattern: Pattern, cont: Continuation) -> None:
        conts = self._map.get(pattern)
        if conts is None:
            self._map[pattern] = [cont]
            self.num_entries += 1
            self._evict()
            return
        self._map.move_to_end(pattern)
        n = len(cont)
        for i, old in enumerate(conts):
            m = len(old)
            if m == n:
                if old == cont:  # already known
                    return
            elif m > n:
                if old[:n] == cont:  # a prefix of a stored continuation: already known
                    return
            elif cont[:m] == old:  # extends a continuation that was cut short: keep its age
                conts[i] = cont
                return
        if not self.keep_all:
            old = conts[0]
            if n > len(old) or (n == len(old) and not self.use_oldest):
                conts[0] = cont
            return
        if len(conts) < self.max_per_key:
            conts.append(cont)
            self.num_entries += 1
            self._evict()
        elif not self.use_oldest:  # full: drop the oldest, which newest-first lookup never proposes
            conts.pop(0)
            conts.append(cont)
        # full and oldest-first: the new continuation would never be proposed; drop it.

    def _evict(self) -> None:
        while self.num_entries > self.max_entries:
            _, conts = self._map.popitem(last=False)
            self.num_entries -= len(conts)


def _tokens_from(request: Request, start: int) -> list[int]:
    """request.all_token_ids[start:] without copying the whole prompt."""
    prompt, output = request.prompt_token_ids, request.output_token_ids
    if start >= len(prompt):
        return output[start - len(prompt) :]
    return prompt[start:] + output


class NGramDrafter:
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
        draft, ngram = self.max_draft_len, self.max_ngram
        # Patterns end at e (pattern = tokens[e-n:e], continuation = tokens[e:e+draft]); those indexed
        # before with a continuation cut at `seen` start at seen - draft + 1.
        first_end = max(1, seen - draft + 1)
        base = max(0, first_end - ngram)
        toks = tuple(_tokens_from(request, base))
        insert = self.pool(rid).insert
        for end in range(first_end - base, total - base):
            cont = toks[end : end + draft]
            for n in range(1, min(ngram, end + base) + 1):
                insert(toks[end - n : end], cont)
        self._seen[rid] = total

    def propose(self, requests: list[Request], k: int) -> DraftProposal:
        """At most k tokens per request, longest matching suffix n-gram first."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_draft_len:
            raise ValueError(f"k must be an int in 1..max_draft_len ({self.max_draft_len}), got {k!r}")
        tokens: list[list[int]] = []
        for request in requests:  # catch up on every request first, so a shared pool sees all of them
            self._index(request)
        for request in requests:  # near max_tokens too: the commit stops the request there (engine/scheduler.py)
            draft: list[int] = []
            pool = self.pool(request.request_id)
            tail = _tokens_from(request, max(0, request.num_tokens - self.max_ngram))
            for n in range(len(tail), 0, -1):
                cont = pool.lookup(tuple(tail[-n:]))
                if cont is not None:
                    draft = list(cont[:k])
                    break
            tokens.append(draft)
        return DraftProposal(tokens=tokens, probs=[None] * len(tokens))

    def observe(self, requests: list[Request]) -> None:
        """Index tokens committed since the last call; runs on k = 0 steps too, so the pool keeps up."""
        for request in requests:
            if request.status != RequestStatus.FINISHED:
                self._index(request)

    def release(self, request: Request) -> None:
        """Forget the request's progress; its private pool (if any) is freed."""
        self._seen.pop(request.request_id, None)
        self._private.pop(request.request_id, None)
