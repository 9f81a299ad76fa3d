"""fiberloader.opentelemetry: a span per fetch, in the right place of the trace.

Each test runs a dataloader with ``OpenTelemetryExtension`` on a private
``TracerProvider`` (the global one is never set) whose spans go to an
``InMemorySpanExporter``, and compares the finished spans with the span
tree they must make: names, parents, links, the batch attributes and the
status, written out as indented text (:func:`tree`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Type

import gevent
import pytest
from graphql import GraphQLField, GraphQLList, GraphQLObjectType, GraphQLSchema, GraphQLString
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

import fiberloader
from fiberloader import Dataloader, NullDataloader, Source, current_dataloader
from fiberloader.graphql import graphql_sync
from fiberloader.opentelemetry import OpenTelemetryExtension

AsyncDataloader = fiberloader.AsyncDataloader
ALL = [Dataloader, AsyncDataloader, NullDataloader]
BATCHING = [Dataloader, AsyncDataloader]

pytestmark = pytest.mark.usefixtures("no_leaked_greenlets")


class Otel:
    """A tracer provider of the test's own, its exporter and a tracer for the test's spans."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("tests")

    def extension(self) -> OpenTelemetryExtension:
        return OpenTelemetryExtension(tracer_provider=self.provider)

    def spans(self) -> Sequence[ReadableSpan]:
        return self.exporter.get_finished_spans()


@pytest.fixture
def otel() -> Any:
    otel = Otel()
    yield otel
    otel.provider.shutdown()


def tree(spans: Sequence[ReadableSpan]) -> str:
    """The spans as an indented tree, children in start order.

    A batch span shows its size, cache hits and misses; a span with links
    names the spans it links to; an ERROR status is shown.  Every span must
    belong to one trace, and each parent and link must be one of ``spans``.
    """
    by_id = {span.context.span_id: span for span in spans}
    assert len({span.context.trace_id for span in spans}) == 1, "the spans are not one trace"
    children: Dict[Optional[int], List[ReadableSpan]] = defaultdict(list)
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        assert parent is None or parent in by_id, f"{span.name}: its parent is not among the spans"
        children[parent].append(span)
    lines: List[str] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        line = "  " * depth + span.name
        attributes = span.attributes or {}
        if "graphql.dataloader.batch.size" in attributes:
            line += (
                f"  size={attributes['graphql.dataloader.batch.size']}"
                f" hits={attributes['graphql.dataloader.cache.hit_count']}"
                f" misses={attributes['graphql.dataloader.cache.miss_count']}"
            )
        if span.links:
            line += "  links=" + ",".join(by_id[link.context.span_id].name for link in span.links)
        if span.status.status_code is StatusCode.ERROR:
            line += "  ERROR"
        lines.append(line)
        for child in sorted(children[span.context.span_id], key=lambda s: (s.start_time, s.name)):
            walk(child, depth + 1)

    for root in sorted(children[None], key=lambda s: (s.start_time, s.name)):
        walk(root, 0)
    return "\n".join(lines) + "\n"


def batch_spans(otel: Otel) -> List[ReadableSpan]:
    return [span for span in otel.spans() if span.name.startswith("GraphQL DataLoader Batch")]


def run(dataloader: Dataloader, otel: Otel, *jobs: Any) -> None:
    for job in jobs:
        dataloader.append_job(job)
    with otel.tracer.start_as_current_span("request"):
        dataloader.run()


# -- the main tree: jobs in spans, two rounds of one source ----------------------------


class Users(Source):
    tracer: Tracer  # set by the test: the fetch's own "db" span

    def fetch(self, keys: List[Any]) -> List[Any]:
        with self.tracer.start_as_current_span("db"):
            return [f"user {key}" for key in keys]


def job(otel: Otel, dataloader: Dataloader, i: int, results: List[Any]) -> Any:
    """Job i in its span: round 1 loads key i (job 2 asks for key 1 too), round 2 key 0 and key 5."""

    def body() -> None:
        users = dataloader.with_(Users)
        with otel.tracer.start_as_current_span(f"job {i}"):
            results.append(users.load(min(i, 1)))
            results.append(users.load(0))  # a cache hit in round 2
            if i:
                results.append(users.load(5))  # jobs 1 and 2: one key, two askers

    return body


BATCHED_TREE = """\
request
  job 0
    GraphQL DataLoader Batch Users  size=2 hits=0 misses=3  links=job 0,job 1,job 2
      db
  job 1
    GraphQL DataLoader Batch Users  size=1 hits=3 misses=2  links=job 1,job 2
      db
  job 2
"""

NULL_TREE = """\
request
  job 0
    GraphQL DataLoader Batch Users  size=1 hits=0 misses=1
      db
  job 1
    GraphQL DataLoader Batch Users  size=1 hits=1 misses=1
      db
    GraphQL DataLoader Batch Users  size=1 hits=1 misses=1
      db
  job 2
"""


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_span_tree(otel: Otel, cls: Type[Dataloader]) -> None:
    Users.tracer = otel.tracer
    extension = otel.extension()
    dataloader = cls(extensions=[extension])
    results: List[Any] = []
    run(dataloader, otel, *(job(otel, dataloader, i, results) for i in range(3)))

    assert sorted(results) == sorted(
        ["user 0", "user 0", "user 1", "user 0", "user 5", "user 1", "user 0", "user 5"]
    )
    expected = NULL_TREE if cls is NullDataloader else BATCHED_TREE
    assert tree(otel.spans()) == expected
    first = batch_spans(otel)[0]
    assert dict(first.attributes or {}) == {
        "graphql.processing.type": "dataloader_batch",
        "graphql.dataloader.name": "Users",
        "graphql.dataloader.batch.size": 2 if cls is not NullDataloader else 1,
        "graphql.dataloader.cache.hit_count": 0,
        "graphql.dataloader.cache.miss_count": 3 if cls is not NullDataloader else 1,
        "fiberloader.source": "Users()",
        "fiberloader.source.class": f"{__name__}.Users",
        "fiberloader.dataloader": cls.__name__,
    }
    assert first.kind.name == "INTERNAL"
    assert first.status.status_code is StatusCode.UNSET
    assert extension._runs == {}  # nothing outlives the run


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_jobs_and_map_items_see_the_context_of_run_without_the_extension(otel: Otel, cls: Type[Dataloader]) -> None:
    """What the extension relies on: every job (and map item) starts in a copy of run()'s context."""
    dataloader = cls()

    def item(i: int) -> Any:
        with otel.tracer.start_as_current_span(f"item {i}"):
            return dataloader.with_(Authors).load(i)

    def body(i: int) -> Any:
        def job() -> None:
            with otel.tracer.start_as_current_span(f"job {i}"):
                dataloader.map(item, [i, i + 2])
                with otel.tracer.start_as_current_span(f"after {i}"):
                    pass

        return job

    run(dataloader, otel, body(0), body(1))
    assert tree(otel.spans()) == """\
request
  job 0
    item 0
    item 2
    after 0
  job 1
    item 1
    item 3
    after 1
"""


# -- nested sources: a fetch that loads from another source ---------------------------


class Authors(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return [f"author {key}" for key in keys]


class Posts(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        authors = self.dataloader.with_(Authors).load_all([key % 2 for key in keys])
        return [f"post {key} by {author}" for key, author in zip(keys, authors)]


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_nested_source_fetch_is_a_child_of_the_outer_fetch(otel: Otel, cls: Type[Dataloader]) -> None:
    dataloader = cls(extensions=[otel.extension()])
    results: List[Any] = []

    def load(key: int) -> Any:
        def body() -> None:
            with otel.tracer.start_as_current_span(f"job {key}"):
                results.append(dataloader.with_(Posts).load(key))

        return body

    run(dataloader, otel, load(1), load(2))

    assert results == ["post 1 by author 1", "post 2 by author 0"]
    if cls is NullDataloader:
        assert tree(otel.spans()) == """\
request
  job 1
    GraphQL DataLoader Batch Posts  size=1 hits=0 misses=1
      GraphQL DataLoader Batch Authors  size=1 hits=0 misses=1
  job 2
    GraphQL DataLoader Batch Posts  size=1 hits=0 misses=1
      GraphQL DataLoader Batch Authors  size=1 hits=0 misses=1
"""
    else:
        assert tree(otel.spans()) == """\
request
  job 1
    GraphQL DataLoader Batch Posts  size=2 hits=0 misses=2  links=job 1,job 2
      GraphQL DataLoader Batch Authors  size=2 hits=0 misses=2  links=GraphQL DataLoader Batch Posts
  job 2
"""


class Caseless(Source):
    """Keys that differ in case are one key; fetch sees them upper-cased."""

    def result_key_for(self, key: str) -> str:
        return key.lower()

    def normalize_fetch_key(self, key: str) -> str:
        return key.upper()

    def fetch(self, keys: List[Any]) -> List[Any]:
        return [f"row {key}" for key in keys]


@pytest.mark.parametrize("cls", BATCHING, ids=lambda cls: cls.__name__)
def test_keys_are_matched_by_result_key(otel: Otel, cls: Type[Dataloader]) -> None:
    dataloader = cls(extensions=[otel.extension()])
    results: List[Any] = []

    def load(name: str, key: str) -> Any:
        def body() -> None:
            with otel.tracer.start_as_current_span(name):
                results.append(dataloader.with_(Caseless).load(key))

        return body

    run(dataloader, otel, load("job a", "a"), load("job b", "A"))
    assert results == ["row A", "row A"]
    assert tree(otel.spans()) == """\
request
  job a
    GraphQL DataLoader Batch Caseless  size=1 hits=0 misses=2  links=job a,job b
  job b
"""


# -- errors ---------------------------------------------------------------------------


class Broken(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        raise LookupError(f"no rows for {keys}")


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_a_fetch_that_raises_is_an_error_span(otel: Otel, cls: Type[Dataloader]) -> None:
    dataloader = cls(extensions=[otel.extension()])
    caught: List[BaseException] = []

    def body() -> None:
        with otel.tracer.start_as_current_span("job"):
            try:
                dataloader.with_(Broken).load(7)
            except LookupError as error:
                caught.append(error)

    run(dataloader, otel, body)

    assert [str(error) for error in caught] == ["no rows for [7]"]
    assert tree(otel.spans()) == (
        "request\n  job\n    GraphQL DataLoader Batch Broken  size=1 hits=0 misses=1"
        + ("" if cls is NullDataloader else "  links=job") + "  ERROR\n"
    )
    (span,) = batch_spans(otel)
    assert span.status.description == "no rows for [7]"
    assert (span.attributes or {})["error.type"] == "LookupError"
    (event,) = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "LookupError"
    assert (event.attributes or {})["exception.message"] == "no rows for [7]"


# -- AsyncDataloader: fetches that overlap, a blocking source -------------------------


class Slow(Source):
    tracer: Tracer

    def __init__(self, name: str) -> None:
        self.name = name

    def fetch(self, keys: List[Any]) -> List[Any]:
        gevent.sleep(0.03)  # the other source's fetch runs meanwhile
        with self.tracer.start_as_current_span(f"db {self.name}"):  # after the switch: still ours
            return [f"{self.name} {key}" for key in keys]


def test_async_fetches_overlap_and_each_has_its_parent(otel: Otel) -> None:
    Slow.tracer = otel.tracer
    dataloader = AsyncDataloader(extensions=[otel.extension()])
    results: List[Any] = []

    def load(name: str) -> Any:
        def body() -> None:
            with otel.tracer.start_as_current_span(f"job {name}"):
                results.append(dataloader.with_(Slow, name).load(1))
                with otel.tracer.start_as_current_span(f"after {name}"):  # the job's context is intact
                    pass

        return body

    run(dataloader, otel, load("a"), load("b"))

    assert sorted(results) == ["a 1", "b 1"]
    assert tree(otel.spans()) == """\
request
  job a
    GraphQL DataLoader Batch Slow  size=1 hits=0 misses=1  links=job a
      db a
    after a
  job b
    GraphQL DataLoader Batch Slow  size=1 hits=0 misses=1  links=job b
      db b
    after b
"""
    a, b = sorted(batch_spans(otel), key=lambda span: (span.attributes or {})["fiberloader.source"])
    assert (a.attributes or {})["fiberloader.source"] == "Slow('a')"
    assert a.start_time is not None and a.end_time is not None
    assert b.start_time is not None and b.end_time is not None
    assert a.start_time < b.end_time and b.start_time < a.end_time  # they ran at once
    assert min(a.end_time, b.end_time) - max(a.start_time, b.start_time) > 0.02e9


class InThread(Source):
    blocking = True
    tracer: Tracer
    threads: List[int] = []

    def fetch(self, keys: List[Any]) -> List[Any]:
        InThread.threads.append(threading.get_ident())
        with self.tracer.start_as_current_span("db in thread"):
            return [key * 10 for key in keys]


def test_blocking_source_fetch_span_in_the_thread_pool(otel: Otel) -> None:
    InThread.tracer = otel.tracer
    InThread.threads = []
    extension = otel.extension()
    dataloader = AsyncDataloader(extensions=[extension])
    results: List[Any] = []

    def load(key: int) -> Any:
        def body() -> None:
            with otel.tracer.start_as_current_span(f"job {key}"):
                results.append(dataloader.with_(InThread).load(key))

        return body

    run(dataloader, otel, load(1), load(2))

    assert results == [10, 20]
    assert InThread.threads and InThread.threads[0] != threading.get_ident()  # it ran in the pool
    assert tree(otel.spans()) == """\
request
  job 1
    GraphQL DataLoader Batch InThread  size=2 hits=0 misses=2  links=job 1,job 2
      db in thread
  job 2
"""
    assert extension._runs == {}


def test_one_extension_for_dataloaders_running_at_once(otel: Otel) -> None:
    """Under gevent, each request's fetch span lands in its own trace, under its own job."""
    Slow.tracer = otel.tracer
    extension = otel.extension()
    traces: Dict[str, int] = {}

    def request(name: str) -> None:
        dataloader = AsyncDataloader(extensions=[extension])

        def body() -> None:
            with otel.tracer.start_as_current_span(f"job {name}"):
                dataloader.with_(Slow, name).load(1)

        dataloader.append_job(body)
        with otel.tracer.start_as_current_span(f"request {name}") as span:
            traces[name] = span.get_span_context().trace_id
            dataloader.run()

    gevent.joinall([gevent.spawn(request, "a"), gevent.spawn(request, "b")], raise_error=True)

    for name in "ab":
        spans = [span for span in otel.spans() if span.context.trace_id == traces[name]]
        assert tree(spans) == f"""\
request {name}
  job {name}
    GraphQL DataLoader Batch Slow  size=1 hits=0 misses=1  links=job {name}
      db {name}
"""
    assert extension._runs == {}


# -- GraphQL ------------------------------------------------------------------------------

POSTS = {1: {"title": "a", "author_id": 10}, 2: {"title": "b", "author_id": 20}, 3: {"title": "c", "author_id": 10}}


class PostRows(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return [POSTS[key] for key in keys]


class UserRows(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return [{"name": f"user {key}"} for key in keys]


def schema(tracer: Tracer) -> GraphQLSchema:
    """posts (loads, no span of its own) { author (loads, in a resolver span) { name } title }."""

    def resolve_author(post: Any, info: Any) -> Any:
        coordinate = f"{info.parent_type.name}.{info.field_name}"
        with tracer.start_as_current_span(coordinate, attributes={"graphql.selection.field.coordinate": coordinate}):
            return current_dataloader().with_(UserRows).load(post["author_id"])  # type: ignore[union-attr]

    def resolve_posts(root: Any, info: Any) -> Any:
        return current_dataloader().with_(PostRows).load_all([1, 2, 3])  # type: ignore[union-attr]

    user = GraphQLObjectType("User", {"name": GraphQLField(GraphQLString)})
    post = GraphQLObjectType(
        "Post", {"author": GraphQLField(user, resolve=resolve_author), "title": GraphQLField(GraphQLString)}
    )
    return GraphQLSchema(GraphQLObjectType("Query", {"posts": GraphQLField(GraphQLList(post), resolve=resolve_posts)}))


def run_query(otel: Otel, cls: Type[Dataloader]) -> Any:
    dataloader = cls(extensions=[otel.extension()])
    box: List[Any] = []
    run(dataloader, otel, lambda: box.append(graphql_sync(schema(otel.tracer), "{ posts { author { name } title } }")))
    result = box[0]
    assert result.errors is None
    assert result.data == {"posts": [
        {"author": {"name": "user 10"}, "title": "a"},
        {"author": {"name": "user 20"}, "title": "b"},
        {"author": {"name": "user 10"}, "title": "c"},
    ]}
    return result


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_graphql_fetch_spans_under_the_resolver_span_or_the_request(otel: Otel, cls: Type[Dataloader]) -> None:
    run_query(otel, cls)
    spans = otel.spans()
    by_id = {span.context.span_id: span for span in spans}
    (request,) = [span for span in spans if span.name == "request"]
    authors = sorted((span for span in spans if span.name == "Post.author"), key=lambda span: span.start_time or 0)
    assert len(authors) == 3
    posts_batches = [span for span in batch_spans(otel) if span.name.endswith("PostRows")]
    users_batches = [span for span in batch_spans(otel) if span.name.endswith("UserRows")]
    # Query.posts starts no span: its batches hang under the request span.
    assert posts_batches and all(span.parent and span.parent.span_id == request.context.span_id for span in posts_batches)
    if cls is NullDataloader:  # one fetch per key, inline, each under the resolver that loads
        assert [(span.attributes or {})["graphql.dataloader.batch.size"] for span in users_batches] == [1, 1]
        assert [by_id[span.parent.span_id] for span in users_batches if span.parent] == authors[:2]
        return
    (users,) = users_batches
    assert (users.attributes or {})["graphql.dataloader.batch.size"] == 2
    assert (users.attributes or {})["graphql.dataloader.cache.miss_count"] == 3
    assert users.parent is not None and by_id[users.parent.span_id] is authors[0]
    # In key order: user 10 (posts 1 and 3), then user 20 (post 2).
    assert [by_id[link.context.span_id] for link in users.links] == [authors[0], authors[2], authors[1]]
    assert [dict(link.attributes or {}) for link in users.links] == [
        {"graphql.selection.field.coordinate": "Post.author"}
    ] * 3


GRAPHQL_TREE = """\
request
  GraphQL DataLoader Batch PostRows  size=3 hits=0 misses=3  links=request
  Post.author
    GraphQL DataLoader Batch UserRows  size=2 hits=0 misses=3  links=Post.author,Post.author,Post.author
  Post.author
  Post.author
"""


@pytest.mark.parametrize("cls", BATCHING, ids=lambda cls: cls.__name__)
def test_graphql_resolver_spans_are_siblings(otel: Otel, cls: Type[Dataloader]) -> None:
    """Helpers that take over a parked resolver's sibling fields run in the context the
    loop started in, not inside the parked resolver's span (they nested under it)."""
    run_query(otel, cls)
    assert tree(otel.spans()) == GRAPHQL_TREE


# -- set-up and state ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_no_state_outlives_a_run_that_fails(otel: Otel, cls: Type[Dataloader]) -> None:
    extension = otel.extension()
    dataloader = cls(extensions=[extension])

    def fails() -> None:
        dataloader.with_(Users).load(1)
        raise KeyError("boom")

    Users.tracer = otel.tracer
    with pytest.raises(KeyError):
        run(dataloader, otel, fails)
    assert extension._runs == {}
    # The same dataloader runs again, from a clean state.
    run(dataloader, otel, lambda: dataloader.with_(Users).load(2))
    assert extension._runs == {}
    assert [(span.attributes or {})["graphql.dataloader.batch.size"] for span in batch_spans(otel)] == [1, 1]


def test_run_isolated_keeps_the_state_until_the_outer_run_ends(otel: Otel) -> None:
    extension = otel.extension()
    dataloader = Dataloader(extensions=[extension])
    seen: List[int] = []

    def body() -> None:
        with otel.tracer.start_as_current_span("job"):
            dataloader.run_isolated(lambda: dataloader.with_(Authors).load(1))
            seen.append(len(extension._runs))  # the inner run ended; the outer one goes on
            dataloader.with_(Authors).load(2)

    run(dataloader, otel, body)
    assert seen == [1] and extension._runs == {}
    assert tree(otel.spans()) == """\
request
  job
    GraphQL DataLoader Batch Authors  size=1 hits=0 misses=1  links=job
    GraphQL DataLoader Batch Authors  size=1 hits=0 misses=1  links=job
"""


def test_without_a_provider_the_global_one_is_used(otel: Otel) -> None:
    extension = OpenTelemetryExtension()
    assert extension.tracer is not None
    dataloader = Dataloader(extensions=[extension])
    run(dataloader, otel, lambda: dataloader.with_(Authors).load(1))
    assert [span.name for span in otel.spans()] == ["request"]  # not our provider's
    assert extension._runs == {}


def test_the_setting_names_the_extension(monkeypatch: Any) -> None:
    monkeypatch.setenv("FIBERLOADER_EXTENSIONS", "fiberloader.opentelemetry:OpenTelemetryExtension")
    (extension,) = Dataloader().extensions
    assert type(extension) is OpenTelemetryExtension


def test_fiberloader_imports_without_opentelemetry() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry': raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fiberloader, fiberloader.graphql, fiberloader.wsgi\n"
        "fiberloader.Dataloader.with_dataloading(lambda dl: None)\n"
        "try:\n"
        "    import fiberloader.opentelemetry\n"
        "except ImportError as error:\n"
        "    print('refused:', error)\n"
    )
    env = {**os.environ, "FIBERLOADER_EXTENSIONS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout == "refused: blocked opentelemetry\n"
