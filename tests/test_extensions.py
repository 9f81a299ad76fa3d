"""Extensions: where each hook fires, in what order, how they are attached; per-source stats."""

from __future__ import annotations

from typing import Any, List, Type

import gevent
import pytest
from greenlet import getcurrent

from tests._hooks import Event, Recorder, hook_problems

from fiberloader import (
    ConfigurationError,
    Dataloader,
    Extension,
    NullDataloader,
    Source,
    SourceStats,
)

NOT_AN_EXTENSION = 42


class Doubles(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        if any(key == "bad" for key in keys):
            return [ValueError(f"bad key {key}") if key == "bad" else key * 2 for key in keys]
        return [key * 2 for key in keys]


def program(dl: Dataloader) -> Any:
    """A job that loads, maps and runs a nested run_isolated."""
    source = dl.with_(Doubles)
    first = source.load(1)
    mapped = dl.map(lambda key: dl.with_(Doubles).load(key), [2, 3])
    nested = dl.run_isolated(lambda: dl.with_(Doubles).load(4))
    return first, mapped, nested


def check_well_formed(events: List[Event], hub: Any) -> None:
    """The properties every scheduler keeps, whatever the interleaving."""
    assert events[0] == ("run_started", hub)
    assert events[-1] == ("run_finished", None, hub)
    assert hook_problems(events, hub) == []
    # every park on keys ends only after a fetch of those keys finished
    for i, event in enumerate(events):
        if event[0] != "job_suspended" or event[1] is None:
            continue
        _, source, keys, greenlet = event
        resumed = next(j for j in range(i + 1, len(events)) if events[j][0] == "job_resumed" and events[j][-1] is greenlet)
        fetched = set()
        for later in events[i + 1:resumed]:
            if later[0] == "fetch_finished" and later[1] is source:
                fetched.update(later[2])
        assert set(keys) <= fetched, (event, events[i:resumed + 1])


def test_every_hook_fires_in_order_with_nested_run_isolated_and_map(any_scheduler: Type[Dataloader], no_leaked_greenlets: None) -> None:
    recorder = Recorder()
    dl = any_scheduler(extensions=[recorder])
    result: List[Any] = []
    dl.append_job(lambda: result.append(program(dl)))
    dl.run()
    assert result == [(2, [4, 6], 8)]
    events = recorder.events
    check_well_formed(events, getcurrent())
    fetches = [event[2] for event in events if event[0] == "fetch_started"]
    names = [event[0] for event in events]
    if any_scheduler is NullDataloader:  # no batching, no greenlets, nothing parks
        assert fetches == [[1], [2], [3], [4]]
        assert "fiber_started" not in names and "job_suspended" not in names
        # the outer job, and the nested run's job between its run hooks
        assert names == [
            "run_started", "job_started",
            "fetch_started", "fetch_finished", "fetch_started", "fetch_finished",
            "fetch_started", "fetch_finished",
            "run_started", "job_started", "fetch_started", "fetch_finished", "job_finished", "run_finished",
            "job_finished", "run_finished",
        ]
        return
    assert fetches == [[1], [2, 3], [4]]  # the map's items batched; the nested run fetched alone
    assert names.count("run_started") == names.count("run_finished") == 2
    assert names.count("job_suspended") == names.count("job_resumed") >= 4
    # every fetch ran in a worker, never in the hub
    assert all(event[-1] is not getcurrent() for event in events if event[0].startswith("fetch"))
    # map waited on its items with source None
    assert any(event[0] == "job_suspended" and event[1] is None for event in events)


def test_the_sync_scheduler_calls_the_hooks_in_this_exact_order(no_leaked_greenlets: None) -> None:
    recorder = Recorder()
    dl = Dataloader(extensions=[recorder])
    source = dl.with_(Doubles)
    dl.append_job(lambda: source.load(1))
    dl.append_job(lambda: source.load(2))
    dl.run()
    hub = getcurrent()
    workers: List[Any] = []
    for event in recorder.events:
        if event[-1] is not hub and event[-1] not in workers:
            workers.append(event[-1])
    first, second, fetcher = workers
    assert recorder.events == [
        ("run_started", hub),
        ("fiber_started", first), ("job_started", first), ("job_suspended", source, [1], first),
        ("fiber_started", second), ("job_started", second), ("job_suspended", source, [2], second),
        ("fiber_started", fetcher), ("fetch_started", source, [1, 2], fetcher),
        ("fetch_finished", source, [1, 2], None, fetcher),
        ("job_resumed", first), ("job_finished", None, first),
        ("job_resumed", second), ("job_finished", None, second),
        # idle workers end with the run
        ("fiber_finished", first), ("fiber_finished", second), ("fiber_finished", fetcher),
        ("run_finished", None, hub),
    ]


def test_a_failing_job_and_fetch_reach_the_finished_hooks(any_scheduler: Type[Dataloader], no_leaked_greenlets: None) -> None:
    class Failing(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            raise KeyError("down")

    recorder = Recorder()
    dl = any_scheduler(extensions=[recorder])
    dl.append_job(lambda: dl.with_(Failing).load(1))
    with pytest.raises(KeyError):
        dl.run()
    finished = [event[:-1] for event in recorder.events if event[0].endswith("finished") and event[0] != "fiber_finished"]
    source = dl.with_(Failing)
    assert finished == [
        ("fetch_finished", source, [1], "KeyError"),
        ("job_finished", "KeyError"),
        ("run_finished", "KeyError"),
    ]


def test_under_gevent_the_fetch_hooks_of_a_blocking_source_run_in_the_pool_thread(no_leaked_greenlets: None) -> None:
    import threading

    import fiberloader

    class InThread(Source):
        blocking = True

        def fetch(self, keys: List[Any]) -> List[Any]:
            return [threading.get_ident() for _ in keys]

    threads: List[int] = []

    class Where(Extension):
        def fetch_started(self, dataloader: Any, source: Any, keys: List[Any]) -> None:
            threads.append(threading.get_ident())

    dl = fiberloader.AsyncDataloader(extensions=[Where()])
    fetched: List[int] = []
    dl.append_job(lambda: fetched.append(dl.with_(InThread).load(1)))
    dl.run()
    fetched_in = fetched[0]
    assert threads == [fetched_in] and fetched_in != threading.get_ident()


# -- an extension's exception propagates like the code it wraps ------------------------------


def raising(hook: str) -> Extension:
    cls = type(f"Raises_{hook}", (Extension,), {hook: lambda self, *args: (_ for _ in ()).throw(RuntimeError(f"{hook} failed"))})
    return cls()  # type: ignore[no-any-return]


@pytest.mark.parametrize("hook", ["run_started", "job_started", "job_finished", "run_finished"])
def test_an_extension_that_raises_makes_run_raise(any_scheduler: Type[Dataloader], hook: str, no_leaked_greenlets: None) -> None:
    dl = any_scheduler(extensions=[raising(hook)])
    ran: List[int] = []
    dl.append_job(lambda: ran.append(dl.with_(Doubles).load(1)))
    with pytest.raises(RuntimeError, match=f"{hook} failed"):
        dl.run()
    assert ran == ([] if hook in ("run_started", "fiber_started", "job_started") else [2])


def test_an_exception_in_fiber_started_makes_run_raise(scheduler: Type[Dataloader], no_leaked_greenlets: None) -> None:
    dl = scheduler(extensions=[raising("fiber_started")])
    ran: List[int] = []
    dl.append_job(lambda: ran.append(1))
    with pytest.raises(RuntimeError, match="fiber_started failed"):
        dl.run()
    assert ran == []


def test_an_extension_that_raises_in_fetch_started_fails_the_keys(any_scheduler: Type[Dataloader]) -> None:
    dl = any_scheduler(extensions=[raising("fetch_started")])
    dl.append_job(lambda: dl.with_(Doubles).load(1))
    with pytest.raises(RuntimeError, match="fetch_started failed"):
        dl.run()
    assert dl.stats.sources[dl.with_(Doubles)].errors == 1


# -- attaching ------------------------------------------------------------------------------


def test_no_extension_that_overrides_a_hook_means_no_hooks_at_all() -> None:
    assert Dataloader()._hooks is None
    assert Dataloader(extensions=[Extension()])._hooks is None  # attached, but every hook a no-op
    assert Dataloader(extensions=[Recorder()])._hooks is not None


class WithTiming(Dataloader):
    extensions = (Recorder(),)


def test_extensions_come_from_the_class_then_the_argument() -> None:
    mine = Recorder()
    dl = WithTiming(extensions=[mine])
    assert dl.extensions == (WithTiming.extensions[0], mine)
    assert type(dl) is WithTiming


def test_the_setting_names_factories_called_for_each_dataloader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIBERLOADER_EXTENSIONS", "tests.test_extensions:Recorder, fiberloader:Extension")
    first, second = Dataloader(), Dataloader()
    assert [type(e) for e in first.extensions] == [Recorder, Extension]
    assert first.extensions[0] is not second.extensions[0]  # a fresh one per dataloader
    assert Dataloader(extensions=[]).extensions == ()  # the argument wins over the setting
    recorder = first.extensions[0]
    first.append_job(lambda: first.with_(Doubles).load(1))
    first.run()
    assert ("fetch_started", first.with_(Doubles), [1]) in [event[:-1] for event in recorder.events]


def test_a_framework_setting_comes_before_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from flask import Flask

    monkeypatch.setenv("FIBERLOADER_EXTENSIONS", "fiberloader:Extension")
    app = Flask(__name__)
    app.config["FIBERLOADER_EXTENSIONS"] = ["tests.test_extensions:Recorder", Recorder]
    with app.app_context():
        assert [type(e) for e in Dataloader().extensions] == [Recorder, Recorder]
    assert [type(e) for e in Dataloader().extensions] == [Extension]


@pytest.mark.parametrize("value, message", [
    ("nope", r"\$FIBERLOADER_EXTENSIONS holds 'nope', which is not a 'package.module:Factory' path"),
    ("tests.test_extensions:Missing", r"\$FIBERLOADER_EXTENSIONS holds 'tests.test_extensions:Missing', and importing it failed"),
    ("tests.test_extensions:NOT_AN_EXTENSION", r"\$FIBERLOADER_EXTENSIONS holds 42, which has none of the hooks"),
])
def test_a_bad_setting_is_a_configuration_error_naming_it(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("FIBERLOADER_EXTENSIONS", value)
    with pytest.raises(ConfigurationError, match=message):
        Dataloader()


def test_a_bad_argument_is_a_configuration_error_that_says_what_to_pass() -> None:
    with pytest.raises(ConfigurationError, match=r"holds the class Recorder, not an instance of it: pass Recorder\(\)"):
        Dataloader(extensions=[Recorder])
    with pytest.raises(ConfigurationError, match="has none of the hooks of fiberloader.Extension"):
        Dataloader(extensions=[object()])
    with pytest.raises(ConfigurationError, match="takes a list of extensions"):
        Dataloader(extensions=Recorder())  # type: ignore[arg-type]


def test_one_extension_serves_dataloaders_running_at_once_under_gevent(no_leaked_greenlets: None) -> None:
    import fiberloader

    class Slow(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            gevent.sleep(0.01)
            return keys

    recorder = Recorder()

    def request(n: int) -> Any:
        dl = fiberloader.AsyncDataloader(extensions=[recorder])
        box: List[Any] = []
        dl.append_job(lambda: box.append(dl.map(lambda k: dl.with_(Slow).load(k), [n, n + 1])))
        dl.run()
        return box[0]

    results = [g.get() for g in [gevent.spawn(request, n) for n in (10, 20, 30)]]
    assert results == [[10, 11], [20, 21], [30, 31]]
    names = [event[0] for event in recorder.events]
    assert names.count("run_started") == names.count("run_finished") == 3
    assert sorted(event[2] for event in recorder.events if event[0] == "fetch_started") == [[10, 11], [20, 21], [30, 31]]


# -- stats per source -------------------------------------------------------------------------


def test_stats_count_loads_hits_fetches_and_errors_per_source(any_scheduler: Type[Dataloader]) -> None:
    class Names(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [f"n{key}" for key in keys]

    def job(dl: Dataloader) -> None:
        doubles, names = dl.with_(Doubles), dl.with_(Names)
        doubles.load(1)  # a miss, fetched
        doubles.load(1)  # a hit
        doubles.load_all([1, 2, 3])  # one hit, two misses
        handle = names.request("a")  # a miss
        assert handle.load() == "na"  # counted by request(): not again
        names.load_all(["a", "a"])  # two hits
        with pytest.raises(ValueError):
            doubles.load("bad")  # a miss, failed by the fetch

    dl = any_scheduler()
    dl.append_job(lambda: job(dl))
    dl.run()
    doubles, names = dl.with_(Doubles), dl.with_(Names)
    stats = dl.stats.sources
    assert list(stats) == [doubles, names]
    batched = any_scheduler is not NullDataloader
    assert stats[doubles] == SourceStats(
        loads=6, cache_hits=2, fetches=3 if batched else 4, keys_fetched=4, errors=1)
    assert stats[names] == SourceStats(loads=3, cache_hits=2, fetches=1, keys_fetched=1, errors=0)
    assert (dl.stats.loads, dl.stats.cache_hits, dl.stats.keys_fetched, dl.stats.errors) == (9, 4, 5, 1)
    assert "Doubles(): loads=6, cache_hits=2" in repr(dl.stats) and "Names(): loads=3" in repr(dl.stats)


def test_stats_totals_outlive_the_sources_a_request_drops() -> None:
    dl = Dataloader()
    dl.append_job(lambda: dl.with_(Doubles).load_all([1, 2]))
    dl.run()
    dl._end_request()
    assert dl.stats.sources == {}
    assert (dl.stats.loads, dl.stats.fetches, dl.stats.keys_fetched) == (2, 1, 2)


def test_an_extension_whose_started_hook_ran_gets_its_finished_hook_when_a_later_one_fails(
    any_scheduler: Type[Dataloader], no_leaked_greenlets: None,
) -> None:
    """Paired hooks stay paired: a span opened in job_started is closed, whatever comes after."""
    first = Recorder()
    dl = any_scheduler(extensions=[first, raising("job_started")])
    dl.append_job(lambda: dl.with_(Doubles).load(1))
    with pytest.raises(RuntimeError, match="job_started failed"):
        dl.run()
    jobs = [event[:-1] for event in first.events if event[0].startswith("job_")]
    assert jobs == [("job_started",), ("job_finished", "RuntimeError")]


def test_every_finished_hook_runs_even_if_an_earlier_one_raised(any_scheduler: Type[Dataloader]) -> None:
    last = Recorder()
    dl = any_scheduler(extensions=[raising("fetch_finished"), last])
    dl.append_job(lambda: dl.with_(Doubles).load(1))
    with pytest.raises(RuntimeError, match="fetch_finished failed"):
        dl.run()
    assert [event[0] for event in last.events if event[0].startswith("fetch")] == ["fetch_started", "fetch_finished"]
