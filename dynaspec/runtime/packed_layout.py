"""What the graphs with a packed row layout share (ragged verify graphs, runtime/ragged_graphs.py; mixed
steps, runtime/mixed_graphs.py): one pinned int64 staging buffer cut into parts (two, used in turn, copied
to the device in one transfer), and the positions and KV slots of the packed rows, derived inside the graph
from each slot's query start, context length and number of real rows.
"""

from __future__ import annotations

import torch


class PackedStaging:
    """Int64 staging of the given part sizes; `tables_part`: the index of the block tables part, which new
    buffers fill with the scratch block."""

    def __init__(self, sizes: tuple[int, ...], tables_part: int, scratch_block: int, device: torch.device) -> None:
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self._tables_part, self._scratch_block = tables_part, scratch_block
        self._pinned = device.type == "cuda"
        self._buffers = [self._new() for _ in range(2)]  # used in turn (a copy from the other may be pending)
        self._turn = 0
        self.device_inputs = torch.zeros(self._offsets[-1], dtype=torch.int64, device=device)

    def parts(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        o = self._offsets
        return [buffer[o[i] : o[i + 1]] for i in range(len(o) - 1)]

    def _new(self) -> torch.Tensor:
        buffer = torch.zeros(self._offsets[-1], dtype=torch.int64, pin_memory=self._pinned)
        self.parts(buffer)[self._tables_part].fill_(self._scratch_block)
        return buffer

    def current(self) -> torch.Tensor:
        """The buffer last handed out (idle staging reuses it after a synchronisation)."""
        return self._buffers[self._turn]

    def next(self) -> torch.Tensor:
        """The other buffer, to fill for the next step."""
        self._turn ^= 1
        return self._buffers[self._turn]


def packed_slots(starts: torch.Tensor, seq_lens: torch.Tensor, num_real: torch.Tensor, tables: torch.Tensor,
                 rows: int, block_size: int, scratch_block: int, arange: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and KV slots (rows,) of the packed rows: slot s owns rows starts[s]..starts[s+1]-1, the last
    of its seq_lens[s] positions, the first num_real[s] of them real; the others write the scratch block,
    where a pad sequence reading its own rows back finds them (so pads stay finite). No host sync."""
    n_slots = seq_lens.shape[0]
    flat = arange[:rows]  # (T,)
    seq_of = torch.searchsorted(starts[1:], flat, right=True).clamp(max=n_slots - 1)  # (T,) slot of each row
    row = flat - starts[seq_of]  # (T,) row within its sequence
    q_lens = starts[1:] - starts[:-1]  # (S,)
    positions = (seq_lens[seq_of] - q_lens[seq_of] + row).clamp(min=0)  # (T,)
    real = row < num_real[seq_of]  # (T,)
    block_index = torch.div(positions, block_size, rounding_mode="floor").clamp(0, tables.shape[1] - 1)
    blocks = tables[seq_of, block_index]  # (T,)
    scratch = scratch_block * block_size + positions % block_size
    return positions, torch.where(real, blocks * block_size + positions % block_size, scratch)
