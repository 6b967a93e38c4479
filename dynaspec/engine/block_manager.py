"""Paged KV cache block allocator (the PagedAttention memory model, Kwon et al. 2023, arXiv 2309.06180),
with automatic prefix caching (vLLM's APC design; the pool itself is engine/prefix_cache.py).

The KV pool is `num_blocks` blocks of `block_size` token slots. A request owns an ordered list of
block ids (its block table); slot `pos` of the request lives in block `block_ids[pos // block_size]`.
A draft model shares these block tables with its own KV tensors, so one allocation serves both.

Prefix caching (on with `enable_prefix_caching`):
* a block is registered under its chained hash once it is FULL of committed tokens whose K/V is
  computed (`cache_computed_blocks`, called by the engine at commit): never a block holding draft
  tokens' slots, whose K/V is rolled back by not counting it;
* a request admitted without blocks (new or preempted) first takes the longest run of cached blocks
  of its tokens, copy-free (its table points at the same physical blocks, refcount + 1), and its
  prefill starts after them; the run never covers its last token, so at least one token is computed
  and the step has logits to sample from;
* freeing a request drops its references; unreferenced blocks stay cached until an allocation evicts
  them (LRU). The request's later blocks are released first, so they are evicted first.
Shared blocks are never written by the target again: a request writes K/V only at positions >=
num_computed_tokens, past its shared run. A draft model recomputes its own K/V from its own per-request
state (starting at 0), rewriting the same tokens' draft K/V into shared blocks: the same values up to
floating-point rounding, which can change only which tokens are drafted, never which are committed.
"""

from __future__ import annotations

from dynaspec.engine.prefix_cache import BlockHash, BlockPool, PrefixCacheStats, extend_block_hashes
from dynaspec.runtime.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.prefix_stats = PrefixCacheStats()
        self._hashes: dict[str, list[BlockHash]] = {}  # request id -> chained hashes of its full blocks so far
        self._num_cached: dict[str, int] = {}  # request id -> its leading blocks already in the cache

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds (cached ones included: they are evicted on demand)."""
        return self.pool.num_free

    @property
    def usage(self) -> float:
        return 1.0 - self.pool.num_free / self.num_blocks

    @property
    def num_allocated_blocks(self) -> int:
        """Fresh blocks allocated so far (prefix-cache hits are not allocations)."""
        return self.pool.num_allocated

    def blocks_needed(self, num_slots: int) -> int:
        return (num_slots + self.block_size - 1) // self.block_size

    def can_hold(self, request: Request, num_slots: int) -> bool:
        """Whether `request` can own at least `num_slots` slots after allocating free blocks."""
        extra = self.blocks_needed(num_slots) - len(request.block_ids)
        return extra <= self.pool.num_free

    def admit(self, request: Request, max_tokens: int) -> int | None:
        """Give a waiting request its first chunk: reuse its longest cached prefix (prefix caching on and
        the request owning no blocks), then allocate slots for the next min(remaining, max_tokens)
        tokens. Returns that chunk's length, or None when the pool is short (nothing taken)."""
        hits: list[int] = []
        if self.enable_prefix_caching and not request.block_ids:
            hits = self._cached_prefix(request)
        start = len(hits) * self.block_size if hits else request.num_computed_tokens
        chunk = min(request.num_tokens - start, max_tokens)
        fresh = self.blocks_needed(start + chunk) - len(hits) - len(request.block_ids)
        revived = sum(1 for b in hits if self.pool.refcount(b) == 0)  # leave the free queue when shared
        if fresh + revived > self.pool.num_free:
            return None
        if self.enable_prefix_caching and not request.block_ids:
            self.prefix_stats.queries += request.num_tokens
            self.prefix_stats.hits += len(hits) * self.block_size
        if hits:
            self.pool.share(hits)
            request.block_ids = list(hits)
            request.num_computed_tokens = start
            self._num_cached[request.request_id] = len(hits)
        if fresh > 0:
            request.block_ids.extend(self.pool.allocate(fresh))
        return chunk

    def _cached_prefix(self, request: Request) -> list[int]:
        """Physical blocks of the request's longest cached run of full blocks, never covering its last
        token (at least one token must be computed to have logits to sample from)."""
        limit = (request.num_tokens - 1) // self.block_size
        hashes = self._extend_hashes(request, limit)
        return self.pool.cached_prefix(hashes[:limit])

    def _extend_hashes(self, request: Request, num_blocks: int) -> list[BlockHash]:
        """The request's chained block hashes, computed up to `num_blocks` full blocks (committed tokens
        never change, so a request's hashes are computed once)."""
        hashes = self._hashes.setdefault(request.request_id, [])
        if len(hashes) < num_blocks:
            extend_block_hashes(hashes, request.all_token_ids, self.block_size, num_blocks)
        return hashes

    def cache_computed_blocks(self, request: Request) -> None:
        """Register the request's blocks that are full of committed, computed tokens (the engine calls this
        once a step's tokens are appended; only K/V below num_computed_tokens is ever registered, never
        the slots of draft tokens)."""
        if not self.enable_prefix_caching:
            return
        # Tokens a stop truncated are not the request's: only computed tokens it kept count.
        computed = min(request.num_computed_tokens, request.num_tokens)
        num_full = min(computed // self.block_size, len(request.block_ids))
        done = self._num_cached.get(request.request_id, 0)
        if num_full <= done:
            return
        hashes = self._extend_hashes(request, num_full)
        for i in range(done, num_full):
            self.pool.register(request.block_ids[i], hashes[i])
        self._num_cached[request.request_id] = num_full

    def ensure_slots(self, request: Request, num_slots: int) -> bool:
        """Grow the request's block table to cover `num_slots`; False (nothing allocated) if the pool is short."""
        extra = self.blocks_needed(num_slots) - len(request.block_ids)
        if extra <= 0:
            return True
        if extra > self.pool.num_free:
            return False
        request.block_ids.extend(self.pool.allocate(extra))
        return True

    def trim(self, request: Request, num_slots: int) -> None:
        """Return blocks beyond what `num_slots` slots need (e.g. slots of rejected draft tokens); these
        hold no committed full block, so none of them is cached."""
        keep = self.blocks_needed(num_slots)
        if len(request.block_ids) > keep:
            self.pool.release(reversed(request.block_ids[keep:]))
            del request.block_ids[keep:]

    def free(self, request: Request) -> None:
        """Drop the request's references (finished, aborted or preempted). With prefix caching its blocks
        are released last block first, so its tail is evicted before the prefix others may share."""
        blocks = reversed(request.block_ids) if self.enable_prefix_caching else request.block_ids
        self.pool.release(blocks)
        request.block_ids = []
        self._hashes.pop(request.request_id, None)
        self._num_cached.pop(request.request_id, None)

    def stats(self) -> dict[str, float | int]:
        """prefix_cache_queries / prefix_cache_hits (prompt tokens at admission) and prefix_cache_hit_rate."""
        return self.prefix_stats.as_dict()
