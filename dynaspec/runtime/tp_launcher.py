"""Rank 0's side of tensor parallelism: start the worker processes, shard its own model, send commands,
notice a dead worker, stop them all.

`start_tensor_parallel(...)` (called by LLMEngine at start-up with tensor_parallel_size > 1) starts
ranks 1..N-1 with torch.multiprocessing (forkserver; runtime/tp_worker.py), joins the process groups with them
(runtime/tp_group.py), shards rank 0's already loaded model in place and waits until every worker has
loaded and sharded its own copy. No global state: the groups are objects of this engine, so engines in
one process do not interfere.

Never a hang, never an orphan:
- start-up waits on each worker's pipe AND its process sentinel, so a worker that dies while loading is
  an error naming it (with its traceback) at once;
- every command first checks that the workers live; a collective that fails (gloo: the peer's socket
  closed) becomes a `TensorParallelWorkerError` naming the dead rank and its exit code; on CUDA a
  watchdog thread aborts the NCCL group when a worker dies, so a collective stuck in a graph ends too,
  and every collective has a timeout (COLLECTIVE_TIMEOUT) as the last resort;
- `stop()` (LLMEngine.shutdown / LLM.shutdown), garbage collection and interpreter exit (weakref.finalize;
  the workers are daemonic) stop every worker; a worker exits by itself when rank 0 dies (tp_worker.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import multiprocessing.context
import signal
import threading
import weakref
from collections.abc import Iterator

import torch
import torch.multiprocessing

from dynaspec.models.loader import LoadedModel
from dynaspec.models.tensor_parallel import check_tensor_parallel, shard_model
from dynaspec.runtime.tp_group import CommandChannel, ProcessGroups, host_store, make_groups
from dynaspec.runtime.tp_worker import WorkerSpec, broadcast_from_rank0, worker_main

STOP_GRACE_SECONDS = 10.0  # a worker told to stop gets this long before SIGTERM, then as long before SIGKILL
DEATH_REPORT_SECONDS = 5.0  # after a failed collective: how long to wait for the dead worker to be reaped


class TensorParallelWorkerError(RuntimeError):
    """A tensor-parallel worker died or failed: the engine cannot run another step."""


def check_devices(size: int, device: torch.device, visible: int) -> None:
    """ValueError unless ranks 0..size-1 fit on CUDA devices device.index .. device.index + size - 1."""
    first = device.index or 0
    if first + size > visible:
        raise ValueError(
            f"tensor_parallel_size={size} needs {size} CUDA devices (cuda:{first}..cuda:{first + size - 1}), "
            f"but {visible} {'is' if visible == 1 else 'are'} visible; use at most {max(visible - first, 1)}"
        )


def _exit_description(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def worker_context() -> multiprocessing.context.BaseContext:
    """torch.multiprocessing's forkserver context with the worker's modules preloaded: the first engine
    pays the imports (torch, transformers) once, in the fork server; every worker after it is a fork of
    that clean process (never of this one: no CUDA context, no threads are inherited). The fork server
    ends with this interpreter."""
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dynaspec.runtime.tp_worker"])
    return context


class TensorParallelWorkers:
    """Ranks 1..N-1 of one engine, seen from rank 0."""

    def __init__(self, loaded: LoadedModel, size: int, dtype: torch.dtype, device: torch.device,
                 cache_dir: str | None, dependent_launch: bool) -> None:
        check_tensor_parallel(loaded.hf_config, size)
        if device.type == "cuda":
            check_devices(size, device, torch.cuda.device_count())
        self.size = size
        self.device = device
        store = host_store(size)
        context = worker_context()
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.stop_pipes: list[multiprocessing.connection.Connection] = []
        self.reports: dict[int, str] = {}  # rank -> the error a worker reported
        self._state = _StopState(self.processes, self.pipes, self.stop_pipes)
        for rank in range(1, size):
            spec = WorkerSpec(loaded.spec, dtype, device.type, device.index or 0, cache_dir, dependent_launch,
                              rank, size, store.port)
            receiver, sender = context.Pipe(duplex=False)  # worker -> rank 0: hello, ready, error
            stop_receiver, stop_sender = context.Pipe(duplex=False)  # rank 0 -> worker: stop
            process = context.Process(target=worker_main, args=(spec, sender, stop_receiver),
                                      name=f"dynaspec-tp-rank{rank}", daemon=True)
            process.start()
            sender.close()
            stop_receiver.close()
            self.processes.append(process)
            self.pipes.append(receiver)
            self.stop_pipes.append(stop_sender)
        self._finalizer = weakref.finalize(self, self._state.stop)  # at GC and at interpreter exit
        self._wait_for("hello")
        self.groups: ProcessGroups = make_groups(store, 0, size, device)
        self.channel = CommandChannel(self.groups.control)
        self._store = store
        shard_model(loaded.model, self.groups.model)
        self._wait_for("ready")
        if device.type == "cuda":
            threading.Thread(target=self._watch, name="dynaspec-tp-watchdog", daemon=True).start()

    # ----------------------------------------------------------------------------------- commands
    def send(self, command: tuple) -> None:
        """Broadcast one command (tp_worker.py's names) to every worker; TensorParallelWorkerError when one
        is dead or the broadcast fails because of it."""
        self.check_alive()
        with self.failure_check():
            self.channel.send(command)

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's `tensor` to every worker (over the model group: device tensors stay on the device)."""
        with self.failure_check():
            broadcast_from_rank0(self.groups, tensor)

    @contextlib.contextmanager
    def failure_check(self) -> Iterator[None]:
        """Around a mirrored operation: a failed collective becomes a TensorParallelWorkerError naming the
        worker that died. Anything raised in the middle (a worker's death, a forward's error, Ctrl-C)
        leaves the ranks out of lock-step (a worker may wait in a collective rank 0 will not join), so
        the workers are stopped and every later command is refused: the engine is done."""
        try:
            yield
        except TensorParallelWorkerError:
            self.stop()
            raise
        except RuntimeError as exc:
            dead = self._dead(wait=DEATH_REPORT_SECONDS)
            error = self._death_error(dead) if dead else None
            self.stop()
            if error is not None:
                raise error from exc
            raise
        except BaseException:
            self.stop()
            raise

    @property
    def stopped(self) -> bool:
        return self._state.stopped

    def check_alive(self) -> None:
        if self.stopped:
            raise TensorParallelWorkerError(
                "the tensor-parallel workers were stopped (the engine was shut down, or a step failed or was "
                "interrupted); create a new engine"
            )
        dead = self._dead()
        if dead:
            error = self._death_error(dead)
            self.stop()
            raise error

    # ----------------------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Tell every worker to stop, wait for it, terminate what is left; idempotent."""
        self._finalizer()

    # ----------------------------------------------------------------------------------- internals
    def _dead(self, wait: float = 0.0) -> list[int]:
        """Ranks whose process has ended (waiting up to `wait` seconds for one to)."""
        if wait:
            multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=wait)
        return [rank for rank, p in enumerate(self.processes, start=1) if not p.is_alive()]

    def _death_error(self, dead: list[int]) -> TensorParallelWorkerError:
        self._collect_reports()
        parts = []
        for rank in dead:
            process = self.processes[rank - 1]
            line = f"rank {rank} (pid {process.pid}) {_exit_description(process.exitcode)}"
            if rank in self.reports:
                line += f"; it reported: {self.reports[rank].splitlines()[0]}"
            parts.append(line)
        return TensorParallelWorkerError(
            f"tensor-parallel worker {'; '.join(parts)}: the engine cannot run another step; "
            "shut it down and create a new one"
        )

    def _collect_reports(self) -> None:
        for rank, pipe in enumerate(self.pipes, start=1):
            with contextlib.suppress(EOFError, OSError):
                while pipe.poll():
                    message = pipe.recv()
                    if message[0] == "error":
                        self.reports[rank] = message[1]

    def _wait_for(self, message: str) -> None:
        """Wait until every worker sent `message`; a worker that reports an error or dies first stops
        them all and raises TensorParallelWorkerError (with its traceback)."""
        waiting = dict(enumerate(self.pipes, start=1))
        while waiting:
            sentinels = {self.processes[rank - 1].sentinel: rank for rank in waiting}
            ready = multiprocessing.connection.wait([*waiting.values(), *sentinels])
            for item in ready:
                rank = sentinels.get(item) if not isinstance(item, multiprocessing.connection.Connection) else \
                    next(r for r, p in waiting.items() if p is item)
                if rank not in waiting:
                    continue
                pipe = waiting[rank]
                try:
                    got = pipe.recv() if pipe.poll() else None
                except (EOFError, OSError):
                    got = None
                if got is not None and got[0] == message:
                    del waiting[rank]
                    continue
                if got is not None and got[0] == "error":
                    self.reports[rank] = got[1]
                elif got is None and self.processes[rank - 1].is_alive():
                    continue  # the sentinel fired spuriously: keep waiting
                self.processes[rank - 1].join(DEATH_REPORT_SECONDS)
                error = self._death_error([rank])
                detail = self.reports.get(rank)
                self.stop()
                raise TensorParallelWorkerError(f"{error} (while starting){chr(10) + detail if detail else ''}")

    def _watch(self) -> None:
        """CUDA: abort the NCCL group as soon as a worker dies, so no collective waits for it."""
        multiprocessing.connection.wait([p.sentinel for p in self.processes])
        if not self.stopped:
            with contextlib.suppress(Exception):
                self.groups.model.process_group.abort()


class _StopState:
    """What stopping the workers needs, apart from TensorParallelWorkers (so weakref.finalize can stop
    them when that object is collected)."""

    def __init__(self, processes: list, pipes: list, stop_pipes: list) -> None:
        self.processes = processes
        self.pipes = pipes
        self.stop_pipes = stop_pipes
        self.stopped = False

    def stop(self) -> None:
        """Say stop on every worker's stop pipe (its watcher thread ends the process whatever the worker
        is doing: no collective is involved, so this works mid-step too), wait, then SIGTERM / SIGKILL
        whatever has not exited in time."""
        if self.stopped:
            return
        self.stopped = True
        for pipe in self.stop_pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
            pipe.close()
        for process in self.processes:
            process.join(STOP_GRACE_SECONDS)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(STOP_GRACE_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self.pipes:
            pipe.close()


def start_tensor_parallel(size: int, loaded: LoadedModel, dtype: torch.dtype, device: torch.device,
                          cache_dir: str | None, dependent_launch: bool, shared: bool = False) -> TensorParallelWorkers | None:
    """The workers of a `size`-rank engine, `loaded.model` sharded as rank 0; None when size is 1.
    `shared`: the model is another engine's (LLMEngine(loaded=...)), which a sharded engine cannot use."""
    if size == 1:
        return None
    if shared:
        raise ValueError("tensor_parallel_size > 1 cannot share another engine's loaded model: each "
                         "tensor-parallel engine shards its own copy")
    if loaded.spec is None:
        raise ValueError("tensor parallelism needs the model's spec (LoadedModel.spec) to load it on every rank")
    return TensorParallelWorkers(loaded, size, dtype, device, cache_dir, dependent_launch)
