"""frozen_startup_heap: objects alive on entry are exempt from collection inside the block, and only there;
skip_collections_at_exit: the heap is frozen when the interpreter exits, after the process's own work."""

import gc
import subprocess
import sys

from dynaspec.engine.startup_heap import freeze_survivors, frozen_startup_heap, full_collections


def test_objects_alive_on_entry_are_frozen_inside_and_handed_back_after():
    gc.unfreeze()
    before = gc.get_freeze_count()
    startup = [[i] for i in range(1000)]  # containers the collector tracks
    with frozen_startup_heap():
        frozen = gc.get_freeze_count()
        assert frozen >= before + len(startup)
        assert not any(obj is startup for obj in gc.get_objects())  # a full collection would skip it
        during = [[i] for i in range(10)]
        assert any(obj is during for obj in gc.get_objects())  # objects made inside are collected as usual
    assert gc.get_freeze_count() == 0
    assert any(obj is startup for obj in gc.get_objects())


def test_unfrozen_even_when_the_block_raises():
    try:
        with frozen_startup_heap():
            raise RuntimeError("step failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0


def test_full_collections_are_timed_and_survivors_can_be_frozen():
    with frozen_startup_heap():
        kept = [[i] for i in range(1000)]  # containers alive after the start-up freeze
        before = gc.get_freeze_count()
        freeze_survivors()
        assert gc.get_freeze_count() >= before + len(kept)
        with full_collections() as durations:
            gc.collect(1)  # a younger collection is not counted
            gc.collect()
            gc.collect()
        assert len(durations) == 2 and all(d >= 0 for d in durations)
    assert gc.get_freeze_count() == 0  # the context hands everything back
    assert all(cb.__name__ != "callback" for cb in gc.callbacks)


def test_heap_is_frozen_at_exit_only():
    """In a fresh interpreter: nothing is frozen while it runs; an atexit callback registered before (so
    it runs after, callbacks running last-in first-out) sees the heap frozen; registering twice is harmless."""
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('at exit', gc.get_freeze_count() > 0))\n"
        "from dynaspec.engine.startup_heap import skip_collections_at_exit\n"
        "skip_collections_at_exit()\n"
        "skip_collections_at_exit()\n"
        "print('running', gc.get_freeze_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["running 0", "at exit True"], out.stdout + out.stderr
