"""fiberloader.flask.Fiberloader: one dataloader per request, Flask unchanged around it.

Real Flask test clients, real SQLite, sources with a fetch log.  Every test
also checks (``no_leaked_greenlets``) that no greenlet outlives it.
"""

from __future__ import annotations

import io
import json
import sqlite3
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import pytest
import strawberry
from flask import (
    Flask,
    Response,
    abort,
    current_app,
    g,
    request,
    send_file,
    session,
    stream_with_context,
)
from strawberry.flask.views import GraphQLView

import fiberloader
from fiberloader import (
    ConfigurationError,
    Dataloader,
    FiberloaderError,
    NullDataloader,
    Source,
    current_dataloader,
)
from fiberloader.flask import Fiberloader
from fiberloader.graphql import DataloaderExecutionContext
from fiberloader.wsgi import ENVIRON_KEY

from .conftest import live_greenlets

pytestmark = pytest.mark.usefixtures("no_leaked_greenlets")

AsyncDataloader: Type[Dataloader] = fiberloader.AsyncDataloader  # type: ignore[attr-defined]
CLASSES: Dict[str, Type[Dataloader]] = {"sync": Dataloader, "async": AsyncDataloader, "null": NullDataloader}
BATCHING = ["sync", "async"]
ALL = ["sync", "async", "null"]

FETCHES: List[Tuple[str, List[Any]]] = []


class Doubles(Source):
    """2 * key; a negative key fails alone."""

    def fetch(self, keys: List[int]) -> List[Any]:
        FETCHES.append(("doubles", list(keys)))
        return [ValueError(f"negative: {k}") if k < 0 else 2 * k for k in keys]


class CountingDataloader(Dataloader):
    """A subclass named by a dotted path in the settings tests."""


@pytest.fixture(autouse=True)
def fresh(monkeypatch: Any) -> Iterator[None]:
    FETCHES.clear()
    monkeypatch.delenv("FIBERLOADER_DATALOADER", raising=False)
    yield


def dl() -> Dataloader:
    """The running dataloader; a test fails here if there is none."""
    dataloader = current_dataloader()
    assert dataloader is not None, "not in a job"
    return dataloader


def make_app(setting: Any = None, **config: Any) -> Flask:
    app = Flask(__name__)
    app.secret_key = "test"
    app.config.update(config)
    Fiberloader(app, setting)
    return app


# -- batching and the request's dataloader -----------------------------------


@pytest.mark.parametrize("setting", BATCHING)
def test_the_jobs_of_a_view_batch_into_one_fetch(setting: str) -> None:
    app = make_app(setting)
    seen: List[Any] = []

    @app.get("/")
    def view() -> Any:
        seen.append((current_dataloader(), request.environ.get(ENVIRON_KEY)))
        return {"values": dl().map(lambda k: dl().with_(Doubles).load(k), [1, 2, 3, 2])}

    response = app.test_client().get("/")
    assert response.status_code == 200 and response.json == {"values": [2, 4, 6, 4]}
    assert FETCHES == [("doubles", [1, 2, 3])]  # four loads, three keys, one fetch
    [(dataloader, in_environ)] = seen
    assert type(dataloader) is CLASSES[setting] and in_environ is dataloader


def nested_view() -> Any:
    """Loads in jobs, nested jobs, a failing key and a primed key."""
    source = dl().with_(Doubles)
    source.merge({100: "primed"})

    def row(k: int) -> Any:
        try:
            value = source.load(k)
        except ValueError as error:
            return {"key": k, "error": str(error)}
        return {"key": k, "value": value, "more": dl().map(source.load, [k + 10, 100])}

    return {"rows": dl().map(row, [3, -1, 1, 3])}


NESTED = {"rows": [
    {"key": 3, "value": 6, "more": [26, "primed"]},
    {"key": -1, "error": "negative: -1"},
    {"key": 1, "value": 2, "more": [22, "primed"]},
    {"key": 3, "value": 6, "more": [26, "primed"]},
]}


@pytest.mark.parametrize("setting", ALL)
def test_every_scheduler_gives_the_same_responses(setting: str) -> None:
    app = make_app(setting)
    app.add_url_rule("/nested", view_func=nested_view)

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            for keys in ([1, 2], [2, 3]):
                yield json.dumps(dl().map(dl().with_(Doubles).load, keys)) + "\n"

        return Response(body(), mimetype="text/plain")

    client = app.test_client()
    response = client.get("/nested")
    assert (response.status_code, response.json) == (200, NESTED)
    with client.get("/stream") as streamed:
        assert (streamed.status_code, streamed.get_data(as_text=True)) == (200, "[2, 4]\n[4, 6]\n")
    fetched = sorted(key for _, keys in FETCHES for key in keys)
    if setting == "null":  # no batching: one key per fetch
        assert all(len(keys) == 1 for _, keys in FETCHES)
    else:  # one fetch per level of each request, and per step of the stream
        assert [sorted(keys) for _, keys in FETCHES] == [[-1, 1, 3], [11, 13], [1, 2], [3]]
    assert fetched == [-1, 1, 1, 2, 3, 3, 11, 13]


# -- Flask's globals, before/after_request, real SQLite ----------------------


class Users(Source):
    """Rows from the request's SQLite connection (g.db); logs what Flask it sees."""

    def fetch(self, ids: List[int]) -> List[Any]:
        FETCHES.append(("users", sorted(ids)))
        g.seen.append(("fetch", request.args["who"], g.request_id, current_app.name, session.get("user")))
        marks = ", ".join("?" * len(ids))
        rows = dict(g.db.execute(f"SELECT id, name FROM users WHERE id IN ({marks})", ids).fetchall())
        return [rows.get(i) for i in ids]


def sqlite_app(setting: str) -> Tuple[Flask, List[str]]:
    """An app whose before_request opens a SQLite database on ``g``; returns the SQL log."""
    app = make_app(setting)
    statements: List[str] = []

    @app.before_request
    def open_db() -> None:
        g.request_id = request.headers.get("X-Request-Id")
        g.seen = [("before_request", current_dataloader())]
        g.db = sqlite3.connect(":memory:")
        g.db.executescript("""
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
            INSERT INTO users VALUES (1, 'ada'), (2, 'grace'), (3, 'barbara');
        """)
        g.db.set_trace_callback(statements.append)

    @app.teardown_request
    def close_db(error: Optional[BaseException]) -> None:
        db = g.pop("db", None)
        if db is not None:  # None: session_transaction's request context
            db.close()

    @app.get("/login")
    def login() -> str:
        session["user"] = "ada"
        return "ok"

    @app.get("/users")
    def users() -> Any:
        def job(user_id: int) -> Any:
            g.seen.append(("job", request.args["who"], g.request_id, current_app.name, session.get("user")))
            session.setdefault("visited", []).append(user_id)  # writes reach the request's session
            session.modified = True
            return dl().with_(Users).load(user_id)

        names = dl().map(job, [3, 1, 2, 1])
        return {"names": names, "seen": [list(item) for item in g.seen[1:]]}

    @app.after_request
    def after(response: Response) -> Response:
        response.headers["X-In-Job"] = str(current_dataloader() is g.seen[0][1] is not None)
        return response

    return app, statements


@pytest.mark.parametrize("setting", BATCHING)
def test_request_g_current_app_and_session_work_in_jobs_and_fetches(setting: str) -> None:
    app, statements = sqlite_app(setting)
    client = app.test_client()
    assert client.get("/login").status_code == 200
    response = client.get("/users?who=me", headers={"X-Request-Id": "r-1"})
    assert response.status_code == 200
    data = response.json
    assert data["names"] == ["barbara", "ada", "grace", "ada"]
    flask_view = ["me", "r-1", app.name, "ada"]
    assert data["seen"] == [["job"] + flask_view] * 4 + [["fetch"] + flask_view]
    assert FETCHES == [("users", [1, 2, 3])]
    assert [s for s in statements if s.startswith("SELECT")] == [
        "SELECT id, name FROM users WHERE id IN (3, 1, 2)"]  # one query for four loads
    assert response.headers["X-In-Job"] == "True"  # before_ and after_request ran in the job
    with client.session_transaction() as saved:
        assert saved["visited"] == [3, 1, 2, 1]  # every job wrote to the one session


def test_each_request_gets_its_own_dataloader_and_cache() -> None:
    app = make_app()
    seen: List[Tuple[Dataloader, Dict[str, Any]]] = []

    @app.get("/")
    def view() -> str:
        seen.append((dl(), request.environ))
        return str(dl().with_(Doubles).load(4))

    client = app.test_client()
    assert client.get("/").text == client.get("/").text == "8"
    (first, first_environ), (second, second_environ) = seen
    assert first is not second
    assert FETCHES == [("doubles", [4]), ("doubles", [4])]  # the second request did not see the first's cache
    for dataloader, environ in seen:  # nothing of the request outlives it
        assert ENVIRON_KEY not in environ and not dataloader._sources


# -- the setting chain --------------------------------------------------------


@pytest.mark.parametrize(
    "explicit, config, environment, expected",
    [
        ("sync", "async", "null", Dataloader),  # the argument wins
        (None, "async", "null", AsyncDataloader),  # then app.config
        (None, None, "null", NullDataloader),  # then the environment
        (None, None, None, Dataloader),  # then "sync"
        (NullDataloader, None, None, NullDataloader),  # a class
        (None, "tests.test_flask:CountingDataloader", None, CountingDataloader),  # a dotted path
        (None, AsyncDataloader, "sync", AsyncDataloader),
    ],
)
def test_the_setting_chain(monkeypatch: Any, explicit: Any, config: Any, environment: Any, expected: Any) -> None:
    if environment is not None:
        monkeypatch.setenv("FIBERLOADER_DATALOADER", environment)
    app = Flask(__name__)
    if config is not None:
        app.config["FIBERLOADER_DATALOADER"] = config
    extension = Fiberloader(app, dataloader_class=explicit)
    assert app.extensions["fiberloader"] is extension
    assert extension.dataloader_class_for(app) is expected
    app.get("/")(lambda: type(dl()).__name__)
    assert app.test_client().get("/").text == expected.__name__


@pytest.mark.parametrize(
    "where, message",
    [
        ("argument", r"Fiberloader\(dataloader_class=\.\.\.\) is 'fast'"),
        ("config", r"app\.config\['FIBERLOADER_DATALOADER'\] is 'fast'"),
        ("environment", r"\$FIBERLOADER_DATALOADER is 'fast'"),
    ],
)
def test_a_bad_setting_fails_at_init_app_and_names_the_setting(monkeypatch: Any, where: str, message: str) -> None:
    app = Flask(__name__)
    extension = Fiberloader(dataloader_class="fast" if where == "argument" else None)
    if where == "config":
        app.config["FIBERLOADER_DATALOADER"] = "fast"
    if where == "environment":
        monkeypatch.setenv("FIBERLOADER_DATALOADER", "fast")
    with pytest.raises(ConfigurationError, match=message + ".*'sync', 'async', 'null'"):
        extension.init_app(app)
    assert "fiberloader" not in app.extensions and "full_dispatch_request" not in vars(app)  # app untouched


def test_the_config_is_read_by_init_app_not_per_request() -> None:
    app = make_app(FIBERLOADER_DATALOADER="null")
    app.config["FIBERLOADER_DATALOADER"] = "async"  # too late: documented
    app.get("/")(lambda: type(dl()).__name__)
    assert app.test_client().get("/").text == "NullDataloader"


def test_one_extension_serves_several_apps_with_their_own_settings() -> None:
    extension = Fiberloader()
    apps = [Flask("a"), Flask("b")]
    apps[0].config["FIBERLOADER_DATALOADER"] = "null"
    for app in apps:
        extension.init_app(app)
        app.get("/")(lambda: type(dl()).__name__)
    assert [app.extensions["fiberloader"] for app in apps] == [extension, extension]
    assert [app.test_client().get("/").text for app in apps] == ["NullDataloader", "Dataloader"]


def test_init_app_twice_on_one_app_is_an_error() -> None:
    app = make_app()
    with pytest.raises(FiberloaderError, match="already registered"):
        Fiberloader(app)
    app.get("/")(lambda: str(current_dataloader() is request.environ[ENVIRON_KEY]))
    assert app.test_client().get("/").text == "True"  # still one dataloader, not nested ones


# -- streamed responses --------------------------------------------------------


@pytest.mark.parametrize("setting", BATCHING)
def test_a_streamed_body_loads_while_the_server_iterates_it(setting: str) -> None:
    app = make_app(setting)
    captured: List[Any] = []
    cleanup: List[Any] = []

    @app.get("/stream")
    def stream() -> Response:
        captured.extend([dl(), request.environ])

        def body() -> Iterator[str]:
            try:
                source = dl().with_(Doubles)
                for keys in ([1, 2], [2, 3]):
                    yield json.dumps(dl().map(source.load, keys))
            finally:
                cleanup.append(current_dataloader())

        return Response(body())

    response = app.test_client().get("/stream")
    dataloader, environ = captured
    chunks = iter(response.response)
    assert next(chunks) == b"[2, 4]"
    assert environ[ENVIRON_KEY] is dataloader  # during the request
    assert not live_greenlets()  # no worker between two steps
    assert next(chunks) == b"[4, 6]"
    assert FETCHES == [("doubles", [1, 2]), ("doubles", [3])]  # the second step used the cache
    assert list(chunks) == [] and cleanup == [dataloader]  # the generator ended in a job of the request
    assert dataloader._sources  # the cache lives until the server closes the body
    response.close()
    assert ENVIRON_KEY not in environ and not dataloader._sources


@pytest.mark.parametrize("setting", [None] + ALL)
def test_stream_with_context_works_as_without_the_extension(setting: Optional[str]) -> None:
    app = Flask(__name__)
    app.secret_key = "test"
    if setting is not None:  # None: plain Flask, for comparison
        Fiberloader(app, setting)
    teardowns: List[str] = []
    app.teardown_request(lambda error: teardowns.append(request.path))

    def doubles(keys: List[int]) -> List[int]:
        if current_dataloader() is None:  # without the extension: no batching
            return [2 * k for k in keys]
        return dl().map(dl().with_(Doubles).load, keys)

    @app.get("/stream")
    def stream() -> Response:
        g.user = "ada"
        session["n"] = 1

        @stream_with_context
        def body() -> Iterator[str]:
            yield f"{request.args['q']} {g.user} {session['n']} "
            for keys in ([1, 2], [3]):
                yield f"{doubles(keys)} {request.path} "

        return Response(body())

    client = app.test_client()
    response = client.get("/stream?q=hi")
    assert response.get_data(as_text=True) == "hi ada 1 [2, 4] /stream [6] /stream "
    response.close()
    assert teardowns == ["/stream", "/stream"]  # Flask 3.1 tears down at the end of dispatch and of the stream
    if setting is None:
        assert FETCHES == []
    elif setting == "null":
        assert FETCHES == [("doubles", [1]), ("doubles", [2]), ("doubles", [3])]
    else:  # a fetch per step of the stream
        assert FETCHES == [("doubles", [1, 2]), ("doubles", [3])]


def test_a_fetch_during_streaming_sees_the_request() -> None:
    app = make_app()

    class Tagged(Source):
        def fetch(self, keys: List[int]) -> List[str]:
            FETCHES.append(("tagged", list(keys)))
            return [f"{request.args['tag']}{k}" for k in keys]

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield ",".join(dl().map(dl().with_(Tagged).load, [1, 2]))  # fetched after the dispatch

        return Response(stream_with_context(body()))

    with app.test_client().get("/stream?tag=t") as response:
        assert response.text == "t1,t2"
    assert FETCHES == [("tagged", [1, 2])]


def test_closing_a_stream_early_runs_its_cleanup_in_a_job_of_the_request() -> None:
    app = make_app()
    runs: List[Any] = []

    @app.route("/stream", methods=["GET", "HEAD"])
    def stream() -> Response:
        runs.append([dl(), request.environ])

        def body() -> Iterator[bytes]:
            try:
                while True:
                    yield str(dl().with_(Doubles).load(1)).encode()
            finally:
                runs[-1].append(current_dataloader() is runs[-1][0])

        return Response(body())

    client = app.test_client()
    response = client.get("/stream")
    assert next(iter(response.response)) == b"2"
    response.close()
    response = client.head("/stream")  # the server never iterates a HEAD body, but closes it
    response.close()
    assert runs[0][2:] == [True]  # the generator's finally ran, as a job of the request
    for dataloader, environ, *_ in runs:
        assert ENVIRON_KEY not in environ and not dataloader._sources


def test_send_file_is_handed_to_the_server_untouched() -> None:
    app = make_app()
    environs: List[Dict[str, Any]] = []

    @app.get("/file")
    def file() -> Response:
        environs.append(request.environ)
        return send_file(io.BytesIO(b"file data"), mimetype="text/plain")

    response = app.test_client().get("/file")
    assert ENVIRON_KEY not in environs[0]  # finished right after the dispatch: the body cannot load
    assert response.data == b"file data"
    response.close()


# -- errors: as without the extension ------------------------------------------


class Failing(Source):
    def fetch(self, keys: List[int]) -> List[int]:
        raise LookupError(f"backend down for {keys}")


def error_app(extension: bool) -> Tuple[Flask, List[Any]]:
    """Views that fail in various ways; ``loaded`` maps over a dataloader with or without the extension."""
    app = Flask(__name__)
    if extension:
        Fiberloader(app)
    handled: List[Any] = []

    def loader() -> Dataloader:
        return current_dataloader() or NullDataloader()  # without the extension: a plain one

    def fail(k: int) -> int:
        if k == 2:
            raise ZeroDivisionError("item 2")
        return loader().with_(Doubles).load(k)

    @app.errorhandler(KeyError)
    def key_error(error: KeyError) -> Tuple[str, int]:
        handled.append((error, current_dataloader()))
        return f"handled {error}", 418

    @app.errorhandler(500)
    def server_error(error: Any) -> Tuple[str, int]:
        return f"custom 500: {type(error.original_exception).__name__}", 500

    views: Dict[str, Any] = {
        "boom": lambda: loader().map(lambda k: 1 / 0, [1]),
        "handled": lambda: loader().map(lambda k: {}["missing"], [1]),
        "abort": lambda: abort(404),
        "item": lambda: str(loader().map(fail, [1, 2, 3])),
        "fetch": lambda: str(loader().map(lambda k: loader().with_(Failing).load(k), [1, 2])),
        "ok": lambda: str(loader().map(fail, [1, 3])),
    }
    for name, view in views.items():
        app.add_url_rule(f"/{name}", name, view)
    return app, handled


ERROR_ROUTES = ["/boom", "/handled", "/abort", "/item", "/fetch", "/ok"]


@pytest.mark.parametrize("path", ERROR_ROUTES)
def test_errors_give_the_responses_flask_gives_without_the_extension(path: str) -> None:
    responses = []
    for extension in (False, True):
        app, _ = error_app(extension)
        response = app.test_client().get(path)
        responses.append((response.status_code, response.get_data(as_text=True)))
    assert responses[0] == responses[1]
    assert responses[1][0] != 200 or path == "/ok"


def test_error_handlers_get_the_views_exception_in_the_job() -> None:
    app, handled = error_app(True)
    assert app.test_client().get("/handled").status_code == 418
    [(error, dataloader)] = handled
    assert type(error) is KeyError and isinstance(dataloader, Dataloader)


def test_in_testing_mode_the_views_exception_reaches_the_client_itself() -> None:
    app = make_app()
    app.testing = True
    raised: List[Exception] = []

    @app.get("/")
    def view() -> str:
        dl().with_(Doubles).load(1)
        raised.append(RuntimeError("from the view"))
        raise raised[0]

    with pytest.raises(RuntimeError) as info:
        app.test_client().get("/")
    assert info.value is raised[0]


def test_a_failing_helper_job_ends_the_parked_view_and_leaks_nothing() -> None:
    app = make_app()
    finished: List[str] = []

    @app.get("/")
    def view() -> str:
        def helper() -> None:
            raise OSError("helper failed")

        dl().append_job(helper)
        try:
            return str(dl().with_(Doubles).load(1))  # parks; the helper then fails the run
        finally:
            finished.append("view")

    response = app.test_client().get("/")
    assert response.status_code == 500
    assert finished == ["view"] and not live_greenlets()


# -- Strawberry's Flask view ---------------------------------------------------


class Authors(Source):
    def fetch(self, ids: List[int]) -> List[Any]:
        FETCHES.append(("authors", list(ids)))
        return [{"name": {1: "ada", 2: "grace", 3: "barbara"}[i]} for i in ids]


RESOLVER_DATALOADERS: List[Any] = []


@strawberry.type
class FlaskAuthor:
    name: str


@strawberry.type
class FlaskBook:
    title: str
    author_id: strawberry.Private[int]

    @strawberry.field
    def author(self) -> FlaskAuthor:
        RESOLVER_DATALOADERS.append(current_dataloader())
        return FlaskAuthor(name=dl().with_(Authors).load(self.author_id)["name"])


@strawberry.type
class FlaskQuery:
    @strawberry.field
    def books(self) -> List[FlaskBook]:
        return [FlaskBook(title=f"book {i}", author_id=1 + i % 2) for i in range(6)]


def graphql_app(setting: str) -> Flask:
    app = make_app(setting)
    schema = strawberry.Schema(query=FlaskQuery, execution_context_class=DataloaderExecutionContext)
    app.add_url_rule("/graphql", view_func=GraphQLView.as_view("graphql", schema=schema, graphql_ide=None))

    @app.before_request
    def preload() -> None:  # a load the request asked for before the GraphQL view ran
        g.pending = dl().with_(Authors).request(3)
        RESOLVER_DATALOADERS.append(request.environ[ENVIRON_KEY])

    return app


@pytest.mark.parametrize("setting", BATCHING)
def test_strawberry_flask_view_batches_with_the_requests_dataloader(setting: str) -> None:
    RESOLVER_DATALOADERS.clear()
    app = graphql_app(setting)
    response = app.test_client().post("/graphql", json={"query": "{ books { title author { name } } }"})
    assert response.status_code == 200
    assert response.json == {"data": {"books": [
        {"title": f"book {i}", "author": {"name": ["ada", "grace"][i % 2]}} for i in range(6)]}}
    assert FETCHES == [("authors", [3, 1, 2])]  # one fetch: the request's pending key and the query's
    request_dataloader, *in_resolvers = RESOLVER_DATALOADERS
    assert type(request_dataloader) is CLASSES[setting]
    assert in_resolvers == [request_dataloader] * 6


def test_strawberry_flask_view_answers_the_same_without_batching() -> None:
    app = graphql_app("null")
    response = app.test_client().post("/graphql", json={"query": "{ books { author { name } } }"})
    assert response.json == {"data": {"books": [{"author": {"name": ["ada", "grace"][i % 2]}} for i in range(6)]}}
    assert FETCHES == [("authors", [1]), ("authors", [2])]  # each key when first loaded; 3 never was
