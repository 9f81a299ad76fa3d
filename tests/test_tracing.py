"""fiberloader.tracing.PerfettoTrace: the trace of real runs, read back and checked.

Small programs under each scheduler (exact tracks, slices and flows), the
blog example's GraphQL request under sync and async (tracks named, fetches
matching the SQL it ran, flows from each park to the fetch of its keys,
GraphQL paths on jobs and waits), and the file: $FIBERLOADER_TRACE, a file
that grows run after run, close(), the bound on memory.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Type

import gevent
import pytest
from flask.testing import FlaskClient

import fiberloader
from fiberloader import Dataloader, Extension, NullDataloader, Source
from fiberloader import _extensions
from fiberloader.tracing import DROPPED_EVENT, PerfettoTrace, read_trace

from examples.blog.app import create_app
from examples.blog.seed import seed

pytestmark = pytest.mark.usefixtures("no_leaked_greenlets")

AsyncDataloader: Type[Dataloader] = fiberloader.AsyncDataloader  # type: ignore[attr-defined]

Event = Dict[str, Any]


# -- reading a trace back ------------------------------------------------------------


class Trace:
    """A trace file's events, with the questions the tests ask of them."""

    def __init__(self, path: Path) -> None:
        self.events: List[Event] = read_trace(path)
        self.names = {
            (e["pid"], e["tid"]): e["args"]["name"]
            for e in self.events if e["ph"] == "M" and e["name"] == "thread_name"
        }
        self.slices = sorted((e for e in self.events if e["ph"] == "X"), key=lambda e: (e["ts"], -e["dur"]))

    def of(self, cat: str) -> List[Event]:
        return [e for e in self.slices if e["cat"] == cat]

    def track(self, event: Event) -> str:
        return self.names[(event["pid"], event["tid"])]

    def enclosing(self, event: Event, cat: str) -> Optional[Event]:
        """The innermost slice of ``cat`` on the event's track around its timestamp."""
        found = None
        for candidate in self.of(cat):
            if (candidate["pid"], candidate["tid"]) == (event["pid"], event["tid"]) and candidate is not event \
                    and candidate["ts"] <= event["ts"] <= candidate["ts"] + candidate["dur"]:
                found = candidate
        return found

    def flows(self) -> List[Tuple[Event, Event]]:
        """Each flow's (wait it starts on, fetch it ends on); every flow has both ends, bound to slices."""
        ends: Dict[Any, Dict[str, Event]] = {}
        for event in self.events:
            if event["ph"] in ("s", "f"):
                assert (event["cat"], event["name"]) == ("flow", "fetched by")
                ends.setdefault(event["id"], {})[event["ph"]] = event
        pairs = []
        for flow_id, pair in ends.items():
            assert set(pair) == {"s", "f"}, f"flow {flow_id} has one end: {pair}"
            assert pair["f"]["bp"] == "e"
            wait, fetch = self.enclosing(pair["s"], "wait"), self.enclosing(pair["f"], "fetch")
            assert wait is not None and fetch is not None, pair
            pairs.append((wait, fetch))
        return pairs

    def summary(self) -> Tuple[Dict[str, List[Tuple[str, str, Any]]], List[Tuple[Any, Any]]]:
        """Per track, its slices in order (category, name, keys); the flows, as (wait, fetch)."""
        tracks: Dict[str, List[Tuple[str, str, Any]]] = {}
        for event in self.slices:
            tracks.setdefault(self.track(event), []).append((event["cat"], event["name"], event["args"].get("keys")))
        flows = sorted(
            ((self.track(wait), wait["name"], wait["args"]["keys"]), (self.track(fetch), fetch["name"], fetch["args"]["keys"]))
            for wait, fetch in self.flows()
        )
        return tracks, flows

    def check_well_formed(self) -> None:
        """Every track with events is named; slices on a track nest; a wait is inside a job or a fetch."""
        tracks = {(e["pid"], e["tid"]) for e in self.events if e["ph"] != "M"}
        assert tracks and tracks <= set(self.names), tracks - set(self.names)
        assert len(set(self.names.values())) == len(self.names)  # one name per track
        for event in self.events:
            assert isinstance(event["ts"], float) if "ts" in event else event["ph"] == "M"
        by_track: Dict[Any, List[Event]] = {}
        for event in self.slices:
            by_track.setdefault((event["pid"], event["tid"]), []).append(event)
        for events in by_track.values():
            open_ends: List[float] = []
            for event in events:
                while open_ends and open_ends[-1] <= event["ts"]:
                    open_ends.pop()
                end = event["ts"] + event["dur"]
                assert not open_ends or end <= open_ends[-1] + 1e-3, f"{event} overlaps its parent"
                open_ends.append(end)
        for wait in self.of("wait"):
            parent = self.enclosing(wait, "job") or self.enclosing(wait, "fetch")
            assert parent is not None, wait


# -- small programs, exact traces --------------------------------------------------------


class Users(Source):
    def fetch(self, keys: List[int]) -> List[str]:
        return [f"u{key}" for key in keys]


class Posts(Source):
    """A fetch that loads from another source, one key after another: it parks twice."""

    def fetch(self, keys: List[int]) -> List[Any]:
        users = self.dataloader.with_(Users)
        return [(key, users.load(key * 10)) for key in keys]


class Threaded(Source):
    blocking = True  # AsyncDataloader: fetched in a pool thread

    def fetch(self, keys: List[int]) -> List[int]:
        return [key * 3 for key in keys]


def program(dl: Dataloader) -> Any:
    return dl.map(lambda key: (dl.with_(Users).load(key), dl.with_(Posts).load(key)), [1, 2])


def traced(cls: Type[Dataloader], trace: PerfettoTrace) -> Type[Dataloader]:
    """``cls`` with the trace attached (AsyncDataloader takes no ``extensions=`` argument)."""
    return type(f"Traced{cls.__name__}", (cls,), {"extensions": (trace,)})


def run_program(cls: Type[Dataloader], path: Path, fn: Any = program) -> Trace:
    trace = PerfettoTrace(path)
    result = traced(cls, trace).with_dataloading(fn)
    if fn is program:
        assert result == [("u1", (1, "u10")), ("u2", (2, "u20"))]
    trace.close()
    loaded = Trace(path)
    loaded.check_well_formed()
    return loaded


def wait(source: str, key: int) -> Tuple[str, str, List[str]]:
    return ("wait", f"waiting on {source}()", [str(key)])


def fetch(source: str, *keys: int) -> Tuple[str, str, List[str]]:
    return ("fetch", f"fetch {source}()", [str(key) for key in keys])


JOB = ("job", "job", None)
LOOP_WAIT = ("wait", "waiting for loop items", None)


@pytest.mark.parametrize("cls", [Dataloader, AsyncDataloader], ids=lambda cls: cls.__name__)
def test_a_batching_run_has_a_track_per_greenlet_and_a_flow_per_park(cls: Type[Dataloader], tmp_path: Path) -> None:
    trace = run_program(cls, tmp_path / "trace.json")
    tracks, flows = trace.summary()
    assert tracks == {
        "run hub": [("run", "run", None)],
        # the map's owner runs item 1, parks; worker 2 takes item 2; the owner waits for it at the end
        "worker 1": [JOB, wait("Users", 1), wait("Posts", 1), LOOP_WAIT],
        "worker 2": [JOB, wait("Users", 2), wait("Posts", 2)],
        # the fetches: Posts' fetch parks on each of its own loads
        "worker 3": [fetch("Users", 1, 2), fetch("Posts", 1, 2), wait("Users", 10), wait("Users", 20)],
        "worker 4": [fetch("Users", 10), fetch("Users", 20)],
    }
    assert flows == [
        (("worker 1", *wait("Posts", 1)[1:]), ("worker 3", *fetch("Posts", 1, 2)[1:])),
        (("worker 1", *wait("Users", 1)[1:]), ("worker 3", *fetch("Users", 1, 2)[1:])),
        (("worker 2", *wait("Posts", 2)[1:]), ("worker 3", *fetch("Posts", 1, 2)[1:])),
        (("worker 2", *wait("Users", 2)[1:]), ("worker 3", *fetch("Users", 1, 2)[1:])),
        (("worker 3", *wait("Users", 10)[1:]), ("worker 4", *fetch("Users", 10)[1:])),
        (("worker 3", *wait("Users", 20)[1:]), ("worker 4", *fetch("Users", 20)[1:])),
    ]
    (run,) = trace.of("run")
    assert run["args"] == {"dataloader": f"Traced{cls.__name__}", "fetches": 4, "loads": 6, "cache_hits": 0}
    users = trace.of("fetch")[0]
    assert users["args"] == {"source": "Users()", "source_class": "Users", "key_count": 2, "keys": ["1", "2"]}
    for wait_slice, fetch_slice in trace.flows():
        assert wait_slice["ts"] < fetch_slice["ts"]  # parked, then fetched, then resumed
        assert fetch_slice["ts"] + fetch_slice["dur"] <= wait_slice["ts"] + wait_slice["dur"]


def test_null_dataloader_fetches_inline_in_the_job(tmp_path: Path) -> None:
    trace = run_program(NullDataloader, tmp_path / "trace.json")
    tracks, flows = trace.summary()
    assert tracks == {"run hub": [
        ("run", "run", None), JOB,
        fetch("Users", 1), fetch("Posts", 1), fetch("Users", 10),  # the nested one inside Posts' fetch
        fetch("Users", 2), fetch("Posts", 2), fetch("Users", 20),
    ]}
    assert flows == []  # nothing parks
    outer, inner = trace.of("fetch")[1:3]
    assert trace.enclosing(inner, "fetch") is outer
    assert trace.of("run")[0]["args"]["fetches"] == 6


def test_a_blocking_fetch_under_async_is_on_its_pool_thread_track(tmp_path: Path) -> None:
    trace = run_program(
        AsyncDataloader, tmp_path / "trace.json", lambda dl: dl.map(dl.with_(Threaded).load, [1, 2])
    )
    tracks, flows = trace.summary()
    assert tracks["worker 1"] == [JOB, wait("Threaded", 1), LOOP_WAIT]
    assert tracks["worker 2"] == [JOB, wait("Threaded", 2)]
    (pool,) = [name for name in tracks if name.startswith("pool thread")]
    assert tracks[pool] == [fetch("Threaded", 1, 2)]
    assert flows == [
        (("worker 1", *wait("Threaded", 1)[1:]), (pool, *fetch("Threaded", 1, 2)[1:])),
        (("worker 2", *wait("Threaded", 2)[1:]), (pool, *fetch("Threaded", 1, 2)[1:])),
    ]


def test_a_job_that_waits_on_keys_in_flight_gets_a_flow_to_the_fetch_going_on(tmp_path: Path) -> None:
    class Slow(Source):
        def fetch(self, keys: List[int]) -> List[str]:
            gevent.sleep(0.005)
            return [f"s{key}" for key in keys]

    class Quick(Source):  # in I/O too: the Slow fetch starts while it waits
        def fetch(self, keys: List[int]) -> List[str]:
            gevent.sleep(0.0001)
            return [f"u{key}" for key in keys]

    def fast_then_slow(dl: Dataloader) -> Any:
        return dl.map(lambda job: job(), [
            lambda: (dl.with_(Quick).load(1), dl.with_(Slow).load(1)),  # resumed early: Slow(1) is in flight
            lambda: dl.with_(Slow).load(1),
        ])

    trace = PerfettoTrace(tmp_path / "trace.json")
    assert traced(AsyncDataloader, trace).with_dataloading(fast_then_slow, eager_resume=True) == [("u1", "s1"), "s1"]
    trace.close()
    loaded = Trace(tmp_path / "trace.json")
    loaded.check_well_formed()
    tracks, flows = loaded.summary()
    assert tracks["worker 1"] == [JOB, wait("Quick", 1), wait("Slow", 1)]
    assert tracks["worker 2"] == [JOB, wait("Slow", 1)]
    assert tracks["worker 3"] == [fetch("Quick", 1)] and tracks["worker 4"] == [fetch("Slow", 1)]
    assert flows == [
        (("worker 1", *wait("Quick", 1)[1:]), ("worker 3", *fetch("Quick", 1)[1:])),
        (("worker 1", *wait("Slow", 1)[1:]), ("worker 4", *fetch("Slow", 1)[1:])),
        (("worker 2", *wait("Slow", 1)[1:]), ("worker 4", *fetch("Slow", 1)[1:])),
    ]
    late = [w for w, f in loaded.flows() if loaded.track(w) == "worker 1" and w["name"] == "waiting on Slow()"][0]
    assert late["ts"] > loaded.of("fetch")[-1]["ts"]  # it parked after that fetch had begun


def test_keys_are_shown_without_running_the_applications_repr(tmp_path: Path) -> None:
    called: List[str] = []

    class Record:
        def __repr__(self) -> str:  # an ORM instance's repr may load expired attributes: SQL
            called.append("repr")
            return "Record()"

    record = Record()

    class Records(Source):
        def __init__(self, table: str, limit: int) -> None:
            self.table = table

        def fetch(self, keys: List[Any]) -> List[str]:
            return ["found" for _ in keys]

    trace = PerfettoTrace(tmp_path / "trace.json")
    result = Dataloader.with_dataloading(
        lambda dl: dl.with_(Records, "records", 3).load_all([record, 7, "seven", (1, record)]), extensions=[trace]
    )
    assert result == ["found"] * 4
    trace.close()
    loaded = Trace(tmp_path / "trace.json")
    (fetched,) = loaded.of("fetch")
    assert fetched["args"]["keys"] == ["<Record>", "7", "'seven'", "(1, <Record>)"]
    assert fetched["args"]["batch_parameters"] == "('records', 3)"
    (waited,) = [w for w in loaded.of("wait") if "keys" in w["args"]]
    assert waited["args"]["keys"] == fetched["args"]["keys"] and waited["args"]["key_count"] == 4
    assert called == []


def test_a_fetch_that_fails_and_a_job_that_fails_say_so(tmp_path: Path) -> None:
    class Broken(Source):
        def __init__(self, database: str) -> None:
            self.database = database

        def fetch(self, keys: List[int]) -> List[int]:
            raise LookupError("no such thing")

    trace = PerfettoTrace(tmp_path / "trace.json")
    with pytest.raises(LookupError):
        Dataloader.with_dataloading(lambda dl: dl.with_(Broken, "db").load(1), extensions=[trace])
    trace.close()
    loaded = Trace(tmp_path / "trace.json")
    (failed,) = loaded.of("fetch")
    assert failed["args"]["error"] == "LookupError('no such thing')"
    assert failed["args"]["batch_parameters"] == "('db',)"
    (job,) = loaded.of("job")
    assert "LookupError" in job["args"]["error"]
    assert "LookupError" in loaded.of("run")[0]["args"]["error"]


def test_dataloaders_running_at_once_share_one_trace(tmp_path: Path) -> None:
    trace = PerfettoTrace(tmp_path / "trace.json")
    cls = traced(AsyncDataloader, trace)
    runs = [gevent.spawn(cls.with_dataloading, program) for _ in range(2)]
    gevent.joinall(runs, raise_error=True)
    trace.close()
    loaded = Trace(tmp_path / "trace.json")
    loaded.check_well_formed()
    hubs = {loaded.track(run) for run in loaded.of("run")}
    assert len(hubs) == 2 and all(name.startswith("run hub") for name in hubs)
    assert len(loaded.of("fetch")) == 8 and len(loaded.of("job")) == 4
    flows = loaded.flows()
    assert len(flows) == 12
    for wait_slice, fetch_slice in flows:  # never from one run's job to the other run's fetch
        # the workers of the second run are named "worker N (run 2)"
        assert loaded.track(wait_slice).partition(" (")[2] == loaded.track(fetch_slice).partition(" (")[2]


# -- the blog example's GraphQL request ----------------------------------------------------

USERS, POSTS, COMMENTS_PER_POST, TAGS, FIRST = 8, 6, 2, 4, 4

QUERY = """query Posts($first: Int) {
  posts(first: $first) { id title author { id name } tags { name } comments { id body author { id name } } }
}"""

# each source of the request, and the field whose resolver loads from it
SOURCES = {
    "RecordSource(session, User, 'id')": "author",
    "AssociationSource(session, Post, 'tags')": "tags",
    "AssociationSource(session, Post, 'comments')": "comments",
}


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("blog") / "blog.db"
    seed(path, users=USERS, posts=POSTS, comments_per_post=COMMENTS_PER_POST, tags=TAGS)
    return str(path)


def expected_fetches(database: str) -> List[Tuple[str, Set[str]]]:
    """(source, keys) of each fetch the request must make, from the database itself."""
    db = sqlite3.connect(database)
    try:
        posts = db.execute("SELECT id, author_id FROM posts ORDER BY id LIMIT ?", (FIRST,)).fetchall()
        commenters = {row[0] for row in db.execute(
            f"SELECT author_id FROM comments WHERE post_id IN ({', '.join('?' * len(posts))})", [p[0] for p in posts])}
    finally:
        db.close()
    authors = {str(author) for _, author in posts}
    fetches = [("RecordSource(session, User, 'id')", authors)]
    later = {str(user) for user in commenters} - authors
    if later:
        fetches.append(("RecordSource(session, User, 'id')", later))
    return fetches


class KeepDataloaders(Extension):
    def __init__(self) -> None:
        self.dataloaders: List[Dataloader] = []

    def run_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        self.dataloaders.append(dataloader)


@pytest.fixture
def blog(database: str) -> Iterator[Any]:
    apps = []

    def make(scheduler: str) -> FlaskClient:
        app = create_app(database, dataloader_class=scheduler)
        app.testing = True
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["blog"].engine.dispose()


@pytest.mark.parametrize("scheduler", ["sync", "async"])
def test_the_blog_graphql_request_traced(blog: Any, database: str, tmp_path: Path, scheduler: str) -> None:
    client = blog(scheduler)
    path = tmp_path / "trace.json"
    trace, kept = PerfettoTrace(path), KeepDataloaders()
    client.application.config["FIBERLOADER_EXTENSIONS"] = [trace, kept]
    response = client.post("/graphql", json={"query": QUERY, "variables": {"first": FIRST}})
    assert response.status_code == 200 and "errors" not in response.get_json()
    loaded = Trace(path)  # written when the request's run ended: no close() needed to read it
    loaded.check_well_formed()

    # tracks: the request's greenlet, then the workers, named in start order
    names = [loaded.names[track] for track in sorted(loaded.names)]
    assert names[0] == "run hub" and names[1:] == [f"worker {n}" for n in range(1, len(names))]

    # fetches: one per SQL statement but the root list's, with the keys the database says
    fetches = loaded.of("fetch")
    (dataloader,) = kept.dataloaders
    assert len(fetches) == dataloader.stats.fetches == int(response.headers["X-SQL-Count"]) - 1
    assert loaded.of("run")[0]["args"]["fetches"] == len(fetches)
    for event in fetches:
        args = event["args"]
        assert args["source"] in SOURCES and event["name"] == f"fetch {args['source']}"
        assert args["source_class"] == args["source"].partition("(")[0]
        assert args["batch_parameters"].startswith("(<Session>, ")
        assert args["key_count"] == len(args["keys"]) and "error" not in args
    by_source = [(e["args"]["source"], set(e["args"]["keys"])) for e in fetches]
    users = [(source, keys) for source, keys in by_source if source.startswith("RecordSource")]
    assert users == expected_fetches(database)
    for source in list(SOURCES)[1:]:  # the tags and the comments of the FIRST posts, in one fetch each
        (keys,) = [keys for name, keys in by_source if name == source]
        assert len(keys) == FIRST

    # waits: each on the source its field loads from, at that field's path
    waits = [w for w in loaded.of("wait") if "source" in w["args"]]
    assert waits
    for wait_slice in waits:
        path_parts = wait_slice["args"]["graphql.path"].split(".")
        assert path_parts[0] == "posts" and path_parts[-1] == SOURCES[wait_slice["args"]["source"]]

    # flows: from every park on keys to the fetch that got those keys
    flows = loaded.flows()
    assert {id(wait_slice) for wait_slice, _ in flows} == {id(w) for w in waits}
    assert {id(fetch_slice) for _, fetch_slice in flows} == {id(f) for f in fetches}
    for wait_slice, fetch_slice in flows:
        assert loaded.enclosing(wait_slice, "job") is not None  # a job that parked
        assert wait_slice["args"]["source"] == fetch_slice["args"]["source"]
        assert set(wait_slice["args"]["keys"]) <= set(fetch_slice["args"]["keys"])

    # jobs: each names the GraphQL fields it resolved; the name shows the first
    jobs = loaded.of("job")
    assert len(jobs) >= FIRST * 3
    for job in jobs:
        paths = job["args"]["graphql.paths"]
        assert paths and all(path.split(".")[0] == "posts" for path in paths), job
        assert job["name"] == f"job {paths[0]}"
    for wait_slice in waits:  # a job's paths include those of its parks
        assert wait_slice["args"]["graphql.path"] in loaded.enclosing(wait_slice, "job")["args"]["graphql.paths"]
    helpers = {job["args"]["graphql.paths"][0] for job in jobs}
    assert {f"posts.{n}" for n in range(1, FIRST)} <= helpers  # the list's items, taken over one by one
    trace.close()


def test_the_blog_graphql_request_under_null_has_paths_on_inline_fetches(blog: Any, tmp_path: Path) -> None:
    client = blog("null")
    path = tmp_path / "trace.json"
    trace = PerfettoTrace(path)
    client.application.config["FIBERLOADER_EXTENSIONS"] = [trace]
    response = client.post("/graphql", json={"query": QUERY, "variables": {"first": FIRST}})
    assert response.status_code == 200
    loaded = Trace(path)
    loaded.check_well_formed()
    fetches = loaded.of("fetch")
    assert len(fetches) == int(response.headers["X-SQL-Count"]) - 1
    (job,) = loaded.of("job")
    for event in fetches:
        assert event["args"]["graphql.path"].split(".")[-1] == SOURCES[event["args"]["source"]]
        assert event["args"]["graphql.path"] in job["args"]["graphql.paths"]
    trace.close()


# -- the file ------------------------------------------------------------------------------


def test_fiberloader_trace_writes_a_file_read_trace_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "env.json"
    monkeypatch.setenv("FIBERLOADER_TRACE", str(path))
    monkeypatch.setattr(_extensions, "_shared_instances", {})  # a trace of our own, not one another test made
    first, second = Dataloader(), AsyncDataloader()
    (trace,) = first.extensions
    assert isinstance(trace, PerfettoTrace) and second.extensions == (trace,)  # one per process
    first.append_job(lambda: first.with_(Users).load(1))
    first.run()
    events = read_trace(path)
    assert [e["name"] for e in events if e["ph"] == "X"] == ["fetch Users()", "waiting on Users()", "job", "run"]
    trace.close()
    assert json.loads(path.read_text()) == events


def test_the_file_grows_run_by_run_and_close_makes_it_json(tmp_path: Path) -> None:
    path = tmp_path / "grows.json"
    trace = PerfettoTrace(path)
    cls = traced(Dataloader, trace)

    def one_run() -> None:
        cls.with_dataloading(lambda dl: dl.with_(Users).load(1))

    assert not path.exists()  # nothing written before a run ends
    one_run()
    first = path.read_text()
    assert first.startswith("[\n") and not first.rstrip().endswith("]")
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)  # an open array: the format allows it, json does not
    one_run()
    second = path.read_text()
    assert second.startswith(first) and len(second) > len(first)
    assert len([e for e in read_trace(path) if e["ph"] == "X" and e["cat"] == "run"]) == 2
    trace.close()
    closed = json.loads(path.read_text())
    assert closed == read_trace(path) and len([e for e in closed if e.get("cat") == "run"]) == 2
    trace.close()  # twice: nothing more
    assert json.loads(path.read_text()) == closed
    # a run after close(), or another process's trace of the same file, opens it again
    one_run()
    other = PerfettoTrace(path)
    traced(Dataloader, other).with_dataloading(lambda dl: dl.with_(Users).load(2))
    assert len([e for e in read_trace(path) if e.get("cat") == "run"]) == 4
    other.close()
    assert len([e for e in json.loads(path.read_text()) if e.get("cat") == "run"]) == 4
    trace.close()


def test_events_beyond_the_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    full = run_program(Dataloader, tmp_path / "full.json")
    slices_and_flows = [e for e in full.events if e["ph"] != "M"]
    trace = PerfettoTrace(tmp_path / "bounded.json", max_events=5)
    traced(Dataloader, trace).with_dataloading(program)
    events = read_trace(tmp_path / "bounded.json")
    kept = [e for e in events if e["ph"] != "M"]
    assert len(kept) == 5
    (dropped,) = [e for e in events if e["ph"] == "M" and e["name"] == DROPPED_EVENT]
    assert dropped["args"]["dropped"] == len(slices_and_flows) - 5
    # track names are kept whatever the bound
    assert {e["args"]["name"] for e in events if e["name"] == "thread_name"} >= {"run hub", "worker 1"}
    trace.close()


def test_read_trace_takes_open_closed_and_object_files(tmp_path: Path) -> None:
    event = {"ph": "X", "name": "a", "ts": 1.0, "dur": 2.0, "pid": 1, "tid": 1}
    for text in ('[\n{"ph": "X", "name": "a", "ts": 1.0, "dur": 2.0, "pid": 1, "tid": 1},\n',
                 '[{"ph": "X", "name": "a", "ts": 1.0, "dur": 2.0, "pid": 1, "tid": 1}]',
                 '{"traceEvents": [{"ph": "X", "name": "a", "ts": 1.0, "dur": 2.0, "pid": 1, "tid": 1}]}'):
        (tmp_path / "t.json").write_text(text)
        assert read_trace(tmp_path / "t.json") == [event]
    (tmp_path / "t.json").write_text("")
    assert read_trace(tmp_path / "t.json") == []


def test_the_render_script_draws_a_trace(tmp_path: Path) -> None:
    import matplotlib  # the test extra has it: a missing one fails here

    assert matplotlib.__version__
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "render_trace.py"
    spec = importlib.util.spec_from_file_location("render_trace", script)
    assert spec is not None and spec.loader is not None
    render_trace = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_trace)
    run_program(Dataloader, tmp_path / "trace.json")
    assert render_trace.main([str(tmp_path / "trace.json"), str(tmp_path / "trace.png")]) == 0
    assert (tmp_path / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "trace.png").stat().st_size > 10_000  # more than an empty canvas
    assert (tmp_path / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
