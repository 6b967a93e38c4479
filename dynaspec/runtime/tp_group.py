"""The torch.distributed process groups of one tensor-parallel engine, and the command channel over them.

Two groups over one TCPStore (rank 0 hosts it on a free port), built as process-group objects and used
through their own methods, so there is no global default group and two engines in one process do not
collide:
- the control group (gloo, always on the CPU): rank 0 broadcasts each command (a pickled tuple: what to
  run and its inputs) to every worker, as vLLM's `broadcast_tensor_dict` over its CPU group does;
- the model group (gloo on CPU, NCCL on CUDA): the all-reduces and the logits all-gather of the sharded
  forward (models/tensor_parallel.py), and device tensors a forward needs (overlapped decode's ids).
Collectives of the model group time out after COLLECTIVE_TIMEOUT; a worker waits for its next command
without a limit (an idle server may wait for hours), but a rank 0 that dies closes the connection and
the wait fails at once (gloo), so a worker never outlives it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dynaspec.models.tensor_parallel import TensorParallelGroup

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a collective of the forward (and the rendezvous)
IDLE_TIMEOUT = timedelta(days=365)  # a worker waiting for its next command
HEADER_BYTES = 8  # the payload's length, little-endian
FIRST_MESSAGE_BYTES = 16 << 10  # one broadcast carries a command up to this size; longer ones take two


@dataclass
class ProcessGroups:
    control: dist.ProcessGroup  # gloo, CPU tensors
    model: TensorParallelGroup  # gloo on CPU, NCCL on CUDA
    rank: int
    size: int


def host_store(size: int) -> dist.TCPStore:
    """Rank 0's TCPStore on a free local port (`store.port`), for `size` ranks."""
    return dist.TCPStore("127.0.0.1", 0, size, True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False)


def join_store(port: int, size: int) -> dist.TCPStore:
    """A worker's client of rank 0's store."""
    return dist.TCPStore("127.0.0.1", port, size, False, timeout=COLLECTIVE_TIMEOUT)


def make_groups(store: dist.Store, rank: int, size: int, device: torch.device) -> ProcessGroups:
    """Join the control and model groups (every rank calls this; it returns when all have joined)."""
    gloo_device = dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")
    options = dist.ProcessGroupGloo._Options()
    options._timeout = COLLECTIVE_TIMEOUT
    options._devices = [gloo_device]
    control = dist.ProcessGroupGloo(dist.PrefixStore("control", store), rank, size, options)
    if device.type == "cuda":
        nccl_options = dist.ProcessGroupNCCL.Options()
        nccl_options._timeout = COLLECTIVE_TIMEOUT
        model_pg = dist.ProcessGroupNCCL(dist.PrefixStore("model", store), rank, size, nccl_options)
    else:
        model_pg = dist.ProcessGroupGloo(dist.PrefixStore("model", store), rank, size, options)
    return ProcessGroups(control, TensorParallelGroup(model_pg, rank, size), rank, size)


class CommandChannel:
    """Rank 0 -> every worker: one pickled command per broadcast (two when longer than
    FIRST_MESSAGE_BYTES), over the control group."""

    def __init__(self, control: dist.ProcessGroup) -> None:
        self.control = control
        self._first = torch.zeros(FIRST_MESSAGE_BYTES, dtype=torch.uint8)

    def _broadcast(self, tensor: torch.Tensor, timeout: timedelta) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        options.timeout = timeout
        self.control.broadcast([tensor], options).wait()

    def send(self, command: tuple) -> None:
        """Rank 0: broadcast `command` (a picklable tuple whose first item names it)."""
        payload = pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)
        first = self._first
        first[:HEADER_BYTES] = torch.frombuffer(bytearray(len(payload).to_bytes(HEADER_BYTES, "little")), dtype=torch.uint8)
        head = payload[: FIRST_MESSAGE_BYTES - HEADER_BYTES]
        first[HEADER_BYTES:HEADER_BYTES + len(head)] = torch.frombuffer(bytearray(head), dtype=torch.uint8)
        self._broadcast(first, COLLECTIVE_TIMEOUT)
        rest = payload[len(head):]
        if rest:
            self._broadcast(torch.frombuffer(bytearray(rest), dtype=torch.uint8), COLLECTIVE_TIMEOUT)

    def receive(self) -> tuple:
        """A worker: wait (without a limit) for rank 0's next command."""
        first = self._first
        self._broadcast(first, IDLE_TIMEOUT)
        length = int.from_bytes(first[:HEADER_BYTES].numpy().tobytes(), "little")
        head = first[HEADER_BYTES:HEADER_BYTES + min(length, FIRST_MESSAGE_BYTES - HEADER_BYTES)].numpy().tobytes()
        rest_len = length - len(head)
        if rest_len:
            rest = torch.empty(rest_len, dtype=torch.uint8)
            self._broadcast(rest, COLLECTIVE_TIMEOUT)
            head += rest.numpy().tobytes()
        return pickle.loads(head)
