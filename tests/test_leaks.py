"""Lifetimes: nothing of a run outlives run().

After ``run()`` returns or raises, no greenlet it started is running or
holds anything of the run; idle workers may wait in their thread's pool,
at most its bound, holding nothing (``conftest.live_greenlets`` leaves
them out only after checking that, ``pooled_workers``).  With the pool off
no greenlet at all survives.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any, List, Type

import pytest

from fiberloader import Dataloader, DeadlockError, Source, release_idle_greenlets
from fiberloader._worker import idle_pool

from .conftest import Recorder, live_greenlets, pooled_workers, started_greenlets


def _busy_run(cls: Type[Dataloader], fail: bool = False) -> Dataloader:
    dataloader = cls()

    def waiter(key: int) -> None:
        dataloader.with_(Recorder).load(key)
        dataloader.with_(Recorder, "second").load(key)

    for key in range(10):
        dataloader.append_job(lambda key=key: waiter(key))
    if fail:
        def failer() -> None:
            dataloader.with_(Recorder).load("x")
            raise RuntimeError("boom")

        dataloader.append_job(failer)
    dataloader.run()
    return dataloader


def test_no_greenlet_is_alive_after_run(scheduler: Type[Dataloader], no_leaked_greenlets: Any) -> None:
    release_idle_greenlets()
    dataloader = _busy_run(scheduler)
    assert dataloader.stats.greenlets >= 10
    assert len(pooled_workers()) == len(idle_pool()) == dataloader.stats.greenlets  # all idle at the end: pooled


def test_with_the_pool_off_no_greenlet_at_all_is_alive_after_run(scheduler: Type[Dataloader], monkeypatch: Any) -> None:
    release_idle_greenlets()
    monkeypatch.setenv("FIBERLOADER_KEEP_GREENLETS", "0")
    before = started_greenlets()
    _busy_run(scheduler)
    with pytest.raises(RuntimeError):
        _busy_run(scheduler, fail=True)
    assert started_greenlets() == before


def test_no_greenlet_is_alive_after_a_failed_run(scheduler: Type[Dataloader], no_leaked_greenlets: Any) -> None:
    with pytest.raises(RuntimeError):
        _busy_run(scheduler, fail=True)


def test_no_greenlet_is_alive_after_a_deadlock(scheduler: Type[Dataloader], no_leaked_greenlets: Any) -> None:
    class Ouroboros(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [self.load(key) for key in keys]

    with pytest.raises(DeadlockError):
        scheduler.with_dataloading(lambda dl: dl.with_(Ouroboros).load(1))


def test_no_greenlet_is_alive_after_run_isolated_and_map(scheduler: Type[Dataloader], no_leaked_greenlets: Any) -> None:
    def view(dl: Dataloader) -> Any:
        inner = dl.run_isolated(lambda: dl.map(dl.with_(Recorder).load, range(5)))
        with pytest.raises(ZeroDivisionError):
            dl.run_isolated(lambda: (dl.with_(Recorder).load(9), 1 / 0))
        return inner

    assert scheduler.with_dataloading(view) == [f"r:{k}" for k in range(5)]


def test_a_thousand_runs_do_not_grow_the_live_greenlets(scheduler: Type[Dataloader]) -> None:
    before = len(live_greenlets())
    pooled = needed = 0
    for index in range(1000):
        if index % 7:
            needed = max(needed, _busy_run(scheduler).stats.greenlets)
        else:
            with pytest.raises(RuntimeError):
                _busy_run(scheduler, fail=True)
        pooled = max(pooled, len(idle_pool()))
    assert len(live_greenlets()) == before
    # the pool was used, and never held more than one run needs (nor its bound)
    assert pooled == needed > 0 and len(pooled_workers()) <= scheduler().keep_greenlets


def test_finished_dataloader_and_its_cache_are_freed(scheduler: Type[Dataloader]) -> None:
    class Value:
        pass

    class Values(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [Value() for _ in keys]

    dataloader = scheduler()
    box: List[Any] = []
    for key in range(5):
        dataloader.append_job(lambda dl=dataloader, key=key: box.append(weakref.ref(dl.with_(Values).load(key))))
    dataloader.run()
    ref = weakref.ref(dataloader)
    del dataloader
    gc.collect()
    assert ref() is None
    assert all(r() is None for r in box)
