"""Run: the state of one run and the hub's loop that drives it.

A *run* is one call of ``Dataloader.run()``, or a ``run_isolated`` / ``map``
inside one.  The greenlet that starts it is its *hub*; jobs and fetches run
in *workers* (``fiberloader._worker``).  This module is the hub's side:

1. **Job phase** (:meth:`Run.job_phase`): hand queued jobs to workers and
   resume the workers that are ready, until every job waits or is done.
2. **Fetch phase** (:meth:`Run.fetch_phase`): for every source with pending
   keys (in the order each got its first), take its batches and run each
   ``fetch`` in a worker.  A fetch that waits on another source parks; the
   hub starts the fetches it waits for and resumes it, until all are done.
3. Back to 1, until nothing is queued, parked or pending; then
   :meth:`Run.close` ends every worker, or leaves idle ones in the thread's
   pool for a later run (``fiberloader._worker``).

Rules of the house
==================

* **One owner per field.**  A worker books *itself*: it appends itself to
  ``parked`` / ``parked_fetches`` / ``idle`` and decrements ``running``
  before it hands control back (``fiberloader._worker``).  The hub only
  takes workers out of those lists and counts a worker as ``running`` when
  it hands it work (``start``, ``hand``) or a value (``resume``; the job
  phase does that inline).  Under
  AsyncDataloader workers run concurrently, so ``running == 0`` is the
  moment a phase is over; a woken worker counts as running from the moment
  it is handed work, not from its first slice (graphql-ruby #5671/#5675).
* **The pending keys are the run's** (``pending``): a ``run_isolated``
  has its own, so that it neither fetches nor steals keys other runs wait
  for.  A source's cache and its in-flight set are the source's
  (``fiberloader._source``); this module only reads them and hands batches
  to ``Source._take_batches`` / ``_run_batch``.
* **Progress** (``progress``) is bumped whenever a task finishes, a wait
  ends or a job yields.  A round with no progress, nothing fetched and
  workers still parked is a deadlock: every stuck worker is resumed with a
  ``DeadlockError`` naming what everyone waits for -- unless they wait on
  keys in flight in an enclosing run, which then gets to go on first
  (:meth:`Run.wait_elsewhere`).
* What the two schedulers do differently is a handful of primitives on the
  dataloader (``_deliver``, ``_suspend``, ``_block``, ``_wake``, ``_throw``,
  ``_call_fetch``); ``concurrent`` says which kind this run has.  Code
  here never tests for gevent.
* **A concurrent hub looks before it blocks.**  Workers wake a blocked hub
  (``_wake``), but not one that is in a direct switch to a worker
  (``direct``): that hub looks at every flag they set (``looping``,
  ``interrupts``, ``interrupted``, ``failure``) after each step of its loop,
  before it decides to block.

WARNING: a change to how a worker books itself (``fiberloader._worker``)
must keep these lists and ``running`` consistent: a worker counted running
that never parks hangs the hub of a concurrent run; one parked twice is
resumed twice.
"""

from __future__ import annotations

from collections import deque
from contextvars import copy_context
from functools import partial
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Set, Tuple

from greenlet import getcurrent

from ._errors import DeadlockError, InvariantError, describe_wait, short_repr
from ._fibers import Cancelled, Worker
from ._source import Batch, Source
from ._worker import DEADLOCK, JOBS, KEEP, STOP, idle_pool, kept, worker_main

__all__ = ["Run", "Pending"]

Pending = Dict[Source, Dict[Hashable, Any]]  # type: ignore[type-arg]

_MAX_DEADLOCK_ROUNDS = 3  # deadlocks in a row with no progress: run() raises (see break_deadlock)


class Run:
    """The state of one run (``run()``, or a ``run_isolated`` inside one) and its hub's loop."""

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
        "deadlock_progress",
        "deadlock_rounds",
        "cleanup",
        "keep",
        "wake",
        "concurrent",
        "expiring",
        "interrupted",
        "interrupts",
        "handed",
        "looping",
        "direct",
        "guard",
        "own_variables",
    )

    def __init__(
        self, dataloader: Any, hub: Any, jobs: "Deque[Callable[[], Any]]", pending: Pending,
        cleanup: bool, own_variables: bool, wake: Any,
    ) -> None:
        self.dataloader = dataloader
        self.hub = hub  # the greenlet running the loop
        self.jobs = jobs  # this run's queue (a run_isolated has its own)
        # The keys this run's jobs and fetches asked for and that wait for
        # its next fetch phase: source -> {result key: fetch key}, both in
        # first-request order.
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
        self.progress = 0  # bumped whenever a task finishes, a wait ends or a job yields
        self.failure: Optional[BaseException] = None  # a job's exception, for the hub
        self.closing = False
        self.deadlock: Optional[DeadlockError] = None
        self.deadlock_progress = -1  # progress when the last deadlock was broken
        self.deadlock_rounds = 0  # deadlocks broken since progress was last made
        self.cleanup = cleanup  # whether cleanup_fiber is overridden (else skip the call)
        # The most idle workers this run may leave in the thread's pool (and
        # take from it): none for a nested run, whose hub is a worker -- its
        # workers would carry that hub's stack depth on (fiberloader._worker).
        self.keep = 0 if isinstance(hub, Worker) else dataloader.keep_greenlets
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
        # Batches handed to a worker whose fetch has not begun (under gevent a
        # worker starts later): abandoned if the run fails before they do.
        self.handed: Dict[int, Tuple[Source, Batch]] = {}  # type: ignore[type-arg]
        # Concurrent runs: workers that started a loop item with items left
        # since the hub last looked (they may be blocked in I/O in it).
        self.looping: Dict[Worker, None] = {}
        # Concurrent runs: the worker the hub is in a direct switch to (None
        # when it is not; set and cleared by the hub around the switch), and
        # the callback queued in gevent's loop that hands control back to the
        # hub if that worker blocks in I/O (fiberloader._async).
        self.direct: Optional[Worker] = None
        self.guard: Any = None
        # Whether the dataloader overrides get/set_fiber_variables; if not,
        # the run does what they do without calling them: a worker starts in
        # a copy of the hub's context.
        self.own_variables = own_variables

    # -- the loop ---------------------------------------------------------------

    def complete(self) -> None:
        """Drive the run to its end, then end its workers (also on failure)."""
        try:
            self.drive()
        except BaseException:
            self.close(failed=True)
            raise
        self.close(failed=False)

    def drive(self) -> None:
        """Alternate job and fetch phases until nothing is queued, parked or pending."""
        while True:
            mark = self.progress
            self.job_phase()
            if self.expiring:  # every load that waited on a timed-out key has read it now
                self.forget_expired()
            fetched = bool(self.pending)
            if fetched:
                self.fetch_phase()
            if len(self.workers) == len(self.idle) and not self.jobs and not self.later:
                if not self.pending:
                    return
                continue
            if self.progress != mark or fetched or self.pending or self.ready or self.later:
                continue
            if self.wait_elsewhere(self.parked):
                continue
            # Defensive: keys in flight where no fetch of this run or an
            # enclosing one can finish them.  The phases' invariants rule it
            # out; if it ever happens, a DeadlockError beats a hang.
            stuck = self.parked[:]
            self.parked.clear()
            self.break_deadlock(stuck)
            if self.failure is not None:  # a job that let the DeadlockError out
                raise self.failure

    def job_phase(self) -> None:
        """Run jobs and resume parked ones until every job waits or is done."""
        dataloader = self.dataloader
        ready, idle = self.ready, self.idle
        if self.later:  # queued for after a fetch phase: that was it
            self.jobs.extend(self.later)
            self.later.clear()
        if self.parked:
            ready.extend(self.parked)
            self.parked.clear()
        jobs = self.jobs
        limit = dataloader._limit - 1  # keep one worker for fetches
        deliver = dataloader._deliver
        while True:
            if ready:  # self.resume(), inline: switching from this frame (see hand)
                self.running += 1
                deliver(ready.popleft(), None)
            elif jobs and not self.starting and len(self.workers) - len(idle) < limit:
                deliver(*self.hand(JOBS))  # self.start(JOBS), switching from this frame
            elif self.running:
                dataloader._block(self)
            else:
                return
            if self.failure is not None:
                raise self.failure
            if self.concurrent:  # what workers flagged while the hub was blocked or switched away
                if self.looping:
                    self.split_looping()
                if self.interrupts:
                    self.cancel_items()

    def fetch_phase(self) -> None:
        """Fetch every pending batch, resuming fetches that wait, until all are done."""
        sources = self.pending
        parked, idle = self.parked_fetches, self.idle
        waiting: Deque[Tuple[Source, Batch]] = deque()  # type: ignore[type-arg]
        try:
            self._fetch_batches(sources, waiting, parked, idle)
        finally:
            for source, batch in waiting:  # taken, never started: the run failed
                source._abandon(batch)

    def _fetch_batches(self, sources: Pending, waiting: Any, parked: List[Worker], idle: List[Worker]) -> None:
        """The fetch phase's loop; ``waiting`` holds the batches taken and not started yet."""
        dataloader = self.dataloader
        resumed_at: Optional[int] = None  # progress when parked fetches were last resumed
        while True:
            if self.failure is not None:
                raise self.failure
            if self.concurrent:  # what workers flagged while the hub was blocked or switched away
                if self.looping:
                    self.split_looping()
                if self.interrupts:
                    self.cancel_items()
                if self.interrupted:
                    self.cancel_orphans()
            if dataloader.eager_resume and self.resume_eagerly():
                pass  # first: a job resumed now may add keys to a batch not taken yet
            elif sources and not waiting:
                source = next(iter(sources))  # the first to get a pending key
                waiting.extend((source, batch) for batch in source._take_batches(sources.pop(source)))
            elif waiting and (idle or len(self.workers) < dataloader._limit):
                self.start_fetch(*waiting.popleft())
            elif self.running:
                dataloader._block(self)
            elif waiting and not any(can_go_on(worker) for worker in parked):
                # Every greenlet the limit allows is taken, and the parked
                # fetches wait for these batches: borrow one above the limit
                # (one per level of fetches loading from fetches) rather than
                # deadlock, so that fiber_limit never changes results.
                self.start_fetch(*waiting.popleft())
            elif not parked:
                if waiting:
                    raise InvariantError("a fetch is waiting for a worker, but none is busy")
                return
            elif resumed_at == self.progress and not sources and self.wait_elsewhere(parked):
                resumed_at = None
            elif resumed_at == self.progress and not sources:
                # Every parked fetch was resumed and none got anywhere.
                stuck = parked[:]
                parked.clear()
                resumed_at = None
                self.break_deadlock(stuck)
            else:
                resumed_at = self.progress
                resuming = parked[:]
                parked.clear()
                for worker in resuming:
                    self.resume(worker, None)

    def resume_eagerly(self) -> bool:
        """``eager_resume``: during the fetch phase, go on with what can go on now.

        Resumes jobs whose keys have all arrived (and map() callers whose
        items are done) and starts queued jobs, without waiting for the
        other fetches of the round.  Returns whether it did anything.
        """
        if self.ready:
            self.resume(self.ready.popleft(), None)
            return True
        for worker in self.parked:
            if type(worker.waiting) is tuple and can_go_on(worker):
                self.parked.remove(worker)
                self.resume(worker, None)
                return True
        if self.jobs and not self.starting and len(self.workers) - len(self.idle) < self.dataloader._limit - 1:
            self.start(JOBS)
            return True
        return False

    def start_fetch(self, source: Source, batch: Batch) -> None:  # type: ignore[type-arg]
        """Hand one batch to a worker."""
        self.handed[id(batch)] = (source, batch)
        self.start(partial(self.fetch, source, batch))

    def fetch(self, source: Source, batch: Batch) -> None:  # type: ignore[type-arg]
        """A fetch task: runs in a worker."""
        del self.handed[id(batch)]
        worker: Worker = getcurrent()  # type: ignore[assignment]
        worker.batch = (source, batch)
        dataloader = self.dataloader
        try:
            timed_out = source._run_batch(batch)
            if timed_out is not None:
                self.expiring.append((source, [rk for rk, _ in batch], timed_out))
        finally:
            worker.batch = None
            if dataloader.eager_resume:
                dataloader._wake(self)  # some job may go on now

    def split_looping(self) -> None:
        """Let helpers take the unstarted items of the loops of workers that may be blocked.

        Under a concurrent scheduler the hub gets control while a worker
        still runs only if that worker blocked in I/O (or parked, which split
        its loops already): queue a helper for each loop on its stack that
        has items left (``_split`` does nothing for the others).
        """
        dataloader = self.dataloader
        for worker in self.looping:
            dataloader._split_stack(self, worker)
        self.looping.clear()

    def forget_expired(self) -> None:
        """Forget the keys of fetches that timed out: their waiters have read them."""
        for source, rks, error in self.expiring:
            source._forget_failed(rks, error)
        self.expiring.clear()

    # -- handing workers work --------------------------------------------------------

    def resume(self, worker: Worker, value: Any) -> None:
        """Hand a parked worker the value its park returns, and let it run."""
        self.running += 1
        self.dataloader._deliver(worker, value)

    def start(self, task: Any) -> None:
        """Give ``task`` to an idle worker, or to a new one, and let it run."""
        self.dataloader._deliver(*self.hand(task))

    def hand(self, task: Any) -> Tuple[Worker, Any]:
        """Count a worker running ``task``; return it and what the switch to it sends.

        An idle worker of this run, else one from the thread's pool, else a
        new greenlet.  The caller switches: greenlet makes a frame object of
        the frame that switches away, once per frame, so the hub's loop
        switching itself (``job_phase``) saves one per worker started.
        """
        self.running += 1
        self.starting += 1
        idle = self.idle
        if idle:
            return idle.pop(), task
        dataloader = self.dataloader
        variables = dataloader.get_fiber_variables() if self.own_variables else copy_context()
        stats = dataloader.stats
        stats.greenlets += 1
        pool = idle_pool() if self.keep else None
        if pool:
            worker = pool.pop()
            worker.parent = dataloader._worker_parent(self)
            worker.owner = self
            stats.reused += 1
            argument: Any = (self, variables, task)  # what its pool wait returns
        else:
            # greenlet's own __init__ (no Python call); Worker has none
            worker = Worker(worker_main, dataloader._worker_parent(self))
            worker.owner = self
            worker.waiting = worker.batch = None
            worker.groups = []
            # In a list the worker empties: a greenlet's first-switch
            # arguments stay referenced for as long as it lives.
            argument = [self, variables, task]
        workers = self.workers
        workers[worker] = None
        if len(workers) > stats.max_alive:
            stats.max_alive = len(workers)
        return worker, argument

    # -- cancelling what nobody waits for any more ---------------------------------

    def cancel_orphans(self) -> None:
        """Stop the fetches whose keys no parked job or fetch waits for any more.

        Called after a parked worker was woken by an exception (a
        ``gevent.Timeout`` around a load, a kill): the fetch it waited for
        may have nobody left to wait for it, and must not keep ``run()``
        (and the request) waiting.  A stopped fetch stores nothing; a later
        load of its keys fetches them again.
        """
        self.interrupted = False
        fetches = [worker for worker in self.workers if worker.batch is not None]
        stopped: List[Worker] = []
        while fetches:
            wanted: Set[Tuple[int, Hashable]] = set()
            for worker in self.workers:
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
            self.dataloader._throw(self, worker, Cancelled(None, worker.batch))

    def cancel_items(self) -> None:
        """Stop the items of map() loops whose caller stopped waiting for them."""
        interrupts = self.interrupts[:]
        self.interrupts.clear()
        for loop in interrupts:
            for worker in list(self.workers):
                if loop in worker.groups and worker is not loop.owner:
                    self.dataloader._throw(self, worker, Cancelled(loop))

    # -- stuck runs ----------------------------------------------------------------

    def wait_elsewhere(self, stuck: List[Worker]) -> bool:
        """A stuck run whose workers wait on keys another run resolves: let that happen.

        Their keys may have arrived meanwhile (under AsyncDataloader another
        run's fetch can finish at any time), or been cleared after another
        run fetched them (``asks_again``): then they are resumed.  Or they
        are in flight in an enclosing run's fetch, parked on keys of its
        own (a ``run_isolated`` or ``map`` inside a job or fetch): then this
        run's hub -- a worker of the enclosing run -- parks there until they
        arrive, which lets that run go on.  Returns whether either happened.
        """
        if any(can_go_on(worker) or self.asks_again(worker) for worker in stuck):
            return True
        outer: Optional[Run] = getattr(self.hub, "owner", None)
        dataloader = self.dataloader
        if outer is None or outer.dataloader is not dataloader:
            return False  # a top-level run: nothing else can fetch them
        own: Set[Tuple[int, Hashable]] = set()
        for worker in self.workers:
            if worker.batch is not None:
                fetching, batch = worker.batch
                own.update((id(fetching), rk) for rk, _ in batch)
        for worker in stuck:
            waiting = worker.waiting
            if type(waiting) is not tuple:
                continue
            source, rks = waiting
            foreign = [rk for rk in rks if rk in source._fetching and (id(source), rk) not in own]
            if foreign:
                dataloader._wait(source, foreign, foreign)  # the hub parks in the enclosing run
                return True
        return False

    def asks_again(self, worker: Worker) -> bool:
        """Whether a parked worker waits on a key that nothing will bring any more.

        Under AsyncDataloader a ``run_isolated`` of a sibling job may fetch
        the key this worker waits on, and a job may then clear it
        (``clear_cache``) before this worker reads it: not resolved, not in
        flight, not pending here.  Resumed, the worker asks for it again
        (``_wait``'s loop), in this run.
        """
        waiting = worker.waiting
        if type(waiting) is not tuple:
            return False
        source, rks = waiting
        pending = self.pending.get(source, ())
        fetching = source._fetching
        return any(not source._resolved(rk) and rk not in fetching and rk not in pending for rk in rks)

    def break_deadlock(self, stuck: List[Worker]) -> None:
        """Resume every stuck worker with a DeadlockError naming the waits.

        Code that catches the DeadlockError and waits again without getting
        anywhere (a fetch that retries on any exception) deadlocks again:
        after ``_MAX_DEADLOCK_ROUNDS`` such rounds with no progress in
        between, the hub raises the error out of ``run()`` instead.
        """
        if self.progress == self.deadlock_progress:
            self.deadlock_rounds += 1
        else:
            self.deadlock_progress, self.deadlock_rounds = self.progress, 1
        waits = [wait_of(worker) for worker in stuck]
        lines = [describe_stuck(worker) for worker in stuck]
        hint = (
            "This usually means a fetch() loads a key that is in its own batch, or two fetches "
            "wait on each other's keys: load those keys in the job instead, or give the inner "
            "load a source of its own."
        )
        error = DeadlockError(
            "Deadlock: no job or fetch can proceed.\n" + "\n".join(lines) + "\n" + hint, waits
        )
        if self.deadlock_rounds > _MAX_DEADLOCK_ROUNDS or not stuck:
            raise error
        self.deadlock = error
        for worker in stuck:
            self.resume(worker, DEADLOCK)

    # -- the end ---------------------------------------------------------------------

    def close(self, failed: bool) -> None:
        """End every worker (but idle ones the thread's pool takes); raise a cleanup error if the run succeeded.

        Only a run that succeeded gives workers to the pool: after a failure
        (an exception, a timeout, a kill) a worker may have stopped anywhere.
        """
        self.closing = True
        errors: List[BaseException] = []
        idle = set(self.idle)
        here = getcurrent()
        give = KEEP if self.keep and not failed else STOP  # KEEP: it goes to the pool if there is room
        for _ in range(3):
            if not self.workers:
                break
            for worker in list(self.workers):
                if worker.dead:
                    self.workers.pop(worker, None)
                    continue
                worker.parent = here  # an ended greenlet returns to its parent: to us
                try:
                    if worker in idle:
                        worker.switch(give)
                    else:
                        worker.throw()
                except BaseException as error:  # a cleanup_fiber or finally that raised
                    errors.append(error)
        if give is KEEP:
            kept()
        guard, self.guard = self.guard, None
        if guard is not None:  # nothing of the run may wait in gevent's loop after it
            guard.stop()
        if failed:  # the jobs not started yet are abandoned too, not left for the next run()
            self.jobs.clear()
            self.later.clear()
            self.pending.clear()
        for source, batch in self.handed.values():  # fetches that never began
            source._abandon(batch)
        self.handed.clear()
        self.idle.clear()
        self.parked.clear()
        self.parked_fetches.clear()
        self.ready.clear()
        self.deadlock = None
        self.failure = None
        self.interrupts.clear()
        self.looping.clear()
        if self.expiring:
            self.forget_expired()
        if self.workers:
            raise InvariantError(f"{len(self.workers)} worker greenlets did not end")
        if errors and not failed:
            raise errors[0]


def can_go_on(worker: Worker) -> bool:
    """Whether a parked worker would get past its park if resumed now."""
    waiting = worker.waiting
    if type(waiting) is tuple:
        source, rks = waiting
        return all(source._resolved(rk) for rk in rks)
    return True  # a yield_(), or a wait that is not on keys


def wait_of(worker: Worker) -> Tuple[Optional[Source], List[Any]]:  # type: ignore[type-arg]
    """What a parked worker waits for: its source and the keys not resolved yet."""
    waiting = worker.waiting
    if isinstance(waiting, tuple):
        source, rks = waiting
        return source, [rk for rk in dict.fromkeys(rks) if not source._resolved(rk)]
    return None, []


def describe_stuck(worker: Worker) -> str:
    """One line of a deadlock report: who waits on what, and why it never arrives."""
    source, keys = wait_of(worker)
    batch = worker.batch
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
