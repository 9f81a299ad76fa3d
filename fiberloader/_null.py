"""NullDataloader: no batching, no greenlets -- for debugging and comparison.

Every ``load`` of a key that is not cached calls ``fetch`` at once with that
one key, inline, in the calling job.  Everything else -- the cache,
``merge``, errors and their copies, ``map``, ``run_isolated`` -- behaves as
under :class:`Dataloader`, so swapping schedulers never changes results,
only the number of ``fetch`` calls.
"""

from __future__ import annotations

from collections import deque
from contextvars import Context, copy_context
from typing import Any, Callable, Deque, Hashable, Iterable, List, Optional, Sequence, TypeVar


from ._dataloader import Dataloader
from ._extensions import around
from ._errors import DeadlockError, FiberloaderError, short_repr
from ._fibers import CURRENT
from ._source import Source

__all__ = ["NullDataloader"]

T = TypeVar("T")


class NullDataloader(Dataloader):
    """The no-batching scheduler: each uncached ``load`` fetches its key at once.

    ``fiber_limit`` is accepted (and checked) for a uniform constructor, and
    otherwise ignored: this scheduler starts no greenlets.
    """

    setting_name = "null"

    def run(self) -> None:
        """Run every queued job (and the jobs they queue) in turn, inline."""
        if self._run is not None:
            raise FiberloaderError(
                f"{type(self).__name__}.run() was called while it is already running. From "
                "inside a job, use dataloader.run_isolated(fn) to run work to completion now."
            )
        context = copy_context()
        context.run(CURRENT.set, self)
        self._run = self._new_run(self._jobs, {})
        self._pending = {}  # a request() made before the run: its load fetches it
        try:
            self._with_run_hooks(self._drain, self._jobs, context)
        finally:
            self._run.forget_expired()
            self._run = None

    def _drain(self, jobs: "Deque[Callable[[], Any]]", context: Context) -> None:
        """Run ``jobs`` (and those they queue) in turn, each in a copy of ``context``.

        If one raises, the jobs not started yet are abandoned, as under the
        batching schedulers.
        """
        hooks = self._hooks
        pairs = None if hooks is None else hooks.jobs or None
        try:
            while jobs:
                job = jobs.popleft()
                if pairs is None:
                    result = context.copy().run(job)
                else:
                    result = context.copy().run(around, pairs, (self,), job)
                self._checked_result(job, result)
        except BaseException:
            jobs.clear()
            raise

    def _in_job(self) -> bool:
        return self._run is not None  # jobs run inline, in the caller's greenlet

    def run_isolated(self, fn: Callable[[], T]) -> T:
        if self._run is None or not callable(fn):
            return super().run_isolated(fn)  # a plain run, or the argument check
        # Inside a job: fn, then the jobs it queues, before returning -- as
        # the batching schedulers do; the outer queue waits meanwhile.
        saved, jobs = self._jobs, deque()  # type: ignore[var-annotated]
        self._jobs = jobs
        box: List[T] = []
        jobs.append(lambda: box.append(fn()))
        try:
            self._with_run_hooks(self._drain, jobs, copy_context())
        finally:
            self._jobs = saved
        return self._checked_result(fn, box[0])  # type: ignore[no-any-return]

    def map(self, fn: Callable[[Any], T], iterable: Iterable[Any]) -> List[T]:
        items = self._map_items(fn, iterable)
        if self._run is None:
            return super().map(fn, items)
        results: List[Any] = []
        first_error: Optional[Exception] = None
        for item in items:
            try:
                results.append(fn(item))
            except Exception as error:
                first_error = first_error or error
                results.append(None)
        if first_error is not None:
            raise first_error
        return results

    def _request(self, source: Source, key: Any, rk: Hashable) -> None:  # type: ignore[type-arg]
        """Nothing to register: the handle's ``load()`` fetches its key then."""

    def yield_(self) -> None:
        if self._run is None:
            raise self._not_a_job("dataloader.yield_()")

    def _wait(self, source: Source, keys: Sequence[Any], rks: Sequence[Hashable]) -> None:  # type: ignore[type-arg]
        run = self._run
        if run is None:
            raise self._not_a_job(f"The load of {source!r} key {short_repr(keys[0])} (not cached)", source, keys[0])
        if run.expiring:  # the load that waited on a timed-out key has read it
            run.forget_expired()
        for key, rk in zip(keys, rks):
            if source._resolved(rk):
                continue
            if rk in source._fetching:
                busy = ", ".join(  # every fetch under way: the cycle is among them
                    f"{s!r} keys {short_repr(list(s._fetching))}"
                    for instances in self._sources.values() for s in instances.values() if s._fetching
                )
                raise DeadlockError(
                    f"Deadlock: a fetch loads {source!r} key {short_repr(key)}, which is being "
                    f"fetched (fetches under way: {busy}): a circular dependency. Load that key "
                    "in the job instead, or give the inner load a source of its own.",
                    [(source, [rk])],
                )
            fetch_key = key if source._plain_fetch_keys else source.normalize_fetch_key(key)
            for batch in source._take_batches({rk: fetch_key}):  # one key: one batch
                timed_out = source._run_batch(batch)
                if timed_out is not None:
                    run.expiring.append((source, [rk], timed_out))
