"""Misuse: every error fiberloader raises, its type and what its message says.

Each message must name the user's class and the call, the key involved, and
what to do about it.
"""

from __future__ import annotations

import threading
from typing import Any, List, Type

import pytest
from greenlet import greenlet

import fiberloader
from fiberloader import (
    ConfigurationError,
    Dataloader,
    FetchError,
    FiberloaderError,
    FiberloaderTypeError,
    KeyTypeError,
    NotRunningError,
    Source,
    SourceTypeError,
    dataloader_class,
)



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

    def job(dl: Dataloader) -> None:
        def other_thread() -> None:
            try:
                dl.with_(Users).load(1)
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()

    scheduler.with_dataloading(job)
    assert len(errors) == 1 and isinstance(errors[0], NotRunningError)


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
