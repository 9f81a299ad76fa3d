"""AsyncDataloader: the same scheduler, with jobs and fetches that may block in gevent I/O.

Everything but a few primitives (``_deliver``, ``_suspend``, ``_block``,
``_wake``, ``_throw``, ``_call_fetch``, ``_timed_fetch``) is
:class:`~fiberloader.Dataloader`'s: the same Source bookkeeping, the same
run loop (``fiberloader._run``) and worker side (``fiberloader._worker``),
the same deadlock detection.  What differs:

* **Direct switches, until a worker blocks.**  The hub -- the greenlet that
  called ``run()`` -- hands a worker work by switching to it, as
  ``Dataloader`` does, and the worker switches back when it parks, goes
  idle or ends.  Before the switch the hub makes sure a *guard* callback
  waits in gevent's loop.  The loop only runs the guard if the worker (or a
  greenlet it switched to) let gevent's hub run without parking: it is
  blocked in cooperative I/O (a patched socket, ``gevent.sleep``, a
  thread-pool call).  The guard then switches back to the hub, which goes
  on with other jobs and fetches while that worker waits; the worker counts
  as running until it parks, and from then on parks through gevent's hub.
  A request that never blocks costs what it costs under ``Dataloader``
  (one guard per stretch of direct switches), and gevent's other
  greenlets (other requests) run when it blocks, as they would anyway.
* **The hub blocks** on an event until no worker is running (the phase is
  over: every job waits on a key or is done, every fetch is done), or
  until a worker that runs detached asks for a helper.  Workers wake it
  only when it is not in a switch to a worker (``Run.direct``): that hub
  looks at what they flagged when the switch returns.
* Workers' parent is gevent's hub, so a timeout or kill thrown into one
  from gevent's loop (``_throw``) works wherever it waits.

A woken worker counts as running from the moment it is handed work, not
from its first slice (graphql-ruby #5671/#5675), so a phase cannot end
while a resumed worker has yet to run.

Phases stay as in graphql-ruby's AsyncDataloader, "one layer at a time": no
fetch starts until every runnable job waits or is done, so batches are as
large as under ``Dataloader``; then the fetches of every pending source
run, concurrently as soon as one blocks, and the parked jobs resume once
they have all finished (``eager_resume``: as soon as their own keys are
in).

A job that blocks in I/O while others wait: the guard hands control back to
the hub, which gives the queued jobs to another worker; a worker that runs
detached and takes a job while more are queued asks the hub (once) for a
helper.  Loops (``map``, a GraphQL list) on a blocked worker's stack are
split so other workers carry on with their items.  Sources with
``blocking = True`` have their ``fetch`` run in a thread of fiberloader's
own pool.
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
        # A direct switch, as Dataloader's, with a guard in gevent's loop: the
        # loop runs the guard only if the worker (or one it switched to) let
        # gevent run without parking -- it blocked in I/O -- and the guard
        # then hands control back here while the worker stays blocked.
        # The hub alone sets and clears ``run.direct``, around the switch;
        # the worker and the guard only read it.
        run = worker.owner
        if run.guard is None:
            run.guard = get_hub().loop.run_callback(self._detach, run)
        run.direct = worker
        try:
            worker.switch(*args)
        finally:
            run.direct = None  # also when the hub itself was interrupted (a Timeout around run())

    @staticmethod
    def _detach(run: Run) -> None:
        """The guard, in gevent's loop: the worker the hub switched to is blocked in I/O."""
        run.guard = None
        worker = run.direct
        if worker is None:  # the hub is not in a switch to a worker: nothing to hand back
            return
        if worker.groups:  # its loops must not stall while it waits
            run.looping[worker] = None
        run.hub.switch()

    def _suspend(self, run: Run, worker: Worker) -> Any:
        if run.direct is worker:  # the hub waits in its switch to this worker
            return run.hub.switch()
        # Detached (it blocked since the hub switched to it): the hub is
        # blocked, or in a switch to another worker.
        return get_hub().switch()

    def _block(self, run: Run) -> None:
        run.wake.wait()
        run.wake.clear()
        run.want_worker = False

    def _wake(self, run: Run) -> None:
        # While the hub is in a switch to a worker, it looks at what changed
        # as soon as that switch returns: no need to wake it.
        if run.direct is None:
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
