"""Host lists to the device without waiting for it.

A copy from pageable host memory first waits for the device stream, i.e. for every forward already
launched, so a host that stages the next step's inputs while a graph runs would lose the time it has.
From pinned memory the copy is queued behind that work instead (non_blocking)."""

from __future__ import annotations

import torch


def to_device(values: list[int], device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """(len(values),) on `device`, copied from pinned memory on CUDA (queued, the host does not wait)."""
    pinned = device.type == "cuda"
    return torch.tensor(values, dtype=dtype, pin_memory=pinned).to(device, non_blocking=pinned)
