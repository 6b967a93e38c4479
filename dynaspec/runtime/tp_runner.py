"""Rank 0's model runner under tensor parallelism: every forward is first broadcast to the workers.

`TensorParallelRunner` is a ModelRunner (the engine, the cost probe and overlapped decode use it as
one) whose model is rank 0's shard. Before each forward, graph capture or idle probe step it sends the
command with all of that forward's inputs (tp_worker.py's names; the draft length k is one of them, so
ranks never disagree on it), then runs the same thing itself; the all-reduces inside the forward meet
the workers' (Megatron-LM, Shoeybi et al. 2019, arXiv 1909.08053). CUDA graphs are captured per rank
with the collectives inside; a replay is a command plus each rank's own replay, in lock-step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dynaspec.runtime.cuda_graphs import UniformDecodeBatch
from dynaspec.runtime.model_runner import ModelRunner, SequenceInput
from dynaspec.runtime.tp_launcher import TensorParallelWorkers
from dynaspec.runtime.tp_worker import ATTACH, CALL, IDLE


class TensorParallelRunner(ModelRunner):
    def __init__(self, workers: TensorParallelWorkers, model: nn.Module, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        workers.send((ATTACH, num_blocks, block_size))
        super().__init__(model, num_blocks, block_size, dtype, device)
        self.workers = workers

    def _mirrored(self, method: str, args: tuple, device_ids: torch.Tensor | None = None):
        """Send (CALL, method, args) to the workers, then run ModelRunner.method(*args) here; device_ids
        (appended as the last argument) are broadcast over the model group, never through the host."""
        self.workers.send((CALL, method, args, None if device_ids is None else device_ids.numel()))
        if device_ids is not None:
            device_ids = device_ids.contiguous()
            self.workers.broadcast(device_ids)
            args = (*args, device_ids)
        with self.workers.failure_check():
            return getattr(super(), method)(*args)

    def capture_graphs(self, pairs: list[tuple[int, int]], max_blocks_per_seq: int, use_graphs: bool = True,
                       pool=None) -> None:
        if pool is not None:
            raise ValueError("a tensor-parallel target captures into its own graph pool")
        self._mirrored("capture_graphs", (list(pairs), max_blocks_per_seq, use_graphs))

    def capture_ragged_graphs(self, *args) -> None:
        self._mirrored("capture_ragged_graphs", args)

    def forward(self, seqs: list[SequenceInput], logit_rows: list[int]) -> torch.Tensor:
        return self._mirrored("forward", (seqs, logit_rows))

    takes_device_seq_lens = False  # the workers are sent host inputs (and device ids), no chained steps

    def forward_uniform(self, batch: UniformDecodeBatch, k: int, logit_rows: list[int],
                        device_token_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._mirrored("forward_uniform", (batch, k, logit_rows), device_token_ids)

    def forward_ragged(self, *args) -> torch.Tensor:
        return self._mirrored("forward_ragged", args)

    def idle_step(self, batch: int, k: int) -> Callable[[], object]:
        own = super().idle_step(batch, k)
        if self.graphs is None or (batch, k) not in self.graphs.graphs:
            return own  # eager: the step is self.forward, which sends its command itself

        def step() -> object:
            self.workers.send((IDLE, batch, k))
            with self.workers.failure_check():
                return own()

        return step


def build_runner(workers: TensorParallelWorkers | None, model: nn.Module, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device) -> ModelRunner:
    """The target's runner: a plain ModelRunner, or rank 0's TensorParallelRunner when there are workers."""
    if workers is None:
        return ModelRunner(model, num_blocks, block_size, dtype, device)
    return TensorParallelRunner(workers, model, num_blocks, block_size, dtype, device)
