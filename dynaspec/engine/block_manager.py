"""Paged KV cache block allocator (the PagedAttention memory model, Kwon et al. 2023, arXiv 2309.06180).

The KV pool is `num_blocks` blocks of `block_size` token slots. A request owns an ordered list of
block ids (its block table); slot `pos` of the request lives in block `block_ids[pos // block_size]`.
A draft model shares these block tables with its own KV tensors, so one allocation serves both.
"""

from __future__ import annotations

from collections import deque

from dynaspec.runtime.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_slots: int) -> int:
        return (num_slots + self.block_size - 1) // self.block_size

    def can_hold(self, request: Request, num_slots: int) -> bool:
        """Whether `request` can own at least `num_slots` slots after allocating free blocks."""
        extra = self.blocks_needed(num_slots) - len(request.block_ids)
        return extra <= len(self._free)

    def ensure_slots(self, request: Request, num_slots: int) -> bool:
        """Grow the request's block table to cover `num_slots`; False (nothing allocated) if the pool is short."""
        extra = self.blocks_needed(num_slots) - len(request.block_ids)
        if extra <= 0:
            return True
        if extra > len(self._free):
            return False
        request.block_ids.extend(self._free.popleft() for _ in range(extra))
        return True

    def trim(self, request: Request, num_slots: int) -> None:
        """Return blocks beyond what `num_slots` slots need (e.g. slots of rejected draft tokens)."""
        keep = self.blocks_needed(num_slots)
        while len(request.block_ids) > keep:
            self._free.append(request.block_ids.pop())

    def free(self, request: Request) -> None:
        self._free.extend(request.block_ids)
        request.block_ids = []
