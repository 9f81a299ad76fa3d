"""The worker side: the body of every worker greenlet, and how it parks and resumes.

A *worker* is a greenlet (``fiberloader._fibers.Worker``) that runs jobs and
fetches for one run (``fiberloader._run.Run``).  Everything a worker does
to itself lives here, as methods of :class:`WorkerSide`, the part of
``Dataloader`` that runs inside workers:

* ``_serve`` -- its body: take the task the hub handed it (queued jobs, or
  one fetch), run it in a copy of the run's context, go idle, repeat;
* ``_wait`` / ``_park`` -- the park / resume handshake (below);
* ``_request`` / ``_enqueue`` -- adding keys to the calling run's pending
  keys (``Source.load`` / ``request`` call these);
* the bookings a worker makes about itself (``_stopped_running``,
  ``_make_ready``, ``_split``, ...), and the per-thread pool of idle
  workers (below).

The park / resume handshake
===========================

A worker that must wait (a key not cached, ``yield_()``, a ``map`` whose
items are not done) calls ``_park``.  ``_park`` first *books* the worker:
it hands the unstarted items of the loops on its stack to a helper
(``_split``), appends the worker to the list it waits in (``run.parked``
for jobs, ``run.parked_fetches`` for fetches, none for a loop's owner,
which ``Waitable._finished`` puts on ``run.ready``), and decrements
``run.running``.  Only then does it hand control back (``_suspend``).  The
hub resumes it with ``Run.resume(worker, value)`` (or the same two lines
inline in ``Run.job_phase``), which counts it running again; ``_park``
returns that value (``DEADLOCK``: raise the run's
``DeadlockError``).

Who may do what: only the worker books itself; only the hub resumes it,
once per park.  An exception thrown into a parked worker by anyone else (a
``gevent.Timeout``, a kill, the scheduler cancelling it) undoes the booking
in ``_unpark`` -- and cancels a resume already on its way -- before it
propagates, and tells the hub that what the worker waited for may have
nobody waiting any more.

.. warning::
   A worker that hands control back without booking itself, or books
   itself twice, is never resumed, or resumed twice: its job is lost, or
   the hub of a concurrent run waits forever.  Keep every path through
   ``_park`` and ``_serve`` booking exactly once.

The pool of idle workers
========================

Starting and ending a greenlet costs ~6.5 us more than resuming one that
waits, so the idle workers of a run that ends well wait in a pool of the
calling OS thread for the next run (``keep_greenlets``: at most that many;
``release_idle_greenlets()`` ends them).  A pooled worker holds nothing of
the run that left it:

* no context (``gr_context`` is ``None``), no run, no wait, no batch, no
  frame local of its last job; the hooks ran per run (``fiber_finished``
  and ``cleanup_fiber`` when the run let it go, ``set_fiber_variables``
  and ``fiber_started`` when the next one takes it);
* not the greenlet that ran the run: its parent is the thread's gevent hub
  (where a stray ``gevent.Timeout`` would come from) or root greenlet, and
  it handed control back to the closing hub through a dead *relay*
  greenlet (a switch to a dead greenlet goes to its parent), so that its
  suspended frame refers to the relay, not to that hub;
* no greenlet-local state: a worker with attributes on itself (gevent's
  ``local``, which monkey-patched ``threading.local`` is) ends instead;
* only top-level runs give workers back: a greenlet keeps the recursion
  depth of the stack that started it, and workers started under a nested
  run's hub would hand that depth on to every later run.

A run that fails gives none back: its workers may have stopped anywhere.

The host class (``Dataloader``) provides the primitives used here
(``_suspend``, ``_wake``, ``_not_a_job``, the lifecycle hooks).
"""

from __future__ import annotations

import sys
import weakref
from contextvars import Context
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from greenlet import GreenletExit, getcurrent, greenlet

from ._errors import ConfigurationError, NotRunningError, short_repr
from ._extensions import KEEP_GREENLETS_KEY, _environment, around
from ._fibers import Cancelled, Worker, copy_error
from ._frameworks import KEEP_GREENLETS_SETTING, framework_setting
from ._loops import Mark
from ._source import Source

__all__ = [
    "WorkerSide", "worker_main", "idle_pool", "kept", "keep_bound", "release_idle_greenlets",
    "DEFAULT_KEEP_GREENLETS", "JOBS", "STOP", "KEEP", "DEADLOCK",
]

# What the hub hands a worker.
JOBS = "jobs"  # take jobs from the queue
STOP = "stop"  # end (an idle worker, at the end of the run)
KEEP = "keep"  # finish this run's part, then wait in the thread's pool of idle workers
DEADLOCK = "deadlock"  # your wait can never end: raise

# Idle workers kept for reuse within a run (or the pool's bound, if larger).
# A worker that finishes when this many are idle ends at once instead: ending
# it now or at the end of the run costs the same, and the switches to park and
# stop it are saved.
KEEP_IDLE = 64

# The bound of each thread's pool when neither the class nor the setting gives
# one.  A kept worker saves ~6.5 us per run that reuses it and holds ~8 KiB
# (CPython 3.11, greenlet 3.5): 256 cover a request that parks a few hundred
# resolvers at once (W1 at 50 posts: 241) for ~2 MiB per OS thread that ran
# one.  See keep_bound().
DEFAULT_KEEP_GREENLETS = 256


class WorkerSide:
    """The part of ``Dataloader`` that runs inside its workers (see the module docstring)."""

    if TYPE_CHECKING:  # what the host class (Dataloader) provides
        _run: Any
        _hooks: Any  # fiberloader._extensions.Hooks, or None
        _pending: Dict[Source, Dict[Hashable, Any]]  # type: ignore[type-arg]
        eager_resume: bool

        def _suspend(self, run: Any, worker: Worker) -> Any: ...
        def _wake(self, run: Any) -> None: ...
        def _not_a_job(self, what: str, source: Any = None, key: Any = None) -> NotRunningError: ...
        def _checked_result(self, job: Any, result: Any) -> Any: ...
        def set_fiber_variables(self, variables: Any) -> None: ...
        def cleanup_fiber(self) -> None: ...

    def _stopped_running(self, run: Any) -> None:
        run.running -= 1
        if not run.running and run.concurrent:
            self._wake(run)

    def _want_worker(self, run: Any) -> None:
        """A concurrent worker saw queued jobs behind its own: wake the hub once.

        Not while the hub is in its switch to a worker (``run.direct``): it
        looks at the queue when that switch returns, and the switch returns
        as soon as the worker blocks.
        """
        if not run.want_worker and run.direct is None:
            run.want_worker = True
            self._wake(run)

    def _make_ready(self, run: Any, worker: Worker) -> None:
        """Queue a waiting worker to be resumed in this job phase."""
        run.ready.append(worker)
        if run.concurrent:
            self._wake(run)

    def _may_block_in_loop(self, run: Any) -> None:
        """A concurrent worker starts a loop item while items remain (or an inline loop): it may block in I/O.

        Nothing is queued yet (most items never block, and a helper queued
        per loop costs a job run for nothing): the worker is noted and the
        hub woken.  The hub gets control only if the worker blocks or parks;
        then it splits the loops on the worker's stack (``Run.split_looping``).
        """
        worker = getcurrent()
        if run.direct is worker:  # if it blocks, the hub gets control back and splits them then
            return
        looping = run.looping
        if worker not in looping:
            looping[worker] = None
        self._want_worker(run)

    def _split(self, run: Any, group: Any) -> None:
        """Queue a helper for a map() loop that has unstarted items."""
        if not group.helper_queued and group.next < len(group.items):
            group.helper_queued = True
            group.run.jobs.append(group.work)
            if run.concurrent:
                self._want_worker(run)

    def _split_stack(self, run: Any, worker: Worker) -> None:
        """Queue helpers for the unstarted items of every loop on a waiting worker's stack.

        ``worker`` parks, or blocks in I/O (``Run.split_looping``).  A mark
        (a loop its owner runs inline) becomes a split loop first.
        """
        for group in reversed(worker.groups):  # innermost first: the order plain code would take
            if type(group) is Mark:
                group = group.take_over(run, worker)
            self._split(run, group)

    def _after_fetch(self, run: Any, job: Callable[[], Any]) -> None:
        """Queue ``job`` to run in the job phase after the next fetch phase.

        graphql-ruby's lazy resolution: the GraphQL executor completes a
        field whose resolver returned a request handle this way, once the
        handle's batch has been fetched, without a greenlet of its own.
        """
        run.later.append(job)

    def _in_job(self) -> bool:
        """Whether the calling code is one of this dataloader's jobs (or fetches)."""
        return self._caller()[1] is not None

    def _caller(self) -> Tuple[Optional[Worker], Any]:
        """The calling worker and its run, if the caller is one of our workers.

        Each worker knows its own run: under AsyncDataloader a job's
        run_isolated may be going on while its siblings of the outer run
        run too.
        """
        worker = getcurrent()
        run = getattr(worker, "owner", None)
        if run is not None and run.dataloader is self:
            return worker, run  # type: ignore[return-value]
        return None, None

    def _check_worker(self, what: str) -> Tuple[Worker, Any]:
        """The calling worker and its run; raise if the caller is not one."""
        worker, run = self._caller()
        if worker is None or run is None:
            raise self._not_a_job(f"dataloader.{what}()")
        return worker, run

    def _park(self, run: Any, worker: Worker, parked: Optional[List[Worker]]) -> None:
        """Book this worker as parked (in ``parked``, if given) and wait for a resume."""
        if run.closing:
            raise GreenletExit
        hooks = self._hooks
        if hooks is not None and hooks.parks:  # before the booking: a hook may switch (I/O)
            waiting = worker.waiting
            source, keys = waiting if type(waiting) is tuple else (None, ())
            for hook in hooks.job_suspended:
                hook(self, source, list(keys))
        if worker.groups:
            # Loops on this stack must not stall while it waits: let another
            # worker carry on with their unstarted items.
            self._split_stack(run, worker)
        if parked is not None:
            parked.append(worker)
        self._stopped_running(run)
        if self.eager_resume and run.concurrent:
            self._wake(run)  # it may have queued keys that can be fetched now
        try:
            value = self._suspend(run, worker)
        except BaseException:
            # Woken by an exception thrown in (a gevent.Timeout around the
            # load, a kill) rather than by the hub: running again, so undo
            # the booking and make sure no resume arrives later.  What it
            # waited for may now have nobody waiting: tell the hub.
            self._unpark(run, worker, parked)
            run.interrupted = True
            if run.concurrent:
                self._wake(run)
            raise
        finally:  # resumed, either way
            if hooks is not None and hooks.parks:
                for resumed in hooks.job_resumed:
                    resumed(self)
        if value is DEADLOCK:
            raise copy_error(run.deadlock)  # type: ignore[arg-type]

    def _unpark(self, run: Any, worker: Worker, parked: Optional[List[Worker]]) -> None:
        for queue in (parked, run.ready):
            if queue is not None and worker in queue:
                queue.remove(worker)
        run.running += 1

    def _wait(self, source: Source, keys: Sequence[Any], rks: Sequence[Hashable]) -> None:  # type: ignore[type-arg]
        """Park the calling job until every key of ``rks`` is resolved."""
        worker: Worker = getcurrent()  # type: ignore[assignment]
        run: Any = getattr(worker, "owner", None)
        if run is None or run.dataloader is not self:
            raise self._not_a_job(f"The load of {source!r} key {short_repr(keys[0])} (not cached)", source, keys[0])
        if run.closing:
            raise NotRunningError(
                f"The load of {source!r} key {short_repr(keys[0])} (not cached) was called from "
                "cleanup_fiber() or a finally block while the run is ending: nothing will fetch "
                "it. Load it in the job, before it ends.",
                data_source=source,
                key=keys[0],
            )
        if len(rks) == 1:  # load(): the key is not cached; add it unless pending or in flight
            rk = rks[0]
            if rk not in source._fetching:
                batch = run.pending.get(source)
                if batch is None:
                    batch = run.pending[source] = {}
                if rk not in batch:
                    batch[rk] = keys[0] if source._plain_fetch_keys else source.normalize_fetch_key(keys[0])
        else:
            self._enqueue(run.pending, source, keys, rks)
        worker.waiting = (source, rks)
        while True:
            try:
                self._park(run, worker, run.parked if worker.batch is None else run.parked_fetches)
            except BaseException:
                worker.waiting = None  # it waits no more: its keys may be orphaned
                raise
            results, errors = source._results, source._errors
            for rk in rks:
                if rk not in results and rk not in errors:
                    break
            else:
                worker.waiting = None
                run.progress += 1  # a wait that ended is a step, also for a fetch that parks again
                return
            # A key was cleared (clear_cache) after its fetch, or its fetch
            # was stopped: ask again.
            self._enqueue(run.pending, source, keys, rks)

    @staticmethod
    def _enqueue(pending: Dict[Source, Dict[Hashable, Any]], source: Source, keys: Sequence[Any], rks: Sequence[Hashable]) -> None:  # type: ignore[type-arg]
        """Add the keys that are not resolved or in flight to a run's pending keys."""
        results, errors, fetching = source._results, source._errors, source._fetching
        batch = pending.get(source)
        for key, rk in zip(keys, rks):
            if rk in results or rk in errors or rk in fetching:
                continue
            if batch is None:
                batch = pending[source] = {}
            if rk not in batch:
                batch[rk] = key if source._plain_fetch_keys else source.normalize_fetch_key(key)

    def _request(self, source: Source, key: Any, rk: Hashable) -> None:  # type: ignore[type-arg]
        """``source.request(key)``: add the key to the calling run's pending keys, without waiting.

        Outside any run of this dataloader, to the keys the next ``run()``
        starts with.
        """
        run: Any = getattr(getcurrent(), "owner", None)
        if run is None or run.dataloader is not self:
            run = self._run  # the running one (a caller outside its jobs), else the next
        self._enqueue(self._pending if run is None else run.pending, source, (key,), (rk,))

    def _pending_keys(self, source: Source) -> List[Any]:  # type: ignore[type-arg]
        """The fetch keys of ``source`` waiting for a batch: the calling run's, else the next run's."""
        run: Any = getattr(getcurrent(), "owner", None)
        if run is None or run.dataloader is not self:
            run = self._run
        pending = self._pending if run is None else run.pending
        return list(pending.get(source, {}).values())

    def _serve(self, me: Worker, run: Any, variables: Any, task: Any) -> bool:
        """A worker's part in one run; returns whether it goes to the thread's pool."""
        base = None
        try:
            run.starting -= 1
            if run.own_variables:
                self.set_fiber_variables(variables)
            else:  # what the default does, without the call
                me.gr_context = variables
            del variables
            base = me.gr_context
            if base is None:  # an override that set no context: start from an empty one
                base = Context()
            hooks = self._hooks
            if hooks is not None:
                for started in hooks.fiber_started:
                    started(self)
                hooks = hooks.jobs or None  # what the loop below passes to around()
            idle = run.idle
            concurrent = run.concurrent
            most_idle = KEEP_IDLE if run.keep < KEEP_IDLE else run.keep
            while task is not STOP and task is not KEEP:
                # Each job and fetch gets its own copy of the worker's context.
                # Swapping gr_context (rather than Context.run) keeps the job's
                # frames in this eval loop: fewer C frames for greenlet to copy
                # on every switch.
                if task is JOBS:
                    jobs = run.jobs
                    while jobs:
                        job = jobs.popleft()
                        if concurrent and jobs:
                            self._want_worker(run)  # in case this job blocks in I/O
                        me.gr_context = base.copy()
                        result = job() if hooks is None else around(hooks, (self,), job)
                        if result is not None:  # an async def job: say so, leave no coroutine
                            self._checked_result(job, result)
                            result = None
                        del job
                else:
                    me.gr_context = base.copy()
                    task()
                run.progress += 1
                task = None  # drop the reference while idle
                if len(idle) >= most_idle:
                    return False  # end now: ending later costs the same, plus two switches
                idle.append(me)
                self._stopped_running(run)
                task = self._suspend(run, me)
                run.starting -= 1
        except BaseException as error:  # a job's exception: the hub raises it
            if not run.closing and type(error) is not Cancelled:
                run.failure = run.failure or error
                if run.concurrent:
                    self._wake(run)  # now, not when the siblings in I/O are done
            return False
        finally:
            run.workers.pop(me, None)
            if not run.closing and task is not STOP and task is not KEEP:
                self._stopped_running(run)
            if base is not None:
                me.gr_context = base
            if run.cleanup:
                self._end_fiber()
        return task is KEEP

    def _end_fiber(self) -> None:
        """Last in a worker: the extensions' ``fiber_finished``, then ``cleanup_fiber``."""
        hooks = self._hooks
        try:
            if hooks is not None:
                for hook in hooks.fiber_finished:
                    hook(self)
        finally:
            self.cleanup_fiber()


# -- the pool of idle workers ------------------------------------------------------


def _unpatched_thread_local() -> Any:
    """``_thread._local`` as Python made it: per OS thread.

    gevent's monkey-patching replaces it with ``gevent.local.local``, which
    is per greenlet: a pool there would be one per request greenlet.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("_thread", "_local")
    import _thread

    return _thread._local


def _nothing() -> None:
    pass


class _Workers(list):  # type: ignore[type-arg]
    """A thread's pooled workers: a list that pooled workers refer to weakly."""

    __slots__ = ("__weakref__",)


class _ThreadPool(_unpatched_thread_local()):  # type: ignore[misc]
    """The calling OS thread's idle workers; made per thread on first use.

    It dies with its thread, pooled workers and all.
    """

    def __init__(self) -> None:
        root = getcurrent()
        while root.parent is not None:
            root = root.parent
        self.root = root  # the thread's main greenlet: lives as long as the thread
        self.workers: List[Worker] = _Workers()
        relay = greenlet(_nothing)
        relay.switch()  # dead now: a switch to it goes to its parent
        relay.parent = root
        self.relay = relay


_pool = _ThreadPool()


def idle_pool() -> List[Worker]:
    """The idle workers the calling OS thread keeps for later runs (any dataloader class)."""
    return _pool.workers  # type: ignore[no-any-return]


def kept() -> None:
    """In the hub closing a run, after handing workers ``KEEP``: the relay lets go of it."""
    _pool.relay.parent = _pool.root


def _home() -> Any:
    """The parent of a pooled worker: the thread's gevent hub, else its root greenlet.

    Neither holds anything of a run.  A throw into a pooled worker from
    outside (a ``gevent.Timeout`` a job started and never cancelled) comes
    from the hub's loop: the worker leaves the pool and ends, and the
    exception goes back to the loop, which reports it -- not into the
    greenlet that last ran a run, where an ended worker would send it.
    """
    hubs = sys.modules.get("gevent._hub_local")
    hub = hubs.get_hub_if_exists() if hubs is not None else None
    return _pool.root if hub is None else hub


def release_idle_greenlets() -> int:
    """End the idle worker greenlets the calling thread keeps for later runs.

    Every dataloader class's (they share the thread's pool).  Returns how
    many ended.  The next run starts new greenlets and refills the pool:
    call it at shutdown, in a test, or after a burst of unusually large
    requests.
    """
    workers = _pool.workers
    here = getcurrent()
    count = 0
    while workers:
        worker = workers.pop()
        worker.parent = here
        worker.throw()  # GreenletExit where it waits: it ends, back here
        count += 1
    return count


def keep_bound(cls: Any) -> int:
    """The most idle workers a run of ``cls`` leaves in its thread's pool (0: none, pool off).

    First match: ``cls.keep_greenlets`` when not ``None``; the web
    framework's ``FIBERLOADER_KEEP_GREENLETS`` (Flask's ``app.config``,
    Django's settings); ``$FIBERLOADER_KEEP_GREENLETS``;
    ``DEFAULT_KEEP_GREENLETS``.  Read for every dataloader made, like the
    extensions: ~0.5 us with no web framework, no cost per run.

    Raises:
        ConfigurationError: the value is not an int >= 0 (the environment
            variable: not its digits).
    """
    own = cls.keep_greenlets
    if own is not None:
        return _checked_bound(own, f"{cls.__name__}.keep_greenlets")
    value, where = framework_setting(KEEP_GREENLETS_SETTING)
    if value is not None:
        return _checked_bound(value, where)
    text = _environment(KEEP_GREENLETS_KEY)
    if not text:
        return DEFAULT_KEEP_GREENLETS
    digits = text.strip()
    return _checked_bound(int(digits) if digits.isascii() and digits.isdigit() else text, f"${KEEP_GREENLETS_SETTING}")


def _checked_bound(value: Any, where: str) -> int:
    if type(value) is int and value >= 0:
        return value
    raise ConfigurationError(
        f"{where} is {short_repr(value)}, but it takes the most idle worker greenlets each thread keeps "
        f"between runs: an int >= 0 (0 turns the pool off; the default is {DEFAULT_KEEP_GREENLETS})."
    )


def worker_main(first: List[Any]) -> None:
    """The body of every worker greenlet: serve a run; if kept, wait in the pool for the next."""
    run, variables, task = first
    first.clear()
    while True:
        me: Worker = getcurrent()  # type: ignore[assignment]
        bound = run.keep
        try:
            pooled = run.dataloader._serve(me, run, variables, task)
        finally:
            if run.direct is me:  # a concurrent run's hub waits in its switch to us: end there
                me.parent = run.hub
        if not pooled:
            return
        # Hold nothing of the run that is ending: not its context (which
        # holds the dataloader and its caches), not its hub.
        del run, variables, task, pooled
        workers = _pool.workers
        if len(workers) >= bound or me.__dict__:
            return  # the pool is full, or it holds greenlet-local state that would outlive the request
        me.owner = me.waiting = me.batch = None
        me.groups.clear()  # empty already: every loop pops what it pushed
        me.gr_context = None
        relay = _pool.relay
        relay.parent = me.parent  # the hub closing the run (Run.close): back to it through the relay
        me.parent = _home()
        workers.append(me)
        pool = weakref.ref(workers)
        # Nor itself, nor the pool: gc does not look into a suspended
        # greenlet's frame, so such a cycle would keep the pooled workers of
        # an ended thread alive forever.  The pool dies with its thread.
        del me, workers, relay
        try:
            # Resumed by the switch after a later run's Run.hand, with what it returned.
            run, variables, task = _pool.relay.switch()
        except BaseException:  # release_idle_greenlets(), or a throw from outside
            still = pool()  # None: the thread is ending, and its pool with it
            if still is not None and getcurrent() in still:
                still.remove(getcurrent())
            raise
