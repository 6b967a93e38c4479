"""Automatic prefix caching: content-hashed KV blocks, reference counts and an LRU free queue.

This is vLLM's Automatic Prefix Caching design (docs.vllm.ai, "Automatic Prefix Caching", and the v1
KV cache manager): a FULL block of KV is identified by a hash chained over its parent block's hash and
its own token ids, so two blocks with the same hash hold the K/V of the same whole prefix, whoever
computed it. Every physical block has a reference count (the requests whose block tables hold it).
A block whose count drops to 0 is not wiped: it goes to the tail of an LRU free queue and keeps its
hash, so a later request with the same prefix can take it back copy-free. A new block is taken from the
head of the queue (least recently freed), and only then, if it still holds a cached hash, is that cache
entry evicted.

This module is the pool only (hashing, refcounts, the free queue, the hash -> block map); which blocks a
request reuses and when its blocks become cacheable is engine/block_manager.py's business.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BlockHash = bytes


def hash_block(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """The hash of a full block: SHA-256 over the parent block's hash and the block's token ids.

    Chaining makes the hash name the whole prefix up to and including this block (vLLM's
    `hash_block_tokens`); SHA-256 instead of Python's `hash` so that distinct prefixes never share KV
    by a 64-bit collision (vLLM's `prefix_caching_hash_algo: sha256` for the same reason)."""
    digest = hashlib.sha256(parent or b"")
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


def extend_block_hashes(hashes: list[BlockHash], token_ids: Sequence[int], block_size: int, num_blocks: int) -> None:
    """Append to `hashes` (the chain of the first len(hashes) blocks of `token_ids`) until it covers
    `num_blocks` full blocks (no more than token_ids holds)."""
    num_blocks = min(num_blocks, len(token_ids) // block_size)
    for i in range(len(hashes), num_blocks):
        parent = hashes[i - 1] if i else None
        hashes.append(hash_block(parent, token_ids[i * block_size : (i + 1) * block_size]))


@dataclass
class PrefixCacheStats:
    """Prompt tokens looked up at admission (`queries`) and those found cached (`hits`), as vLLM's
    prefix cache hit rate counts them (tokens, not blocks)."""

    queries: int = 0
    hits: int = 0

    def as_dict(self) -> dict[str, float | int]:
        rate = self.hits / self.queries if self.queries else 0.0
        return {"prefix_cache_queries": self.queries, "prefix_cache_hits": self.hits, "prefix_cache_hit_rate": rate}


class BlockPool:
    """`num_blocks` physical KV blocks: refcounts, the LRU free queue and (with caching on) the hash map.

    Free blocks are those with refcount 0, cached or not; all of them can be allocated. The free queue
    is ordered least recently freed first; allocation takes from its head and evicts the cache entry of
    the block it takes. With `enable_caching=False` no block is ever registered, so this is a plain
    FIFO free list (the allocator's behaviour before prefix caching, block ids included)."""

    def __init__(self, num_blocks: int, enable_caching: bool):
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._refcount = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._block_of: dict[BlockHash, int] = {}  # cached hash -> physical block
        self._hash_of: dict[int, BlockHash] = {}  # physical block -> its cached hash
        self.num_allocated = 0  # fresh blocks handed out (a cache hit is not an allocation)
        self.num_evicted = 0  # cached blocks whose entry was dropped to serve an allocation

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._block_of)

    def refcount(self, block_id: int) -> int:
        return self._refcount[block_id]

    def allocate(self, count: int) -> list[int]:
        """`count` blocks from the head of the free queue (the caller checked `num_free`); a cached one
        loses its cache entry here, which is the only place an entry is evicted."""
        if count > len(self._free):
            raise RuntimeError(f"allocate({count}) with only {len(self._free)} free blocks")
        blocks = []
        for _ in range(count):
            block_id, _ = self._free.popitem(last=False)
            cached = self._hash_of.pop(block_id, None)
            if cached is not None:
                del self._block_of[cached]
                self.num_evicted += 1
            self._refcount[block_id] = 1
            blocks.append(block_id)
        self.num_allocated += count
        return blocks

    def share(self, block_ids: Iterable[int]) -> None:
        """Take a reference on cached blocks (a prefix hit); a free one leaves the free queue."""
        for block_id in block_ids:
            if self._refcount[block_id] == 0:
                del self._free[block_id]
            self._refcount[block_id] += 1

    def release(self, block_ids: Iterable[int]) -> None:
        """Drop a reference on each block, in the order given; a block left unreferenced goes to the tail
        of the free queue (keeping its hash: it stays a cache hit until allocation evicts it)."""
        for block_id in block_ids:
            self._refcount[block_id] -= 1
            if self._refcount[block_id] == 0:
                self._free[block_id] = None

    def register(self, block_id: int, block_hash: BlockHash) -> None:
        """Make a full block of computed tokens findable by its hash. If another block already holds that
        prefix (two requests computed it at once), the first stays the cached one (vLLM does the same)."""
        if not self.enable_caching or block_hash in self._block_of or block_id in self._hash_of:
            return
        self._block_of[block_hash] = block_id
        self._hash_of[block_id] = block_hash

    def cached_prefix(self, hashes: Sequence[BlockHash]) -> list[int]:
        """The physical blocks of the longest run of leading `hashes` that are cached (no reference taken)."""
        blocks = []
        for block_hash in hashes:
            block_id = self._block_of.get(block_hash)
            if block_id is None:
                break
            blocks.append(block_id)
        return blocks
