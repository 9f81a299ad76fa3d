"""keep_greenlets: the opt-in pool of idle workers kept between runs."""

from __future__ import annotations

import contextvars
from typing import Any, List, Type

import pytest

from fiberloader import Dataloader

from .conftest import Recorder, live_greenlets

VAR: "contextvars.ContextVar[str]" = contextvars.ContextVar("kept_var", default="unset")


def keeping(scheduler: Type[Dataloader], size: int) -> Any:
    events: List[str] = []

    class Keeping(scheduler):  # type: ignore[valid-type, misc]
        keep_greenlets = size

        def set_fiber_variables(self, variables: Any) -> None:
            super().set_fiber_variables(variables)
            events.append("set " + VAR.get())

        def cleanup_fiber(self) -> None:
            events.append("cleanup")

    return Keeping, events


def waiting_jobs(dataloader: Dataloader, count: int, seen: List[Any]) -> None:
    for key in range(count):
        def job(key: int = key) -> None:
            seen.append((VAR.get(), dataloader.with_(Recorder).load(key)))
            VAR.set(f"set by job {key}")  # must not leak into the next run's jobs
        dataloader.append_job(job)


def test_later_runs_reuse_kept_greenlets_with_fresh_context_and_hooks(scheduler: Type[Dataloader]) -> None:
    cls, events = keeping(scheduler, 64)
    cls.release_kept_greenlets()
    before = len(live_greenlets())
    try:
        for run_number in range(3):
            dataloader = cls()
            seen: List[Any] = []
            token = VAR.set(f"run {run_number}")
            try:
                waiting_jobs(dataloader, 10, seen)
                dataloader.run()
            finally:
                VAR.reset(token)
            assert sorted(seen) == [(f"run {run_number}", f"r:{k}") for k in range(10)]
            if run_number:
                assert dataloader.stats.reused >= 10 and dataloader.stats.greenlets <= 1
        kept = len(live_greenlets()) - before
        assert 0 < kept <= 64
        # hooks: set once per greenlet per run, cleanup as often
        assert events.count("cleanup") == sum(1 for e in events if e.startswith("set "))
        assert {e for e in events if e.startswith("set ")} == {"set run 0", "set run 1", "set run 2"}
    finally:
        released = cls.release_kept_greenlets()
    assert released == kept
    assert len(live_greenlets()) == before


def test_pool_is_bounded_and_off_by_default(scheduler: Type[Dataloader]) -> None:
    cls, _ = keeping(scheduler, 3)
    cls.release_kept_greenlets()
    before = len(live_greenlets())
    try:
        dataloader = cls()
        waiting_jobs(dataloader, 10, [])
        dataloader.run()
        assert len(live_greenlets()) - before == 3
    finally:
        cls.release_kept_greenlets()
    dataloader = scheduler()
    waiting_jobs(dataloader, 10, [])
    dataloader.run()
    assert len(live_greenlets()) == before


def test_a_failed_run_keeps_nothing(scheduler: Type[Dataloader]) -> None:
    cls, _ = keeping(scheduler, 64)
    cls.release_kept_greenlets()
    before = len(live_greenlets())
    dataloader = cls()
    waiting_jobs(dataloader, 5, [])
    dataloader.append_job(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        dataloader.run()
    assert len(live_greenlets()) == before


def test_kept_greenlets_hold_nothing_of_the_finished_run(scheduler: Type[Dataloader]) -> None:
    import gc
    import weakref

    cls, _ = keeping(scheduler, 64)

    class Value:
        pass

    class Values(Recorder):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [Value() for _ in keys]

    cls.release_kept_greenlets()
    try:
        dataloader = cls()
        refs: List[Any] = []
        for key in range(5):
            dataloader.append_job(lambda key=key, dl=dataloader: refs.append(weakref.ref(dl.with_(Values).load(key))))
        dataloader.run()
        assert dataloader.stats.greenlets >= 5
        ref = weakref.ref(dataloader)
        del dataloader
        gc.collect()
        assert ref() is None  # neither the dataloader...
        assert all(r() is None for r in refs)  # ...nor its cache outlives the run
    finally:
        cls.release_kept_greenlets()
