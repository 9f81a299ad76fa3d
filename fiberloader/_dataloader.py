"""Dataloader: the synchronous greenlet scheduler.

Theory of operation
===================

The greenlet that calls ``run()`` becomes the *hub* of the run.  Jobs and
fetches run in *workers* (:class:`~fiberloader._fibers.Worker` greenlets
whose parent is the hub); the hub only decides who runs next.

1. **Jobs.**  The hub hands the job queue to a worker.  The worker takes
   queued jobs one after another and runs each to its end, every job in a
   fresh copy of the run's ``contextvars`` context.
2. **Suspend.**  A ``load`` of a key that is not cached puts the key in its
   source's pending batch and *parks* the worker: it switches back to the
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

When ``run()`` returns or raises, every worker it started has ended: idle
ones are stopped, parked ones (after a failure) get ``GreenletExit`` so
their ``finally`` blocks and ``cleanup_fiber`` run.  The one exception is
opt-in: with ``keep_greenlets``, idle workers of a successful run wait in a
per-thread pool, holding nothing of the run, for the next run to reuse.

AsyncDataloader runs this same loop.  Only four primitives differ
(``_deliver``, ``_suspend``, ``_block``, ``_wake``): there workers are
gevent greenlets, many can be running at once, and the hub blocks until
none is.  That is why workers book their own state (parked, idle) before
they hand control back, and why the hub only ever reads it.

Guarantees: every key is fetched at most once per cache lifetime (never
twice while in flight); a job sees its loads resolved before it resumes;
jobs parked in one phase resume in the order they parked; sources are
fetched in the order they first got a pending key.

Not guaranteed: the order in which *different* jobs' code interleaves
beyond that, or which worker greenlet runs a given job.

Why the hub starts every worker: a greenlet inherits the recursion depth of
the greenlet that first switches into it, so workers started from inside
parked jobs would each start deeper than the last (PITFALLS).  Starting a
greenlet costs ~10 us and resuming one ~0.4 us here, so workers are reused
within a run and none is started for a job that never waits.

Deadlocks: a round (job phase + fetch phase) in which nothing finished,
nothing was fetched and nothing new became pending, while workers are still
parked, can never end.  The hub then resumes each stuck worker with a
:class:`DeadlockError` that names what everyone waits for, so the loads
raise instead of hanging.
"""

from __future__ import annotations

import sys
import weakref
from time import monotonic
from collections import deque
from contextvars import Context, copy_context
from inspect import iscoroutine
from functools import partial
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Hashable,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
)

from greenlet import GreenletExit, getcurrent

from ._errors import (
    ConfigurationError,
    DeadlockError,
    FiberloaderError,
    FiberloaderTypeError,
    InvariantError,
    NotRunningError,
    SourceTypeError,
    describe_wait,
    class_name,
    short_repr,
)
from ._fibers import CURRENT, Cancelled, Worker, copy_error
from ._loops import MapLoop, SplitLoop
from ._source import Batch, Source

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["Dataloader", "DataloaderStats"]

T = TypeVar("T")
Pending = Dict[Source, Dict[Hashable, Any]]  # type: ignore[type-arg]
S = TypeVar("S", bound=Source)  # type: ignore[type-arg]
D = TypeVar("D", bound="Dataloader")

# What the hub hands a worker.
_JOBS = "jobs"  # take jobs from the queue
_STOP = "stop"  # end (an idle worker, at the end of the run)
_KEEP = "keep"  # finish this run's part, then wait in the thread's pool (keep_greenlets)
_DEADLOCK = "deadlock"  # your wait can never end: raise


_MAX_DEADLOCK_ROUNDS = 3  # stuck code that swallows DeadlockError aborts run()
# Idle workers kept for reuse within a run.  A worker that finishes when this
# many are idle ends at once instead: ending it now or at the end of the run
# costs the same, and the switches to park and stop it are saved.
_KEEP_IDLE = 64


class DataloaderStats:
    """Counters of one dataloader, for tests, debugging and benchmarks."""

    __slots__ = ("fetches", "keys_fetched", "greenlets", "reused", "max_alive")

    def __init__(self) -> None:
        self.fetches = 0  #: fetch() calls
        self.keys_fetched = 0  #: keys passed to fetch()
        self.greenlets = 0  #: worker greenlets started
        self.reused = 0  #: kept greenlets taken from the thread's pool (keep_greenlets)
        self.max_alive = 0  #: most worker greenlets alive at once

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)
        return f"DataloaderStats({fields})"


class _Run:
    """The state of one run (``run()``, or a ``run_isolated`` inside one).

    Workers book themselves before they hand control back: a worker that
    parks appends itself to ``parked`` (or ``parked_fetches``), one that
    runs out of work to ``idle``, and each decrements ``running``.  So the
    hub only ever reads these lists; under gevent, where workers run
    concurrently, ``running == 0`` is the moment a phase is over.
    """

    __slots__ = (
        "dataloader",
        "hub",
        "jobs",
        "pending",
        "later",
        "workers",
        "idle",
        "parked",
        "parked_fetches",
        "ready",
        "running",
        "starting",
        "want_worker",
        "progress",
        "failure",
        "closing",
        "deadlock",
        "cleanup",
        "wake",
        "concurrent",
        "expiring",
        "interrupted",
        "interrupts",
    )

    def __init__(
        self, dataloader: "Dataloader", hub: Any, jobs: "Deque[Callable[[], Any]]", pending: "Pending",
        cleanup: bool, wake: Any,
    ) -> None:
        self.dataloader = dataloader
        self.hub = hub  # the greenlet running the loop
        self.jobs = jobs  # this run's queue (a run_isolated has its own)
        # The keys this run's jobs and fetches asked for and that wait for
        # its next fetch phase: source -> {result key: fetch key}, both in
        # first-request order.  A run_isolated has its own, so that keys
        # pending elsewhere are not fetched by it (nor stolen from it).
        self.pending = pending
        self.later: List[Callable[[], Any]] = []  # jobs for after the next fetch phase
        self.workers: Dict[Worker, None] = {}  # alive, in start order
        self.idle: List[Worker] = []
        self.parked: List[Worker] = []  # jobs waiting on keys or yield_()
        self.parked_fetches: List[Worker] = []
        self.ready: Deque[Worker] = deque()  # to resume in this job phase
        self.running = 0  # handed work or a resume, and not parked/idle/ended since
        self.starting = 0  # handed work, and not yet running it (a woken worker counts)
        self.want_worker = False  # a worker saw more jobs queued behind its own
        self.progress = 0  # bumped whenever a task finishes
        self.failure: Optional[BaseException] = None  # a job's exception, for the hub
        self.closing = False
        self.deadlock: Optional[DeadlockError] = None
        self.cleanup = cleanup  # whether cleanup_fiber is overridden (else skip the call)
        self.wake = wake  # concurrent schedulers: what the hub blocks on
        # Workers may run at once (AsyncDataloader): the hub blocks until
        # none is running, and every booking that may end a phase wakes it.
        self.concurrent = wake is not None
        # (source, result keys, error) of fetches that timed out: their keys
        # fail for the loads waiting now, and are forgotten after the next
        # job phase (a timeout is not cached).
        self.expiring: List[Tuple[Source, List[Hashable], BaseException]] = []  # type: ignore[type-arg]
        self.interrupted = False  # a parked worker was woken by an exception (a timeout, a kill)
        self.interrupts: List[Any] = []  # map() loops whose items the hub must stop


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


class Dataloader:
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
    #: Opt-in: keep up to this many idle worker greenlets in a per-thread pool
    #: when a run ends, for later runs of this class to reuse.  Starting and
    #: ending a greenlet costs ~7 us, resuming a kept one ~0.7 us; each kept
    #: greenlet holds ~11 KiB.  0 (the default): every greenlet a run started
    #: has ended when run() returns.  See release_kept_greenlets().
    keep_greenlets = 0

    def __init__(self, *, fiber_limit: Optional[int] = None) -> None:
        self.fiber_limit = _check_fiber_limit(fiber_limit)
        self._limit = sys.maxsize if fiber_limit is None else fiber_limit
        self._sources: Dict[type, Dict[Hashable, Source]] = {}  # type: ignore[type-arg]
        self._jobs: Deque[Callable[[], Any]] = deque()
        self._pending: Pending = {}  # keys requested outside any run, for the next run()
        self._run: Optional[_Run] = None
        self._request_over = False  # set by the web integrations when the response is done
        self.stats = DataloaderStats()

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
        """End the greenlets this class keeps for reuse in the current thread.

        Returns how many ended.  Only matters with ``keep_greenlets``.
        """
        kept = _kept_pool(cls)
        count = 0
        while kept:
            worker = kept.pop()
            worker.parent = getcurrent()
            worker.throw()
            count += 1
        return count

    def clear_cache(self) -> None:
        """Forget the cached results of every source of this dataloader."""
        for instances in self._sources.values():
            for source in instances.values():
                source.clear_cache()

    def _end_request(self) -> None:
        """The web request this dataloader served is over: drop its cache and sources."""
        self._request_over = True
        self.clear_cache()
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
        their greenlets ended.  No greenlet this call started is alive when
        it returns or raises.

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
            context.run(self._complete, run)
        finally:
            self._run = None

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
            self._complete(self._new_run(jobs, {}))
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
        try:
            return list(iterable)
        except TypeError:
            if hasattr(iterable, "__iter__"):
                raise  # an iterable that failed while iterating: its own error
            raise FiberloaderTypeError(
                f"dataloader.map(fn, iterable) takes an iterable of items, but got "
                f"{type(iterable).__name__} {short_repr(iterable)}. Pass a list of the items to "
                "run fn on."
            ) from None

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
        """Called in the parent right before a worker greenlet starts.

        Returns what the child needs; default: a copy of the parent's
        ``contextvars`` context.  Override to add what is not in a
        ``ContextVar`` (and ``set_fiber_variables`` to apply it).
        """
        return copy_context()

    def set_fiber_variables(self, variables: Any) -> None:
        """Called first thing inside each new worker greenlet.

        Default: enter the copied context, so every ``ContextVar`` set
        around ``run()`` (Flask's ``request``, Django's, yours) is visible in
        jobs and fetches.
        """
        if isinstance(variables, Context):
            getcurrent().gr_context = variables

    def cleanup_fiber(self) -> None:
        """Called last thing inside each worker greenlet, also when it failed.

        The place to release per-greenlet resources (a database connection
        opened in a job or fetch).  Default: nothing.
        """

    # -- the scheduler (runs in the hub) ----------------------------------------

    def _new_run(self, jobs: "Deque[Callable[[], Any]]", pending: Pending) -> _Run:
        """A run whose hub is the calling greenlet."""
        cleanup = type(self).cleanup_fiber is not Dataloader.cleanup_fiber
        return _Run(self, getcurrent(), jobs, pending, cleanup, self._new_wake())

    def _complete(self, run: _Run) -> None:
        """Drive ``run`` to its end, then end its workers (also on failure)."""
        try:
            self._drive(run)
        except BaseException:
            self._close(run, failed=True)
            raise
        self._close(run, failed=False)

    def _drive(self, run: _Run) -> None:
        """Alternate job and fetch phases until nothing is queued or parked."""
        stuck_rounds = 0
        while True:
            mark = run.progress
            self._job_phase(run)
            if run.expiring:  # every load that waited on a timed-out key has read it now
                self._forget_expired(run)
            fetched = bool(run.pending)
            if fetched:
                self._fetch_phase(run)
            if len(run.workers) == len(run.idle) and not run.jobs and not run.later:
                if not run.pending:
                    return
                continue
            if run.progress != mark or fetched or run.pending or run.ready or run.later:
                stuck_rounds = 0
                continue
            if self._wait_elsewhere(run, run.parked):
                stuck_rounds = 0
                continue
            stuck_rounds += 1
            stuck = run.parked[:]
            run.parked.clear()
            self._break_deadlock(run, stuck, stuck_rounds)
            if run.failure is not None:  # a job that let the DeadlockError out
                raise run.failure

    def _job_phase(self, run: _Run) -> None:
        """Run jobs and resume parked ones until every job waits or is done."""
        ready, idle = run.ready, run.idle
        if run.later:  # queued for after a fetch phase: that was it
            run.jobs.extend(run.later)
            run.later.clear()
        if run.parked:
            ready.extend(run.parked)
            run.parked.clear()
        jobs = run.jobs
        limit = self._limit - 1  # keep one worker for fetches
        while True:
            if ready:
                self._resume(run, ready.popleft(), None)
            elif jobs and not run.starting and len(run.workers) - len(idle) < limit:
                self._start(run, _JOBS)
            elif run.running:
                self._block(run)
                if run.interrupts:
                    self._cancel_items(run)
            else:
                return
            if run.failure is not None:
                raise run.failure

    def _fetch_phase(self, run: _Run) -> None:
        """Fetch every pending batch, resuming fetches that wait, until all are done."""
        sources = run.pending
        parked, idle = run.parked_fetches, run.idle
        waiting: Deque[Tuple[Source, Batch]] = deque()  # type: ignore[type-arg]
        resumed_at: Optional[int] = None  # progress when parked fetches were last resumed
        stuck_rounds = 0
        while True:
            if run.failure is not None:
                raise run.failure
            if sources and not waiting:
                source = next(iter(sources))  # the first to get a pending key
                waiting.extend((source, batch) for batch in source._take_batches(sources.pop(source)))
            elif waiting and (idle or len(run.workers) < self._limit):
                source, batch = waiting.popleft()
                self._start(run, partial(self._fetch, source, batch))
            elif self.eager_resume and self._resume_eagerly(run):
                pass
            elif run.running:
                self._block(run)
                if run.interrupts:
                    self._cancel_items(run)
                if run.interrupted:
                    self._cancel_orphans(run)
            elif waiting and not any(self._can_go_on(worker) for worker in parked):
                # Every greenlet the limit allows is taken, and the parked
                # fetches wait for these batches: borrow one above the limit
                # (one per level of fetches loading from fetches) rather than
                # deadlock, so that fiber_limit never changes results.
                source, batch = waiting.popleft()
                self._start(run, partial(self._fetch, source, batch))
            elif not parked:
                if waiting:
                    raise InvariantError("a fetch is waiting for a worker, but none is busy")
                return
            elif resumed_at == run.progress and not sources and self._wait_elsewhere(run, parked):
                resumed_at = None
            elif resumed_at == run.progress and not sources:
                # Every parked fetch was resumed and none got anywhere.
                stuck_rounds += 1
                stuck = parked[:]
                parked.clear()
                resumed_at = None
                self._break_deadlock(run, stuck, stuck_rounds)
            else:
                if resumed_at != run.progress:
                    stuck_rounds = 0
                resumed_at = run.progress
                resuming = parked[:]
                parked.clear()
                for worker in resuming:
                    self._resume(run, worker, None)

    @staticmethod
    def _can_go_on(worker: Worker) -> bool:
        """Whether a parked worker would get past its park if resumed now."""
        waiting = worker.waiting
        if type(waiting) is tuple:
            source, rks = waiting
            return all(source._resolved(rk) for rk in rks)
        return True  # a yield_(), or a wait that is not on keys

    def _resume_eagerly(self, run: _Run) -> bool:
        """``eager_resume``: during the fetch phase, go on with what can go on now.

        Resumes jobs whose keys have all arrived (and map() callers whose
        items are done) and starts queued jobs, without waiting for the
        other fetches of the round.  Returns whether it did anything.
        """
        if run.ready:
            self._resume(run, run.ready.popleft(), None)
            return True
        for worker in run.parked:
            waiting = worker.waiting
            if isinstance(waiting, tuple) and not any(
                not waiting[0]._resolved(rk) for rk in waiting[1]
            ):
                run.parked.remove(worker)
                self._resume(run, worker, None)
                return True
        if run.jobs and not run.starting and len(run.workers) - len(run.idle) < self._limit - 1:
            self._start(run, _JOBS)
            return True
        return False

    def _fetch(self, source: Source, batch: Batch) -> None:  # type: ignore[type-arg]
        """A fetch task, run in a worker."""
        worker: Worker = getcurrent()  # type: ignore[assignment]
        worker.batch = (source, batch)
        stats = self.stats
        stats.fetches += 1
        stats.keys_fetched += len(batch)
        try:
            timed_out = source._run_batch(batch)
            if timed_out is not None:
                worker.owner.expiring.append((source, [rk for rk, _ in batch], timed_out))
        finally:
            worker.batch = None
            if self.eager_resume:
                self._wake(worker.owner)  # some job may go on now

    def _call_fetch(self, source: Source, keys: List[Any]) -> Any:  # type: ignore[type-arg]
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

    @staticmethod
    def _forget_expired(run: _Run) -> None:
        for source, rks, error in run.expiring:
            source._forget_failed(rks, error)
        run.expiring.clear()

    # -- cancelling what nobody waits for any more (runs in the hub) ----------------

    def _cancel_orphans(self, run: _Run) -> None:
        """Stop the fetches whose keys no parked job or fetch waits for any more.

        Called after a parked worker was woken by an exception (a
        ``gevent.Timeout`` around a load, a kill): the fetch it waited for
        may have nobody left to wait for it, and must not keep ``run()``
        (and the request) waiting.  A stopped fetch stores nothing; a later
        load of its keys fetches them again.
        """
        run.interrupted = False
        fetches = [worker for worker in run.workers if worker.batch is not None]
        stopped: List[Worker] = []
        while fetches:
            wanted: Set[Tuple[int, Hashable]] = set()
            for worker in run.workers:
                waiting = worker.waiting
                if type(waiting) is tuple and worker not in stopped:
                    source, rks = waiting
                    wanted.update((id(source), rk) for rk in rks)
            orphans = [
                worker
                for worker in fetches
                if not any((id(worker.batch[0]), rk) in wanted for rk, _ in worker.batch[1])
            ]
            if not orphans:
                break
            stopped += orphans
            fetches = [worker for worker in fetches if worker not in orphans]
        for worker in stopped:
            self._throw(run, worker, Cancelled(None, worker.batch))

    def _cancel_items(self, run: _Run) -> None:
        """Stop the items of map() loops whose caller stopped waiting for them."""
        interrupts = run.interrupts[:]
        run.interrupts.clear()
        for loop in interrupts:
            for worker in list(run.workers):
                if loop in worker.groups and worker is not loop.owner:
                    self._throw(run, worker, Cancelled(loop))

    def _throw(self, run: _Run, worker: Worker, error: BaseException) -> None:
        """In the hub: raise ``error`` in ``worker`` wherever it waits (a park, I/O)."""
        if error.applies_to(worker):  # type: ignore[attr-defined]
            worker.throw(error)

    def _resume(self, run: _Run, worker: Worker, value: Any) -> None:
        """Hand a parked worker the value its park returns, and let it run."""
        run.running += 1
        self._deliver(worker, value)

    def _start(self, run: _Run, task: Any) -> None:
        """Give ``task`` to an idle worker, or to a new one, and let it run."""
        run.running += 1
        run.starting += 1
        idle = run.idle
        if idle:
            self._deliver(idle.pop(), task)
            return
        variables = self.get_fiber_variables()
        stats = self.stats
        kept = _kept_pool(type(self)) if self.keep_greenlets else None
        if kept:
            worker = kept.pop()
            worker.parent = self._worker_parent(run)
            worker.owner = run
            stats.reused += 1
            arguments: Tuple[Any, ...] = ((run, variables, task),)  # what its pool wait returns
        else:
            worker = Worker(_worker_main, self._worker_parent(run), run)
            stats.greenlets += 1
            # In a list the worker empties: a greenlet's first-switch
            # arguments stay referenced for as long as it lives.
            arguments = ([run, variables, task],)
        run.workers[worker] = None
        if len(run.workers) > stats.max_alive:
            stats.max_alive = len(run.workers)
        self._deliver(worker, *arguments)

    def _serve(self, me: Worker, run: _Run, variables: Any, task: Any) -> bool:
        """A worker's part in one run; returns whether it goes to the thread's pool."""
        base = None
        try:
            run.starting -= 1
            self.set_fiber_variables(variables)
            del variables
            base = me.gr_context
            if base is None:  # an override that set no context: start from an empty one
                base = Context()
            idle = run.idle
            concurrent = run.concurrent
            while task is not _STOP and task is not _KEEP:
                # Each job and fetch gets its own copy of the worker's context.
                # Swapping gr_context (rather than Context.run) keeps the job's
                # frames in this eval loop: fewer C frames for greenlet to copy
                # on every switch.
                if task is _JOBS:
                    jobs = run.jobs
                    while jobs:
                        job = jobs.popleft()
                        if concurrent and jobs:
                            self._want_worker(run)  # in case this job blocks in I/O
                        me.gr_context = base.copy()
                        result = job()
                        if result is not None:  # an async def job: say so, leave no coroutine
                            self._checked_result(job, result)
                            result = None
                        del job
                else:
                    me.gr_context = base.copy()
                    task()
                run.progress += 1
                task = None  # drop the reference while idle
                if len(idle) >= _KEEP_IDLE and not self.keep_greenlets:
                    return False  # end now: ending later costs the same, plus two switches
                idle.append(me)
                self._stopped_running(run)
                task = self._suspend(run)
                run.starting -= 1
        except BaseException as error:  # a job's exception: the hub raises it
            if not run.closing and type(error) is not Cancelled:
                run.failure = run.failure or error
                if run.concurrent:
                    self._wake(run)  # now, not when the siblings in I/O are done
            return False
        finally:
            run.workers.pop(me, None)
            if not run.closing and task is not _STOP and task is not _KEEP:
                self._stopped_running(run)
            if base is not None:
                me.gr_context = base
            if run.cleanup:
                self.cleanup_fiber()
        return task is _KEEP

    # -- the primitives AsyncDataloader replaces --------------------------------

    def _new_wake(self) -> Any:
        """What the hub of a concurrent scheduler blocks on (``None``: it never blocks)."""
        return None

    def _worker_parent(self, run: _Run) -> Any:
        """The greenlet a worker returns to when it ends."""
        return run.hub

    def _deliver(self, worker: Worker, *args: Any) -> None:
        """Switch to ``worker``; returns when it parks, goes idle or ends."""
        worker.switch(*args)

    def _suspend(self, run: _Run) -> Any:
        """In a worker: hand control back; returns what ``_deliver`` sends."""
        return run.hub.switch()

    def _block(self, run: _Run) -> None:
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

    def _wake(self, run: _Run) -> None:
        """Let a blocked hub go on (nothing to do when workers run one at a time)."""

    # -- worker-side bookkeeping ---------------------------------------------------

    def _stopped_running(self, run: _Run) -> None:
        run.running -= 1
        if not run.running and run.concurrent:
            self._wake(run)

    def _want_worker(self, run: _Run) -> None:
        """A concurrent worker saw queued jobs behind its own: wake the hub once."""
        if not run.want_worker:
            run.want_worker = True
            self._wake(run)

    def _make_ready(self, run: _Run, worker: Worker) -> None:
        """Queue a waiting worker to be resumed in this job phase."""
        run.ready.append(worker)
        if run.concurrent:
            self._wake(run)

    def _split(self, run: _Run, group: SplitLoop) -> None:
        """Queue a helper for a map() loop that has unstarted items."""
        if not group.helper_queued and group.next < len(group.items):
            group.helper_queued = True
            group.run.jobs.append(group.work)
            if run.concurrent:
                self._want_worker(run)

    # -- parking (runs in a worker) -------------------------------------------

    def _after_fetch(self, run: _Run, job: Callable[[], Any]) -> None:
        """Queue ``job`` to run in the job phase after the next fetch phase.

        graphql-ruby's lazy resolution: the GraphQL executor completes a
        field whose resolver returned a request handle this way, once the
        handle's batch has been fetched, without a greenlet of its own.
        """
        run.later.append(job)

    def _in_job(self) -> bool:
        """Whether the calling code is one of this dataloader's jobs (or fetches)."""
        return self._caller()[1] is not None

    def _caller(self) -> Tuple[Optional[Worker], Optional[_Run]]:
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

    def _check_worker(self, what: str) -> Tuple[Worker, _Run]:
        """The calling worker and its run; raise if the caller is not one."""
        worker, run = self._caller()
        if worker is None or run is None:
            raise self._not_a_job(f"dataloader.{what}()")
        return worker, run

    def _not_a_job(self, what: str, source: Any = None, key: Any = None) -> NotRunningError:
        if self._run is None:
            running = CURRENT.get()
            if source is not None and running is not None and running is not self:
                fix = (
                    "the source belongs to another dataloader than the one running this job. "
                    "Get sources from the running one: "
                    f"fiberloader.current_dataloader().with_({class_name(type(source))}, ...)."
                )
            elif self._request_over:
                fix = (
                    "its request is over (the response was returned). Load in the view, or in "
                    "the streamed body; a teardown handler or code after the response has no "
                    "dataloader."
                )
            else:
                fix = (
                    f"Call it from inside a job: {type(self).__name__}.with_dataloading(fn), or "
                    "dataloader.append_job(fn) then dataloader.run(); in a web app, run each "
                    "request's handler as a job of its own dataloader."
                )
            return NotRunningError(
                f"{what} needs a running dataloader, but {type(self).__name__} is not running"
                f"{': ' if fix[0].islower() else '. '}{fix}",
                data_source=source,
                key=key,
            )
        return NotRunningError(
            f"{what} was called from a greenlet that is not one of this dataloader's jobs "
            f"({type(self).__name__} is running, but this code runs outside it: in another "
            "dataloader's job, or in a thread or greenlet of your own). Call it from the job "
            "itself, or use that code's own dataloader (fiberloader.current_dataloader()).",
            data_source=source,
            key=key,
        )

    def _park(self, run: _Run, worker: Worker, parked: Optional[List[Worker]]) -> None:
        """Book this worker as parked (in ``parked``, if given) and wait for a resume."""
        if run.closing:
            raise GreenletExit
        groups = worker.groups
        if groups:
            # map() loops on this stack must not stall while it waits: let
            # another worker carry on with their unstarted items.
            for group in reversed(groups):  # innermost first: the order plain code would take
                if type(group) is list:  # an inline loop's mark: [loop, make_loop, ...]
                    if group[0] is None:
                        group[0] = group[1](run, worker, group)
                    group = group[0]
                self._split(run, group)
        if parked is not None:
            parked.append(worker)
        self._stopped_running(run)
        if self.eager_resume and run.concurrent:
            self._wake(run)  # it may have queued keys that can be fetched now
        try:
            value = self._suspend(run)
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
        if value is _DEADLOCK:
            raise copy_error(run.deadlock)  # type: ignore[arg-type]

    def _unpark(self, run: _Run, worker: Worker, parked: Optional[List[Worker]]) -> None:
        if worker.pending is not None:  # a resume was already on its way: it is counted
            self._forget_pending(worker)
            return
        for queue in (parked, run.ready):
            if queue is not None and worker in queue:
                queue.remove(worker)
        run.running += 1

    def _wait(self, source: Source, keys: Sequence[Any], rks: Sequence[Hashable]) -> None:  # type: ignore[type-arg]
        """Park the calling job until every key of ``rks`` is resolved."""
        worker: Worker = getcurrent()  # type: ignore[assignment]
        run: Optional[_Run] = getattr(worker, "owner", None)
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
    def _enqueue(pending: Pending, source: Source, keys: Sequence[Any], rks: Sequence[Hashable]) -> None:  # type: ignore[type-arg]
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
        run: Optional[_Run] = getattr(getcurrent(), "owner", None)
        if run is None or run.dataloader is not self:
            run = self._run  # the running one (a caller outside its jobs), else the next
        self._enqueue(self._pending if run is None else run.pending, source, (key,), (rk,))

    def _pending_keys(self, source: Source) -> List[Any]:  # type: ignore[type-arg]
        """The fetch keys of ``source`` waiting for a batch: the calling run's, else the next run's."""
        run: Optional[_Run] = getattr(getcurrent(), "owner", None)
        if run is None or run.dataloader is not self:
            run = self._run
        pending = self._pending if run is None else run.pending
        return list(pending.get(source, {}).values())

    def _wait_elsewhere(self, run: _Run, stuck: List[Worker]) -> bool:
        """A stuck run whose workers wait on keys in flight in another run: wait for those.

        Only a nested run (a ``run_isolated`` or ``map`` inside a job or
        fetch of an enclosing run) can find its keys in flight in a fetch
        that is not its own: one of the enclosing run's, parked on keys of
        its own.  Then this run's hub -- a worker of the enclosing run --
        parks in the enclosing run until those keys arrive, which lets that
        run go on.  Returns whether it waited.
        """
        if any(self._can_go_on(worker) for worker in stuck):
            return True  # another run's fetch resolved their keys meanwhile: resume them
        hub = run.hub
        outer: Optional[_Run] = getattr(hub, "owner", None)
        if outer is None or outer.dataloader is not self:
            return False  # a top-level run: nothing else can fetch them
        own: Set[Tuple[int, Hashable]] = set()
        for worker in run.workers:
            if worker.batch is not None:
                fetching, batch = worker.batch
                own.update((id(fetching), rk) for rk, _ in batch)
        for worker in stuck:
            waiting = worker.waiting
            if type(waiting) is not tuple:
                continue
            source, rks = waiting
            foreign = [
                rk for rk in rks if rk in source._fetching and (id(source), rk) not in own
            ]
            if foreign:
                self._wait(source, foreign, foreign)  # the hub parks in the enclosing run
                return True
        return False

    # -- deadlocks and the end of a run -----------------------------------------

    def _break_deadlock(self, run: _Run, stuck: List[Worker], rounds: int) -> None:
        """Resume every stuck worker with a DeadlockError naming the waits."""
        waits = [self._wait_of(worker) for worker in stuck]
        lines = [self._describe_stuck(worker) for worker in stuck]
        hint = (
            "This usually means a fetch() loads a key that is in its own batch, or two fetches "
            "wait on each other's keys: load those keys in the job instead, or give the inner "
            "load a source of its own."
        )
        error = DeadlockError(
            "Deadlock: no job or fetch can proceed.\n" + "\n".join(lines) + "\n" + hint, waits
        )
        if rounds > _MAX_DEADLOCK_ROUNDS or not stuck:
            raise error
        run.deadlock = error
        for worker in stuck:
            self._resume(run, worker, _DEADLOCK)

    @staticmethod
    def _wait_of(worker: Worker) -> Tuple[Optional[Source], List[Any]]:  # type: ignore[type-arg]
        waiting = worker.waiting
        if isinstance(waiting, tuple):
            source, rks = waiting
            return source, [rk for rk in dict.fromkeys(rks) if not source._resolved(rk)]
        return None, []

    def _describe_stuck(self, worker: Worker) -> str:
        source, keys = self._wait_of(worker)
        batch = getattr(worker, "batch", None)
        who = "a job"
        note = ""
        if batch is not None:
            fetching, items = batch
            who = f"{fetching!r}.fetch({short_repr([key for _, key in items])})"
            if source is fetching and any(rk in dict(items) for rk in keys):
                note = " -- keys of its own batch: a circular dependency"
        if source is not None and not note and any(rk in source._fetching for rk in keys):
            note = " -- in flight in another fetch that is stuck too"
        return f"  {who} waits on {describe_wait(source, keys)}{note}"

    def _close(self, run: _Run, failed: bool) -> None:
        """End every worker of ``run``; raise a cleanup error if the run succeeded."""
        run.closing = True
        errors: List[BaseException] = []
        idle = set(run.idle)
        here = getcurrent()
        kept = _kept_pool(type(self)) if self.keep_greenlets and not failed else None
        for _ in range(3):
            if not run.workers:
                break
            for worker in list(run.workers):
                if worker.dead:
                    run.workers.pop(worker, None)
                    continue
                self._forget_pending(worker)
                worker.parent = here  # an ended greenlet returns to its parent: to us
                try:
                    if worker in idle:
                        keep = kept is not None and len(kept) < self.keep_greenlets
                        worker.switch(_KEEP if keep else _STOP)
                    else:
                        worker.throw()
                except BaseException as error:  # a cleanup_fiber or finally that raised
                    errors.append(error)
        run.idle.clear()
        run.parked.clear()
        run.parked_fetches.clear()
        run.ready.clear()
        run.deadlock = None
        run.failure = None
        run.interrupts.clear()
        if run.expiring:
            self._forget_expired(run)
        if run.workers:
            raise InvariantError(f"{len(run.workers)} worker greenlets did not end")
        if errors and not failed:
            raise errors[0]

    def _forget_pending(self, worker: Worker) -> None:
        """Cancel a delivery not yet made (only concurrent schedulers defer them)."""


# -- workers and the kept-greenlet pools ------------------------------------------------

# Per thread (keyed by the thread's main greenlet, which threading.local cannot
# be under gevent's monkey-patching), per dataloader class: the kept workers.
_pools: "weakref.WeakKeyDictionary[Any, Dict[type, List[Worker]]]" = weakref.WeakKeyDictionary()


def _kept_pool(cls: type) -> List[Worker]:
    root = getcurrent()
    while root.parent is not None:
        root = root.parent
    pools = _pools.get(root)
    if pools is None:
        pools = _pools[root] = {}
    return pools.setdefault(cls, [])


def _worker_main(first: List[Any]) -> None:
    """The body of every worker greenlet: serve a run; if kept, wait for the next."""
    me: Worker = getcurrent()  # type: ignore[assignment]
    run, variables, task = first
    first.clear()
    while run.dataloader._serve(me, run, variables, task):
        _kept_pool(type(run.dataloader)).append(me)
        # Hold nothing of the run that is ending: not its context (which
        # holds the dataloader and its caches), not its hub.
        me.owner = me.waiting = me.batch = None
        me.groups.clear()  # empty already: every loop pops what it pushed
        me.gr_context = None
        del run, variables, task
        # Back to the hub closing the old run (_close made it our parent);
        # resumed by the next run's _start.
        run, variables, task = me.parent.switch()  # type: ignore[union-attr]
