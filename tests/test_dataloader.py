"""Scheduling: jobs, phases, nesting, run_isolated, map, yield_, hooks, limits."""

from __future__ import annotations

import contextvars
from typing import Any, Dict, List, Type

import pytest
from greenlet import getcurrent

from fiberloader import (
    ConfigurationError,
    Dataloader,
    DeadlockError,
    FiberloaderError,
    NullDataloader,
    Source,
    current_dataloader,
)

from .conftest import Recorder, run_jobs

VAR: "contextvars.ContextVar[str]" = contextvars.ContextVar("VAR", default="unset")


def test_with_dataloading_returns_the_functions_result(any_scheduler: Type[Dataloader]) -> None:
    assert any_scheduler.with_dataloading(lambda dl: dl.with_(Recorder).load(1)) == "r:1"


def test_run_without_jobs_does_nothing(any_scheduler: Type[Dataloader]) -> None:
    dataloader = any_scheduler()
    dataloader.run()
    dataloader.run()
    assert dataloader.stats.fetches == 0


def test_jobs_appended_by_a_job_batch_with_it_before_any_fetch(scheduler: Type[Dataloader]) -> None:
    log: List[Any] = []

    def parent(dl: Dataloader) -> Any:
        for key in (2, 3):
            dl.append_job(lambda key=key: log.append(dl.with_(Recorder, "r", log).load(key)))
        return dl.with_(Recorder, "r", log).load(1)

    assert scheduler.with_dataloading(parent) == "r:1"
    assert log[0] == ("fetch", "r", [1, 2, 3])
    assert sorted(log[1:]) == ["r:2", "r:3"]


def test_jobs_appended_inside_fetch_run_in_the_next_job_phase(scheduler: Type[Dataloader]) -> None:
    log: List[Any] = []

    class Spawner(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            log.append("fetch")
            self.dataloader.append_job(lambda: log.append("job from fetch"))  # type: ignore[union-attr]
            return keys

    def job(dl: Dataloader) -> Any:
        value = dl.with_(Spawner).load(1)
        log.append("resumed")
        return value

    assert scheduler.with_dataloading(job) == 1
    assert log[0] == "fetch" and set(log[1:]) == {"job from fetch", "resumed"}


def test_parked_jobs_resume_in_the_order_they_parked(scheduler: Type[Dataloader]) -> None:
    order: List[int] = []
    dataloader = scheduler()
    for index in range(5):
        dataloader.append_job(lambda index=index: (dataloader.with_(Recorder).load(index), order.append(index)))
    dataloader.run()
    assert order == [0, 1, 2, 3, 4]
    assert dataloader.with_(Recorder).calls == [[0, 1, 2, 3, 4]]


def test_sequential_loads_in_one_job_take_one_round_each(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        user = dl.with_(Recorder, "user").load(1)
        posts = dl.with_(Recorder, "posts").load(user)
        return posts

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(job(dataloader)))
    dataloader.run()
    assert box == ["posts:user:1"]
    assert dataloader.with_(Recorder, "posts").calls == [["user:1"]]


def test_dependent_loads_of_many_jobs_batch_per_level(scheduler: Type[Dataloader]) -> None:
    def item(dl: Dataloader, key: int) -> Any:
        author = dl.with_(Recorder, "post").load(key)
        return dl.with_(Recorder, "author").load(author)

    dataloader = scheduler()
    out: Dict[int, Any] = {}
    for key in range(4):
        dataloader.append_job(lambda key=key: out.__setitem__(key, item(dataloader, key)))
    dataloader.run()
    assert out == {key: f"author:post:{key}" for key in range(4)}
    assert dataloader.with_(Recorder, "post").calls == [[0, 1, 2, 3]]
    assert dataloader.with_(Recorder, "author").calls == [[f"post:{key}" for key in range(4)]]
    assert dataloader.stats.fetches == 2


def test_nested_sources_two_levels_deep(scheduler: Type[Dataloader]) -> None:
    # graphql-ruby #3706: a fetch that loads from a source whose fetch loads
    # from a third source.
    class Leaf(Recorder):
        pass

    class Middle(Source):
        calls: List[Any] = []

        def fetch(self, keys: List[Any]) -> List[Any]:
            type(self).calls.append(list(keys))
            return self.dataloader.with_(Leaf).load_all(keys)  # type: ignore[union-attr]

    class Top(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [("top", value) for value in self.dataloader.with_(Middle).load_all(keys)]  # type: ignore[union-attr]

    def job(dl: Dataloader) -> Any:
        return dl.map(lambda key: dl.with_(Top).load(key), [1, 2, 3])

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(job(dataloader)))
    dataloader.run()
    assert box == [[("top", "r:1"), ("top", "r:2"), ("top", "r:3")]]
    assert Middle.calls == [[1, 2, 3]]
    assert dataloader.with_(Leaf).calls == [[1, 2, 3]]
    assert dataloader.stats.fetches == 3


def test_fetch_may_load_other_keys_of_its_own_source(scheduler: Type[Dataloader]) -> None:
    class Tree(Source):
        calls: List[Any] = []

        def fetch(self, keys: List[Any]) -> List[Any]:
            type(self).calls.append(list(keys))
            return [key if key <= 1 else ("child", self.load(key // 2)) for key in keys]

    result = scheduler.with_dataloading(lambda dl: dl.with_(Tree).load(4))
    assert result == ("child", ("child", 1))
    assert Tree.calls == [[4], [2], [1]]


def test_fetches_of_nested_sources_overlap_across_sources(scheduler: Type[Dataloader]) -> None:
    # Two pending sources whose fetches both load from a shared source: the
    # shared source is fetched once, with both keys.
    class Shared(Recorder):
        pass

    class Front(Source):
        def __init__(self, name: str) -> None:
            self.name = name

        def fetch(self, keys: List[Any]) -> List[Any]:
            return self.dataloader.with_(Shared).load_all([f"{self.name}{k}" for k in keys])  # type: ignore[union-attr]

    def job(dl: Dataloader) -> Any:
        a = dl.with_(Front, "a").request(1)
        b = dl.with_(Front, "b").request(1)
        return a.load(), b.load()

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(job(dataloader)))
    dataloader.run()
    assert box == [("r:a1", "r:b1")]
    assert dataloader.with_(Shared).calls == [["a1", "b1"]]


def test_yield_inside_fetch_lets_other_fetches_start_first(scheduler: Type[Dataloader]) -> None:
    # The manual-parallelism pattern: start work, yield_(), then collect.
    log: List[str] = []

    class Remote(Source):
        def __init__(self, name: str) -> None:
            self.name = name

        def fetch(self, keys: List[Any]) -> List[Any]:
            log.append(f"start {self.name}")
            self.dataloader.yield_()  # type: ignore[union-attr]
            log.append(f"collect {self.name}")
            return [f"{self.name}{key}" for key in keys]

    def job(dl: Dataloader) -> Any:
        a, b = dl.with_(Remote, "a").request(1), dl.with_(Remote, "b").request(2)
        return a.load(), b.load()

    assert scheduler.with_dataloading(job) == ("a1", "b2")
    assert log[:2] == ["start a", "start b"]
    assert sorted(log[2:]) == ["collect a", "collect b"]


def test_yield_in_a_job_lets_the_other_jobs_run_first(scheduler: Type[Dataloader]) -> None:
    log: List[str] = []

    def polite(dl: Dataloader) -> None:
        log.append("polite starts")
        dl.yield_()
        log.append("polite ends")

    dataloader = scheduler()
    dataloader.append_job(lambda: polite(dataloader))
    dataloader.append_job(lambda: log.append("other"))
    dataloader.run()
    assert log == ["polite starts", "other", "polite ends"]


def test_run_isolated_finishes_now_and_keeps_other_pending_keys(scheduler: Type[Dataloader]) -> None:
    log: List[Any] = []

    def outer(dl: Dataloader) -> Any:
        handle = dl.with_(Recorder, "r", log).request("outer")
        inner = dl.run_isolated(lambda: dl.with_(Recorder, "r", log).load("inner"))
        log.append(("isolated returned", inner))
        return handle.load()

    assert scheduler.with_dataloading(outer) == "r:outer"
    assert log == [
        ("fetch", "r", ["inner"]),
        ("isolated returned", "r:inner"),
        ("fetch", "r", ["outer"]),
    ]


def test_run_isolated_shares_cached_results(scheduler: Type[Dataloader]) -> None:
    def outer(dl: Dataloader) -> Any:
        dl.with_(Recorder).load(1)
        value = dl.run_isolated(lambda: dl.with_(Recorder).load(1))
        dl.with_(Recorder).load(2)
        return value, dl.with_(Recorder).calls

    assert scheduler.with_dataloading(outer) == ("r:1", [[1], [2]])


def test_run_isolated_key_fetched_inside_is_not_fetched_again_outside(scheduler: Type[Dataloader]) -> None:
    def outer(dl: Dataloader) -> Any:
        handle = dl.with_(Recorder).request(1)
        dl.run_isolated(lambda: dl.with_(Recorder).load(1))
        return handle.load(), dl.with_(Recorder).calls

    assert scheduler.with_dataloading(outer) == ("r:1", [[1]])


def test_run_isolated_runs_jobs_appended_inside_it(scheduler: Type[Dataloader]) -> None:
    def outer(dl: Dataloader) -> Any:
        seen: List[Any] = []

        def inner() -> str:
            for key in (1, 2):
                dl.append_job(lambda key=key: seen.append(dl.with_(Recorder).load(key)))
            return "done"

        result = dl.run_isolated(inner)
        return result, sorted(seen)

    assert scheduler.with_dataloading(outer) == ("done", ["r:1", "r:2"])


def test_run_isolated_at_top_level_is_a_plain_run_leaving_queued_jobs(any_scheduler: Type[Dataloader]) -> None:
    dataloader = any_scheduler()
    ran: List[str] = []
    dataloader.append_job(lambda: ran.append("queued earlier"))
    assert dataloader.run_isolated(lambda: dataloader.with_(Recorder).load(5)) == "r:5"
    assert ran == []
    dataloader.run()
    assert ran == ["queued earlier"]


def test_run_isolated_propagates_errors_and_restores_the_outer_run(scheduler: Type[Dataloader]) -> None:
    def outer(dl: Dataloader) -> Any:
        handle = dl.with_(Recorder).request("kept")

        def failing() -> None:
            dl.with_(Recorder).load("inner")
            raise KeyError("inner failure")

        with pytest.raises(KeyError):
            dl.run_isolated(failing)
        return handle.load()

    assert scheduler.with_dataloading(outer) == "r:kept"


def test_map_returns_results_in_order_and_batches_items(scheduler: Type[Dataloader]) -> None:
    def view(dl: Dataloader) -> Any:
        return dl.map(lambda key: (key, dl.with_(Recorder).load(key)), [3, 1, 2])

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(view(dataloader)))
    dataloader.run()
    assert box == [[(3, "r:3"), (1, "r:1"), (2, "r:2")]]
    assert dataloader.with_(Recorder).calls == [[3, 1, 2]]


def test_map_items_batch_with_other_jobs_of_the_run(scheduler: Type[Dataloader]) -> None:
    dataloader = scheduler()
    dataloader.append_job(lambda: dataloader.map(dataloader.with_(Recorder).load, [1, 2]))
    dataloader.append_job(lambda: dataloader.with_(Recorder).load(3))
    dataloader.run()
    assert [sorted(call) for call in dataloader.with_(Recorder).calls] == [[1, 2, 3]]


def test_map_of_items_that_never_wait(any_scheduler: Type[Dataloader]) -> None:
    result = any_scheduler.with_dataloading(lambda dl: dl.map(lambda x: x * 2, range(5)))
    assert result == [0, 2, 4, 6, 8]


def test_map_of_nothing(any_scheduler: Type[Dataloader]) -> None:
    assert any_scheduler.with_dataloading(lambda dl: dl.map(lambda x: x, [])) == []


def test_nested_map(scheduler: Type[Dataloader]) -> None:
    def view(dl: Dataloader) -> Any:
        return dl.map(lambda a: dl.map(lambda b: dl.with_(Recorder).load((a, b)), range(2)), range(2))

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(view(dataloader)))
    dataloader.run()
    assert box == [[["r:(0, 0)", "r:(0, 1)"], ["r:(1, 0)", "r:(1, 1)"]]]
    calls = dataloader.with_(Recorder).calls
    if scheduler is Dataloader:  # depth first, the order plain code would take
        assert calls == [[(0, 0), (0, 1), (1, 0), (1, 1)]]
    else:  # AsyncDataloader leaves the order of keys within a batch free
        assert [sorted(call) for call in calls] == [[(0, 0), (0, 1), (1, 0), (1, 1)]]


def test_map_waits_for_every_item_then_raises_the_first_failure(any_scheduler: Type[Dataloader]) -> None:
    finished: List[int] = []

    def item(dl: Dataloader, key: int) -> int:
        dl.with_(Recorder).load(key)
        if key in (1, 3):
            raise ValueError(f"item {key}")
        finished.append(key)
        return key

    def view(dl: Dataloader) -> Any:
        with pytest.raises(ValueError, match="item 1"):
            dl.map(lambda key: item(dl, key), [0, 1, 2, 3])
        return sorted(finished)

    assert any_scheduler.with_dataloading(view) == [0, 2]


def test_map_outside_a_run_runs_the_items(any_scheduler: Type[Dataloader]) -> None:
    dataloader = any_scheduler()
    assert dataloader.map(lambda key: dataloader.with_(Recorder).load(key), [1, 2]) == ["r:1", "r:2"]


def test_map_inside_a_fetch_runs_isolated(scheduler: Type[Dataloader]) -> None:
    class Fanout(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            dl = self.dataloader
            return dl.map(lambda key: dl.with_(Recorder).load(key), keys)  # type: ignore[union-attr]

    result = scheduler.with_dataloading(lambda dl: dl.with_(Fanout).load_all([1, 2]))
    assert result == ["r:1", "r:2"]


def test_job_exception_propagates_out_of_run(any_scheduler: Type[Dataloader]) -> None:
    def job() -> None:
        raise ZeroDivisionError("job failed")

    with pytest.raises(ZeroDivisionError, match="job failed"):
        run_jobs(any_scheduler, job)


def test_job_exception_ends_the_other_parked_jobs_running_their_finally(scheduler: Type[Dataloader]) -> None:
    cleaned: List[str] = []
    dataloader = scheduler()

    def waiter(name: str) -> None:
        try:
            dataloader.with_(Recorder).load(name)
            dataloader.with_(Recorder, "second").load(name)
        finally:
            cleaned.append(name)

    def failer() -> None:
        dataloader.with_(Recorder).load("x")
        raise RuntimeError("boom")

    dataloader.append_job(lambda: waiter("a"))
    dataloader.append_job(failer)
    dataloader.append_job(lambda: waiter("b"))
    with pytest.raises(RuntimeError, match="boom"):
        dataloader.run()
    assert sorted(cleaned) == ["a", "b"]


def test_dataloader_is_usable_again_after_a_failed_run(scheduler: Type[Dataloader]) -> None:
    dataloader = scheduler()
    dataloader.append_job(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        dataloader.run()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(dataloader.with_(Recorder).load(1)))
    dataloader.run()
    assert box == ["r:1"]


def test_base_exception_in_fetch_aborts_the_run(scheduler: Type[Dataloader]) -> None:
    class Interrupting(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scheduler.with_dataloading(lambda dl: dl.with_(Interrupting).load(1))


def test_current_dataloader_inside_jobs_and_fetches_only(any_scheduler: Type[Dataloader]) -> None:
    seen: List[Any] = []

    class Looks(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            seen.append(current_dataloader())
            return keys

    dataloader = any_scheduler()
    dataloader.append_job(lambda: (seen.append(current_dataloader()), dataloader.with_(Looks).load(1)))
    assert current_dataloader() is None
    dataloader.run()
    assert current_dataloader() is None
    assert seen == [dataloader, dataloader]


def test_context_set_around_run_is_visible_in_jobs_and_fetches(any_scheduler: Type[Dataloader]) -> None:
    seen: List[str] = []

    class Looks(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            seen.append("fetch " + VAR.get())
            return keys

    def job(dl: Dataloader) -> Any:
        seen.append("job " + VAR.get())
        return dl.with_(Looks).load(1)

    token = VAR.set("request-42")
    try:
        any_scheduler.with_dataloading(job)
    finally:
        VAR.reset(token)
    assert seen == ["job request-42", "fetch request-42"]


def test_context_var_set_in_one_job_is_not_seen_by_others(any_scheduler: Type[Dataloader]) -> None:
    seen: List[str] = []
    dataloader = any_scheduler()

    def setter() -> None:
        VAR.set("leaked?")
        dataloader.with_(Recorder).load(1)
        seen.append("setter sees " + VAR.get())

    dataloader.append_job(setter)
    dataloader.append_job(lambda: seen.append("other sees " + VAR.get()))
    dataloader.run()
    assert sorted(seen) == ["other sees unset", "setter sees leaked?"]
    assert VAR.get() == "unset"


class HookRecorder:
    """A mixin that records every lifecycle hook call, with the greenlet it ran in."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[call-arg]
        self.events: List[Any] = []

    def get_fiber_variables(self) -> Any:
        self.events.append(("get", id(getcurrent())))
        return (super().get_fiber_variables(), VAR.get())  # type: ignore[misc]

    def set_fiber_variables(self, variables: Any) -> None:
        context, value = variables
        super().set_fiber_variables(context)  # type: ignore[misc]
        self.events.append(("set", id(getcurrent()), value))

    def cleanup_fiber(self) -> None:
        self.events.append(("cleanup", id(getcurrent())))


def hooked(scheduler: Type[Dataloader]) -> Any:
    return type(f"Hooked{scheduler.__name__}", (HookRecorder, scheduler), {})()


def test_lifecycle_hooks_run_once_per_greenlet_in_parent_then_child(scheduler: Type[Dataloader]) -> None:
    dataloader = hooked(scheduler)
    hub = id(getcurrent())
    for key in range(3):
        dataloader.append_job(lambda key=key: dataloader.with_(Recorder).load(key))
    token = VAR.set("parent value")
    try:
        dataloader.run()
    finally:
        VAR.reset(token)
    gets = [e for e in dataloader.events if e[0] == "get"]
    sets = [e for e in dataloader.events if e[0] == "set"]
    cleanups = [e for e in dataloader.events if e[0] == "cleanup"]
    started = dataloader.stats.greenlets
    assert started >= 3  # three parked jobs + a fetch
    assert len(gets) == len(sets) == len(cleanups) == started
    assert all(e[1] == hub for e in gets)  # in the parent
    assert all(e[2] == "parent value" for e in sets)
    assert {e[1] for e in sets} == {e[1] for e in cleanups}  # each child, once
    assert hub not in {e[1] for e in sets}


def test_cleanup_fiber_runs_when_the_job_failed(scheduler: Type[Dataloader]) -> None:
    dataloader = hooked(scheduler)
    dataloader.append_job(lambda: dataloader.with_(Recorder).load(1))
    dataloader.append_job(lambda: (dataloader.with_(Recorder).load(2), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        dataloader.run()
    sets = {e[1] for e in dataloader.events if e[0] == "set"}
    cleanups = {e[1] for e in dataloader.events if e[0] == "cleanup"}
    assert sets and sets == cleanups


def test_fiber_limit_caps_live_greenlets_without_changing_results(scheduler: Type[Dataloader]) -> None:
    results = {}
    for limit in (None, 2, 3, 5):
        dataloader = scheduler(fiber_limit=limit)
        out: Dict[int, Any] = {}
        for key in range(12):
            dataloader.append_job(lambda key=key: out.__setitem__(key, dataloader.with_(Recorder).load(key)))
        dataloader.run()
        results[limit] = (out, dataloader.stats.max_alive, len(dataloader.with_(Recorder).calls))
        if limit is not None:
            assert dataloader.stats.max_alive <= limit
    assert all(out == results[None][0] for out, _, _ in results.values())
    assert results[None][2] == 1  # no limit: one batch
    assert results[2][2] == 12  # one job at a time: one batch per key


@pytest.mark.parametrize("limit", [0, 1, -3, 1.5, "4", True])
def test_fiber_limit_too_low_to_progress_is_rejected_at_construction(scheduler: Type[Dataloader], limit: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        scheduler(fiber_limit=limit)
    assert isinstance(info.value, ValueError)
    assert "fiber_limit" in str(info.value) and ">= 2" in str(info.value)


def test_fiber_limit_lets_nested_fetches_borrow_a_greenlet_instead_of_deadlocking(scheduler: Type[Dataloader]) -> None:
    class Inner(Recorder):
        pass

    class Outer(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return self.dataloader.with_(Inner).load_all(keys)  # type: ignore[union-attr]

    for limit in (2, 3, None):
        dl = scheduler(fiber_limit=limit)
        dl.append_job(lambda: dl.with_(Outer).load(1))
        dl.run()
        assert dl.with_(Inner).calls == [[1]]
        # A job, the outer fetch, and the inner fetch it waits for: at the
        # limit of two, the inner fetch borrows one greenlet above it.
        assert dl.stats.max_alive == 3


def test_fetch_that_waits_on_its_own_key_is_a_circular_dependency(any_scheduler: Type[Dataloader]) -> None:
    class Ouroboros(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [self.load(key) for key in keys]

    def job(dl: Dataloader) -> Any:
        with pytest.raises(DeadlockError) as info:
            dl.with_(Ouroboros).load(7)
        return info.value

    error = any_scheduler.with_dataloading(job)
    assert "Ouroboros()" in str(error) and "7" in str(error)
    assert "circular dependency" in str(error)
    assert [(type(s).__name__, keys) for s, keys in error.waits] == [("Ouroboros", [7])]


def test_two_fetches_waiting_on_each_other_raise_instead_of_hanging(scheduler: Type[Dataloader]) -> None:
    class Ping(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return self.dataloader.with_(Pong).load_all(keys)  # type: ignore[union-attr]

    class Pong(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return self.dataloader.with_(Ping).load_all(keys)  # type: ignore[union-attr]

    def job(dl: Dataloader) -> Any:
        with pytest.raises(DeadlockError) as info:
            dl.with_(Ping).load(1)
        return str(info.value)

    message = scheduler.with_dataloading(job)
    assert "Ping().fetch([1]) waits on Pong() keys [1]" in message
    assert "Pong().fetch([1]) waits on Ping() keys [1]" in message


def test_run_called_from_its_own_job_is_an_error(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        with pytest.raises(FiberloaderError, match="already running.*run_isolated"):
            dl.run()
        return "ok"

    assert any_scheduler.with_dataloading(job) == "ok"


def test_a_second_dataloader_can_run_inside_a_job(scheduler: Type[Dataloader]) -> None:
    def outer(dl: Dataloader) -> Any:
        first = dl.with_(Recorder, "outer").load(1)
        inner = scheduler.with_dataloading(lambda inner_dl: inner_dl.with_(Recorder, "inner").load(2))
        return first, inner, current_dataloader() is dl

    assert scheduler.with_dataloading(outer) == ("outer:1", "inner:2", True)


def test_thousands_of_parked_jobs_do_not_hit_the_recursion_limit(scheduler: Type[Dataloader]) -> None:
    def deep(dl: Dataloader, key: int, depth: int) -> Any:
        if depth:
            return deep(dl, key, depth - 1)
        return dl.with_(Recorder).load(key)

    def view(dl: Dataloader) -> Any:
        return dl.map(lambda key: deep(dl, key, 20), range(3000))

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(view(dataloader)))
    dataloader.run()
    assert box[0][-1] == "r:2999"
    assert dataloader.stats.fetches == 1


def test_workers_are_reused_within_a_run(scheduler: Type[Dataloader]) -> None:
    # 20 jobs, each waits twice in sequence: the second round reuses the
    # workers freed by the first instead of starting new greenlets.
    dataloader = scheduler()
    for key in range(20):
        dataloader.append_job(
            lambda key=key: dataloader.map(lambda k: dataloader.with_(Recorder, "b").load(k),
                                           [dataloader.with_(Recorder, "a").load(key)])
        )
    dataloader.run()
    assert dataloader.stats.fetches == 2
    assert dataloader.stats.greenlets <= 45


def test_stats_count_fetches_keys_and_greenlets(any_scheduler: Type[Dataloader]) -> None:
    dataloader = any_scheduler()
    for key in range(3):
        dataloader.append_job(lambda key=key: dataloader.with_(Recorder).load(key))
    dataloader.run()
    stats = dataloader.stats
    assert stats.keys_fetched == 3
    if any_scheduler is NullDataloader:
        assert (stats.fetches, stats.greenlets) == (3, 0)
    else:
        assert stats.fetches == 1 and stats.greenlets >= 4
    assert "fetches=" in repr(stats)


def test_jobs_queued_by_a_run_that_failed_are_abandoned_not_run_by_the_next(any_scheduler: Type[Dataloader]) -> None:
    ran: List[str] = []
    dl = any_scheduler()

    def failing() -> None:
        dl.append_job(lambda: ran.append("queued by the failing job"))
        raise ValueError("boom")

    dl.append_job(failing)
    with pytest.raises(ValueError):
        dl.run()
    dl.append_job(lambda: ran.append("next run"))
    dl.run()
    assert ran == ["next run"]
