"""Source behaviour: batching, the cache, requests, merge, keys, errors."""

from __future__ import annotations

from typing import Any, Dict, List, Type

import pytest

from fiberloader import Dataloader, FetchError, Source

from .conftest import Recorder


def test_loads_from_sibling_jobs_share_one_fetch(scheduler: Type[Dataloader]) -> None:
    dataloader = scheduler()
    out: Dict[int, Any] = {}
    for key in [1, 2, 3, 2]:
        dataloader.append_job(lambda key=key: out.__setitem__(key, dataloader.with_(Recorder).load(key)))
    dataloader.run()
    assert out == {1: "r:1", 2: "r:2", 3: "r:3"}
    assert dataloader.with_(Recorder).calls == [[1, 2, 3]]


def test_keys_reach_fetch_deduplicated_in_first_request_order(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> List[Any]:
        return dl.with_(Recorder).load_all([3, 1, 3, 2, 1])

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(job(dataloader)))
    dataloader.run()
    assert box == [["r:3", "r:1", "r:3", "r:2", "r:1"]]
    assert dataloader.with_(Recorder).calls == [[3, 1, 2]]


def test_cached_keys_are_not_fetched_again(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        source = dl.with_(Recorder)
        first = source.load(1)
        again = [source.load(1), source.load_all([1, 1])]
        return first, again, source.calls

    first, again, calls = any_scheduler.with_dataloading(job)
    assert first == "r:1"
    assert again == ["r:1", ["r:1", "r:1"]]
    assert calls == [[1]]


def test_cache_persists_across_runs_of_one_dataloader(scheduler: Type[Dataloader]) -> None:
    dataloader = scheduler()
    dataloader.append_job(lambda: dataloader.with_(Recorder).load(1))
    dataloader.run()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(dataloader.with_(Recorder).load_all([1, 2])))
    dataloader.run()
    assert box == [["r:1", "r:2"]]
    assert dataloader.with_(Recorder).calls == [[1], [2]]


def test_cached_load_works_outside_a_run(any_scheduler: Type[Dataloader]) -> None:
    dataloader = any_scheduler()
    dataloader.with_(Recorder).merge({1: "primed"})
    assert dataloader.with_(Recorder).load(1) == "primed"
    assert dataloader.with_(Recorder).load_all([1]) == ["primed"]


def test_load_all_of_nothing_returns_empty_without_fetching(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        return dl.with_(Recorder).load_all([]), dl.with_(Recorder).calls

    assert any_scheduler.with_dataloading(job) == ([], [])


@pytest.mark.parametrize("keys", [[None], [False], [0], [None, False, 0, ""]])
def test_falsy_keys_including_none_are_ordinary_keys(any_scheduler: Type[Dataloader], keys: List[Any]) -> None:
    class Echo(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [("v", key) for key in keys]

    result = any_scheduler.with_dataloading(lambda dl: dl.with_(Echo).load_all(keys))
    assert result == [("v", key) for key in keys]


def test_load_all_accepts_any_iterable(any_scheduler: Type[Dataloader]) -> None:
    result = any_scheduler.with_dataloading(lambda dl: dl.with_(Recorder).load_all(k for k in (2, 1)))
    assert result == ["r:2", "r:1"]


def test_with_returns_one_instance_per_batch_parameters(any_scheduler: Type[Dataloader]) -> None:
    dataloader = any_scheduler()
    assert dataloader.with_(Recorder, "a") is dataloader.with_(Recorder, "a")
    assert dataloader.with_(Recorder, "a") is not dataloader.with_(Recorder, "b")
    assert dataloader.with_(Recorder, name="a") is dataloader.with_(Recorder, name="a")
    assert dataloader.with_(Recorder, "a").dataloader is dataloader


def test_with_constructs_once_and_ignores_later_equivalent_arguments() -> None:
    made: List[Any] = []

    class Table(Source):
        def __init__(self, table: Any) -> None:
            made.append(table)
            self.table = table

        @classmethod
        def batch_key_for(cls, table: Any) -> Any:
            return table.lower()

        def fetch(self, keys: List[Any]) -> List[Any]:
            return [(self.table, key) for key in keys]

    dataloader = Dataloader()
    first = dataloader.with_(Table, "Users")
    assert dataloader.with_(Table, "USERS") is first
    assert made == ["Users"]


def test_subclass_is_its_own_bucket() -> None:
    class Sub(Recorder):
        pass

    dataloader = Dataloader()
    assert dataloader.with_(Recorder) is not dataloader.with_(Sub)


def test_different_batch_parameters_fetch_separately(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        return dl.map(lambda args: dl.with_(Recorder, args[0]).load(args[1]), [("a", 1), ("b", 1), ("a", 2)])

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(job(dataloader)))
    dataloader.run()
    assert box == [["a:1", "b:1", "a:2"]]
    assert dataloader.with_(Recorder, "a").calls == [[1, 2]]
    assert dataloader.with_(Recorder, "b").calls == [[1]]


def test_request_registers_keys_before_the_job_waits(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        a = dl.with_(Recorder, "a").request(1)
        b = dl.with_(Recorder, "b").request_all([1, 2])
        c = dl.with_(Recorder, "a").request(2)
        return a.load(), b.load(), c.load()

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(job(dataloader)))
    dataloader.run()
    assert box == [("a:1", ["b:1", "b:2"], "a:2")]
    # One pause: both sources fetched once, each with all its keys.
    assert dataloader.with_(Recorder, "a").calls == [[1, 2]]
    assert dataloader.with_(Recorder, "b").calls == [[1, 2]]


def test_requested_keys_are_fetched_even_if_never_loaded(scheduler: Type[Dataloader]) -> None:
    dataloader = scheduler()
    dataloader.append_job(lambda: dataloader.with_(Recorder).request(7))
    dataloader.run()
    assert dataloader.with_(Recorder).calls == [[7]]
    assert dataloader.with_(Recorder).load(7) == "r:7"


def test_merge_primes_the_cache(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        source = dl.with_(Recorder)
        source.merge({1: "one", 2: "two"})
        return source.load_all([1, 2, 3]), source.calls

    assert any_scheduler.with_dataloading(job) == (["one", "two", "r:3"], [[3]])


def test_merge_replaces_cached_values_and_errors(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        source = dl.with_(Recorder)
        source.load(1)
        source.merge({1: "new", 2: ValueError("bad")})
        with pytest.raises(ValueError):
            source.load(2)
        source.merge({2: "fixed"})
        return source.load(1), source.load(2)

    assert any_scheduler.with_dataloading(job) == ("new", "fixed")


def test_merged_pending_key_is_served_from_merge_and_left_out_of_batch(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        source = dl.with_(Recorder)
        handle = source.request(1)
        source.request(2)
        source.merge({1: "merged"})
        return handle.load(), source.load(2)

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(job(dataloader)))
    dataloader.run()
    assert box == [("merged", "r:2")]
    assert dataloader.with_(Recorder).calls == [[2]]


def test_clear_cache_refetches(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        source = dl.with_(Recorder)
        source.load(1)
        source.clear_cache()
        source.load(1)
        dl.with_(Recorder, "other").load(1)
        dl.clear_cache()
        source.load(1)
        dl.with_(Recorder, "other").load(1)
        return source.calls, dl.with_(Recorder, "other").calls

    assert any_scheduler.with_dataloading(job) == ([[1], [1], [1]], [[1], [1]])


def test_clear_forgets_one_key(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        source = dl.with_(Recorder)
        source.load_all([1, 2])
        source.clear(1)
        source.load_all([1, 2])
        return source.calls

    assert scheduler.with_dataloading(job) == [[1, 2], [1]]


def test_key_cleared_while_its_job_waits_is_fetched_again(scheduler: Type[Dataloader]) -> None:
    # Job A waits on key 1; after the fetch, job B (resumed first) clears the
    # cache; A must not hang or fail: its key goes pending again.
    dataloader = scheduler()
    order: List[str] = []

    def job_b() -> None:
        dataloader.with_(Recorder).load(0)
        order.append("b clears")
        dataloader.clear_cache()

    def job_a() -> None:
        order.append(dataloader.with_(Recorder).load(1))

    dataloader.append_job(job_b)
    dataloader.append_job(job_a)
    dataloader.run()
    assert order == ["b clears", "r:1"]
    assert dataloader.with_(Recorder).calls == [[0, 1], [1]]


def test_result_key_for_merges_equivalent_keys(any_scheduler: Type[Dataloader]) -> None:
    class ById(Source):
        calls: List[Any] = []

        def result_key_for(self, key: Any) -> Any:
            return int(key)

        def fetch(self, keys: List[Any]) -> List[Any]:
            type(self).calls.append(list(keys))
            return [f"user {key}" for key in keys]

    result = any_scheduler.with_dataloading(lambda dl: dl.with_(ById).load_all(["1", 1, "2"]))
    # The first spelling of a key is what fetch sees.
    assert result == ["user 1", "user 1", "user 2"]
    assert ById.calls[0][0] == "1"


def test_normalize_fetch_key_decides_what_fetch_sees(scheduler: Type[Dataloader]) -> None:
    class Cast(Source):
        seen: List[Any] = []

        def result_key_for(self, key: Any) -> Any:
            return int(key)

        def normalize_fetch_key(self, key: Any) -> Any:
            return int(key)

        def fetch(self, keys: List[Any]) -> List[Any]:
            type(self).seen.append(list(keys))
            return [key * 10 for key in keys]

    result = scheduler.with_dataloading(lambda dl: dl.with_(Cast).load_all(["1", 1, "2", 2.0]))
    assert result == [10, 10, 20, 20]
    assert Cast.seen == [[1, 2]]


def test_result_key_for_can_keep_equal_objects_apart(any_scheduler: Type[Dataloader]) -> None:
    class ByIdentity(Source):
        def result_key_for(self, key: Any) -> Any:
            return id(key)

        def fetch(self, keys: List[Any]) -> List[Any]:
            return [len(keys)] * len(keys)

    a, b = [1], [1]
    result = any_scheduler.with_dataloading(lambda dl: dl.with_(ByIdentity).load_all([a, b, a]))
    expected = 2 if any_scheduler.__name__ != "NullDataloader" else 1
    assert result == [expected, expected, expected]


def test_max_batch_size_splits_batches(scheduler: Type[Dataloader]) -> None:
    class Small(Recorder):
        max_batch_size = 2

    dataloader = scheduler()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(dataloader.with_(Small).load_all([1, 2, 3, 4, 5])))
    dataloader.run()
    assert box == [["r:1", "r:2", "r:3", "r:4", "r:5"]]
    assert dataloader.with_(Small).calls == [[1, 2], [3, 4], [5]]
    assert dataloader.stats.fetches == 3


def test_fetch_may_return_a_mapping_keyed_by_key(any_scheduler: Type[Dataloader]) -> None:
    class Rows(Source):
        def fetch(self, keys: List[Any]) -> Dict[Any, Any]:
            return {key: key * 2 for key in keys if key != 3}

    result = any_scheduler.with_dataloading(lambda dl: dl.with_(Rows).load_all([1, 2, 3]))
    assert result == [2, 4, None]


def test_fetch_may_return_a_tuple(any_scheduler: Type[Dataloader]) -> None:
    class Tup(Source):
        def fetch(self, keys: List[Any]) -> Any:
            return tuple(keys)

    assert any_scheduler.with_dataloading(lambda dl: dl.with_(Tup).load_all([1, 2])) == [1, 2]


class Flaky(Source):
    """Fails key 2 with a per-key error; everything else is f"ok:{key}"."""

    def fetch(self, keys: List[Any]) -> List[Any]:
        return [LookupError(f"no {key}") if key == 2 else f"ok:{key}" for key in keys]


def test_exception_instance_fails_only_its_key(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        outcomes = dl.map(lambda key: _outcome(lambda: dl.with_(Flaky).load(key)), [1, 2, 3])
        return outcomes

    assert any_scheduler.with_dataloading(job) == ["ok:1", ("LookupError", "no 2"), "ok:3"]


def test_load_all_raises_the_first_failing_key_in_keys_order(any_scheduler: Type[Dataloader]) -> None:
    class TwoBad(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [KeyError(key) if key in (5, 7) else key for key in keys]

    def job(dl: Dataloader) -> Any:
        return _outcome(lambda: dl.with_(TwoBad).load_all([1, 7, 5]))

    assert any_scheduler.with_dataloading(job) == ("KeyError", 7)


def test_raising_fetch_fails_every_key_of_its_batch(scheduler: Type[Dataloader]) -> None:
    class Down(Source):
        calls = 0

        def fetch(self, keys: List[Any]) -> List[Any]:
            type(self).calls += 1
            raise ConnectionError("database down")

    def job(dl: Dataloader) -> Any:
        return dl.map(lambda key: _outcome(lambda: dl.with_(Down).load(key)), [1, 2])

    assert scheduler.with_dataloading(job) == [("ConnectionError", "database down")] * 2
    assert Down.calls == 1


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` (Python 3.11+); before 3.11 the same ``__notes__`` list, by hand.

    So the notes tests test the same behaviour on every Python: ``copy_error``
    copies ``__notes__`` whichever way it was made.
    """
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", ()), note]


def test_errors_stay_cached_and_each_raise_is_a_fresh_copy(any_scheduler: Type[Dataloader]) -> None:
    class Broken(Source):
        calls = 0

        def fetch(self, keys: List[Any]) -> List[Any]:
            type(self).calls += 1
            error = ValueError("broken", 42)
            error.detail = "kept"  # type: ignore[attr-defined]
            _add_note(error, "from fetch")
            return [error for _ in keys]

    def job(dl: Dataloader) -> Any:
        caught = []
        for _ in range(3):
            try:
                dl.with_(Broken).load(1)
            except ValueError as error:
                _add_note(error, "seen once")
                caught.append(error)
        return caught

    first, second, third = any_scheduler.with_dataloading(job)
    assert Broken.calls == 1
    assert first is not second and second is not third
    for error in (first, second, third):
        assert type(error) is ValueError
        assert error.args == ("broken", 42)
        assert error.detail == "kept"  # type: ignore[attr-defined]
        assert error.__notes__ == ["from fetch", "seen once"]  # the source's note kept, no pile-up


def test_wrong_length_result_fails_every_waiting_load_with_fetch_error(scheduler: Type[Dataloader]) -> None:
    class Short(Source):
        def __init__(self, table: str) -> None:
            self.table = table

        def fetch(self, keys: List[Any]) -> List[Any]:
            return keys[:-1]

    def job(dl: Dataloader) -> Any:
        return dl.map(lambda key: _outcome(lambda: dl.with_(Short, "t").load(key)), [1, 2, 3])

    outcomes = scheduler.with_dataloading(job)
    assert [name for name, _ in outcomes] == ["FetchError"] * 3
    message = outcomes[0][1]
    assert "Short('t').fetch()" in message and "2 results for 3 keys" in message
    assert "first key without a result is 3" in message


@pytest.mark.parametrize("bad", [None, "abc", 42, iter([1])])
def test_non_sequence_result_is_a_fetch_error(any_scheduler: Type[Dataloader], bad: Any) -> None:
    class Odd(Source):
        def fetch(self, keys: List[Any]) -> Any:
            return bad

    def job(dl: Dataloader) -> Any:
        with pytest.raises(FetchError) as info:
            dl.with_(Odd).load(1)
        return info.value

    error = any_scheduler.with_dataloading(job)
    assert "Odd().fetch() must return a list" in str(error)
    assert error.keys == [1] and error.result is bad
    assert isinstance(error, ValueError)


def test_fetch_keeps_results_of_keys_it_gave_before_an_error_of_another_batch(scheduler: Type[Dataloader]) -> None:
    class Half(Source):
        max_batch_size = 2

        def fetch(self, keys: List[Any]) -> List[Any]:
            if 3 in keys:
                raise RuntimeError("second batch fails")
            return keys

    def job(dl: Dataloader) -> Any:
        return [_outcome(lambda k=k: dl.with_(Half).load(k)) for k in dl.with_(Half).request_all([1, 2, 3]).keys]

    assert scheduler.with_dataloading(job) == [1, 2, ("RuntimeError", "second batch fails")]


def test_a_source_without_fetch_is_refused_at_with(any_scheduler: Type[Dataloader]) -> None:
    class Lazy(Source):
        pass

    def job(dl: Dataloader) -> Any:
        return _outcome(lambda: dl.with_(Lazy))  # before any key is asked for

    name, message = any_scheduler.with_dataloading(job)
    assert name == "SourceTypeError"
    assert "dataloader.with_(Lazy) needs a source that fetches, but Lazy does not define fetch()" in message


def test_source_repr_names_class_and_batch_parameters() -> None:
    dataloader = Dataloader()
    assert repr(dataloader.with_(Recorder, "users")) == "Recorder('users')"
    assert repr(dataloader.with_(Recorder, name="x")) == "Recorder(name='x')"


def test_pending_keys_shows_the_next_batch() -> None:
    dataloader = Dataloader()
    source = dataloader.with_(Recorder)
    source.request(2)
    source.request(1)
    source.request(2)
    assert source.pending_keys == [2, 1]


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except Exception as error:
        return (type(error).__name__, str(error) if not error.args or len(error.args) != 1 or isinstance(error.args[0], str) else error.args[0])


def test_cached_gives_a_value_at_hand_without_fetching(any_scheduler: Type[Dataloader]) -> None:
    class Numbers(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [ValueError(key) if key < 0 else key * 2 for key in keys]

    def job(dl: Dataloader) -> Any:
        source = dl.with_(Numbers)
        before = source.cached(1, "absent")
        source.load_all([1, -1], return_exceptions=True)
        return before, source.cached(1), source.cached(-1, "failed"), source.cached(2, "absent")

    assert any_scheduler.with_dataloading(job) == ("absent", 2, "failed", "absent")
    assert Numbers().cached(1, "detached") == "detached"
