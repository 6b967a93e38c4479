"""Keep CPython's full garbage collection off the step loop: freeze the heap built at start-up.

A full (generation-2) collection walks every tracked container object. After importing torch and
transformers and building an engine that is several hundred thousand objects (320k on the 2-core dev CPU
for the imports alone, ~200 ms a full collection there), and the collector runs one whenever enough
objects have survived younger collections, i.e. at whatever engine step happens to allocate past the
threshold: bench step logs on an NVIDIA H200 host showed single steps of 300-425 ms in every kind of line
(2026-11-27, docs/benchmarks.md). vLLM freezes its heap after start-up for the same reason: `gc.freeze()`
moves every object alive now to a permanent generation that collections skip (reference counting still
frees them; only reference cycles among them are no longer collected). A process that ends when its
command does (`dynaspec generate`) also freezes what is left at exit, before the interpreter's shutdown
collections walk it all once more (`skip_collections_at_exit`).
"""

from __future__ import annotations

import atexit
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_startup_heap() -> Iterator[None]:
    """Within the block, objects alive on entry (models, engines, imported modules) are exempt from the
    cyclic collector; on exit they are handed back to it (`gc.unfreeze`), so the process is as before."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def freeze_survivors() -> None:
    """Exempt everything alive now from the cyclic collector too (a full collection first, so garbage is
    not frozen): call it between timed sections, never inside one. A benchmark that keeps several engines
    alive grows their n-gram indexes, request records and results by hundreds of thousands of objects over
    a sweep, and a full collection that walks them all took 20-40 ms steps in the last batch sizes of
    every line of an H200 sweep (2026-11-27); frozen before each timed batch, a collection inside it walks
    only what that batch allocated. `frozen_startup_heap`'s exit unfreezes these too."""
    gc.collect()
    gc.freeze()


@contextmanager
def full_collections() -> Iterator[list[float]]:
    """Seconds of each full (generation-2) collection that runs while the block does, in order."""
    durations: list[float] = []
    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            durations.append(time.perf_counter() - started.pop())

    gc.callbacks.append(callback)
    try:
        yield durations
    finally:
        gc.callbacks.remove(callback)


def skip_collections_at_exit() -> None:
    """Freeze everything still alive when the interpreter exits (an atexit callback), before the
    collections of its shutdown, which would otherwise walk the whole torch + transformers heap of a
    process about to end: ~0.5 s of `dynaspec generate`'s wall time on a 2-core CPU, ~0.15 s left.
    Reference counting still frees what it can and every atexit callback (weakref.finalize's included)
    still runs; objects in reference cycles then get no finalizer at exit, which Python never promised.
    Meant for a process that ends when its command does (the CLI); registering it twice is harmless."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
