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
    """Every started, unfinished greenlet except the current one."""
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
