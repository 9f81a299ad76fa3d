"""Shared fixtures.

``scheduler`` runs a test under every batching scheduler (``Dataloader``
and, once it exists, ``AsyncDataloader``): those tests assert batching and
must hold for both.  ``any_scheduler`` adds ``NullDataloader`` for tests that
only assert results, which no scheduler may change.
"""

from __future__ import annotations

import gc
from typing import Any, Callable, List, Type

import pytest
from gevent.hub import Hub
from gevent.threadpool import _WorkerGreenlet as ThreadPoolWorker  # type: ignore[attr-defined]
from greenlet import greenlet

import fiberloader
from fiberloader import Dataloader, NullDataloader, Source
from fiberloader._fibers import Worker
from fiberloader._worker import idle_pool, keep_bound, worker_main

BATCHING_SCHEDULERS: List[Type[Dataloader]] = [Dataloader]
if hasattr(fiberloader, "AsyncDataloader"):  # pragma: no branch
    BATCHING_SCHEDULERS.append(fiberloader.AsyncDataloader)


@pytest.fixture(params=BATCHING_SCHEDULERS, ids=lambda cls: cls.__name__)
def scheduler(request: Any) -> Type[Dataloader]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=BATCHING_SCHEDULERS + [NullDataloader], ids=lambda cls: cls.__name__)
def any_scheduler(request: Any) -> Type[Dataloader]:
    return request.param  # type: ignore[no-any-return]


class Recorder(Source):
    """A source that records its fetch calls and returns f"{name}:{key}"."""

    def __init__(self, name: str = "r", log: "List[Any] | None" = None) -> None:
        self.name = name
        self.calls: List[List[Any]] = []
        self.log = log

    @classmethod
    def batch_key_for(cls, name: str = "r", log: "List[Any] | None" = None) -> Any:
        return name  # the log list is not part of the batch identity

    def fetch(self, keys: List[Any]) -> List[Any]:
        self.calls.append(list(keys))
        if self.log is not None:
            self.log.append(("fetch", self.name, list(keys)))
        return [f"{self.name}:{key}" for key in keys]


@pytest.fixture
def recorder() -> Type[Recorder]:
    return Recorder


def live_greenlets() -> List[greenlet]:
    """Every started, unfinished greenlet except the current one and idle pooled workers.

    The lifetime rule: after run() no greenlet it created is running or
    holds anything of the run; idle workers may wait in their thread's pool.
    Those are left out here once :func:`pooled_workers` has checked that
    rule for each (and the bound for this thread's pool).
    """
    pooled = {id(worker) for worker in pooled_workers()}
    return [greenlet for greenlet in started_greenlets() if id(greenlet) not in pooled]


def started_greenlets() -> List[greenlet]:
    """Every started, unfinished greenlet except the current one, pooled workers included."""
    gc.collect()
    current = greenlet.getcurrent()
    return [
        obj
        for obj in gc.get_objects()
        # type(), not isinstance(): that would evaluate lazy objects (Django's)
        if issubclass(type(obj), greenlet) and obj and not obj.dead and obj is not current
        and not issubclass(type(obj), Hub)  # gevent's hub lives as long as its thread
        # gevent's thread pools (blocking sources): its workers and their
        # threads' main greenlets live as long as the pool keeps the thread.
        and not issubclass(type(obj), ThreadPoolWorker) and obj.parent is not None
    ]


def pooled_workers() -> List[Worker]:
    """The idle workers waiting in a pool (of any thread), each checked to hold nothing of a run.

    Also checks that this thread's pool is within the bound of a plain
    ``Dataloader`` (the default, or the setting): a test that pools more
    releases them before it ends.
    """
    pooled = [obj for obj in gc.get_objects() if issubclass(type(obj), Worker) and obj and obj.owner is None]
    for worker in pooled:
        assert_holds_nothing(worker)
    bound = keep_bound(Dataloader)
    assert len(idle_pool()) <= bound, f"{len(idle_pool())} idle workers pooled in this thread, bound {bound}"
    return pooled


#: The locals of worker_main while it waits in the pool: its emptied
#: first-switch list, the pool's bound, a weak reference to the pool.
POOLED_LOCALS = {"first", "bound", "pool"}


def assert_holds_nothing(worker: Worker) -> None:
    """A pooled worker: no run, wait, batch, context, greenlet-local state, or frame of a job."""
    assert worker.owner is None and worker.waiting is None and worker.batch is None, worker
    assert worker.groups == [] and worker.gr_context is None, worker
    assert not worker.__dict__, (worker, worker.__dict__)
    # its parent: the thread's root greenlet or gevent hub, never a run's hub
    assert worker.parent.parent is None or issubclass(type(worker.parent), Hub), (worker, worker.parent)
    frame = worker.gr_frame
    assert frame is not None and frame.f_code is worker_main.__code__ and frame.f_back is None, frame
    local_names = frame.f_locals
    assert set(local_names) <= POOLED_LOCALS, sorted(local_names)
    assert local_names["first"] == [] and worker in local_names["pool"](), local_names


@pytest.fixture
def no_leaked_greenlets() -> Any:
    """Fail the test if it leaves a started greenlet alive."""
    before = set(map(id, live_greenlets()))
    yield
    leaked = [g for g in live_greenlets() if id(g) not in before]
    assert not leaked, f"greenlets left alive: {leaked}"


def run_jobs(cls: Type[Dataloader], *jobs: Callable[[], Any], **options: Any) -> Dataloader:
    dataloader = cls(**options)
    for job in jobs:
        dataloader.append_job(job)
    dataloader.run()
    return dataloader
