"""fiberloader.django: the middleware, connections per greenlet, ORM sources, GraphQL views.

A real Django project (``tests/django_app``, in-memory SQLite) behind
Django's test client; ``CaptureQueriesContext`` counts the SQL.  The
connection tests run in subprocesses with a file database, one of them
after gevent's monkey-patching.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from typing import Any, Dict, List, Type

import gevent
import pytest

from tests.django_app import setup

setup()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import prefetch_related_objects  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

import fiberloader  # noqa: E402
from fiberloader import (  # noqa: E402
    ConfigurationError,
    Dataloader,
    FiberloaderTypeError,
    NotRunningError,
    NullDataloader,
)
from fiberloader.django import (  # noqa: E402
    AssociationSource,
    DataloaderMiddleware,
    DjangoConnections,
    RecordSource,
)
from tests.django_app import views  # noqa: E402
from tests.django_app.models import Author, Comment, Post, Profile, Tag  # noqa: E402
from tests.django_app.schema import QUERY  # noqa: E402

AsyncDataloader = fiberloader.AsyncDataloader
SCHEDULERS: Dict[str, Type[Dataloader]] = {"sync": Dataloader, "async": AsyncDataloader, "null": NullDataloader}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Scanning the heap for live greenlets costs ~0.1 s with Django loaded: only
# the tests that run whole requests (and their jobs and fetches) check it.
no_leaks = pytest.mark.usefixtures("no_leaked_greenlets")


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIBERLOADER_DATALOADER", raising=False)


def naive_posts() -> List[Dict[str, Any]]:
    """What /posts/ must answer, the N+1 way."""
    return [
        {
            "title": post.title,
            "author": post.author.name,
            "editor": post.editor.name if post.editor else None,
            "comments": [{"body": c.body, "author": c.author.name} for c in post.comments.order_by("id")],
            "tags": [tag.name for tag in post.tags.order_by("id")],
        }
        for post in Post.objects.order_by("id")
    ]


def naive_graphql() -> Dict[str, Any]:
    return {
        "posts": [
            {
                "title": row["title"],
                "author": {"name": row["author"]},
                "comments": [{"body": c["body"], "author": {"name": c["author"]}} for c in row["comments"]],
                "tags": row["tags"],
            }
            for row in naive_posts()
        ],
        "sameDataloader": True,
    }


def get(path: str, scheduler: str) -> Any:
    with override_settings(FIBERLOADER_DATALOADER=scheduler), CaptureQueriesContext(connection) as queries:
        response = Client().get(path)
    assert response.status_code == 200, response.content
    response.query_count = len(queries)
    return response


def post_graphql(path: str, scheduler: str) -> Any:
    with override_settings(FIBERLOADER_DATALOADER=scheduler), CaptureQueriesContext(connection) as queries:
        response = Client().post(path, json.dumps({"query": QUERY}), content_type="application/json")
    assert response.status_code == 200, response.content
    response.query_count = len(queries)
    return response


def run(cls: Type[Dataloader], fn: Any) -> Any:
    return cls.with_dataloading(fn)


# -- the middleware -----------------------------------------------------------------


@no_leaks
@pytest.mark.parametrize("scheduler", ["sync", "async"])
def test_a_view_mapping_over_posts_runs_the_minimal_batched_queries(scheduler: str) -> None:
    response = get("/posts/", scheduler)
    assert response.json() == {"posts": naive_posts()}
    # posts; their authors (RecordSource); comments and tags (AssociationSource);
    # the editors and the comments' authors come from RecordSource's cache.
    assert response.query_count == 4


@no_leaks
@pytest.mark.parametrize("path", ["/posts/", "/graphene/", "/strawberry/", "/tagged/?tag=t&lang=fr"])
def test_sync_async_and_null_schedulers_answer_identically(path: str) -> None:
    responses = {}
    for name, cls in SCHEDULERS.items():
        if path.startswith("/graph") or path.startswith("/straw"):
            response = post_graphql(path, name)
        else:
            response = get(path, name)
        assert isinstance(response.wsgi_request.dataloader, cls)
        body = response.json()
        body.pop("dataloader", None)
        responses[name] = body
    assert responses["sync"] == responses["async"] == responses["null"]
    if path == "/posts/":
        assert responses["sync"] == {"posts": naive_posts()}


def test_the_view_runs_as_a_job_of_request_dataloader() -> None:
    response = get("/scheduler/", "sync")
    assert response.json() == {"setting": "sync", "current": True}


def test_each_request_gets_its_own_dataloader_and_cache(no_env: None) -> None:
    first = get("/posts/", "sync")
    Author.objects.filter(pk=1).update(name="lovelace")
    try:
        second = get("/posts/", "sync")
    finally:
        Author.objects.filter(pk=1).update(name="ada")
    assert first.json()["posts"][0]["author"] == "ada"
    assert second.json()["posts"][0]["author"] == "lovelace"
    assert second.query_count == first.query_count == 4
    assert first.wsgi_request.dataloader is not second.wsgi_request.dataloader


def test_the_cache_is_dropped_when_a_normal_response_is_returned() -> None:
    dataloader = get("/posts/", "sync").wsgi_request.dataloader
    with pytest.raises(NotRunningError):  # not cached any more: a load would have to fetch
        dataloader.with_(RecordSource, Author).load(1)


@no_leaks
@pytest.mark.parametrize("scheduler", ["sync", "async"])
def test_concurrent_requests_never_share_a_dataloader(scheduler: str) -> None:
    views.Tagged.fetches = []
    views.Tagged.most_in_flight = 0

    def one(tag: int) -> Any:
        response = Client().get(f"/tagged/?tag={tag}&lang={'fr' if tag % 2 else 'de'}")
        assert response.status_code == 200, response.content
        return response.json()

    with override_settings(FIBERLOADER_DATALOADER=scheduler):  # once: overrides do not nest across greenlets
        greenlets = gevent.joinall([gevent.spawn(one, tag) for tag in range(8)], raise_error=True)
    for tag, greenlet in enumerate(greenlets):
        lang = "fr" if tag % 2 else "de"  # activated by the middleware before fiberloader's
        assert greenlet.value["values"] == [f"{tag}:1:{lang}", f"{tag}:2:{lang}", f"{tag}:3:{lang}", f"{tag}:1:{lang}"]
    assert views.Tagged.most_in_flight > 1  # the requests did overlap
    assert sorted(keys for _, keys in views.Tagged.fetches) == [[1, 2, 3]] * 8  # one fetch each
    assert len({dataloader for dataloader, _ in views.Tagged.fetches}) == 8
    assert len({greenlet.value["dataloader"] for greenlet in greenlets}) == 8


# -- streaming ------------------------------------------------------------------------


@no_leaks
@pytest.mark.parametrize("scheduler", ["sync", "async"])
def test_a_streaming_response_loads_while_it_is_iterated(scheduler: str) -> None:
    views.STREAM_LOG.clear()
    response = get("/stream/", scheduler)
    assert response.query_count == 1  # the posts: nothing streamed yet
    assert views.STREAM_LOG == []
    with CaptureQueriesContext(connection) as queries:
        content = b"".join(response.streaming_content)  # the test client closes the response at the end
    assert content.decode().splitlines() == [
        json.dumps(["ada", "grace", "barbara"]),
        json.dumps(["ada", "grace", "barbara"]),
    ]
    assert len(queries) == 2  # the authors, once for both chunks; the tag in the generator's finally
    assert views.STREAM_LOG == [("step", True), ("step", True), ("finally", True, "python")]
    with pytest.raises(NotRunningError):  # closed: the cache is gone
        response.wsgi_request.dataloader.with_(RecordSource, Author).load(1)


@no_leaks
def test_closing_a_streaming_response_early_closes_its_iterator_in_a_job() -> None:
    views.STREAM_LOG.clear()
    response = get("/stream/", "sync")
    iterator = iter(response.streaming_content)
    assert json.loads(next(iterator)) == ["ada", "grace", "barbara"]
    response.close()
    assert views.STREAM_LOG == [("step", True), ("finally", True, "python")]  # it could still load
    with pytest.raises(NotRunningError):
        response.wsgi_request.dataloader.with_(RecordSource, Author).load(1)


# -- the setting ------------------------------------------------------------------------


class Custom(Dataloader):
    pass


def middleware() -> DataloaderMiddleware:
    return DataloaderMiddleware(lambda request: None)


def test_the_scheduler_defaults_to_sync(no_env: None) -> None:
    assert middleware().scheduler is Dataloader


def test_the_environment_variable_picks_the_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "null")
    assert middleware().scheduler is NullDataloader


@pytest.mark.parametrize(
    "setting, expected",
    [("async", AsyncDataloader), ("null", NullDataloader), (Custom, Custom), ("tests.test_django:Custom", Custom)],
)
def test_the_django_setting_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, setting: Any, expected: type
) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "sync")
    with override_settings(FIBERLOADER_DATALOADER=setting):
        loaded = middleware()
        response = Client().get("/scheduler/")
    assert loaded.scheduler is expected
    assert issubclass(loaded.dataloader_class, expected)
    assert type(response.wsgi_request.dataloader) is loaded.dataloader_class
    assert loaded.dataloader_class.__name__ == expected.__name__


def test_a_bad_setting_fails_at_start_up_naming_the_setting(no_env: None) -> None:
    with override_settings(FIBERLOADER_DATALOADER="fast"):
        with pytest.raises(ConfigurationError, match=r"settings\.FIBERLOADER_DATALOADER is 'fast'"):
            WSGIHandler()  # Django loads the middleware when the application starts
        with pytest.raises(ConfigurationError, match="settings.FIBERLOADER_DATALOADER"):
            middleware()


def test_a_bad_environment_variable_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "tests.test_django:Nothing")
    with pytest.raises(ConfigurationError, match=r"\$FIBERLOADER_DATALOADER"):
        middleware()


@pytest.mark.parametrize("name, cls", [("sync", Dataloader), ("async", AsyncDataloader), ("null", NullDataloader)])
def test_each_request_gets_the_class_the_setting_names_with_django_connections_attached(
    name: str, cls: Type[Dataloader], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 12: the middleware made a generated subclass that borrowed the scheduler's name."""
    from django.conf import settings

    monkeypatch.setattr(settings, "FIBERLOADER_DATALOADER", name, raising=False)
    seen: List[Dataloader] = []
    handler = DataloaderMiddleware(lambda request: seen.append(request.dataloader) or "response")
    assert handler(types.SimpleNamespace()) == "response"
    assert type(seen[0]) is cls
    assert [type(extension) for extension in seen[0].extensions] == [DjangoConnections]


# -- RecordSource ---------------------------------------------------------------------------


def test_record_source_runs_one_in_query_with_results_in_key_order(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        authors = dl.with_(RecordSource, Author)
        assert dl.with_(RecordSource, Author, "id") is authors is dl.with_(RecordSource, Author, "pk")
        loaded = dl.map(authors.load, [2, "1", 99, 3, 2])  # "1" is the key 1
        return [a.name if a else None for a in loaded], authors.load(1).name

    with CaptureQueriesContext(connection) as queries:
        assert run(scheduler, job) == (["grace", "ada", None, "barbara", "grace"], "ada")
    assert len(queries) == 1
    assert " IN (" in queries[0]["sql"]


def test_record_source_by_another_field(any_scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        return [a.pk if a else None for a in dl.with_(RecordSource, Author, "name").load_all(["grace", "nobody"])]

    assert run(any_scheduler, job) == [2, None]


def test_record_source_fails_a_key_of_the_wrong_type_alone() -> None:
    def job(dl: Dataloader) -> Any:
        authors = dl.with_(RecordSource, Author)
        good = authors.request(1)
        with pytest.raises(ValueError, match="cannot look up 'x'"):
            authors.load("x")
        return good.load().name

    with CaptureQueriesContext(connection) as queries:
        assert run(Dataloader, job) == "ada"
    assert len(queries) == 1


def test_record_source_checks_its_batch_parameters() -> None:
    dl = Dataloader()
    with pytest.raises(ConfigurationError, match=r"RecordSource\(Author, 'posts'\) needs a concrete field"):
        dl.with_(RecordSource, Author, "posts")
    with pytest.raises(ConfigurationError, match="'nope' is not a field"):
        dl.with_(RecordSource, Author, "nope")
    with pytest.raises(FiberloaderTypeError, match="takes a Django model class"):
        dl.with_(RecordSource, "Author")


# -- AssociationSource ------------------------------------------------------------------------


def posts() -> List[Post]:
    return list(Post.objects.order_by("id"))


@pytest.mark.parametrize(
    "model, name, expected",
    [
        (Post, "author", [1, 2, 3, 1, 2, 3]),  # forward foreign key
        (Post, "editor", [None, 3, None, 2, None, 1]),  # nullable, some None
        (Post, "comments", [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]),  # reverse foreign key
        (Post, "tags", [[1], [1, 2], [1, 2, 3], [1], [1, 2], [1, 2, 3]]),  # many-to-many
        (Tag, "posts", [[1, 2, 3, 4, 5, 6], [2, 3, 5, 6], [3, 6]]),  # reverse many-to-many
        (Author, "profile", [1, None, None]),  # reverse one-to-one, missing is None
    ],
)
def test_association_source_loads_each_kind_of_relation_in_one_query(
    scheduler: Type[Dataloader], model: Any, name: str, expected: List[Any]
) -> None:
    instances = list(model.objects.order_by("id"))

    def job(dl: Dataloader) -> Any:
        return dl.map(dl.with_(AssociationSource, model, name).load, instances)

    def ids(value: Any) -> Any:
        if isinstance(value, list):
            return sorted(v.pk for v in value)
        return None if value is None else value.pk

    with CaptureQueriesContext(connection) as queries:
        values = run(scheduler, job)
    assert [ids(v) for v in values] == expected
    assert len(queries) == 1
    with CaptureQueriesContext(connection) as queries:  # the instances were filled
        for instance in instances:
            try:
                related = getattr(instance, name)
            except Profile.DoesNotExist:
                continue
            if hasattr(related, "all"):
                list(related.all())
    assert len(queries) == 0


def test_association_source_warms_the_record_source_cache(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        dl.with_(AssociationSource, Post, "author").load_all(posts())
        dl.with_(AssociationSource, Author, "comments").load_all(list(Author.objects.all()))
        with CaptureQueriesContext(connection) as later:
            author = dl.with_(RecordSource, Author).load(2)
            comment = dl.with_(RecordSource, Comment).load(5)
        return author.name, comment.body, len(later)

    with CaptureQueriesContext(connection) as queries:
        assert run(scheduler, job) == ("grace", "comment 1 on 3", 0)
    assert len(queries) == 4  # posts, authors (the instances); the posts' authors, the authors' comments


def test_association_source_takes_records_the_record_source_holds(scheduler: Type[Dataloader]) -> None:
    rows = posts()

    def job(dl: Dataloader) -> Any:
        dl.with_(RecordSource, Author).load_all([1, 2, 3])
        with CaptureQueriesContext(connection) as later:
            authors = dl.map(dl.with_(AssociationSource, Post, "author").load, rows)
        return [a.name for a in authors], len(later)

    assert run(scheduler, job) == (["ada", "grace", "barbara"] * 2, 0)
    assert rows[0].author.name == "ada"  # filled from the cache


def test_an_association_already_loaded_is_answered_without_waiting() -> None:
    rows = list(Post.objects.prefetch_related("comments").order_by("id"))
    dataloader = Dataloader()  # not running: a load that had to wait would raise
    comments = dataloader.with_(AssociationSource, Post, "comments")
    assert [c.pk for c in comments.load(rows[0])] == [1, 2]
    assert [[c.pk for c in cs] for cs in comments.load_all(rows[:2])] == [[1, 2], [3, 4]]
    with pytest.raises(NotRunningError):
        dataloader.with_(AssociationSource, Post, "tags").load(rows[0])


@no_leaks
def test_association_source_follows_nested_relations_one_query_per_level(scheduler: Type[Dataloader]) -> None:
    rows = posts()

    def job(dl: Dataloader) -> Any:
        comments = dl.map(dl.with_(AssociationSource, Post, "comments__author").load, rows)
        with CaptureQueriesContext(connection) as later:
            names = [[c.author.name for c in cs] for cs in comments]
            dl.with_(RecordSource, Author).load(3)
            dl.with_(RecordSource, Comment).load(12)
        return names, len(later)

    with CaptureQueriesContext(connection) as queries:
        names, later = run(scheduler, job)
    assert names[:2] == [["grace", "barbara"], ["barbara", "ada"]]
    assert (len(queries), later) == (2, 0)


def test_warming_the_cache_never_reads_a_relation_that_is_not_loaded() -> None:
    rows = posts()
    prefetch_related_objects(rows[:1], "comments")  # the first post's comments, not their authors

    def job(dl: Dataloader) -> Any:
        return dl.with_(AssociationSource, Post, "comments__author").load_all(rows)

    with CaptureQueriesContext(connection) as queries:
        run(Dataloader, job)
    assert len(queries) == 2  # the other posts' comments, their authors; nothing per comment


def test_association_source_fails_a_key_that_is_not_an_instance_alone() -> None:
    def job(dl: Dataloader) -> Any:
        source = dl.with_(AssociationSource, Post, "author")
        good = source.request(posts()[0])
        with pytest.raises(FiberloaderTypeError, match="takes saved Post instances"):
            source.load(Author.objects.get(pk=1))
        return good.load().name

    assert run(Dataloader, job) == "ada"


def test_association_source_checks_its_batch_parameters() -> None:
    with pytest.raises(FiberloaderTypeError, match="takes a Django model class"):
        Dataloader().with_(AssociationSource, object, "author")
    with pytest.raises(FiberloaderTypeError, match="takes a relation name"):
        Dataloader().with_(AssociationSource, Post, "")
    for name in ("title", "nope", "nope__author"):
        with pytest.raises(ConfigurationError, match=f"{name.split('__')[0]!r} is not one"):
            Dataloader().with_(AssociationSource, Post, name)


# -- GraphQL views --------------------------------------------------------------------------


@no_leaks
@pytest.mark.parametrize("scheduler", ["sync", "async"])
@pytest.mark.parametrize("path", ["/graphene/", "/strawberry/"])
def test_graphql_views_batch_inside_the_request_dataloader(path: str, scheduler: str) -> None:
    response = post_graphql(path, scheduler)
    body = response.json()
    assert "errors" not in body, body
    assert body["data"] == naive_graphql()  # sameDataloader: the view ran in the request's dataloader
    # posts; authors; comments; tags -- the comments' authors are cached
    assert response.query_count == 4


# -- database connections -------------------------------------------------------------------

CONNECTIONS = textwrap.dedent(
    """
    import sys
    patch, scheduler = sys.argv[1], sys.argv[2]
    if patch == "patch":
        from gevent import monkey
        monkey.patch_all()
    import io, json, os, tempfile
    import gevent
    from tests.django_app import setup
    setup(database=os.path.join(tempfile.mkdtemp(), "db.sqlite3"), scheduler=scheduler)
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connections
    from django.db.backends.signals import connection_created
    from fiberloader import Dataloader
    from fiberloader.django import RecordSource
    from tests.django_app.models import Author, Tag

    connections.close_all()
    opened = []
    connection_created.connect(lambda sender, connection, **kw: opened.append(connection), weak=False)
    app = WSGIHandler()

    def get(path):
        status = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "testserver",
                   "SERVER_PORT": "80", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http",
                   "wsgi.errors": sys.stderr}
        body = app(environ, lambda s, headers, exc_info=None: status.append(s))
        try:
            data = b"".join(body)
        finally:
            body.close()                      # request_finished: Django closes the request's connection
        assert status == ["200 OK"], (status, data)
        return json.loads(data)

    # As gunicorn -k gevent serves them: one greenlet per request.  The
    # writers one after another: SQLite's lock waits block the whole process.
    done = gevent.joinall([gevent.spawn(get, "/posts/") for _ in range(3)], raise_error=True)
    assert len({json.dumps(g.value) for g in done}) == 1
    atomic = [gevent.spawn(get, "/atomic/").get() for _ in range(3)]
    assert all(r["names"] == ["ada", "grace", "barbara"] and r["intact"] and r["visible"] for r in atomic), atomic
    in_transaction = [r["in_transaction"] for r in atomic]
    wrappers = len({id(c) for c in opened})
    left_open = sum(c.connection is not None for c in opened)
    still_shared = sum(c.allow_thread_sharing for c in opened)

    # The control: a dataloader without the cleanup leaves its workers' connections open.
    def unmanaged():
        return Dataloader.with_dataloading(
            lambda dl: dl.map(lambda pk: dl.with_(RecordSource, Author).load(pk).name, [1, 2]))
    gevent.spawn(unmanaged).get()
    control_open = sum(c.connection is not None and c is not connections["default"] for c in opened)
    connections.close_all()
    committed = Tag.objects.filter(name="atomic").count()
    print(json.dumps({"wrappers": wrappers, "left_open": left_open, "control_open": control_open,
                      "committed": committed, "in_transaction": in_transaction,
                      "still_shared": still_shared}))
    """
)


@pytest.mark.parametrize("patch, scheduler", [("patch", "sync"), ("patch", "async"), ("no-patch", "sync")])
def test_workers_use_django_connections_without_leaking_any(patch: str, scheduler: str) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("FIBERLOADER_DATALOADER", None)
    result = subprocess.run(
        [sys.executable, "-c", CONNECTIONS, patch, scheduler],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["left_open"] == 0, report  # no connection outlived its request
    assert report["still_shared"] == 0, report  # what workers borrowed, they gave back
    assert report["committed"] == 3, report  # the views' transactions were not broken by a worker
    if patch == "no-patch":  # one connection per thread, shared by every greenlet
        assert report["wrappers"] == 1, report
        assert report["in_transaction"] == [[True] * 3] * 3, report
    elif scheduler == "sync":  # one per request greenlet: the workers borrowed it
        assert report["wrappers"] == 6, report
        assert report["in_transaction"] == [[True] * 3] * 3, report
    else:  # async: the workers had their own connections, outside the view's transaction
        assert report["wrappers"] > 6, report
        assert report["in_transaction"] == [[False] * 3] * 3, report
    # the control: a dataloader without DjangoConnections leaves its workers' connections open
    assert report["control_open"] == (0 if patch == "no-patch" else 1), report


def test_a_graphql_execution_without_the_middleware_manages_django_connections(no_env: None) -> None:
    """It makes its own dataloader: of a class that closes its workers' connections."""
    from graphql import GraphQLField, GraphQLObjectType, GraphQLSchema, GraphQLString

    from fiberloader import current_dataloader
    from fiberloader.django import DjangoConnections
    from fiberloader.graphql import graphql_sync

    seen = []
    seen_extensions: List[Any] = []

    def who(*_: Any) -> str:
        seen.append(type(current_dataloader()))
        seen_extensions.extend(current_dataloader().extensions)
        return "me"

    query = GraphQLObjectType("Query", {"who": GraphQLField(GraphQLString, resolve=who)})
    result = graphql_sync(GraphQLSchema(query), "{ who }")
    assert result.errors is None and result.data == {"who": "me"}
    assert seen[0] is Dataloader  # the class the setting names, not a subclass
    assert [type(extension) for extension in seen_extensions] == [DjangoConnections]
