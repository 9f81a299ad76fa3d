"""fiberloader.diagnostics.NPlusOneDetector: what it reports, under every scheduler.

The rule (module docstring of fiberloader.diagnostics): a source instance is
reported when one unit (a job, a fetch, one map or GraphQL item) made at
least ``threshold`` one-key fetches of it from the same call path -- a loop
in the code.  Load sites are checked against the line of this file that
carries the marker comment (``line_of``).
"""

from __future__ import annotations

import copy
import functools
import gc
import logging
import os
import weakref
from typing import Any, Dict, List, Type

import gevent
import pytest
from graphql import build_schema

import fiberloader
from fiberloader import Dataloader, FiberloaderError, Source, current_dataloader
from fiberloader.diagnostics import NPlusOne, NPlusOneDetector, NPlusOneError, raising_detector
from fiberloader.graphql import graphql_sync

pytestmark = pytest.mark.usefixtures("no_leaked_greenlets")

HERE = os.path.abspath(__file__)
with open(HERE, encoding="utf-8") as _file:
    _LINES = _file.read().splitlines()


def line_of(marker: str) -> int:
    """The line of this file that ends with the comment ``# <marker>``."""
    found = [number for number, text in enumerate(_LINES, 1) if text.rstrip().endswith("# " + marker)]
    assert len(found) == 1, (marker, found)
    return found[0]


class Users(Source[Any, Any]):
    calls: List[List[Any]] = []

    def fetch(self, keys: List[Any]) -> List[Any]:
        Users.calls.append(list(keys))
        return [{"id": key, "name": f"user {key}", "friend": key + 1} for key in keys]


class Tagged(Source[Any, Any]):
    """A source with a batch parameter: one instance per tag."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def fetch(self, keys: List[Any]) -> List[Any]:
        return [f"{self.tag}:{key}" for key in keys]


def run(cls: Type[Dataloader], job: Any, detector: NPlusOneDetector) -> Dataloader:
    dataloader = cls(extensions=[detector])
    dataloader.append_job(lambda: job(dataloader))
    dataloader.run()
    return dataloader


def only(detector: NPlusOneDetector) -> NPlusOne:
    assert len(detector.reports) == 1, detector.reports
    return detector.reports[0]


# -- loops ---------------------------------------------------------------------------


def test_a_loop_in_one_job_is_reported_with_its_line_and_keys(any_scheduler: Type[Dataloader], caplog: Any) -> None:
    detector = NPlusOneDetector()

    def job(dl: Dataloader) -> None:
        users = dl.with_(Users)
        for key in [3, 1, 4, 5, 9, 2]:
            users.load(key)  # loop load

    with caplog.at_level(logging.WARNING, logger="fiberloader.diagnostics"):
        run(any_scheduler, job, detector)
    report = only(detector)
    assert report.source == "Users()"
    assert report.fetches == 6
    assert report.keys == (3, 1, 4, 5, 9)  # the first five
    assert report.sites == {(HERE, line_of("loop load")): 6}
    assert report.scheduler == any_scheduler.__name__
    text = str(report)
    assert text.startswith("Users(): 6 fetches of 1 key in one run (keys 3, 1, 4, 5, 9, ...), loaded at ")
    assert f"test_diagnostics.py:{line_of('loop load')} (6 times)" in text
    assert "dataloader.map" in text and "load_all" in text
    assert [r.getMessage() for r in caplog.records if r.name == "fiberloader.diagnostics"] == [text]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "fiberloader.diagnostics")


def test_the_same_loads_batched_are_not_reported(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector()
    keys = [3, 1, 4, 5, 9, 2]

    def job(dl: Dataloader) -> None:
        dl.map(lambda key: dl.with_(Users).load(key), keys)
        dl.with_(Users).load_all([key + 100 for key in keys])
        dl.map(lambda key: [dl.with_(Users).load(key + 200)], keys)  # a one-load "loop" per item

    run(any_scheduler, job, detector)
    assert detector.reports == []


def test_a_helper_called_in_a_loop_reports_the_helpers_load(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector()

    def name_of(dl: Dataloader, key: int) -> str:
        name: str = dl.with_(Users).load(key)["name"]  # helper load
        return name

    def job(dl: Dataloader) -> None:
        assert [name_of(dl, key) for key in range(4)] == [f"user {key}" for key in range(4)]

    run(any_scheduler, job, detector)
    report = only(detector)
    assert (report.fetches, report.keys) == (4, (0, 1, 2, 3))
    assert report.sites == {(HERE, line_of("helper load")): 4}


def test_two_loops_of_one_source_make_one_report_with_both_sites(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector()

    def job(dl: Dataloader) -> None:
        users = dl.with_(Users)
        for key in range(3):
            users.load(key)  # first loop
        for key in range(10, 12):
            users.load(key)  # second loop
        users.load(50)  # a single load: not counted

    run(any_scheduler, job, detector)
    report = only(detector)
    assert report.fetches == 5
    assert report.keys == (0, 1, 2, 10, 11)
    assert list(report.sites.items()) == [((HERE, line_of("first loop")), 3), ((HERE, line_of("second loop")), 2)]


def test_a_fetch_that_loads_in_a_loop_is_reported(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector()

    class Teams(Source[Any, Any]):
        def fetch(self, keys: List[Any]) -> List[Any]:
            users = fiberloader.current_dataloader().with_(Users)
            return [[users.load(key * 10 + i) for i in range(3)] for key in keys]  # fetch load

    run(any_scheduler, lambda dl: dl.with_(Teams).load(1), detector)
    report = only(detector)
    assert (report.source, report.fetches, report.keys) == ("Users()", 3, (10, 11, 12))
    assert report.sites == {(HERE, line_of("fetch load")): 3}


# -- what is not reported ---------------------------------------------------------------


def test_a_dependency_chain_is_not_reported(any_scheduler: Type[Dataloader]) -> None:
    """Each key comes from the previous value: written as different lines, not batchable."""
    detector = NPlusOneDetector()

    def job(dl: Dataloader) -> None:
        users = dl.with_(Users)
        first = users.load(1)
        second = users.load(first["friend"])
        third = users.load(second["friend"])
        assert third["id"] == 3

    dataloader = run(any_scheduler, job, detector)
    assert dataloader.stats.fetches == 3  # three one-key fetches of one source in one job...
    assert detector.reports == []  # ...from three lines


def test_a_chain_walked_in_a_loop_is_reported(any_scheduler: Type[Dataloader]) -> None:
    """The documented limit of the rule: the same line, again and again, in one job."""
    detector = NPlusOneDetector()

    def job(dl: Dataloader) -> None:
        key = 1
        while key < 4:
            key = dl.with_(Users).load(key)["friend"]  # chain loop

    run(any_scheduler, job, detector)
    assert only(detector).sites == {(HERE, line_of("chain loop")): 3}


def test_fetches_of_several_keys_are_not_reported(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector()

    def job(dl: Dataloader) -> None:
        for key in range(4):
            dl.with_(Users).load_all([key, key + 100])

    dataloader = run(any_scheduler, job, detector)
    assert dataloader.stats.fetches >= 4
    assert detector.reports == []


def test_a_source_is_an_instance_one_per_batch_parameters(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector()

    def job(dl: Dataloader) -> None:
        for tag in ["a", "b", "c"]:
            dl.with_(Tagged, tag).load(1)  # one fetch per instance: nothing to report
        for key in range(2):
            dl.with_(Tagged, "x").load(key)
            dl.with_(Tagged, "y").load(key)

    run(any_scheduler, job, detector)
    assert sorted((report.source, report.fetches) for report in detector.reports) == [
        ("Tagged('x')", 2), ("Tagged('y')", 2),
    ]


def test_threshold(any_scheduler: Type[Dataloader]) -> None:
    def loop(count: int) -> Any:
        return lambda dl: [dl.with_(Users).load(key) for key in range(count)]

    detector = NPlusOneDetector(threshold=3)
    run(any_scheduler, loop(2), detector)
    assert detector.reports == []
    run(any_scheduler, loop(3), detector)
    assert only(detector).fetches == 3
    with pytest.raises(fiberloader.ConfigurationError, match="threshold=1"):
        NPlusOneDetector(threshold=1)


def test_a_fetch_counts_for_the_job_that_asked_first(any_scheduler: Type[Dataloader]) -> None:
    """Another job asks for key 1 first: the loop's fetch of it is that job's, and not counted."""
    detector = NPlusOneDetector()
    dataloader = any_scheduler(extensions=[detector])
    dataloader.append_job(lambda: dataloader.with_(Users).load(1))
    dataloader.append_job(lambda: [dataloader.with_(Users).load(key) for key in (1, 2, 3)])  # after another
    dataloader.run()
    assert dataloader.stats.fetches == 3
    report = only(detector)
    assert (report.fetches, report.keys) == (2, (2, 3))
    assert report.sites == {(HERE, line_of("after another")): 2}


def test_jobs_are_not_grouped_with_each_other() -> None:
    """Loads of different jobs, one round each (a fiber_limit makes them take turns): no report."""
    detector = NPlusOneDetector()
    dataloader = Dataloader(fiber_limit=2, extensions=[detector])
    for key in range(3):
        dataloader.append_job(functools.partial(dataloader.with_(Users).load, key))
    dataloader.run()
    assert dataloader.stats.fetches == 3
    assert detector.reports == []


# -- runs --------------------------------------------------------------------------------


def test_nested_runs_belong_to_the_outermost_run(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector()
    seen: List[int] = []

    def job(dl: Dataloader) -> None:
        for key in range(2):
            dl.run_isolated(functools.partial(dl.with_(Users).load, key))  # isolated load
        dl.run_isolated(lambda: [dl.with_(Users).load(key) for key in range(10, 13)])  # isolated loop
        seen.append(len(detector.reports))  # the nested runs ended, the outer one did not

    run(any_scheduler, job, detector)
    assert seen == [0]
    report = only(detector)  # one report for the run: the loop (each run_isolated is a job of its own)
    assert (report.fetches, report.sites) == (3, {(HERE, line_of("isolated loop")): 3})


def test_raise_makes_run_raise_naming_the_line(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector(raise_=True)
    dataloader = any_scheduler(extensions=[detector])
    dataloader.append_job(lambda: [dataloader.with_(Users).load(key) for key in range(3)])  # raising load
    with pytest.raises(NPlusOneError) as caught:
        dataloader.run()
    error = caught.value
    assert isinstance(error, FiberloaderError)
    assert f"test_diagnostics.py:{line_of('raising load')} (3 times)" in str(error)
    assert str(error).startswith(f"N+1 loads in one run of {any_scheduler.__name__}:\n  Users(): 3 fetches")
    assert error.reports == detector.reports and len(error.reports) == 1
    for name in ("source", "positions", "nodes", "path", "locations", "message"):  # graphql-core duck-types these
        assert not hasattr(error, name), name
    assert copy.copy(error).reports == error.reports  # how fiberloader copies errors it re-raises
    dataloader.append_job(lambda: dataloader.with_(Users).load(99))
    dataloader.run()  # the next run starts clean


def test_raise_does_not_mask_the_runs_own_error(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector(raise_=True)
    dataloader = any_scheduler(extensions=[detector])

    def job() -> None:
        [dataloader.with_(Users).load(key) for key in range(3)]
        raise ValueError("the job failed")

    dataloader.append_job(job)
    with pytest.raises(ValueError, match="the job failed"):
        dataloader.run()
    assert only(detector).fetches == 3  # still reported and logged


def test_reports_are_bounded() -> None:
    detector = NPlusOneDetector(max_reports=2)
    for count in (2, 3, 4):
        run(Dataloader, lambda dl, count=count: [dl.with_(Users).load(key) for key in range(count)], detector)
    assert [report.fetches for report in detector.reports] == [3, 4]


@pytest.mark.parametrize("failing", [False, True], ids=["succeeded", "failed"])
def test_no_state_is_kept_after_the_run(any_scheduler: Type[Dataloader], failing: bool) -> None:
    detector = NPlusOneDetector()
    dataloader = any_scheduler(extensions=[detector])

    def job() -> None:
        dl: Any = current_dataloader()
        dl.map(lambda key: dl.with_(Users).load(key), range(3))
        [dl.with_(Users).load(key) for key in range(10, 13)]
        if failing:
            raise ValueError("failed")

    dataloader.append_job(job)
    if failing:
        with pytest.raises(ValueError):
            dataloader.run()
    else:
        dataloader.run()
    assert len(detector.reports) == 1
    assert len(detector._runs) == 0
    ref = weakref.ref(dataloader)
    del dataloader, job
    gc.collect()
    assert ref() is None, gc.get_referrers(ref())


def test_one_detector_serves_dataloaders_running_at_once() -> None:
    detector = NPlusOneDetector()

    def request(count: int) -> None:
        dataloader = fiberloader.AsyncDataloader(extensions=[detector])  # type: ignore[operator]

        def job() -> None:
            for key in range(count):
                gevent.sleep(0)  # let the other request run in between
                dataloader.with_(Users).load(key)

        dataloader.append_job(job)
        dataloader.run()

    gevent.joinall([gevent.spawn(request, 3), gevent.spawn(request, 5)], raise_error=True)
    assert sorted(report.fetches for report in detector.reports) == [3, 5]
    assert len(detector._runs) == 0


# -- attaching it ------------------------------------------------------------------------


class StrictDataloader(Dataloader):
    extensions = (NPlusOneDetector(raise_=True),)


def test_attached_by_a_subclass() -> None:
    dataloader = StrictDataloader()
    dataloader.append_job(lambda: [dataloader.with_(Users).load(key) for key in range(2)])  # subclass load
    with pytest.raises(NPlusOneError, match=f"test_diagnostics.py:{line_of('subclass load')} "):
        dataloader.run()
    assert StrictDataloader.extensions[0].reports[-1].fetches == 2


def test_attached_by_the_setting(monkeypatch: Any, scheduler: Type[Dataloader]) -> None:
    monkeypatch.setenv("FIBERLOADER_EXTENSIONS", "fiberloader.diagnostics:raising_detector")
    dataloader = scheduler()
    assert [type(extension) for extension in dataloader.extensions] == [NPlusOneDetector]
    assert dataloader.extensions[0].raise_ is True
    assert raising_detector().raise_ is True
    dataloader.append_job(lambda: [dataloader.with_(Users).load(key) for key in range(2)])
    with pytest.raises(NPlusOneError):
        dataloader.run()


# -- GraphQL -----------------------------------------------------------------------------


def make_schema() -> Any:
    schema = build_schema("""
        type Query { loop(ids: [Int!]!): [User] batched(ids: [Int!]!): [User] posts: [Post!]! user(id: Int!): User }
        type Post { id: Int! author: User }
        type User { id: Int! name: String! friend: User }
    """)
    query = schema.query_type.fields  # type: ignore[union-attr]
    query["loop"].resolve = lambda _, info, ids: [current_dataloader().with_(Users).load(i) for i in ids]  # resolver loop
    query["batched"].resolve = lambda _, info, ids: current_dataloader().with_(Users).load_all(ids)
    query["posts"].resolve = lambda _, info: [{"id": i} for i in range(5)]
    query["user"].resolve = lambda _, info, id: current_dataloader().with_(Users).load(id)
    post: Any = schema.get_type("Post")
    post.fields["author"].resolve = lambda p, info: current_dataloader().with_(Users).load(p["id"])
    user: Any = schema.get_type("User")
    user.fields["friend"].resolve = lambda u, info: current_dataloader().with_(Users).load(u["friend"])
    return schema


SCHEMA = make_schema()


def execute(cls: Type[Dataloader], query: str, detector: NPlusOneDetector) -> Dict[str, Any]:
    dataloader = cls(extensions=[detector])
    result = dataloader.run_isolated(lambda: graphql_sync(SCHEMA, query))
    assert not result.errors, result.errors
    return result.data  # type: ignore[no-any-return]


def test_graphql_resolver_that_loads_in_a_loop(any_scheduler: Type[Dataloader]) -> None:
    detector = NPlusOneDetector()
    data = execute(any_scheduler, "{ loop(ids: [4, 2, 7]) { name } }", detector)
    assert data == {"loop": [{"name": "user 4"}, {"name": "user 2"}, {"name": "user 7"}]}
    report = only(detector)
    assert (report.fetches, report.keys) == (3, (4, 2, 7))
    assert report.sites == {(HERE, line_of("resolver loop")): 3}


@pytest.mark.parametrize("query", [
    "{ batched(ids: [4, 2, 7]) { name } }",
    "{ posts { id author { name } } }",  # a resolver per item
    "{ user(id: 1) { friend { friend { friend { name } } } } }",  # a chain: one level at a time
    "{ posts { author { friend { name } } } user(id: 40) { name } }",
], ids=["load_all", "items", "chain", "levels"])
def test_graphql_batched_or_chained_is_not_reported(any_scheduler: Type[Dataloader], query: str) -> None:
    detector = NPlusOneDetector()
    execute(any_scheduler, query, detector)
    assert detector.reports == []
