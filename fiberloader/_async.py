"""AsyncDataloader: the same scheduler, with jobs and fetches as gevent greenlets.

Everything but a few primitives (``_deliver``, ``_suspend``, ``_block``,
``_wake``, ``_throw``, ``_forget_pending``, ``_call_fetch``, ``_timed_fetch``) is
:class:`~fiberloader.Dataloader`'s: the same Source bookkeeping, the same
run loop (``fiberloader._run``) and worker side (``fiberloader._worker``),
the same deadlock detection.  What differs:

* workers are greenlets whose parent is gevent's hub, and they are handed
  work through the hub's loop (``run_callback``) instead of a direct
  switch, so any number of them can be runnable at once;
* a worker parks by switching to gevent's hub, so a job or fetch blocked in
  cooperative I/O (a patched socket, ``gevent.sleep``, a gevent-aware
  driver) lets every other worker run;
* the hub -- the greenlet that called ``run()`` -- *blocks* on an event
  until no worker is running (the phase is over: every job waits on a key
  or is done, every fetch is done), or until a worker asks for a helper.

A woken worker counts as running from the moment it is handed work, not
from its first slice (graphql-ruby #5671/#5675), so a phase cannot end
while a resumed worker has yet to run.

Phases stay as in graphql-ruby's AsyncDataloader, "one layer at a time": no
fetch starts until every runnable job waits or is done, so batches are as
large as under ``Dataloader``; then the fetches of every pending source run
concurrently, and the parked jobs resume once they have all finished.

A job that blocks in I/O while others wait: a worker that takes a job while
more are queued asks the hub (once) for a helper, which the hub starts only
if the first worker blocks -- so jobs that never block still run in one
greenlet, and jobs that do overlap.  Sources with ``blocking = True`` have
their ``fetch`` run in a thread of fiberloader's own pool.
"""

from __future__ import annotations

import weakref
from contextvars import copy_context
from typing import Any, Dict, Iterable, List, Optional

from gevent import Timeout, get_hub
from gevent.event import Event
from gevent.threadpool import ThreadPool

from ._dataloader import Dataloader
from ._extensions import around
from ._run import Run
from ._fibers import Worker
from ._source import Source

__all__ = ["AsyncDataloader"]


class AsyncDataloader(Dataloader):
    """The gevent scheduler: fetches of different sources (and I/O in jobs) overlap.

    Same API and results as :class:`Dataloader`, same batches.  I/O is
    concurrent when it is gevent-cooperative: the standard library after
    ``gevent.monkey.patch_all()``, or a driver that supports gevent
    (psycopg 3 with patched sockets).  Mark a source ``blocking = True`` when
    its driver blocks in C (sqlite3, most others): its ``fetch`` then runs in
    a thread pool of fiberloader's own (up to ``blocking_threads``) and still overlaps.
    """

    setting_name = "async"
    #: The most threads that run ``blocking`` fetches at once, per thread
    #: that runs dataloaders.  They come from a pool of fiberloader's own (one
    #: per thread and size), not gevent's process-wide one (10 threads), so a
    #: round's blocking fetches all overlap up to this many.  A thread idle
    #: for ``blocking_idle_seconds`` ends; ``release_blocking_threads()``
    #: ends them now.
    blocking_threads = 32
    blocking_idle_seconds = 10.0

    def __init__(
        self, *, fiber_limit: Optional[int] = None, eager_resume: Optional[bool] = None,
        extensions: Optional[Iterable[Any]] = None,
    ) -> None:
        """
        Args:
            fiber_limit: as for :class:`Dataloader`.
            eager_resume: resume each job as soon as *its own* keys are
                fetched, instead of when every fetch of the round is done
                (the default, graphql-ruby's "one layer at a time").  Saves
                wall time when sources have very different latencies, at the
                price of smaller batches when jobs that resumed early load
                from a source that jobs still waiting will load from too.
                Default: the class attribute ``eager_resume`` (``False``).
            extensions: as for :class:`Dataloader`.
        """
        super().__init__(fiber_limit=fiber_limit, extensions=extensions)
        if eager_resume is not None:
            self.eager_resume = eager_resume

    def _new_wake(self) -> Any:
        return Event()

    def _worker_parent(self, run: Run) -> Any:
        return get_hub()

    def _deliver(self, worker: Worker, *args: Any) -> None:
        worker.pending = get_hub().loop.run_callback(self._delivered, worker, args)

    @staticmethod
    def _delivered(worker: Worker, args: Any) -> None:
        worker.pending = None
        worker.switch(*args)

    def _forget_pending(self, worker: Worker) -> None:
        if worker.pending is not None:
            worker.pending.stop()
            worker.pending = None

    def _suspend(self, run: Run) -> Any:
        return get_hub().switch()

    def _block(self, run: Run) -> None:
        run.wake.wait()
        run.wake.clear()
        run.want_worker = False

    def _wake(self, run: Run) -> None:
        run.wake.set()

    def _throw(self, run: Run, worker: Worker, error: BaseException) -> None:
        # As gevent.kill does: from the hub's loop, wherever the worker waits.
        get_hub().loop.run_callback(self._thrown, worker, error)

    def _call_fetch(self, source: Source, keys: List[Any]) -> Any:  # type: ignore[type-arg]
        if source.blocking:  # the fetch hooks run in the thread, around the fetch (_fetch_now)
            return self._timed_fetch(source, keys)
        return super()._call_fetch(source, keys)

    def _timed_fetch(self, source: Source, keys: List[Any]) -> Any:  # type: ignore[type-arg]
        timeout = source.fetch_timeout
        if timeout is None:
            return self._fetch_now(source, keys)
        # gevent's Timeout is a BaseException: a fetch that catches Exception
        # does not swallow it.
        timer = Timeout(timeout)
        timer.start()
        try:
            return self._fetch_now(source, keys)
        except Timeout as error:
            if error is not timer:
                raise
            raise source._timed_out(keys, timeout, late=False) from None
        finally:
            timer.close()

    def _fetch_now(self, source: Source, keys: List[Any]) -> Any:  # type: ignore[type-arg]
        if source.blocking:
            context = copy_context()  # a thread starts with an empty one
            pool = self._blocking_pool()
            hooks = self._hooks
            if hooks is None or not hooks.fetches:
                return pool.apply(context.run, (source.fetch, keys))
            return pool.apply(context.run, (around, hooks.fetches, (self, source, keys), _fetch, source, keys))
        return source.fetch(keys)

    def _blocking_pool(self) -> ThreadPool:
        """The calling thread's pool of ``blocking_threads`` threads (made on first use)."""
        hub = get_hub()
        pools = _pools.get(hub)
        if pools is None:
            pools = _pools[hub] = {}
        size = self.blocking_threads
        pool = pools.get(size)
        if pool is None:
            pool = pools[size] = ThreadPool(size, hub=hub, idle_task_timeout=self.blocking_idle_seconds)
        return pool

    @classmethod
    def release_blocking_threads(cls) -> int:
        """End the calling thread's threads for this class's blocking fetches; returns how many."""
        pool = _pools.get(get_hub(), {}).pop(cls.blocking_threads, None)
        if pool is None:
            return 0
        count: int = pool.size
        pool.kill()
        return count


# Per gevent hub (one per thread), per size: fiberloader's pools for blocking fetches.
_pools: "weakref.WeakKeyDictionary[Any, Dict[int, ThreadPool]]" = weakref.WeakKeyDictionary()


def _fetch(source: Source, keys: List[Any]) -> Any:  # type: ignore[type-arg]
    return source.fetch(keys)
