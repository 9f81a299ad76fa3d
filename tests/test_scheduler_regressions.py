"""Scheduler faults: issue 11's items 1-11 and those the differential fuzzer found.

One test per fault, each the smallest program that showed it, named after
the behaviour it pins down, run wherever it means something under every
scheduler (``scheduler``: Dataloader and AsyncDataloader; ``any_scheduler``:
NullDataloader too).  Each docstring says which item it is and what
happened before the fix.  A fault that was a hang runs under a watchdog
(``tests/_watchdog.py``) that fails the test with the stacks instead of
hanging the suite.  The fuzzer is ``tests/test_fuzz.py``; the tests at the
end are what it found beyond the issue (some on the code with the issue's
fixes, HEAD 47c9f05 and later).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Type

import pytest
from graphql import build_schema, execute, parse

from fiberloader import AsyncDataloader, ConfigurationError, Dataloader, Source, current_dataloader
from fiberloader.graphql import GRAPHQL_CORE_3_3, DataloaderExecutionContext

from ._watchdog import watchdog

CONTEXT = "executor_class" if GRAPHQL_CORE_3_3 else "execution_context_class"
DEADLINE = 5.0  # seconds; every program here takes milliseconds


class Recorder(Source):
    """Returns f"r:{key}"; records its fetch calls."""

    def __init__(self, name: str = "r") -> None:
        self.name = name
        self.calls: List[List[Any]] = []

    def fetch(self, keys: List[Any]) -> List[Any]:
        self.calls.append(list(keys))
        return [f"{self.name}:{key}" for key in keys]


def run_jobs(cls: Type[Dataloader], *jobs: Any, **options: Any) -> Dataloader:
    dataloader = cls(**options)
    for job in jobs:
        dataloader.append_job(lambda job=job: job(dataloader))
    with watchdog(DEADLINE):
        dataloader.run()
    return dataloader


def limits_from_the_minimum(cls: Type[Dataloader], highest: int = 8) -> List[int]:
    """Every fiber_limit the scheduler accepts at construction, up to ``highest``."""
    accepted = []
    for limit in range(1, highest + 1):
        try:
            cls(fiber_limit=limit)
        except ConfigurationError:
            continue
        accepted.append(limit)
    assert accepted, f"{cls.__name__} accepts no fiber_limit up to {highest}"
    return accepted


def outcome(fn: Any) -> Any:
    """``fn()``'s value, or its exception as ``(type name, first line)``, or "hung"."""
    try:
        with watchdog(DEADLINE):
            return fn()
    except AssertionError as error:
        if str(error).startswith("hung"):
            return "hung"
        raise
    except Exception as error:
        return (type(error).__name__, str(error).split("\n")[0][:100])


# -- 1 and 4: yield_() with nothing else pending ------------------------------------------


def test_a_job_that_yields_with_nothing_else_pending_resumes_and_finishes(any_scheduler: Type[Dataloader]) -> None:
    """Issue 11, item 1: graphql-ruby resumes such a fiber on the next pass of its loop."""
    log: List[str] = []

    def job(dl: Dataloader) -> None:
        log.append("start")
        dl.yield_()
        log.append("end")

    run_jobs(any_scheduler, job)
    assert log == ["start", "end"]


def test_an_exception_raised_after_yield_with_nothing_pending_propagates_out_of_run(
    any_scheduler: Type[Dataloader],
) -> None:
    """Item 4: run() returned normally (Dataloader) or raised DeadlockError (AsyncDataloader)."""

    def job(dl: Dataloader) -> None:
        dl.yield_()
        raise KeyError("the job's own error")

    with pytest.raises(KeyError, match="the job's own error"):
        run_jobs(any_scheduler, job)


# -- 2 and 11: fiber_limit ----------------------------------------------------------------

# graphql-ruby's spec/graphql/dataloader_spec.rb, "respects a configured
# fiber_limit": the FiberSchema data, its sources and its query.
DATA = {
    item["id"]: item
    for item in [
        {"id": "1", "name": "Wheat", "type": "Grain"},
        {"id": "2", "name": "Corn", "type": "Grain"},
        {"id": "3", "name": "Butter", "type": "Dairy"},
        {"id": "4", "name": "Baking Soda", "type": "LeaveningAgent"},
        {"id": "5", "name": "Cornbread", "type": "Recipe", "ingredient_ids": ["1", "2", "3", "4"]},
        {"id": "6", "name": "Grits", "type": "Recipe", "ingredient_ids": ["2", "3", "7"]},
        {"id": "7", "name": "Cheese", "type": "Dairy"},
    ]
}


class DataObject(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return [DATA.get(key) for key in keys]


class NestedDataObject(Source):
    """A source whose fetch loads from another source."""

    def fetch(self, keys: List[Any]) -> List[Any]:
        return self.dataloader.with_(DataObject).load_all(keys)  # type: ignore[union-attr]


class KeywordArgumentSource(Source):
    def __init__(self, *, column: str) -> None:
        self.column = column

    def fetch(self, keys: List[Any]) -> List[Any]:
        return [DATA.get(key) for key in keys]


class AuthorizedSource(Source):
    """graphql-ruby's Recipe.authorized? loads from it for every recipe."""

    def fetch(self, recipe_ids: List[Any]) -> List[Any]:
        return [True for _ in recipe_ids]


RECIPES_SDL = """
interface Ingredient { id: ID! name: String! }
type Grain implements Ingredient { id: ID! name: String! }
type Dairy implements Ingredient { id: ID! name: String! }
type LeaveningAgent implements Ingredient { id: ID! name: String! }
type Recipe { name: String! ingredients: [Ingredient]! }
type Query {
  recipes: [Recipe]!
  nestedIngredient(id: ID!): Ingredient
  keyIngredient(id: ID!): Ingredient
  commonIngredientsWithLoad(recipe1Id: ID!, recipe2Id: ID!): [Ingredient]!
}
"""

RECIPES_QUERY = """{
  recipes { ingredients { name } }
  nestedIngredient(id: 2) { name }
  keyIngredient(id: 4) { name }
  commonIngredientsWithLoad(recipe1Id: 5, recipe2Id: 6) { name }
}"""


def _dl() -> Dataloader:
    return current_dataloader()  # type: ignore[return-value]


def _authorized(recipe: Any) -> Any:
    assert _dl().with_(AuthorizedSource).load(recipe["id"])
    return recipe


def _common(_: Any, info: Any, recipe1Id: str, recipe2Id: str) -> Any:
    # `loads: Recipe` arguments: object_from_id, then Recipe.authorized?
    first = _authorized(_dl().with_(DataObject).load(recipe1Id))
    second = _authorized(_dl().with_(DataObject).load(recipe2Id))
    common = [i for i in first["ingredient_ids"] if i in second["ingredient_ids"]]
    return _dl().with_(DataObject).load_all(common)


def recipes_schema() -> Any:
    schema = build_schema(RECIPES_SDL)
    query = schema.query_type.fields  # type: ignore[union-attr]
    query["recipes"].resolve = lambda _, info: [DATA["5"], DATA["6"]]
    schema.get_type("Recipe").fields["ingredients"].resolve = lambda recipe, info: (  # type: ignore[union-attr]
        _dl().with_(DataObject).load_all(_authorized(recipe)["ingredient_ids"])
    )
    query["nestedIngredient"].resolve = lambda _, info, id: _dl().with_(NestedDataObject).load(id)
    query["keyIngredient"].resolve = lambda _, info, id: _dl().with_(KeywordArgumentSource, column="id").load(id)
    query["commonIngredientsWithLoad"].resolve = _common
    schema.get_type("Ingredient").resolve_type = lambda obj, info, t: obj["type"]  # type: ignore[union-attr]
    return schema


RECIPES_DATA = {
    "recipes": [
        {"ingredients": [{"name": "Wheat"}, {"name": "Corn"}, {"name": "Butter"}, {"name": "Baking Soda"}]},
        {"ingredients": [{"name": "Corn"}, {"name": "Butter"}, {"name": "Cheese"}]},
    ],
    "nestedIngredient": {"name": "Corn"},
    "keyIngredient": {"name": "Baking Soda"},
    "commonIngredientsWithLoad": [{"name": "Corn"}, {"name": "Butter"}],
}


def test_graphql_rubys_fiber_limit_spec_query_completes_at_every_limit(scheduler: Type[Dataloader]) -> None:
    """Item 2: at fiber_limit 4 a DeadlockError, at 5 and 6 the fetch phase spun forever.

    graphql-ruby runs this query at fiber_limit 4 (and 6) with no errors.
    """
    schema = recipes_schema()

    def query(limit: Optional[int]) -> Any:
        result = scheduler.with_dataloading(
            lambda dl: execute(schema, parse(RECIPES_QUERY), **{CONTEXT: DataloaderExecutionContext}),
            fiber_limit=limit,
        )
        return result.data, [error.message.split("\n")[0] for error in result.errors or []]

    assert query(None) == (RECIPES_DATA, [])
    got = {limit: outcome(lambda: query(limit)) for limit in limits_from_the_minimum(scheduler)}
    assert got == {limit: (RECIPES_DATA, []) for limit in got}


def test_graphql_rubys_fiber_limit_workload_as_plain_jobs_completes_at_every_limit(
    scheduler: Type[Dataloader],
) -> None:
    """Item 2, the same loads as jobs and map() without GraphQL."""

    def workload(dl: Dataloader) -> Any:
        def recipes() -> Any:
            def ingredients(recipe: Any) -> Any:
                _authorized(recipe)
                return [i["name"] for i in dl.with_(DataObject).load_all(recipe["ingredient_ids"])]

            return dl.map(ingredients, [DATA["5"], DATA["6"]])

        def common() -> Any:
            first, second = dl.map(lambda i: _authorized(dl.with_(DataObject).load(i)), ["5", "6"])
            ids = [i for i in first["ingredient_ids"] if i in second["ingredient_ids"]]
            return [i["name"] for i in dl.with_(DataObject).load_all(ids)]

        return dl.map(
            lambda field: field(),
            [
                recipes,
                lambda: dl.with_(NestedDataObject).load("2")["name"],
                lambda: dl.with_(KeywordArgumentSource, column="id").load("4")["name"],
                common,
            ],
        )

    want = [[["Wheat", "Corn", "Butter", "Baking Soda"], ["Corn", "Butter", "Cheese"]], "Corn", "Baking Soda",
            ["Corn", "Butter"]]
    assert scheduler.with_dataloading(workload) == want
    got = {
        limit: outcome(lambda: scheduler.with_dataloading(workload, fiber_limit=limit))
        for limit in limits_from_the_minimum(scheduler)
    }
    assert got == {limit: want for limit in got}


class Inner(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return [f"inner:{key}" for key in keys]


class Outer(Source):
    """A fetch that loads from another source."""

    def fetch(self, keys: List[Any]) -> List[Any]:
        return self.dataloader.with_(Inner).load_all(keys)  # type: ignore[union-attr]


def test_map_of_seven_items_loading_a_nested_source_completes_at_fiber_limit_8(scheduler: Type[Dataloader]) -> None:
    """Item 11: seven items raised DeadlockError for every item (six worked)."""
    result = outcome(lambda: scheduler.with_dataloading(lambda dl: dl.map(dl.with_(Outer).load, range(7)), fiber_limit=8))
    assert result == [f"inner:{key}" for key in range(7)]


def test_fiber_limit_never_changes_the_result_of_a_map_over_a_nested_source(scheduler: Type[Dataloader]) -> None:
    """Item 11, generally: every limit the constructor accepts completes what no limit completes.

    (Today: DeadlockError whenever the items fill all but one greenlet, e.g.
    fiber_limit=2 with one item, 3 with two, 8 with seven.)
    """
    failures = {}
    for limit in limits_from_the_minimum(scheduler):
        for items in range(1, 10):
            got = outcome(
                lambda: scheduler.with_dataloading(lambda dl: dl.map(dl.with_(Outer).load, range(items)), fiber_limit=limit)
            )
            if got != [f"inner:{key}" for key in range(items)]:
                failures[(limit, items)] = got
    assert failures == {}


class OneKeyPerFetch(Source):
    """Fetched one key at a time, each fetch loading from another source."""

    max_batch_size = 1

    def fetch(self, keys: List[Any]) -> List[Any]:
        return self.dataloader.with_(Inner).load_all(keys)  # type: ignore[union-attr]


def test_two_batches_of_a_source_whose_fetch_loads_another_source_complete_at_every_limit(
    scheduler: Type[Dataloader],
) -> None:
    """Item 2's spin, minimal (found by the fuzzer): at fiber_limit=2 the fetch phase
    spun forever, at 3 it raised DeadlockError; at 4 it worked."""
    got = {
        limit: outcome(lambda: scheduler.with_dataloading(lambda dl: dl.with_(OneKeyPerFetch).load_all([1, 2]),
                                                          fiber_limit=limit))
        for limit in limits_from_the_minimum(scheduler)
    }
    assert got == {limit: ["inner:1", "inner:2"] for limit in got}


# -- 3: run_isolated after clear_cache, one source for both queries (graphql-ruby #5046) ----


class Const(Source):
    def __init__(self, query: str) -> None:
        self.query = query

    @classmethod
    def batch_key_for(cls, query: str) -> Any:
        return "one instance"  # both queries share one source

    def fetch(self, keys: List[Any]) -> List[Any]:
        return [f"const:{key}" for key in keys]


def test_two_jobs_that_clear_the_cache_then_run_isolated_on_one_shared_source_both_get_the_value(
    any_scheduler: Type[Dataloader],
) -> None:
    """Item 3: AsyncDataloader raised DeadlockError; Dataloader returned both values."""
    out: Dict[str, Any] = {}

    def mutation(query: str) -> Any:
        def job(dl: Dataloader) -> None:
            dl.clear_cache()
            out[query] = dl.run_isolated(lambda: dl.with_(Const, query).load("k"))

        return job

    run_jobs(any_scheduler, mutation("a"), mutation("b"))
    assert out == {"a": "const:k", "b": "const:k"}


# -- 8: run_isolated beside sibling jobs and fetches (AsyncDataloader) -------------------


def test_two_jobs_each_running_run_isolated_both_get_their_values(any_scheduler: Type[Dataloader]) -> None:
    """Item 8 (found again by the fuzzer, minimal): under AsyncDataloader the second
    job's run_isolated set the first one's pending key aside, and the first
    isolated run raised DeadlockError waiting for it."""
    out: Dict[str, Any] = {}

    def loading(dl: Dataloader) -> None:
        out["loading"] = dl.run_isolated(lambda: dl.with_(Recorder).load(1))

    def empty(dl: Dataloader) -> None:
        out["empty"] = dl.run_isolated(lambda: "nothing")

    dataloader = run_jobs(any_scheduler, loading, empty)
    assert out == {"loading": "r:1", "empty": "nothing"}
    assert dataloader.with_(Recorder).calls == [[1]]


def test_a_failing_run_isolated_does_not_stop_a_siblings_fetch_under_eager_resume() -> None:
    """Item 8: the failing isolated run stopped the fetch of a key a sibling job
    had asked for meanwhile; the key was fetched a second time."""
    from gevent.event import Event

    fast_started, slow_started, isolated_done = Event(), Event(), Event()
    slow_calls: List[List[Any]] = []

    class Fast(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            fast_started.set()
            slow_started.wait(timeout=1)  # returns once the sibling's fetch is under way
            return [f"fast:{key}" for key in keys]

    class Slow(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            slow_calls.append(list(keys))
            slow_started.set()
            isolated_done.wait(timeout=1)  # still running when the isolated body fails
            return [f"slow:{key}" for key in keys]

    out: Dict[str, Any] = {}

    def sibling(dl: Dataloader) -> None:
        fast_started.wait(timeout=1)  # asks while the isolated run is fetching
        out["sibling"] = dl.with_(Slow).load(1)

    def isolating(dl: Dataloader) -> None:
        def body() -> None:
            dl.with_(Fast).load(2)
            raise KeyError("the isolated body fails")

        with pytest.raises(KeyError):
            dl.run_isolated(body)
        isolated_done.set()

    run_jobs(AsyncDataloader, sibling, isolating, eager_resume=True)
    assert out == {"sibling": "slow:1"}
    assert slow_calls == [[1]]


# -- 5, 6, 7: nested work inside fetch -------------------------------------------------------


def test_fetch_that_yields_after_a_nested_load_gets_its_values(any_scheduler: Type[Dataloader]) -> None:
    """Item 5: manual parallelism with one nested load: DeadlockError under both schedulers."""

    class Collecting(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            values = self.dataloader.with_(Recorder).load_all(keys)  # type: ignore[union-attr]
            self.dataloader.yield_()  # type: ignore[union-attr]
            return values

    def job(dl: Dataloader) -> Any:
        return dl.with_(Collecting).load(1)

    assert outcome(lambda: any_scheduler.with_dataloading(job)) == "r:1"


@pytest.mark.parametrize(
    "nested",
    ["run_isolated(lambda: None)", "run_isolated(load)", "map(load)"],
)
def test_run_isolated_or_map_inside_fetch_does_not_break_its_later_nested_loads(
    any_scheduler: Type[Dataloader], nested: str
) -> None:
    """Item 6: every nested load after it raised DeadlockError."""

    class Fanout(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            dl: Dataloader = self.dataloader  # type: ignore[assignment]
            first: Any = None
            if nested == "run_isolated(lambda: None)":
                dl.run_isolated(lambda: None)
            elif nested == "run_isolated(load)":
                first = dl.run_isolated(lambda: dl.with_(Recorder, "first").load_all(keys))
            else:
                first = dl.map(dl.with_(Recorder, "first").load, keys)
            later = dl.with_(Recorder, "later").load_all(keys)
            return [(a, b) for a, b in zip(first or [None] * len(keys), later)]

    result = outcome(lambda: any_scheduler.with_dataloading(lambda dl: dl.with_(Fanout).load_all([1, 2])))
    first = ["first:1", "first:2"] if nested != "run_isolated(lambda: None)" else [None, None]
    assert result == [(first[0], "later:1"), (first[1], "later:2")]


class SlowLeaf(Source):
    """A fetch that yields_() once: its keys stay in flight while it is parked."""

    def fetch(self, keys: List[Any]) -> List[Any]:
        self.dataloader.yield_()  # type: ignore[union-attr]
        return [f"leaf:{key}" for key in keys]


@pytest.mark.parametrize("how", ["map", "run_isolated"])
def test_map_inside_fetch_can_wait_for_a_key_in_flight_in_another_parked_fetch(
    any_scheduler: Type[Dataloader], how: str
) -> None:
    """Item 7: DeadlockError under AsyncDataloader, IndexError from map under Dataloader
    (run_isolated, which map runs inside a fetch, the same)."""

    class Mapper(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            dl: Dataloader = self.dataloader  # type: ignore[assignment]
            if how == "map":
                return dl.map(dl.with_(SlowLeaf).load, keys)
            return dl.run_isolated(lambda: dl.with_(SlowLeaf).load_all(keys))

    def job(dl: Dataloader) -> Any:
        leaf = dl.with_(SlowLeaf).request(1)  # fetched first, parks in yield_()
        mapped = dl.with_(Mapper).request(1)  # its map() needs SlowLeaf key 1
        return leaf.load(), mapped.load()

    assert outcome(lambda: any_scheduler.with_dataloading(job)) == ("leaf:1", "leaf:1")


# -- 9: keys cleared while a load waited --------------------------------------------------


def _clears_in_round_two(dl: Dataloader) -> str:
    """Parks in rounds one and two ahead of the other job, then clears every cache."""
    dl.with_(Recorder).load("x")
    dl.with_(Recorder).load("y")
    dl.clear_cache()
    return "cleared"


@pytest.mark.parametrize("how", ["load_all", "request_all"])
def test_loads_re_request_keys_that_another_job_cleared_while_they_waited(
    any_scheduler: Type[Dataloader], how: str
) -> None:
    """Item 9: InvariantError ("resumed a load ... that has no result"); load() asked again."""
    out: List[Any] = []

    def waiter(dl: Dataloader) -> None:
        source = dl.with_(Recorder)
        source.load(1)  # round one: key 1 is cached now
        if how == "load_all":
            out.append(source.load_all([1, 2]))  # 1 cached, 2 not: parks in round two
        else:
            out.append(source.request_all([1, 2]).load())

    run_jobs(any_scheduler, _clears_in_round_two, waiter)
    assert out == [["r:1", "r:2"]]


# -- 10: NullDataloader.run_isolated -----------------------------------------------------


def test_run_isolated_returns_after_the_jobs_its_function_appended_have_run(any_scheduler: Type[Dataloader]) -> None:
    """Item 10: NullDataloader's run_isolated returned before them: the order changed with the scheduler."""
    log: List[str] = []

    def job(dl: Dataloader) -> None:
        def body() -> str:
            dl.append_job(lambda: log.append("appended by the isolated function"))
            return "body"

        assert dl.run_isolated(body) == "body"
        log.append("after run_isolated")

    run_jobs(any_scheduler, job)
    assert log == ["appended by the isolated function", "after run_isolated"]


def test_an_exception_of_a_job_appended_inside_run_isolated_is_raised_by_run_isolated(
    any_scheduler: Type[Dataloader],
) -> None:
    """Item 10, as the fuzzer found it: under NullDataloader the appended job ran
    after run_isolated had returned, so its exception came out of run() and
    ended the whole run instead of the isolated part."""
    log: List[str] = []

    def job(dl: Dataloader) -> None:
        def body() -> None:
            dl.append_job(lambda: (_ for _ in ()).throw(KeyError("appended job fails")))

        with pytest.raises(KeyError, match="appended job fails"):
            dl.run_isolated(body)
        log.append("the job goes on")

    run_jobs(any_scheduler, job)
    assert log == ["the job goes on"]


# -- found by the fuzzer beyond issue 11 -----------------------------------------------------


def test_keys_whose_fetch_had_not_started_when_a_run_failed_load_in_the_next_run() -> None:
    """AsyncDataloader, eager_resume and fiber_limit=4: a job resumed early fails while
    the other sources' batches wait for a free greenlet.  Those keys stayed "in
    flight" for good: the next run() raised DeadlockError loading them."""
    dataloader = AsyncDataloader(fiber_limit=4, eager_resume=True)

    def failing() -> None:
        dataloader.with_(Recorder, "a").load(0)
        raise KeyError("fails after its first round")

    dataloader.append_job(failing)
    for name in ("b", "c"):
        dataloader.append_job(lambda name=name: dataloader.with_(Recorder, name).load(1))
    with pytest.raises(KeyError), watchdog(DEADLINE):
        dataloader.run()

    out: List[Any] = []
    dataloader.append_job(lambda: out.append([dataloader.with_(Recorder, name).load(1) for name in ("b", "c")]))
    assert outcome(dataloader.run) is None
    assert out == [["b:1", "c:1"]]


def test_jobs_still_queued_when_a_run_raised_do_not_run_in_the_next_run(any_scheduler: Type[Dataloader]) -> None:
    """README: "A job's exception propagates out of run().  The other jobs are then
    abandoned".  Under every scheduler the jobs not started yet stayed queued
    and ran in the next run(): here the next run() raised the second job's
    error (in the fuzzer also DeadlockError, when their pending keys were gone)."""
    log: List[str] = []
    dataloader = any_scheduler()

    def failing(name: str) -> Any:
        def job() -> None:
            log.append(name)
            raise KeyError(name)

        return job

    dataloader.append_job(failing("first"))
    dataloader.append_job(failing("second"))
    with pytest.raises(KeyError, match="first"), watchdog(DEADLINE):
        dataloader.run()
    dataloader.append_job(lambda: log.append("next run's job"))
    assert outcome(dataloader.run) is None
    assert log == ["first", "next run's job"]


def test_a_merge_wins_over_a_key_pending_in_another_run_isolated(any_scheduler: Type[Dataloader]) -> None:
    """AsyncDataloader (HEAD 47c9f05 and later; before the fixes it raised
    DeadlockError, item 8): two map items, each in its own run_isolated, one
    loading key 1, one merging it.  The merge came after the other isolated
    run had asked for key 1, yet key 1 was fetched after the merge and the
    fetched value replaced the merged one: the merge was lost (API: "A merged
    key that was waiting for a fetch is served from the merge and left out of
    the batch").  Under Dataloader the fetch comes first, then the merge."""
    log: List[Any] = []

    class Store(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            log.append(("fetch", list(keys)))
            return [f"fetched:{key}" for key in keys]

    def loading(dl: Dataloader) -> Any:
        return dl.run_isolated(lambda: dl.with_(Store).load(1))

    def merging(dl: Dataloader) -> None:
        log.append("merge")
        dl.run_isolated(lambda: dl.with_(Store).merge({1: "merged"}))

    dataloader = run_jobs(any_scheduler, lambda dl: dl.map(lambda item: item(dl), [loading, merging]))
    fetched_after_merge = "merge" in log and ("fetch", [1]) in log[log.index("merge"):]
    assert not fetched_after_merge, log
    assert dataloader.with_(Store).load(1) == "merged"  # the last write wins


def test_keys_of_a_sibling_run_isolated_load_in_the_next_run_after_a_failed_run(any_scheduler: Type[Dataloader]) -> None:
    """AsyncDataloader (before and after the fixes): a job fails while a sibling's
    run_isolated has key 0 in flight; the key stayed "in flight" for good, and
    the next run() raised DeadlockError ("in flight in another fetch that is
    stuck too") loading it."""
    dataloader = any_scheduler()
    dataloader.append_job(lambda: dataloader.run_isolated(lambda: dataloader.with_(Recorder).load(0)))
    dataloader.append_job(lambda: (_ for _ in ()).throw(KeyError("fails")))
    with pytest.raises(KeyError), watchdog(DEADLINE):
        dataloader.run()
    out: List[Any] = []
    dataloader.append_job(lambda: out.append(dataloader.with_(Recorder).load(0)))
    assert outcome(dataloader.run) is None
    assert out == ["r:0"]


# -- deadlocks that code catches: bounded, never a hang -------------------------------------


class RetriesForever(Source):
    """Loads its own batch (a circular dependency) and retries on any exception, forever."""

    def __init__(self) -> None:
        self.deadlocks = 0

    def fetch(self, keys: List[Any]) -> List[Any]:
        while True:
            try:
                return self.dataloader.with_(RetriesForever).load_all(keys)
            except Exception:  # a retry decorator that retries on anything
                self.deadlocks += 1


def test_a_fetch_that_retries_after_every_deadlock_error_makes_run_raise_it(scheduler: Type[Dataloader]) -> None:
    """Found in session 4: the fetch phase reset its count of deadlock rounds whenever it
    resumed the stuck fetch, so _MAX_DEADLOCK_ROUNDS never applied and a fetch that
    retried on any exception spun forever (the run hung)."""
    from fiberloader import DeadlockError

    dataloader = scheduler()
    dataloader.append_job(lambda: dataloader.with_(RetriesForever).load(1))
    with pytest.raises(DeadlockError, match="circular dependency"):
        with watchdog(DEADLINE):
            dataloader.run()
    assert dataloader.with_(RetriesForever).deadlocks == 3  # _MAX_DEADLOCK_ROUNDS, then run() raised


class Plain(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return list(keys)


def a_key_in_flight_that_no_fetch_finishes(dataloader: Dataloader) -> Plain:
    """White-box: the one state the job phase's deadlock check is there for.

    The phases rule it out (every key a job waits on is pending, in a fetch of
    this run or an enclosing one, or resolved); a bug that broke that would
    show as a job parked on a key nothing fetches.
    """
    source = dataloader.with_(Plain)
    source._fetching.add("ghost")
    return source


def test_a_job_waiting_on_a_key_nothing_fetches_gets_a_deadlock_error(scheduler: Type[Dataloader]) -> None:
    """The job-phase deadlock check (in no test before session 4): an error that says what
    the job waits on, raised out of run(), and no greenlet left."""
    from fiberloader import DeadlockError

    dataloader = scheduler()
    source = a_key_in_flight_that_no_fetch_finishes(dataloader)
    done: List[str] = []
    dataloader.append_job(lambda: done.append(dataloader.with_(Plain).load(1)))  # unaffected
    dataloader.append_job(lambda: source.load("ghost"))
    with pytest.raises(DeadlockError) as caught:
        with watchdog(DEADLINE):
            dataloader.run()
    assert "a job waits on Plain() keys ['ghost'] -- in flight in another fetch that is stuck too" in str(caught.value)
    assert caught.value.waits == [(source, ["ghost"])]
    assert done == [1]


def test_a_job_that_retries_after_every_deadlock_error_makes_run_raise_it(scheduler: Type[Dataloader]) -> None:
    """The job phase's side of _MAX_DEADLOCK_ROUNDS: three DeadlockErrors, then run() raises."""
    from fiberloader import DeadlockError

    dataloader = scheduler()
    source = a_key_in_flight_that_no_fetch_finishes(dataloader)
    caught: List[BaseException] = []

    def stubborn() -> None:
        while True:
            try:
                source.load("ghost")
            except DeadlockError as error:
                caught.append(error)

    dataloader.append_job(stubborn)
    with pytest.raises(DeadlockError):
        with watchdog(DEADLINE):
            dataloader.run()
    assert len(caught) == 3


def test_a_key_a_sibling_run_isolated_fetched_then_cleared_is_asked_for_again(any_scheduler: Type[Dataloader]) -> None:
    """Found by the fuzzer (seed 59, 5,000 programs; present since session 4).

    Under AsyncDataloader two jobs' ``run_isolated`` run side by side: the
    first fetches key 0, its job then clears the cache, and the second,
    parked on key 0 while the first's fetch was in flight, found it neither
    resolved, nor in flight, nor pending: its run raised DeadlockError.  It
    now asks for the key again.
    """
    results: Dict[str, Any] = {}

    def first(dl: Dataloader) -> None:
        def item(i: int) -> Any:
            if i == 0:
                return dl.run_isolated(lambda: dl.with_(Recorder).load(0))
            dl.clear_cache()
            return "cleared"

        results["first"] = dl.map(item, [0, 1])

    def second(dl: Dataloader) -> None:
        results["second"] = dl.run_isolated(lambda: dl.with_(Recorder).load(0))

    run_jobs(any_scheduler, first, second)
    assert results == {"first": ["r:0", "cleared"], "second": "r:0"}
