"""Timeouts and cancellation: a job that stops waiting never keeps run() waiting.

``Source.fetch_timeout`` stops a fetch at its deadline under
``AsyncDataloader`` (and fails one that returns late under the schedulers
that cannot interrupt it); a ``gevent.Timeout`` around a load or a ``map``
lets the job go on, and the fetch nobody waits for any more is stopped, so
the request is bounded by the timeout, not by the backend.
"""

from __future__ import annotations

import time
from typing import Any, List, Type

import gevent
import pytest
from gevent.event import Event

from fiberloader import (
    AsyncDataloader,
    ConfigurationError,
    Dataloader,
    FetchTimeoutError,
    FiberloaderError,
    NullDataloader,
    Source,
)

from .conftest import live_greenlets


class Slow(Source):
    """Sleeps (cooperatively) ``delay`` seconds per fetch; records calls and how each ended."""

    def __init__(self, delay: float, log: List[Any]) -> None:
        self.delay = delay
        self.log = log

    @classmethod
    def batch_key_for(cls, delay: float, log: List[Any]) -> Any:
        return delay

    def fetch(self, keys: List[Any]) -> List[Any]:
        self.log.append(("fetch", list(keys)))
        try:
            gevent.sleep(self.delay)
        finally:
            self.log.append(("ended", list(keys)))
        return [f"v{key}" for key in keys]


class Hangs(Source):
    """Never returns unless stopped."""

    def __init__(self, log: List[Any]) -> None:
        self.log = log

    @classmethod
    def batch_key_for(cls, log: List[Any]) -> Any:
        return ()

    def fetch(self, keys: List[Any]) -> List[Any]:
        try:
            Event().wait()
        finally:
            self.log.append(("stopped", list(keys)))
        raise AssertionError("unreachable")  # pragma: no cover


def _timed(fn: Any) -> Any:
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started


def test_a_timeout_around_a_load_bounds_the_run_and_stops_the_orphaned_fetch(no_leaked_greenlets: Any) -> None:
    log: List[Any] = []

    def job(dl: Dataloader) -> Any:
        try:
            with gevent.Timeout(0.1):
                return dl.with_(Slow, 3.0, log).load(1)
        except gevent.Timeout:
            return "timed out"

    value, elapsed = _timed(lambda: AsyncDataloader.with_dataloading(job))
    assert value == "timed out"
    assert elapsed < 1.0, elapsed
    assert log == [("fetch", [1]), ("ended", [1])]  # the fetch was stopped, its finally ran


def test_a_timeout_around_a_load_from_a_source_that_hangs_forever(no_leaked_greenlets: Any) -> None:
    log: List[Any] = []

    def job(dl: Dataloader) -> Any:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                dl.with_(Hangs, log).load("k")
        return "went on"

    value, elapsed = _timed(lambda: AsyncDataloader.with_dataloading(job))
    assert value == "went on" and elapsed < 1.0
    assert log == [("stopped", ["k"])]


def test_a_stopped_fetch_caches_nothing_and_a_later_load_fetches_again() -> None:
    calls: List[Any] = []

    class Counted(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            calls.append(list(keys))
            if len(calls) == 1:
                gevent.sleep(3)
            return [f"v{key}" for key in keys]

    dl = AsyncDataloader()

    def impatient() -> None:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):
                dl.with_(Counted).load(1)

    dl.append_job(impatient)
    _, elapsed = _timed(dl.run)
    assert elapsed < 1.0 and calls == [[1]]
    # Not cached: the next run of the same dataloader fetches the key again.
    assert dl.run_isolated(lambda: dl.with_(Counted).load(1)) == "v1"
    assert calls == [[1], [1]]


def test_a_load_retried_after_a_timeout_waits_for_the_fetch_in_flight() -> None:
    log: List[Any] = []

    def job(dl: Dataloader) -> Any:
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.02):
                dl.with_(Slow, 0.2, log).load(1)
        return dl.with_(Slow, 0.2, log).load(1)  # wants the key again: the fetch goes on

    assert AsyncDataloader.with_dataloading(job) == "v1"
    assert log == [("fetch", [1]), ("ended", [1])]


def test_a_fetch_another_job_still_waits_for_runs_to_its_end() -> None:
    log: List[Any] = []
    dl = AsyncDataloader()
    results: List[Any] = []

    def impatient() -> None:
        try:
            with gevent.Timeout(0.05):
                results.append(dl.with_(Slow, 0.3, log).load(1))
        except gevent.Timeout:
            results.append("timed out")

    def patient() -> None:
        results.append(dl.with_(Slow, 0.3, log).load(2))

    dl.append_job(impatient)
    dl.append_job(patient)
    _, elapsed = _timed(dl.run)
    assert sorted(results) == ["timed out", "v2"]
    assert log == [("fetch", [1, 2]), ("ended", [1, 2])]  # one batch, not stopped
    assert elapsed >= 0.3


def test_a_timeout_around_map_stops_its_items_and_their_fetches(no_leaked_greenlets: Any) -> None:
    log: List[Any] = []
    finished: List[Any] = []

    def item(dl: Dataloader, key: int) -> Any:
        try:
            return dl.with_(Slow, 3.0, log).load(key)
        finally:
            finished.append(key)

    def job(dl: Dataloader) -> Any:
        try:
            with gevent.Timeout(0.1):
                return dl.map(lambda key: item(dl, key), [1, 2, 3])
        except gevent.Timeout:
            return "timed out"

    value, elapsed = _timed(lambda: AsyncDataloader.with_dataloading(job))
    assert value == "timed out" and elapsed < 1.0, elapsed
    assert sorted(finished) == [1, 2, 3]  # every item's finally ran
    assert log == [("fetch", [1, 2, 3]), ("ended", [1, 2, 3])]


def test_a_timed_out_fetch_parked_on_a_nested_load_stops_the_nested_fetch_too() -> None:
    log: List[Any] = []

    class Outer(Source):
        fetch_timeout = 0.1

        def fetch(self, keys: List[Any]) -> List[Any]:
            return [self.dataloader.with_(Hangs, log).load(key) for key in keys]  # type: ignore[union-attr]

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FetchTimeoutError):
            dl.with_(Outer).load("a")
        return "went on"

    value, elapsed = _timed(lambda: AsyncDataloader.with_dataloading(job))
    assert value == "went on" and elapsed < 1.0
    assert log == [("stopped", ["a"])]


def test_fetch_timeout_stops_the_fetch_and_fails_every_waiting_load() -> None:
    log: List[Any] = []

    class Limited(Slow):
        fetch_timeout = 0.05

    def job(dl: Dataloader) -> Any:
        def one(key: int) -> Any:
            try:
                return dl.with_(Limited, 3.0, log).load(key)
            except FetchTimeoutError as error:
                return error

        return dl.map(one, [1, 2])

    errors, elapsed = _timed(lambda: AsyncDataloader.with_dataloading(job))
    assert elapsed < 1.0
    first, second = errors
    assert isinstance(first, FetchTimeoutError) and isinstance(first, TimeoutError)
    assert isinstance(first, FiberloaderError) and first is not second  # a copy per load
    assert str(first) == (
        "Limited(3.0, []).fetch() of 2 keys [1, 2] was stopped at its fetch_timeout of 0.05 s. The keys "
        "are not cached: a later load fetches them again. Make the fetch faster, or raise "
        "Limited.fetch_timeout."
    )
    assert (first.keys, first.timeout, repr(first.data_source)) == ([1, 2], 0.05, "Limited(3.0, [])")
    assert log == [("fetch", [1, 2]), ("ended", [1, 2])]


def test_fetch_timeout_works_for_blocking_sources_in_threads() -> None:
    class Blocking(Source):
        blocking = True
        fetch_timeout = 0.05

        def fetch(self, keys: List[Any]) -> List[Any]:
            time.sleep(0.5)  # blocks in C, in a pool thread
            return keys

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FetchTimeoutError, match="was stopped at its fetch_timeout of 0.05 s"):
            dl.with_(Blocking).load(1)
        return "went on"

    value, elapsed = _timed(lambda: AsyncDataloader.with_dataloading(job))
    assert value == "went on" and elapsed < 0.4


@pytest.mark.parametrize("scheduler", [Dataloader, NullDataloader], ids=lambda cls: cls.__name__)
def test_fetch_timeout_fails_a_late_fetch_where_nothing_can_interrupt_it(scheduler: Type[Dataloader]) -> None:
    calls: List[Any] = []

    class Late(Source):
        fetch_timeout = 0.01

        def fetch(self, keys: List[Any]) -> List[Any]:
            calls.append(list(keys))
            if len(calls) == 1:
                time.sleep(0.05)
            return [f"v{key}" for key in keys]

    dl = scheduler()

    def impatient() -> None:
        with pytest.raises(FetchTimeoutError, match=r"Late\(\).fetch\(\) of 1 keys \[1\] returned after its "):
            dl.with_(Late).load(1)

    dl.append_job(impatient)
    dl.run()
    # Not cached: the next run of the same dataloader fetches the key again.
    assert dl.run_isolated(lambda: dl.with_(Late).load(1)) == "v1"
    assert calls == [[1], [1]]


def test_fetch_timeout_can_be_set_per_instance_from_a_batch_parameter() -> None:
    class Configured(Source):
        def __init__(self, timeout: float) -> None:
            self.fetch_timeout = timeout

        def fetch(self, keys: List[Any]) -> List[Any]:
            gevent.sleep(0.3)
            return keys

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FetchTimeoutError):
            dl.with_(Configured, 0.02).load(1)
        return dl.with_(Configured, 5.0).load(2)

    assert AsyncDataloader.with_dataloading(job) == 2


@pytest.mark.parametrize("bad", [0, -1, "1", True, float("nan")])
def test_a_bad_fetch_timeout_is_a_configuration_error_at_first_use(bad: Any) -> None:
    class Bad(Source):
        fetch_timeout = bad

        def fetch(self, keys: List[Any]) -> List[Any]:
            return keys

    with pytest.raises(ConfigurationError, match=r"Bad.fetch_timeout must be None or a positive number of seconds"):
        Dataloader().with_(Bad)


def test_a_killed_job_ends_its_run_without_waiting_for_its_fetch() -> None:
    log: List[Any] = []
    dl = AsyncDataloader()
    workers: List[Any] = []

    def victim() -> None:
        workers.append(gevent.getcurrent())
        dl.with_(Slow, 3.0, log).load(1)

    dl.append_job(victim)
    killer = gevent.spawn_later(0.05, lambda: gevent.kill(workers[0]))
    started = time.monotonic()
    with pytest.raises(gevent.GreenletExit):  # a job's exception propagates, as any other
        dl.run()
    assert time.monotonic() - started < 1.0
    killer.join()
    assert log == [("fetch", [1]), ("ended", [1])]
    assert not [g for g in live_greenlets() if getattr(g, "owner", None) is not None]


def test_load_all_with_return_exceptions_puts_each_error_in_its_place(any_scheduler: Type[Dataloader]) -> None:
    class Picky(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [ValueError(key) if key % 2 else key * 10 for key in keys]

    def job(dl: Dataloader) -> Any:
        source = dl.with_(Picky)
        first = source.load_all([1, 2, 3, 2], return_exceptions=True)
        again = source.request_all([3, 4]).load(return_exceptions=True)
        return first, again

    (one, two, three, two_again), (three_again, four) = any_scheduler.with_dataloading(job)
    assert (two, two_again, four) == (20, 20, 40)
    assert type(one) is ValueError and one.args == (1,)
    assert type(three) is ValueError and type(three_again) is ValueError
    assert three is not three_again  # each a copy of the stored error
