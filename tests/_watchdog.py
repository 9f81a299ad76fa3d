"""A watchdog that turns a hang into a test failure with a stack dump.

Scheduler bugs show up as hangs: a hub that spins resuming parked
greenlets that never get anywhere.  ``watchdog(seconds)`` guards a block:
past the deadline a thread records the stack of the main thread and of
every suspended greenlet, then raises :class:`Hang` (a ``BaseException``,
so no ``except Exception`` in a job or a fetch swallows it) inside the
main thread, again every 0.2 s until the block has exited.  The block
then fails with an ``AssertionError`` that carries the stacks.

An asynchronous exception is only delivered while Python bytecode runs; if
the main thread is stuck in C (a gevent loop with a watcher that never
fires) for ``hard_seconds``, the watchdog dumps every thread's stack with
``faulthandler`` and ends the process (exit status 70) rather than let the
suite hang.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import os
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Iterator, List

from greenlet import greenlet

__all__ = ["Hang", "watchdog", "dump_stacks"]


class Hang(BaseException):
    """Raised inside the main thread when a guarded block overran its deadline."""


def _set_async_exc(thread_id: int, exc: "type[BaseException] | None") -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


def dump_stacks(thread_id: int, limit: int = 25) -> str:
    """The stack of ``thread_id`` and of every suspended greenlet, as text."""
    parts: List[str] = []
    frame = sys._current_frames().get(thread_id)
    if frame is not None:
        parts.append("main thread, running:\n" + "".join(traceback.format_stack(frame, limit=limit)))
    try:
        objects = gc.get_objects()
    except Exception:  # pragma: no cover - best effort from another thread
        objects = []
    for obj in objects:
        if isinstance(obj, greenlet):
            try:
                frame = obj.gr_frame
            except Exception:  # pragma: no cover - a greenlet of another thread
                continue
            if frame is not None:
                parts.append(f"suspended {obj!r}:\n" + "".join(traceback.format_stack(frame, limit=limit)))
    return "\n".join(parts)


@contextmanager
def watchdog(seconds: float, hard_seconds: float = 30.0) -> Iterator[None]:
    """Fail the guarded block (with stacks) if it runs longer than ``seconds``."""
    main = threading.get_ident()
    done = threading.Event()
    lock = threading.Lock()
    report: List[str] = []

    def bark() -> None:
        if done.wait(seconds):
            return
        report.append(dump_stacks(main))
        give_up = time.monotonic() + hard_seconds
        while True:
            with lock:
                if done.is_set():
                    return
                _set_async_exc(main, Hang)
            if done.wait(0.2):
                return
            if time.monotonic() > give_up:
                sys.stderr.write(
                    f"\nwatchdog: a block hung for {seconds}s and ignored Hang for {hard_seconds}s "
                    f"more; ending the process.\n{report[0]}\n"
                )
                faulthandler.dump_traceback(all_threads=True)
                os._exit(70)

    thread = threading.Thread(target=bark, name="fiberloader-test-watchdog", daemon=True)
    thread.start()
    try:
        try:
            yield
        finally:
            with lock:
                done.set()
                _set_async_exc(main, None)  # an injection not delivered yet
            thread.join()
    except BaseException as error:
        if report:  # whatever the Hang turned into on its way out
            raise AssertionError(_hung(seconds, report)) from error
        raise
    if report:
        raise AssertionError(_hung(seconds, report))


def _hung(seconds: float, report: List[str]) -> str:
    return f"hung: still running after {seconds}s (watchdog). Stacks at the deadline:\n{report[0]}"
