"""A tensor-parallel worker process (ranks 1..N-1): its shard of the target, its KV heads, its graphs.

Started by runtime/tp_launcher.py (torch.multiprocessing, forkserver). The worker loads the model, shards it
for its rank (models/tensor_parallel.py) and then runs, forever, whatever rank 0 broadcasts: the same
forward rank 0 runs, on the same inputs, so the all-reduces of every layer meet (Megatron-LM, Shoeybi
et al. 2019, arXiv 1909.08053). It owns no scheduler, sampler, policy or drafter: the draft length and
everything else a forward needs were decided on rank 0 and arrive in the command.

It never outlives rank 0: SIGINT is ignored (Ctrl-C reaches the whole process group; rank 0 decides
and stops the workers), and a thread exits the process at once when rank 0 says stop on its stop pipe
or dies (without a collective: a worker may be waiting in one that will never complete). Its own
failure is reported on its pipe before it exits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

from dynaspec.models.decode_kernels import decode_kernels_for
from dynaspec.models.loader import load_model
from dynaspec.models.tensor_parallel import shard_model
from dynaspec.runtime.model_runner import ModelRunner
from dynaspec.runtime.tp_group import CommandChannel, ProcessGroups, join_store, make_groups

# Commands (first item of the tuple rank 0 broadcasts; runtime/tp_runner.py sends them)
ATTACH = "attach"  # (ATTACH, num_blocks, block_size): allocate this rank's KV heads (a ModelRunner)
CALL = "call"  # (CALL, method, args, ids_numel | None): runner.method(*args) (+ the broadcast device ids)
IDLE = "idle"  # (IDLE, batch, k): one idle step of the cost probe (ModelRunner.idle_step)
# The runner methods a CALL may name: every forward and graph capture of the target's runner.
RUNNER_METHODS = frozenset({"forward", "forward_uniform", "forward_ragged", "capture_graphs", "capture_ragged_graphs"})


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its rank of the engine (picklable: it crosses the spawn)."""

    model: str
    dtype: torch.dtype
    device_type: str  # "cpu" | "cuda"
    first_device_index: int  # rank r runs on cuda:(first_device_index + r)
    cache_dir: str | None
    dependent_launch: bool
    rank: int
    size: int
    store_port: int


def worker_main(spec: WorkerSpec, pipe: Connection, stop: Connection) -> None:
    """Entry point of a worker process: runs rank 0's commands until `stop` (rank 0's end of it) speaks or
    closes, rank 0 dies, or an error, which it reports on `pipe`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_on_stop_or_parent_death(stop)
    try:
        device = torch.device("cpu")
        if spec.device_type == "cuda":
            device = torch.device("cuda", spec.first_device_index + spec.rank)
            torch.cuda.set_device(device)
        store = join_store(spec.store_port, spec.size)
        pipe.send(("hello",))
        groups = make_groups(store, spec.rank, spec.size, device)
        loaded = load_model(spec.model, dtype=spec.dtype, device=device, cache_dir=spec.cache_dir)
        shard_model(loaded.model, groups.model)
        loaded.model.set_decode_kernels(decode_kernels_for(device, spec.dependent_launch))
        pipe.send(("ready",))
        _serve(loaded.model, groups, spec.dtype, device)
    except BaseException as exc:  # noqa: BLE001 - reported to rank 0, then the process ends
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        except OSError:
            pass
        raise SystemExit(1) from None


def _serve(model: torch.nn.Module, groups: ProcessGroups, dtype: torch.dtype, device: torch.device) -> None:
    """The command loop: run what rank 0 runs (forever: the process ends from its stop watcher)."""
    channel = CommandChannel(groups.control)
    runner: ModelRunner | None = None
    idle: tuple[tuple[int, int], object] | None = None  # the staged idle step while probes repeat it
    while True:
        command = channel.receive()
        name = command[0]
        if name == IDLE:
            key = command[1:]
            if idle is None or idle[0] != key:
                idle = (key, runner.idle_step(*key))
            idle[1]()
            continue
        idle = None  # anything else may overwrite the staged idle inputs
        if name == ATTACH:
            _, num_blocks, block_size = command
            runner = ModelRunner(model, num_blocks, block_size, dtype, device)
        elif name == CALL and command[1] in RUNNER_METHODS:
            _, method, args, ids_numel = command
            if ids_numel is not None:  # overlapped decode: the previous step's ids, on rank 0's device
                ids = torch.empty(ids_numel, dtype=torch.int64, device=device)
                broadcast_from_rank0(groups, ids)
                args = (*args, ids)
            getattr(runner, method)(*args)
        else:
            raise ValueError(f"unknown tensor-parallel command {command[:2]!r}")


def broadcast_from_rank0(groups: ProcessGroups, tensor: torch.Tensor) -> None:
    """Rank 0's `tensor` into every rank's `tensor` (same shape and dtype), over the model group."""
    options = torch.distributed.BroadcastOptions()
    options.rootRank = 0
    groups.model.process_group.broadcast([tensor], options).wait()


def _exit_on_stop_or_parent_death(stop: Connection) -> None:
    """A daemon thread that ends this process as soon as rank 0 says stop (or closes its end of `stop`)
    or is gone, however it died, whatever the main thread is doing (even waiting in a collective that
    will never complete). Nothing to flush but the standard streams; os._exit also skips the seconds the
    interpreter's teardown of torch and the process groups takes."""
    import multiprocessing
    import multiprocessing.connection

    parent = multiprocessing.parent_process()
    waits = [stop] + ([parent.sentinel] if parent is not None else [])

    def watch() -> None:
        multiprocessing.connection.wait(waits)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    threading.Thread(target=watch, name="dynaspec-tp-stop-watch", daemon=True).start()
