"""Dataloader: the synchronous greenlet scheduler -- its public API and hooks.

Where things live
=================

* this module: what users call (``with_``, ``append_job``, ``run``,
  ``run_isolated``, ``map``, ``yield_``, ``clear_cache``), the lifecycle
  hooks, and the primitives the gevent scheduler swaps (``_deliver``,
  ``_suspend``, ``_block``, ``_wake``, ``_throw``, ``_call_fetch``,
  ``_new_wake``, ``_worker_parent``);
* ``fiberloader._run``: one run's state and the hub's loop (job and fetch
  phases, deadlocks, cancellation, the end of a run), with the rules of
  the house: who may change which field;
* ``fiberloader._worker``: the worker side (its body, the park / resume
  handshake, adding keys to a run's pending keys, the pool of idle workers);
* ``fiberloader._source``: a source's cache and in-flight keys (the only
  module that writes them); ``fiberloader._loops``: ``map`` and the loops
  other workers take over.

Theory of operation
===================

The greenlet that calls ``run()`` becomes the *hub* of the run.  Jobs and
fetches run in *workers* (:class:`~fiberloader._fibers.Worker` greenlets
whose parent is the hub); the hub only decides who runs next.

1. **Jobs.**  The hub hands the job queue to a worker.  The worker takes
   queued jobs one after another and runs each to its end, every job in a
   fresh copy of the run's ``contextvars`` context.
2. **Suspend.**  A ``load`` of a key that is not cached adds the key to the
   run's pending keys and *parks* the worker: it switches back to the
   hub, holding its job.  The hub gives the rest of the queue to another
   worker -- an idle worker of this run if there is one, else a new one.
   A load served from the cache never switches greenlets.
3. **Fetch.**  When no job can proceed (the queue is empty and every
   worker is parked), the hub runs every pending source's batches, each in
   a worker: one ``fetch(keys)`` per source, split by ``max_batch_size``.
   A fetch may load from other sources or ``yield_()``: it parks too, the
   hub starts the other pending fetches (including those the parked fetch
   just asked for) and resumes parked fetches when none is left to start,
   until every fetch has finished.  Jobs never run in this phase.
4. **Resume.**  The hub resumes the parked jobs in the order they parked.
   Each re-checks its keys (a key cleared meanwhile goes pending again),
   finishes its job and takes the next queued one; a worker with nothing
   left to do goes idle.  Back to 1 until no job is queued or parked.

When ``run()`` returns or raises, no worker is running or holds anything
of the run: parked ones (after a failure) get ``GreenletExit`` so their
``finally`` blocks and ``cleanup_fiber`` run; idle ones of a run that
succeeded wait in a bounded pool of the calling OS thread for the next run
(``keep_greenlets``, the ``FIBERLOADER_KEEP_GREENLETS`` setting), their
hooks run and everything of the run dropped (``fiberloader._worker``), and
the rest end.

AsyncDataloader runs this same loop with the primitives swapped: there the
hub switches to workers just as directly, but a worker that blocks in
gevent I/O hands control back to the hub while it waits, so many can be
running at once, and the hub blocks until none is.  That is why workers
book their own state (parked, idle) before they hand control back, and why
the hub only takes from it.

Guarantees: every key is fetched at most once per cache lifetime (never
twice while in flight; a fetch stopped because nobody waits for it any more
caches nothing); a job sees its loads resolved before it resumes; jobs
parked in one phase resume in the order they parked; sources are fetched
in the order they first got a pending key; ``fiber_limit`` never changes
results.

Not guaranteed: the order in which *different* jobs' code interleaves
beyond that, or which worker greenlet runs a given job.

Why the hub starts every worker: a greenlet inherits the recursion depth of
the greenlet that first switches into it, so workers started from inside
parked jobs would each start deeper than the last (PITFALLS).  Starting and
ending a greenlet costs ~6.5 us more than resuming one, so workers are
reused within a run and across runs (the pool), and none is started for a
job that never waits.
"""

from __future__ import annotations

import sys
from collections import deque
from contextvars import Context, copy_context
from inspect import iscoroutine
from time import monotonic
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Hashable,
    Iterable,
    List,
    Optional,
    Tuple,
    Type,
    TypeVar,
)

from greenlet import getcurrent, greenlet

from ._errors import (
    ConfigurationError,
    FiberloaderError,
    FiberloaderTypeError,
    NotRunningError,
    SourceTypeError,
    class_name,
    not_running,
    short_repr,
)
from ._extensions import Hooks, around, hooks_of, resolve_extensions
from ._fibers import CURRENT, Worker
from ._loops import MapLoop
from ._run import Pending, Run
from ._source import Source, as_list
from ._stats import DataloaderStats, SourceStats
from ._worker import WorkerSide, keep_bound, release_idle_greenlets

__all__ = ["Dataloader", "DataloaderStats", "SourceStats"]

T = TypeVar("T")
S = TypeVar("S", bound=Source)  # type: ignore[type-arg]
D = TypeVar("D", bound="Dataloader")

def _check_fiber_limit(fiber_limit: Optional[int]) -> Optional[int]:
    if fiber_limit is None:
        return None
    if type(fiber_limit) is not int or fiber_limit < 2:
        raise ConfigurationError(
            f"Dataloader(fiber_limit={short_repr(fiber_limit)}) is too low to make progress: "
            "it must be None (no limit) or an int >= 2, one greenlet for a job and one for "
            "a fetch."
        )
    return fiber_limit


class Dataloader(WorkerSide):
    """The synchronous scheduler: jobs in greenlets, batches fetched when all wait.

    Args:
        fiber_limit: the most worker greenlets alive at once (``None``: no
            limit).  Jobs may hold all but one; the last is kept for
            fetches.  A low limit makes batches smaller (jobs beyond it wait
            for the next round) but never changes results: a fetch that
            waits for a nested fetch no greenlet is left for lets it borrow
            one above the limit (one per level of nesting).

    Raises:
        ConfigurationError: ``fiber_limit`` is not ``None`` or an int >= 2.
    """

    #: What ``dataloader_class()`` and the integrations call this scheduler.
    setting_name = "sync"
    #: Resume a job as soon as its own keys are fetched, not when the whole
    #: round is (only AsyncDataloader's fetches overlap, so only it offers it).
    eager_resume = False
    #: The most idle worker greenlets a run leaves in its OS thread's pool
    #: for later runs (of any class) to reuse; 0: none, every greenlet a run
    #: started has ended when it returns.  ``None`` (the default): the
    #: ``FIBERLOADER_KEEP_GREENLETS`` setting, else 256.  Each pooled
    #: greenlet saves ~6.5 us per run that reuses it and holds ~8 KiB.  An
    #: instance holds the resolved int.  See fiberloader.release_idle_greenlets().
    keep_greenlets: Optional[int] = None
    #: Extensions every instance of this class gets, before those of the
    #: ``extensions`` argument (or the ``FIBERLOADER_EXTENSIONS`` setting).
    extensions: Tuple[Any, ...] = ()

    def __init__(self, *, fiber_limit: Optional[int] = None, extensions: Optional[Iterable[Any]] = None) -> None:
        self.fiber_limit = _check_fiber_limit(fiber_limit)
        self._limit = sys.maxsize if fiber_limit is None else fiber_limit
        self._sources: Dict[type, Dict[Hashable, Source]] = {}  # type: ignore[type-arg]
        self._jobs: Deque[Callable[[], Any]] = deque()
        self._pending: Pending = {}  # keys requested outside any run, for the next run()
        self._run: Optional[Run] = None
        self._request_over = False  # set by the web integrations when the response is done
        self.stats = DataloaderStats(self._sources)
        #: This dataloader's extensions: the class's, then the argument's or
        #: the setting's (``fiberloader._extensions``).
        self.extensions: Tuple[Any, ...] = resolve_extensions(type(self), extensions)
        self._hooks: Optional[Hooks] = hooks_of(self.extensions)
        self.keep_greenlets: int = keep_bound(type(self))

    def _add_extensions(self, *extensions: Any) -> None:
        """Attach more extensions (the integrations' own), before the first run."""
        self.extensions += extensions
        self._hooks = hooks_of(self.extensions)

    def __repr__(self) -> str:
        state = "running" if self._run is not None else "idle"
        return f"<{type(self).__name__} {state} jobs={len(self._jobs)} at {id(self):#x}>"

    # -- sources --------------------------------------------------------------

    def with_(self, source_class: Type[S], *args: Any, **kwargs: Any) -> S:
        """The source instance for these batch parameters.

        Made on first use (``source_class(*args, **kwargs)``) and reused for
        every later call whose ``source_class.batch_key_for(*args,
        **kwargs)`` is equal, for the life of this dataloader.
        """
        try:
            instances = self._sources[source_class]
        except KeyError:
            instances = self._new_source_class(source_class)
        if source_class._plain_batch_key and not kwargs:
            batch_key: Hashable = args
        else:
            batch_key = source_class.batch_key_for(*args, **kwargs)
        try:
            return instances[batch_key]  # type: ignore[return-value]
        except KeyError:
            pass
        except TypeError:
            raise SourceTypeError(
                f"dataloader.with_({class_name(source_class)}, ...) needs hashable batch "
                f"parameters, but {class_name(source_class)}.batch_key_for() gave "
                f"{short_repr(batch_key)}. Pass hashable arguments or override "
                f"{class_name(source_class)}.batch_key_for() to return a hashable key."
            ) from None
        source = source_class(*args, **kwargs)
        source._attach(self, args, kwargs)
        instances[batch_key] = source
        return source

    def _new_source_class(self, source_class: Any) -> Dict[Hashable, Source]:  # type: ignore[type-arg]
        if not (isinstance(source_class, type) and issubclass(source_class, Source)):
            raise SourceTypeError(
                f"dataloader.with_() takes a Source subclass, but got {short_repr(source_class)}. "
                "Define `class MySource(fiberloader.Source)` with a fetch(keys) method and pass "
                "the class itself."
            )
        if source_class.fetch is Source.fetch:
            raise SourceTypeError(
                f"dataloader.with_({class_name(source_class)}) needs a source that fetches, but "
                f"{class_name(source_class)} does not define fetch(). Add "
                "`def fetch(self, keys): ...` returning one result per key, in key order."
            )
        instances: Dict[Hashable, Source] = {}  # type: ignore[type-arg]
        self._sources[source_class] = instances
        return instances

    @classmethod
    def release_kept_greenlets(cls) -> int:
        """End the idle greenlets the calling thread keeps for later runs; return how many.

        The pool is the thread's, shared by every class: this is
        ``fiberloader.release_idle_greenlets()``.
        """
        return release_idle_greenlets()

    def clear_cache(self) -> None:
        """Forget the cached results of every source of this dataloader."""
        for instances in self._sources.values():
            for source in instances.values():
                source.clear_cache()

    def _end_request(self) -> None:
        """The web request this dataloader served is over: drop its cache and sources."""
        self._request_over = True
        self.clear_cache()
        self.stats._drop()
        self._sources.clear()

    # -- jobs -----------------------------------------------------------------

    def append_job(self, job: Callable[[], Any]) -> None:
        """Queue a zero-argument callable to run as a job.

        Before ``run()`` it waits for ``run()``; from inside a job it runs in
        the same job phase, before the next fetch; from inside a fetch, in
        the next job phase.
        """
        if not callable(job):
            raise FiberloaderTypeError(
                f"dataloader.append_job() takes a zero-argument callable, but got {short_repr(job)}."
            )
        _, run = self._caller()
        (self._jobs if run is None else run.jobs).append(job)

    @classmethod
    def with_dataloading(cls: Type[D], fn: Callable[[D], T], **options: Any) -> T:
        """Make a dataloader, run ``fn(dataloader)`` as a job, return its result.

        ``options`` go to the constructor (``fiber_limit=``).  Jobs that
        ``fn`` appends finish too before this returns.
        """
        if not callable(fn):
            raise FiberloaderTypeError(
                f"{cls.__name__}.with_dataloading() takes a callable of one argument (the "
                f"dataloader), but got {short_repr(fn)}."
            )
        dataloader = cls(**options)
        return dataloader._call_as_job(lambda: fn(dataloader))

    def _call_as_job(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` as a job, to the end of ``run()``; return its value or raise its exception.

        The web integrations run each request's application (and each step
        of a streamed body) this way.
        """
        box: List[T] = []
        self.append_job(lambda: box.append(fn()))
        self.run()
        return self._checked_result(fn, box[0])  # type: ignore[no-any-return]

    @staticmethod
    def _checked_result(job: Any, result: Any) -> Any:
        """``result``, unless the job was an ``async def``: then a clear error, not a coroutine."""
        if result is not None and iscoroutine(result):
            result.close()  # never awaited: no RuntimeWarning later
            raise FiberloaderTypeError(
                f"The job {short_repr(job)} returned a coroutine: it is an async def, and "
                "nothing in fiberloader awaits it. Make it a def: load() suspends the job "
                "without await."
            )
        return result

    def run(self) -> None:
        """Run every queued job, and every job they queue, to completion.

        Fetches pending batches whenever no job can proceed.  An exception
        raised by a job propagates; the other jobs are then abandoned and
        their greenlets ended.  When it returns or raises, no greenlet this
        call started is running or holds anything of the run: up to
        ``keep_greenlets`` idle ones (none after a failure) wait in the
        thread's pool for a later run, the others have ended.

        Raises:
            FiberloaderError: ``run()`` was called while this dataloader is
                already running (use ``run_isolated`` from inside a job).
        """
        if self._run is not None:
            raise FiberloaderError(
                f"{type(self).__name__}.run() was called while it is already running. From "
                "inside a job, use dataloader.run_isolated(fn) to run work to completion now."
            )
        context = copy_context()
        context.run(CURRENT.set, self)
        run = self._run = self._new_run(self._jobs, self._pending)
        self._pending = {}
        try:
            self._with_run_hooks(context.run, run.complete)
        finally:
            self._run = None

    def _with_run_hooks(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, between the extensions' ``run_started`` and ``run_finished``."""
        hooks = self._hooks
        if hooks is None or not hooks.runs:
            return fn(*args)
        return around(hooks.runs, (self,), fn, *args)  # type: ignore[no-any-return]

    def run_isolated(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` as the only job, to completion, now; return its result.

        From inside a job: the current job waits while ``fn`` and the jobs it
        queues run with their own queue; keys that other jobs have pending
        are kept for later (cached results are shared).  At top level it is a
        plain run of ``fn``; jobs queued earlier stay queued.
        """
        if not callable(fn):
            raise FiberloaderTypeError(
                f"dataloader.run_isolated() takes a zero-argument callable, but got {short_repr(fn)}."
            )
        box: List[T] = []
        jobs: Deque[Callable[[], Any]] = deque([lambda: box.append(fn())])
        if self._run is None:  # top level: a plain run of fn alone
            saved_jobs, self._jobs = self._jobs, jobs
            saved_pending, self._pending = self._pending, {}
            try:
                self.run()
            finally:
                self._jobs, self._pending = saved_jobs, saved_pending
        else:
            self._check_worker("run_isolated")  # the calling job is the hub of the nested run
            self._with_run_hooks(self._new_run(jobs, {}).complete)
        return self._checked_result(fn, box[0])  # type: ignore[no-any-return]

    def map(self, fn: Callable[[Any], T], iterable: Iterable[Any]) -> List[T]:
        """Run ``fn(item)`` for every item as its own job; return the results in order.

        Loads made by the items batch together (and with every other job of
        the run).  Waits for all items, then raises the first failing item's
        exception, if any.  May suspend the calling job.  Outside a run it
        runs the items as a plain run; inside a fetch, as ``run_isolated``.
        """
        items = self._map_items(fn, iterable)
        if self._run is None:
            return self.run_isolated(lambda: self.map(fn, items))
        worker, run = self._check_worker("map")
        if not items:
            return []
        if worker.batch is not None:  # in a fetch: jobs would run only after it
            return self.run_isolated(lambda: self.map(fn, items))
        loop = MapLoop(self, run, fn, items, worker)
        try:
            loop.work()
            loop.wait()
        except BaseException:  # a timeout or a kill: nobody wants the other items now
            loop.stop()
            if not run.closing:
                run.interrupts.append(loop)
                if run.concurrent:
                    self._wake(run)
            raise
        return loop.outcome()

    @staticmethod
    def _map_items(fn: Any, iterable: Any) -> List[Any]:
        """``list(iterable)``, after checking both arguments of ``map``."""
        if not callable(fn):
            raise FiberloaderTypeError(f"dataloader.map() takes a one-argument callable, but got {short_repr(fn)}.")
        items = as_list(iterable)
        if items is None:
            raise FiberloaderTypeError(
                f"dataloader.map(fn, iterable) takes an iterable of items, but got "
                f"{type(iterable).__name__} {short_repr(iterable)}. Pass a list of the items to "
                "run fn on."
            )
        return items

    def yield_(self) -> None:
        """Suspend the current job or fetch; every other runnable one goes first.

        Inside a ``fetch``: the other pending fetches start, then this one
        resumes (manual parallelism).  In a job: it resumes in the next job
        phase, after pending batches are fetched.
        """
        worker, run = self._check_worker("yield_")
        worker.waiting = None
        # A yield is a step: the round that parks it is not stuck, and it
        # resumes in the next one even when nothing else is pending.
        run.progress += 1
        self._park(run, worker, run.parked if worker.batch is None else run.parked_fetches)

    # -- lifecycle hooks ------------------------------------------------------

    def get_fiber_variables(self) -> Any:
        """Called in the parent right before a run gives a worker greenlet its first task.

        (A new greenlet, or an idle one from the thread's pool.)

        Returns what the child needs; default: a copy of the parent's
        ``contextvars`` context.  Override to add what is not in a
        ``ContextVar`` (and ``set_fiber_variables`` to apply it).
        """
        return copy_context()

    def set_fiber_variables(self, variables: Any) -> None:
        """Called first thing inside each worker greenlet, each time a run takes it.

        Default: enter the copied context, so every ``ContextVar`` set
        around ``run()`` (Flask's ``request``, Django's, yours) is visible in
        jobs and fetches.
        """
        if isinstance(variables, Context):
            getcurrent().gr_context = variables

    def cleanup_fiber(self) -> None:
        """Called last thing inside each worker greenlet of a run, also when it failed.

        Once per greenlet per run: before it ends, or goes back to the
        thread's pool of idle workers.  The place to release per-greenlet
        resources (a database connection opened in a job or fetch): nothing
        may be left for the next run.  Default: nothing.  Extensions
        (``fiber_started`` / ``fiber_finished``) do the same without a
        subclass.
        """

    # -- the primitives AsyncDataloader replaces ----------------------------------
    #
    # The run loop (fiberloader._run) and the worker side (fiberloader._worker)
    # do everything else the same way for both schedulers.

    def _new_run(self, jobs: "Deque[Callable[[], Any]]", pending: Pending) -> Run:
        """A run whose hub is the calling greenlet."""
        hooks = self._hooks
        cls = type(self)
        cleanup = cls.cleanup_fiber is not Dataloader.cleanup_fiber or (
            hooks is not None and bool(hooks.fiber_finished)
        )
        own_variables = (
            cls.get_fiber_variables is not Dataloader.get_fiber_variables
            or cls.set_fiber_variables is not Dataloader.set_fiber_variables
        )
        return Run(self, getcurrent(), jobs, pending, cleanup, own_variables, self._new_wake())

    def _call_fetch(self, source: Source, keys: List[Any]) -> Any:  # type: ignore[type-arg]
        """Call ``source.fetch(keys)``, with the extensions' fetch hooks around it."""
        hooks = self._hooks
        if hooks is None or not hooks.fetches:
            return self._timed_fetch(source, keys)
        return around(hooks.fetches, (self, source, keys), self._timed_fetch, source, keys)

    def _timed_fetch(self, source: Source, keys: List[Any]) -> Any:  # type: ignore[type-arg]
        """Call ``source.fetch(keys)``; fail it if it returns after its ``fetch_timeout``.

        Nothing can interrupt a blocking call here; AsyncDataloader stops
        the fetch at the deadline instead (and sends blocking ones to threads).
        """
        timeout = source.fetch_timeout
        if timeout is None:
            return source.fetch(keys)
        started = monotonic()
        result = source.fetch(keys)
        if monotonic() - started > timeout:
            raise source._timed_out(keys, timeout, late=True)
        return result

    def _throw(self, run: Run, worker: Worker, error: BaseException) -> None:
        """In the hub: raise ``error`` in ``worker`` wherever it waits (a park, I/O)."""
        self._thrown(worker, error)

    @staticmethod
    def _thrown(worker: Worker, error: Any) -> None:
        if error.applies_to(worker):  # it may have finished what it was cancelled for
            worker.throw(error)

    def _new_wake(self) -> Any:
        """What the hub of a concurrent scheduler blocks on (``None``: it never blocks)."""
        return None

    def _worker_parent(self, run: Run) -> Any:
        """The greenlet a worker returns to when it ends."""
        return run.hub

    #: ``_deliver(worker, *args)``: switch to ``worker``; returns when it
    #: parks, goes idle or ends.  The switch itself, not a method around it:
    #: greenlet gives the frame that switches away a frame object, and a
    #: method's frame is a new one on each of the hub's two switches per job
    #: that waits (start, resume); the hub's loop frame gets one once.
    _deliver = staticmethod(greenlet.switch)

    def _suspend(self, run: Run, worker: Worker) -> Any:
        """In ``worker``: hand control back; returns what ``_deliver`` sends."""
        return run.hub.switch()

    def _block(self, run: Run) -> None:
        """In the hub: wait until a worker calls ``_wake``."""
        # Workers run one at a time here, so the hub only gets control back
        # with one still running if something else switched greenlets: a
        # gevent.Timeout or kill that resumed a parked job behind our back.
        raise FiberloaderError(
            f"{type(self).__name__} got control back while a job or fetch was still running: "
            "a parked job was resumed from outside the scheduler (a gevent.Timeout or a kill "
            "around a load?). Dataloader runs gevent I/O as blocking; to time out or cancel "
            "loads under gevent, use AsyncDataloader."
        )

    def _wake(self, run: Run) -> None:
        """Let a blocked hub go on (nothing to do when workers run one at a time)."""

    # -- errors ------------------------------------------------------------------------

    def _not_a_job(self, what: str, source: Any = None, key: Any = None) -> NotRunningError:
        """The error for ``what`` called where no job of this dataloader runs."""
        running = CURRENT.get() if self._run is None else None
        return not_running(self, what, source, key, running, self._request_over)
