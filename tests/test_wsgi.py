"""fiberloader.wsgi.DataloaderMiddleware: one dataloader per request, the WSGI contract kept."""

from __future__ import annotations

import io
import json
from contextvars import ContextVar
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple
from wsgiref.util import setup_testing_defaults

import pytest

from fiberloader import ConfigurationError, Dataloader, NullDataloader, Source, current_dataloader
from fiberloader.wsgi import ENVIRON_KEY, DataloaderMiddleware

from .conftest import live_greenlets

FETCHES: List[Tuple[str, List[Any]]] = []


class Squares(Source):
    def fetch(self, keys: List[int]) -> List[int]:
        FETCHES.append(("squares", sorted(keys)))
        return [key * key for key in keys]


def call(app: Callable[..., Iterable[bytes]], path: str = "/") -> Tuple[str, bytes, Dict[str, Any]]:
    """One request, as a WSGI server makes it: call, iterate the body, close it."""
    environ: Dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    status: List[str] = []
    body = app(environ, lambda s, headers, exc_info=None: status.append(s))
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return status[0], data, environ


def squares_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    dl = current_dataloader()
    assert dl is environ[ENVIRON_KEY]
    values = dl.map(lambda n: dl.with_(Squares).load(n), [1, 2, 3])  # type: ignore[union-attr]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(values).encode()]


@pytest.fixture(autouse=True)
def fresh_log() -> Iterator[None]:
    FETCHES.clear()
    yield


def test_the_application_runs_as_a_job_and_its_loads_batch(any_scheduler: Any) -> None:
    status, data, environ = call(DataloaderMiddleware(squares_app, any_scheduler))
    assert status == "200 OK" and json.loads(data) == [1, 4, 9]
    expected = [("squares", [1, 2, 3])] if any_scheduler is not NullDataloader else [
        ("squares", [1]), ("squares", [2]), ("squares", [3])]
    assert FETCHES == expected
    assert ENVIRON_KEY not in environ  # nothing of the request is left behind


def test_each_request_gets_its_own_dataloader_and_cache() -> None:
    seen: List[Any] = []

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        seen.append(current_dataloader())
        current_dataloader().with_(Squares).load(4)  # type: ignore[union-attr]
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = DataloaderMiddleware(app)
    call(wrapped)
    call(wrapped)
    assert seen[0] is not seen[1]
    assert FETCHES == [("squares", [4]), ("squares", [4])]  # no cache shared between requests


def test_a_generator_body_may_load_while_the_server_iterates_it(scheduler: Any) -> None:
    closed: List[bool] = []

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            try:
                dl = current_dataloader()
                source = dl.with_(Squares)  # type: ignore[union-attr]
                for chunk in ([1, 2], [2, 3]):
                    yield json.dumps(dl.map(source.load, chunk)).encode()  # type: ignore[union-attr]
            finally:
                closed.append(current_dataloader() is environ[ENVIRON_KEY])

        return body()

    middleware = DataloaderMiddleware(app, scheduler)
    environ: Dict[str, Any] = {}
    setup_testing_defaults(environ)
    body = middleware(environ, lambda *a: None)
    dataloader = environ[ENVIRON_KEY]
    assert list(body) == [b"[1, 4]", b"[4, 9]"]
    assert FETCHES == [("squares", [1, 2]), ("squares", [3])]  # the second step reused the cache
    assert not live_greenlets()  # between steps and after, no worker is alive
    body.close()  # type: ignore[attr-defined]
    assert closed == [True]  # the generator's cleanup ran as a job of the request
    assert ENVIRON_KEY not in environ and not dataloader._sources


STEP: "ContextVar[Any]" = ContextVar("step", default=None)


def test_what_a_body_sets_in_its_context_stays_from_step_to_step_and_to_close(scheduler: Any) -> None:
    """As Flask's stream_with_context needs: it pushes a context var at the first step."""
    seen: List[Any] = []

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            STEP.set("pushed at the first step")
            try:
                yield b"a"
                seen.append(STEP.get())
                yield b"b"
            finally:
                seen.append(STEP.get())

        return body()

    status, data, _ = call(DataloaderMiddleware(app, scheduler))
    assert data == b"ab"
    assert seen == ["pushed at the first step"] * 2
    assert STEP.get() is None  # nothing leaked into the server's context


def test_close_runs_even_when_the_body_is_not_iterated_to_the_end() -> None:
    closed: List[str] = []

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            try:
                while True:
                    yield b"x"
            finally:
                closed.append("closed")

        return body()

    environ: Dict[str, Any] = {}
    setup_testing_defaults(environ)
    body = DataloaderMiddleware(app)(environ, lambda *a: None)
    assert next(iter(body)) == b"x"
    body.close()  # type: ignore[attr-defined]
    assert closed == ["closed"] and ENVIRON_KEY not in environ


def test_an_exception_in_the_application_propagates_and_leaks_nothing(scheduler: Any) -> None:
    used: List[Any] = []

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        used.append(current_dataloader())
        current_dataloader().with_(Squares).load(2)  # type: ignore[union-attr]
        raise LookupError("no such page")

    environ: Dict[str, Any] = {}
    setup_testing_defaults(environ)
    with pytest.raises(LookupError, match="no such page"):
        DataloaderMiddleware(app, scheduler)(environ, lambda *a: None)
    assert ENVIRON_KEY not in environ and not live_greenlets()
    assert not used[0]._sources  # the sources (and what they hold) are dropped too


def test_the_setting_is_resolved_at_start_up(monkeypatch: Any) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "null")
    # issubclass: with Django configured in the process, fiberloader.django adapts the class
    assert issubclass(DataloaderMiddleware(squares_app).dataloader_class, NullDataloader)
    explicit = DataloaderMiddleware(squares_app, "sync").dataloader_class  # explicit wins
    assert issubclass(explicit, Dataloader) and not issubclass(explicit, NullDataloader)
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "fast")
    with pytest.raises(ConfigurationError, match="FIBERLOADER_DATALOADER.*'fast'"):
        DataloaderMiddleware(squares_app)


def test_ariadne_wsgi_app_runs_its_queries_in_the_requests_dataloader(any_scheduler: Any) -> None:
    from ariadne import ObjectType, QueryType, make_executable_schema
    from ariadne.wsgi import GraphQL

    from fiberloader.graphql import DataloaderExecutionContext

    query = QueryType()
    query.set_field("squares", lambda *_, n: list(range(1, n + 1)))
    square = ObjectType("Square")
    square.set_field("value", lambda n, info: current_dataloader().with_(Squares).load(n))  # type: ignore[union-attr]
    schema = make_executable_schema(
        "type Query { squares(n: Int!): [Square!]! } type Square { value: Int! }", query, square
    )
    app = DataloaderMiddleware(GraphQL(schema, execution_context_class=DataloaderExecutionContext), any_scheduler)
    payload = json.dumps({"query": "{ squares(n: 4) { value } }"}).encode()
    environ: Dict[str, Any] = {
        "REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(payload)), "wsgi.input": io.BytesIO(payload),
    }
    setup_testing_defaults(environ)
    status: List[str] = []
    body = app(environ, lambda s, h, e=None: status.append(s))
    data = json.loads(b"".join(body))
    getattr(body, "close", lambda: None)()
    assert status == ["200 OK"]
    assert data == {"data": {"squares": [{"value": n * n} for n in range(1, 5)]}}
    batched = any_scheduler is not NullDataloader
    assert FETCHES == ([("squares", [1, 2, 3, 4])] if batched else [("squares", [n]) for n in range(1, 5)])
