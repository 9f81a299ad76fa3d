"""Misuse: every error fiberloader raises, its type and what its message says.

Each message must name the user's class and the call, the key involved, and
what to do about it.
"""

from __future__ import annotations

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Coroutine, Dict, List, Type

import gevent
import pytest
from flask import Flask, g
from graphql import located_error
from greenlet import greenlet

import fiberloader
from fiberloader import (
    ConfigurationError,
    Dataloader,
    DeadlockError,
    FetchError,
    FiberloaderError,
    FiberloaderTypeError,
    KeyTypeError,
    NotRunningError,
    NullDataloader,
    Source,
    SourceTypeError,
    current_dataloader,
    dataloader_class,
)
from fiberloader.flask import Fiberloader

# The messages below, word for word; {what} is the call, {cls} the scheduler class.
NOT_RUNNING = (
    "{what} needs a running dataloader, but {cls} is not running. Call it from inside a job: "
    "{cls}.with_dataloading(fn), or dataloader.append_job(fn) then dataloader.run(); in a web "
    "app, run each request's handler as a job of its own dataloader."
)
FOREIGN = (
    "{what} was called from a greenlet that is not one of this dataloader's jobs ({cls} is "
    "running, but this code runs outside it: in another dataloader's job, or in a thread or "
    "greenlet of your own). Call it from the job itself, or use that code's own dataloader "
    "(fiberloader.current_dataloader())."
)
RE_ENTERED = (
    "{cls}.run() was called while it is already running. From inside a job, use "
    "dataloader.run_isolated(fn) to run work to completion now."
)
NOT_A_LIST = "Return a list (not a generator), or a dict keyed by key."
SCHEDULER_NAMES = "Use one of 'sync', 'async', 'null', a Dataloader subclass, or 'package.module:Class'."



class Users(Source):
    def __init__(self, table: str = "users") -> None:
        self.table = table

    def fetch(self, keys: List[Any]) -> List[Any]:
        return keys


def test_every_error_class_is_a_fiberloader_error() -> None:
    for name in fiberloader.__all__:
        value = getattr(fiberloader, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, FiberloaderError), name


def test_with_given_a_non_source_names_it_and_says_what_to_pass() -> None:
    with pytest.raises(SourceTypeError) as info:
        Dataloader().with_(dict)  # type: ignore[type-var]
    assert isinstance(info.value, TypeError)
    assert "with_() takes a Source subclass, but got <class 'dict'>" in str(info.value)
    with pytest.raises(SourceTypeError, match="Users\\(\\)"):
        Dataloader().with_(Users())  # type: ignore[arg-type]


def test_with_given_unhashable_batch_parameters_names_the_source() -> None:
    with pytest.raises(SourceTypeError) as info:
        Dataloader().with_(Users, ["users"])  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert "with_(Users, ...) needs hashable batch parameters" in message
    assert "(['users'],)" in message and "override Users.batch_key_for()" in message


@pytest.mark.parametrize("call", ["load", "load_all", "request", "merge", "clear"])
def test_unhashable_key_is_a_type_error_naming_source_and_key(any_scheduler: Type[Dataloader], call: str) -> None:
    def job(dl: Dataloader) -> Any:
        source = dl.with_(Users, "accounts")
        with pytest.raises(KeyTypeError) as info:
            if call == "load_all":
                source.load_all([1, [2, 3]])
            elif call == "merge":
                source.merge(_UnhashableDict({"k": 1}))
            else:
                getattr(source, call)([2, 3])
        return info.value

    error = any_scheduler.with_dataloading(job)
    assert isinstance(error, TypeError)
    assert error.data_source is not None and repr(error.data_source) == "Users('accounts')"
    message = str(error)
    assert "Users('accounts')." in message and "needs hashable keys" in message
    assert "list is unhashable" in message
    assert "override Users.result_key_for()" in message


class _UnhashableDict(dict):  # type: ignore[type-arg]
    """A mapping whose items() yields an unhashable key, to reach merge's check."""

    def items(self) -> Any:
        return [([2, 3], 1)]


def test_load_outside_a_running_dataloader_says_how_to_start_one(any_scheduler: Type[Dataloader]) -> None:
    source = any_scheduler().with_(Users)
    with pytest.raises(NotRunningError) as info:
        source.load(42)
    assert isinstance(info.value, RuntimeError)
    assert (info.value.data_source, info.value.key) == (source, 42)
    message = str(info.value)
    assert "The load of Users() key 42 (not cached) needs a running dataloader" in message
    assert "with_dataloading(fn)" in message and "append_job(fn)" in message


def test_load_all_outside_a_running_dataloader_names_the_first_missing_key(any_scheduler: Type[Dataloader]) -> None:
    source = any_scheduler().with_(Users)
    source.merge({1: "one"})
    with pytest.raises(NotRunningError, match=r"The load of Users\(\) key 2 \(not cached\) needs a running"):
        source.load_all([1, 2])


def test_source_made_without_a_dataloader_says_to_use_with() -> None:
    source = Users()
    for call in (lambda: source.load(1), lambda: source.load_all([1]), lambda: source.request(1),
                 lambda: source.merge({1: 1})):
        with pytest.raises(NotRunningError) as info:
            call()
        assert "instance made directly" in str(info.value)
        assert "dataloader.with_(Users, ...)" in str(info.value)


def test_load_from_a_greenlet_that_is_not_a_job_is_refused(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        stray = greenlet(lambda: dl.with_(Users).load(5))
        with pytest.raises(NotRunningError) as info:
            stray.switch()
        return str(info.value)

    message = scheduler.with_dataloading(job)
    assert "The load of Users() key 5 (not cached) was called from a greenlet that is not one of this dataloader's jobs" in message
    assert "current_dataloader()" in message


def test_load_from_another_thread_is_refused(scheduler: Type[Dataloader]) -> None:
    errors: List[BaseException] = []

    def job(dl: Dataloader) -> Any:
        def other_thread() -> None:
            try:
                dl.with_(Users).load(1)
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        return dl.with_(Users).load(1)  # the job itself goes on: nothing hangs, nothing is lost

    assert scheduler.with_dataloading(job) == 1
    assert len(errors) == 1 and isinstance(errors[0], NotRunningError)
    assert str(errors[0]) == FOREIGN.format(what="The load of Users() key 1 (not cached)", cls=scheduler.__name__)


def test_yield_outside_a_run_is_refused(any_scheduler: Type[Dataloader]) -> None:
    with pytest.raises(NotRunningError, match="yield_\\(\\) needs a running dataloader"):
        any_scheduler().yield_()


def test_append_job_with_a_non_callable_is_a_type_error(any_scheduler: Type[Dataloader]) -> None:
    with pytest.raises(FiberloaderTypeError) as info:
        any_scheduler().append_job(42)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert "append_job() takes a zero-argument callable, but got 42" in str(info.value)


@pytest.mark.parametrize("size", [0, -1, "3", 2.5, True])
def test_bad_max_batch_size_is_a_value_error_at_first_use(any_scheduler: Type[Dataloader], size: Any) -> None:
    class Chunked(Users):
        max_batch_size = size

    with pytest.raises(ConfigurationError) as info:
        any_scheduler().with_(Chunked)
    assert isinstance(info.value, ValueError)
    assert f"Chunked.max_batch_size must be None or a positive int, but it is {size!r}" in str(info.value)


def test_wrong_length_fetch_error_names_source_lengths_and_first_missing_key(scheduler: Type[Dataloader]) -> None:
    class Short(Users):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return keys[:1]

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FetchError) as info:
            dl.with_(Short, "accounts").load_all(["a", "b", "c"])
        return info.value

    error = scheduler.with_dataloading(job)
    assert repr(error.data_source) == "Short('accounts')" and error.keys == ["a", "b", "c"]
    message = str(error)
    assert "Short('accounts').fetch() must return one result per key" in message
    assert "returned 1 results for 3 keys ['a', 'b', 'c']" in message
    assert "The first key without a result is 'b'" in message


def test_too_long_fetch_result_is_a_fetch_error(scheduler: Type[Dataloader]) -> None:
    class Long(Users):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return keys + keys

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FetchError, match="returned 2 results for 1 keys \\[1\\]"):
            dl.with_(Long).load(1)

    scheduler.with_dataloading(job)


def test_huge_keys_and_results_are_cut_short_in_messages(scheduler: Type[Dataloader]) -> None:
    class Short(Users):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return keys[:-1]

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FetchError) as info:
            dl.with_(Short).load_all(list(range(10_000)))
        return str(info.value)

    assert len(scheduler.with_dataloading(job)) < 600


def test_unknown_scheduler_setting_lists_the_valid_values() -> None:
    with pytest.raises(ConfigurationError) as info:
        dataloader_class("fast")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'fast'" in message and "'sync', 'async', 'null'" in message and "package.module:Class" in message


# -- loads in the wrong place: threads, greenlets, after the request -----------------------


def test_load_from_a_gevent_spawned_greenlet_inside_a_job_is_refused(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        def stray() -> Any:
            try:
                return dl.with_(Users).load(7)
            except NotRunningError as error:
                return error

        error = gevent.spawn(stray).get()
        return error, dl.with_(Users).load(7)

    error, value = scheduler.with_dataloading(job)
    assert value == 7
    assert isinstance(error, NotRunningError) and (error.data_source.table, error.key) == ("users", 7)
    assert str(error) == FOREIGN.format(what="The load of Users() key 7 (not cached)", cls=scheduler.__name__)


def test_load_from_a_thread_pool_inside_a_job_is_refused(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        with ThreadPoolExecutor(2) as pool:
            with pytest.raises(NotRunningError) as info:
                pool.submit(dl.with_(Users).load, 8).result()
        return str(info.value)

    assert scheduler.with_dataloading(job) == FOREIGN.format(
        what="The load of Users() key 8 (not cached)", cls=scheduler.__name__
    )


@pytest.mark.parametrize("call", ["yield_", "map", "run_isolated"])
def test_scheduler_calls_from_a_greenlet_that_is_not_a_job_are_refused(scheduler: Type[Dataloader], call: str) -> None:
    calls: Dict[str, Callable[[Dataloader], Any]] = {
        "yield_": lambda dl: dl.yield_(),
        "map": lambda dl: dl.map(str, [1]),
        "run_isolated": lambda dl: dl.run_isolated(lambda: 1),
    }

    def job(dl: Dataloader) -> Any:
        with pytest.raises(NotRunningError) as info:
            greenlet(lambda: calls[call](dl)).switch()
        return str(info.value)

    assert scheduler.with_dataloading(job) == FOREIGN.format(what=f"dataloader.{call}()", cls=scheduler.__name__)


def test_load_of_a_source_kept_from_another_dataloader_is_refused(any_scheduler: Type[Dataloader]) -> None:
    kept = any_scheduler().with_(Users)  # e.g. a module-level cache of a source from an earlier request

    def job(dl: Dataloader) -> Any:
        with pytest.raises(NotRunningError) as info:
            kept.load(3)
        return info.value

    error = any_scheduler.with_dataloading(job)
    assert (error.data_source, error.key) == (kept, 3)
    assert str(error).startswith(
        f"The load of Users() key 3 (not cached) needs a running dataloader, but {any_scheduler.__name__} "
        "is not running"
    )


def test_load_of_a_source_kept_from_another_dataloader_says_to_use_the_running_one(
    any_scheduler: Type[Dataloader],
) -> None:
    kept = any_scheduler().with_(Users)

    def job(dl: Dataloader) -> Any:
        with pytest.raises(NotRunningError) as info:
            kept.load(3)
        return str(info.value)

    message = any_scheduler.with_dataloading(job)
    assert "the source belongs to another dataloader than the one running this job" in message
    assert "fiberloader.current_dataloader().with_(Users, ...)" in message


FLASK_CLASSES = {"sync": Dataloader, "async": fiberloader.AsyncDataloader, "null": NullDataloader}


def _flask_app(setting: str, teardown_log: "Dict[str, Any] | None" = None) -> Flask:
    """A Flask app whose view loads one key and keeps its source on g and in ``app.kept``."""
    app = Flask(__name__)
    app.config["FIBERLOADER_DATALOADER"] = setting
    Fiberloader(app)

    @app.route("/")
    def view() -> str:
        g.users = app.kept = current_dataloader().with_(Users, "accounts")  # type: ignore[union-attr, attr-defined]
        return str(g.users.load("1"))

    if teardown_log is not None:

        @app.teardown_request
        def teardown(_: Any) -> None:
            teardown_log["current"] = current_dataloader()
            try:
                g.users.load("2")
            except NotRunningError as error:
                teardown_log["error"] = error

    return app


@pytest.mark.parametrize("setting", ["sync", "async", "null"])
def test_load_in_a_flask_teardown_handler_is_refused_and_the_response_is_intact(setting: str) -> None:
    log: Dict[str, Any] = {}
    response = _flask_app(setting, log).test_client().get("/")
    assert (response.status_code, response.data) == (200, b"1")
    assert log["current"] is None  # current_dataloader() is None after the dispatch
    error = log["error"]
    assert error.key == "2" and repr(error.data_source) == "Users('accounts')"
    assert str(error).startswith(NOT_RUNNING.format(
        what="The load of Users('accounts') key '2' (not cached)", cls=FLASK_CLASSES[setting].__name__
    ).split(". Call it")[0])


@pytest.mark.parametrize("setting", ["sync", "async", "null"])
def test_load_after_the_response_was_returned_is_refused_even_for_a_key_it_loaded(setting: str) -> None:
    app = _flask_app(setting)
    assert app.test_client().get("/").data == b"1"
    with pytest.raises(NotRunningError) as info:
        app.kept.load("1")  # type: ignore[attr-defined]  # cached during the request, dropped after it
    assert str(info.value).startswith(
        f"The load of Users('accounts') key '1' (not cached) needs a running dataloader, but "
        f"{FLASK_CLASSES[setting].__name__} is not running"
    )


def test_load_after_the_request_says_that_the_request_is_over() -> None:
    log: Dict[str, Any] = {}
    _flask_app("sync", log).test_client().get("/")
    message = str(log["error"])
    assert "Dataloader is not running: its request is over (the response was returned)" in message
    assert "Load in the view, or in the streamed body" in message


def test_load_in_cleanup_fiber_is_refused_and_the_rest_of_cleanup_fiber_runs(scheduler: Type[Dataloader]) -> None:
    log: List[Any] = []

    class Cleaning(scheduler):  # type: ignore[valid-type, misc]
        def cleanup_fiber(self) -> None:
            try:
                self.with_(Users).load(99)
            except NotRunningError as error:
                log.append(str(error))
            log.append("released")

    assert Cleaning.with_dataloading(lambda dl: dl.with_(Users).load(1)) == 1
    assert log and log[-1] == "released"
    assert "The load of Users() key 99 (not cached) was called from cleanup_fiber()" in log[0]


# -- scheduler calls: re-entered, nested, wrong arguments -------------------------------------


def test_run_called_from_inside_a_job_says_to_use_run_isolated(any_scheduler: Type[Dataloader]) -> None:
    with pytest.raises(FiberloaderError) as info:
        any_scheduler.with_dataloading(lambda dl: dl.run())
    assert str(info.value) == RE_ENTERED.format(cls=any_scheduler.__name__)


def test_run_called_from_inside_a_fetch_says_to_use_run_isolated(any_scheduler: Type[Dataloader]) -> None:
    class Rerunning(Users):
        def fetch(self, keys: List[Any]) -> List[Any]:
            self.dataloader.run()  # type: ignore[union-attr]
            return keys

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FiberloaderError) as info:
            dl.with_(Rerunning).load(1)
        return str(info.value), dl.with_(Users).load(2)  # the run goes on

    assert any_scheduler.with_dataloading(job) == (RE_ENTERED.format(cls=any_scheduler.__name__), 2)


def test_nested_with_dataloading_is_a_separate_dataloader_not_an_error(any_scheduler: Type[Dataloader]) -> None:
    def inner(dl: Dataloader) -> Any:
        return current_dataloader() is dl, dl.with_(Users).load(2)

    def outer(dl: Dataloader) -> Any:
        result = any_scheduler.with_dataloading(inner)
        return result, current_dataloader() is dl, dl.with_(Users).load(1)

    assert any_scheduler.with_dataloading(outer) == ((True, 2), True, 1)


@pytest.mark.parametrize("value", [0, 1, -1, "4", True, 1.5])
def test_bad_fiber_limit_is_a_value_error_at_construction(any_scheduler: Type[Dataloader], value: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        any_scheduler(fiber_limit=value)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert f"(fiber_limit={value!r})" in message
    assert "it must be None (no limit) or an int >= 2, one greenlet for a job and one for a fetch." in message


@pytest.mark.parametrize("inside", [True, False])
def test_map_with_a_non_iterable_names_it(any_scheduler: Type[Dataloader], inside: bool) -> None:
    with pytest.raises(FiberloaderTypeError) as info:
        if inside:
            any_scheduler.with_dataloading(lambda dl: dl.map(str, 5))  # type: ignore[arg-type]
        else:
            any_scheduler().map(str, 5)  # type: ignore[arg-type]
    assert "dataloader.map(fn, iterable) takes an iterable of items, but got int 5." in str(info.value)


@pytest.mark.parametrize("call, expected", [
    ("map", "dataloader.map() takes a one-argument callable, but got 5."),
    ("run_isolated", "dataloader.run_isolated() takes a zero-argument callable, but got 5."),
    ("with_dataloading", "with_dataloading() takes a callable of one argument (the dataloader), but got 5."),
])
def test_a_non_callable_fn_is_a_type_error_like_append_job(any_scheduler: Type[Dataloader], call: str, expected: str) -> None:
    calls: Dict[str, Callable[[], Any]] = {
        "map": lambda: any_scheduler.with_dataloading(lambda dl: dl.map(5, [1])),  # type: ignore[arg-type]
        "run_isolated": lambda: any_scheduler.with_dataloading(lambda dl: dl.run_isolated(5)),  # type: ignore[arg-type]
        "with_dataloading": lambda: any_scheduler.with_dataloading(5),  # type: ignore[arg-type]
    }
    with pytest.raises(FiberloaderTypeError) as info:
        calls[call]()
    assert expected in str(info.value)


@pytest.mark.parametrize("how", ["with_dataloading", "append_job"])
def test_an_async_def_job_is_a_type_error_not_a_coroutine_never_awaited(any_scheduler: Type[Dataloader], how: str) -> None:
    made: List[Coroutine[Any, Any, Any]] = []

    async def view() -> int:
        return 1

    def job(*_: Any) -> Any:  # what an `async def` job gives fiberloader: a coroutine
        made.append(view())
        return made[-1]

    try:
        with pytest.raises(FiberloaderTypeError) as info:
            if how == "with_dataloading":
                any_scheduler.with_dataloading(job)
            else:
                dl = any_scheduler()
                dl.append_job(job)
                dl.run()
        assert "returned a coroutine" in str(info.value) and "Make it a def" in str(info.value)
        assert all(inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED for coroutine in made)
    finally:
        for coroutine in made:
            coroutine.close()  # never awaited: no RuntimeWarning at collection, whatever happened


# -- sources: made wrong, without fetch, bad parameters -------------------------------------


def test_a_source_without_fetch_is_a_type_error_at_with_naming_the_class(any_scheduler: Type[Dataloader]) -> None:
    class NoFetch(Source):
        pass

    for cls, name in ((NoFetch, "NoFetch"), (Source, "Source")):
        with pytest.raises(SourceTypeError) as info:
            any_scheduler().with_(cls)
        assert isinstance(info.value, TypeError)
        message = str(info.value)
        assert f"dataloader.with_({name}) needs a source that fetches, but {name} does not define fetch()." in message
        assert "def fetch(self, keys)" in message


def test_with_given_a_string_names_it_and_says_to_pass_the_class() -> None:
    with pytest.raises(SourceTypeError) as info:
        Dataloader().with_("Users")  # type: ignore[type-var]
    assert str(info.value) == (
        "dataloader.with_() takes a Source subclass, but got 'Users'. Define `class "
        "MySource(fiberloader.Source)` with a fetch(keys) method and pass the class itself."
    )


def test_batch_key_for_returning_an_unhashable_names_the_hook() -> None:
    class Grouped(Users):
        @classmethod
        def batch_key_for(cls, *args: Any, **kwargs: Any) -> Any:
            return list(args)

    with pytest.raises(SourceTypeError) as info:
        Dataloader().with_(Grouped, "a")
    assert str(info.value) == (
        "dataloader.with_(Grouped, ...) needs hashable batch parameters, but Grouped.batch_key_for() "
        "gave ['a']. Pass hashable arguments or override Grouped.batch_key_for() to return a hashable key."
    )


def test_max_batch_size_set_in_init_is_checked_too(any_scheduler: Type[Dataloader]) -> None:
    class PerInstance(Users):
        def __init__(self) -> None:
            self.max_batch_size = 0  # type: ignore[misc]

    with pytest.raises(ConfigurationError) as info:
        any_scheduler().with_(PerInstance)
    assert str(info.value) == "PerInstance.max_batch_size must be None or a positive int, but it is 0."


# -- keys and the key hooks ------------------------------------------------------------------


@pytest.mark.parametrize("call", ["load_all", "request_all"])
@pytest.mark.parametrize("keys, kind", [(5, "int 5 (not an iterable)"), ("abc", "str 'abc' (one key)")])
def test_load_all_of_a_non_iterable_or_a_string_is_a_type_error(
    any_scheduler: Type[Dataloader], call: str, keys: Any, kind: str
) -> None:
    source = any_scheduler().with_(Users, "accounts")
    with pytest.raises(KeyTypeError) as info:
        getattr(source, call)(keys)
    assert isinstance(info.value, TypeError) and (info.value.data_source, info.value.key) == (source, keys)
    single = "request" if call == "request_all" else "load"
    assert str(info.value) == (
        f"Users('accounts').{call}() takes an iterable of keys, but got {kind}. Pass a list of keys, "
        f"or call {single}(key) for one key."
    )


def test_merge_of_a_non_mapping_is_a_type_error(any_scheduler: Type[Dataloader]) -> None:
    source = any_scheduler().with_(Users, "accounts")
    with pytest.raises(KeyTypeError) as info:
        source.merge([(1, "one")])  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError) and info.value.data_source is source
    assert str(info.value) == (
        "Users('accounts').merge() takes a mapping {key: value}, but got list [(1, 'one')]. "
        "Pass a dict (dict(pairs) for a list of (key, value) pairs)."
    )


@pytest.mark.parametrize("call", ["load", "load_all", "request", "merge"])
def test_result_key_for_returning_an_unhashable_names_the_hook(any_scheduler: Type[Dataloader], call: str) -> None:
    class ByTags(Users):
        def result_key_for(self, key: Any) -> Any:
            return [key]

    def job(dl: Dataloader) -> Any:
        source = dl.with_(ByTags)
        with pytest.raises(KeyTypeError) as info:
            {"load": lambda: source.load(1), "load_all": lambda: source.load_all([1]),
             "request": lambda: source.request(1), "merge": lambda: source.merge({1: "one"})}[call]()
        return info.value

    error = any_scheduler.with_dataloading(job)
    assert error.key == 1 and repr(error.data_source) == "ByTags()"
    assert str(error) == (
        f"ByTags().{call}() needs hashable keys, but ByTags.result_key_for(1) returned [1] (list is "
        "unhashable). Make ByTags.result_key_for() return a hashable value (a tuple instead of a list)."
    )


def test_result_key_for_raising_propagates_unchanged_and_the_job_goes_on(any_scheduler: Type[Dataloader]) -> None:
    class Picky(Users):
        def result_key_for(self, key: Any) -> Any:
            if key < 0:
                raise LookupError(f"no cache key for {key}")
            return key

    def job(dl: Dataloader) -> Any:
        with pytest.raises(LookupError, match="^no cache key for -1$"):
            dl.with_(Picky).load(-1)
        return dl.with_(Picky).load(2)

    assert any_scheduler.with_dataloading(job) == 2
    with pytest.raises(LookupError, match="^no cache key for -1$"):  # uncaught: out of run(), as any job's error
        any_scheduler.with_dataloading(lambda dl: dl.with_(Picky).load(-1))


def test_normalize_fetch_key_raising_propagates_and_leaves_the_other_keys_loadable(
    any_scheduler: Type[Dataloader],
) -> None:
    fetched: List[Any] = []

    class Strict(Users):
        def normalize_fetch_key(self, key: Any) -> Any:
            if key < 0:
                raise LookupError(f"cannot fetch {key}")
            return key

        def fetch(self, keys: List[Any]) -> List[Any]:
            fetched.extend(keys)
            return keys

    def job(dl: Dataloader) -> Any:
        with pytest.raises(LookupError, match="^cannot fetch -1$"):
            dl.with_(Strict).load_all([1, -1])
        return dl.with_(Strict).load_all([1, 2])

    assert any_scheduler.with_dataloading(job) == [1, 2]
    assert sorted(fetched) == [1, 2]  # -1 never reached fetch; 1 was fetched once


# -- what fetch returns ------------------------------------------------------------------------


async def _async_fetch(self: Any, keys: List[Any]) -> List[Any]:
    return keys


@pytest.mark.parametrize("fetch, returned", [
    (lambda self, keys: (key for key in keys), "generator <generator object"),
    (lambda self, keys: set(keys), "set {'a'} for keys ['a']. A set has no order."),
    (lambda self, keys: "a", "str 'a' for keys ['a']."),
    (lambda self, keys: None, "NoneType None for keys ['a']. Does fetch() end without a return statement?"),
    (_async_fetch, "fetch() is an async def: fiberloader calls it as a plain function. Make it a def "
                   "(under gevent, AsyncDataloader runs fetches concurrently)."),
], ids=["generator", "set", "str", "None", "async def"])
def test_fetch_returning_no_list_is_a_fetch_error_with_a_hint(
    any_scheduler: Type[Dataloader], fetch: Any, returned: str
) -> None:
    Bad = type("Bad", (Source,), {"fetch": fetch})

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FetchError) as info:
            dl.with_(Bad).load("a")
        return info.value

    error = any_scheduler.with_dataloading(job)
    assert repr(error.data_source) == "Bad()" and error.keys == ["a"]
    message = str(error)
    assert message.startswith("Bad().fetch() must return a list with one result per key, but it returned ")
    assert returned in message and message.endswith(NOT_A_LIST)
    if inspect.iscoroutine(error.result):  # closed, so it never warns "was never awaited"
        assert inspect.getcoroutinestate(error.result) == inspect.CORO_CLOSED


def test_fetch_returning_a_dict_without_some_keys_gives_none_for_them(any_scheduler: Type[Dataloader]) -> None:
    class Sparse(Source):
        def fetch(self, keys: List[Any]) -> Dict[Any, Any]:
            return {key: key.upper() for key in keys if key != "b"}

    assert any_scheduler.with_dataloading(lambda dl: dl.with_(Sparse).load_all(["a", "b"])) == ["A", None]


class Flaky(Source):
    """An Exception instance for negative keys: only those keys fail."""

    def fetch(self, keys: List[int]) -> List[Any]:
        return [ValueError(f"no record {key}") if key < 0 else key for key in keys]


def test_each_load_of_a_failed_key_raises_its_own_copy(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        caught = []
        for _ in range(2):
            with pytest.raises(ValueError) as info:
                dl.with_(Flaky).load(-1)
            caught.append(info.value)
        return caught, dl.with_(Flaky).load(1)

    (first, second), other = any_scheduler.with_dataloading(job)
    assert other == 1  # the batch's other key is unharmed
    assert first is not second and type(first) is type(second) is ValueError
    assert first.args == second.args == ("no record -1",)


def test_load_all_with_return_exceptions_puts_a_copy_of_each_error_in_place(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        with pytest.raises(ValueError, match="no record -1"):  # without it: the first failing key's error
            dl.with_(Flaky).load_all([1, -1, -2])
        return dl.with_(Flaky).load_all([1, -1, -1, 2], return_exceptions=True)

    one, failed, again, two = any_scheduler.with_dataloading(job)
    assert (one, two) == (1, 2)
    assert type(failed) is type(again) is ValueError and failed is not again
    assert failed.args == again.args == ("no record -1",)


def test_fetch_raising_fails_every_key_of_the_batch_each_with_its_own_copy(scheduler: Type[Dataloader]) -> None:
    class Down(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            raise ConnectionError("database is down")

    def load(dl: Dataloader, key: int) -> Any:
        try:
            return dl.with_(Down).load(key)
        except ConnectionError as error:
            return error

    errors = scheduler.with_dataloading(lambda dl: dl.map(lambda key: load(dl, key), [1, 2]))
    assert [type(error) for error in errors] == [ConnectionError, ConnectionError]
    assert errors[0] is not errors[1] and errors[0].args == ("database is down",)


# -- cycles ----------------------------------------------------------------------------------


class Chicken(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return self.dataloader.with_(Egg).load_all(keys)  # type: ignore[union-attr]


class Egg(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return self.dataloader.with_(Chicken).load_all(keys)  # type: ignore[union-attr]


def test_two_fetches_waiting_on_each_other_are_a_deadlock_naming_both(scheduler: Type[Dataloader]) -> None:
    with pytest.raises(DeadlockError) as info:
        scheduler.with_dataloading(lambda dl: dl.with_(Chicken).load(1))
    assert isinstance(info.value, RuntimeError)
    lines = str(info.value).split("\n")
    assert lines[0] == "Deadlock: no job or fetch can proceed."
    assert sorted(lines[1:3]) == [
        "  Chicken().fetch([1]) waits on Egg() keys [1] -- in flight in another fetch that is stuck too",
        "  Egg().fetch([1]) waits on Chicken() keys [1] -- in flight in another fetch that is stuck too",
    ]
    assert lines[3] == (
        "This usually means a fetch() loads a key that is in its own batch, or two fetches wait on "
        "each other's keys: load those keys in the job instead, or give the inner load a source of its own."
    )
    assert sorted(repr(source) for source, _ in info.value.waits) == ["Chicken()", "Egg()"]


def test_a_cycle_without_batching_names_both_sources_too() -> None:
    with pytest.raises(DeadlockError) as info:
        NullDataloader.with_dataloading(lambda dl: dl.with_(Chicken).load(1))
    assert str(info.value) == (
        "Deadlock: a fetch loads Chicken() key 1, which is being fetched (fetches under way: "
        "Chicken() keys [1], Egg() keys [1]): a circular dependency. Load that key in the job "
        "instead, or give the inner load a source of its own."
    )


def test_a_fetch_loading_its_own_key_is_a_deadlock_not_a_hang(scheduler: Type[Dataloader]) -> None:
    class Selfish(Users):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return self.load_all(keys)

    with pytest.raises(DeadlockError) as info:
        scheduler.with_dataloading(lambda dl: dl.with_(Selfish).load(1))
    assert "  Selfish().fetch([1]) waits on Selfish() keys [1] -- keys of its own batch: a circular dependency" in str(
        info.value
    )


# -- settings --------------------------------------------------------------------------------


def test_a_bad_environment_variable_names_the_variable(monkeypatch: Any) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "gevent")
    with pytest.raises(ConfigurationError) as info:
        dataloader_class()
    assert str(info.value) == (
        "$FIBERLOADER_DATALOADER is 'gevent', which names no fiberloader scheduler (it is not a "
        f"scheduler name). {SCHEDULER_NAMES}"
    )


def test_a_dotted_path_to_a_class_that_is_not_a_dataloader_says_so() -> None:
    with pytest.raises(ConfigurationError) as info:
        dataloader_class("collections:OrderedDict")
    assert str(info.value) == (
        "dataloader_class() argument is 'collections:OrderedDict', which names no fiberloader scheduler "
        f"(collections:OrderedDict is not a fiberloader.Dataloader subclass). {SCHEDULER_NAMES}"
    )


def test_a_bad_flask_config_fails_at_init_app_naming_the_setting() -> None:
    app = Flask(__name__)
    app.config["FIBERLOADER_DATALOADER"] = Dataloader()  # an instance, not the class
    with pytest.raises(ConfigurationError) as info:
        Fiberloader(app)
    assert str(info.value).startswith(
        "app.config['FIBERLOADER_DATALOADER'] is <Dataloader idle jobs=0 at 0x"
    )
    assert str(info.value).endswith(f"which names no fiberloader scheduler (it is a Dataloader). {SCHEDULER_NAMES}")


# -- errors inside a host library ------------------------------------------------------------


def test_no_error_has_an_attribute_that_graphql_core_duck_types(scheduler: Type[Dataloader]) -> None:
    errors: List[BaseException] = []

    class Short(Users):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return []

    def job(dl: Dataloader) -> None:
        for call in (lambda: dl.with_(Users).load([1]), lambda: dl.with_(Short).load(1),
                     lambda: dl.with_(Chicken).load(1), lambda: dl.with_(dict),  # type: ignore[type-var]
                     lambda: greenlet(lambda: dl.with_(Users).load(2)).switch(),
                     lambda: dl.with_(Users).merge([])):  # type: ignore[arg-type]
            try:
                call()
            except FiberloaderError as error:
                errors.append(error)

    scheduler.with_dataloading(job)
    assert [type(error).__name__ for error in errors] == [
        "KeyTypeError", "FetchError", "DeadlockError", "SourceTypeError", "NotRunningError", "KeyTypeError"
    ]
    for error in errors:
        for name in ("source", "positions", "nodes", "path", "locations", "message"):
            assert not hasattr(error, name), (type(error).__name__, name)
        located = located_error(error, None, ["field"])  # what graphql-core does with a resolver's error
        assert located.original_error is error and located.message == str(error)
