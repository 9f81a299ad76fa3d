"""The blog example plus fault endpoints, for ``tests/test_soak.py`` under gunicorn.

``from_environment()`` gives the blog app (``examples.blog.app.create_app``,
batching on, the scheduler from ``$FIBERLOADER_DATALOADER``, the database
``$BLOG_DB``) with these additions:

* ``GET /soak/load/<kind>?keys=1,2,3&seconds=S&timeout=T&give_up=G``: one
  job per key (``dl.map``); each loads ``key`` from a healthy source and
  from ``FaultSource(kind)``.  Kinds: ``ok``; ``raise`` (``fetch`` raises
  ``RuntimeError``); ``short`` (one result too few); ``hang`` (sleeps
  ``seconds``, ``fetch_timeout = timeout``); ``keyboard-interrupt``,
  ``system-exit``, ``greenlet-exit`` (``fetch`` raises that).  ``give_up``:
  a ``gevent.Timeout`` of that many seconds around the fault's ``load``.
  Exceptions become JSON: 500 ``{"error": class, "message": ...}``, 504 for
  a ``TimeoutError`` (``FetchTimeoutError``, or the job giving up).
  ``map_give_up``: a ``gevent.Timeout`` around the whole ``dl.map``.
* ``POST /soak/graphql``: ``{"query": ...}`` on the schema ``SDL`` below:
  ``ok(key)`` and ``fault(kind, key, seconds, timeout, giveUp)`` resolve
  through the same sources, so a fault is one field's located error.
* ``GET /soak/user?keys=...`` (header ``X-User``): values that depend on the
  requesting user, loaded through a source that reads Flask's ``request``
  in ``fetch``, two levels deep.
* ``GET /soak/stream?chunks=N&size=B&fail_at=I``: a streamed body whose
  every step loads (a 5 ms fetch), so it steps in jobs of the request's
  dataloader; the fetch of step ``I`` raises.
* ``GET /soak/park?jobs=N`` (header ``X-Soak-Id``): N jobs parked on a fetch
  that sleeps 60 s; ``GET /_soak/kill?id=...`` kills that request's greenlet.
* ``GET /_soak/stats``: the worker's pid, live greenlets (but the idle
  workers in the pool, which ``live_greenlets`` first checks to hold
  nothing), the pool's size and bound, open fds, live ``Dataloader`` and
  ``Source`` instances, live gc-tracked objects, RSS and the counters of the
  ``finally`` blocks above (``/_soak/counters``: those alone, without a
  garbage collection).  Served outside Flask and outside any dataloader, so
  it does not count itself.
* ``PoolUse``: an extension (``FIBERLOADER_EXTENSIONS=tests.soak_app:PoolUse``)
  that counts the worker greenlets runs used ("fibers") and how many of
  those had served an earlier run ("fibers-reused": taken from the pool).
"""

from __future__ import annotations

import collections
import gc
import json
import os
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import gevent
import graphql
from flask import Flask, Response, jsonify, request
from greenlet import GreenletExit
from werkzeug.exceptions import HTTPException

from examples.blog.app import create_app
from fiberloader import Dataloader, Extension, Source, current_dataloader, dataloader_class
from fiberloader._worker import idle_pool, keep_bound
from fiberloader.graphql import graphql_sync
from tests.conftest import live_greenlets

__all__ = ["from_environment", "create_soak_app", "make_application", "FaultSource", "SDL", "user_value"]

#: How often each ``finally`` of the fault paths ran: "fetch-started:<kind>",
#: "fetch-ended:<kind>", "fetch-interrupted:<kind>:<exception>", "job-started",
#: "job-ended", "stream-started", "stream-closed", "stream-finished", "parked", ...
COUNTERS: "collections.Counter[str]" = collections.Counter()
#: X-Soak-Id -> the greenlet serving that request (for /_soak/kill).
REQUESTS: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()

BASE_EXCEPTIONS = {"keyboard-interrupt": KeyboardInterrupt, "system-exit": SystemExit,
                   "greenlet-exit": GreenletExit}
KINDS = ["ok", "raise", "short", "hang", *BASE_EXCEPTIONS]


class FaultSource(Source):
    """``fetch`` answers f"{kind}:{key}" -- or fails the way ``kind`` says."""

    def __init__(self, kind: str, seconds: float = 0.0, timeout: Optional[float] = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.kind, self.seconds = kind, seconds
        if timeout is not None:
            self.fetch_timeout = timeout

    def fetch(self, keys: List[Any]) -> List[Any]:
        COUNTERS[f"fetch-started:{self.kind}"] += 1
        try:
            if self.seconds:
                gevent.sleep(self.seconds)  # cooperative: other requests run meanwhile
            if self.kind == "raise":
                raise RuntimeError(f"the service failed for keys {keys}")
            if self.kind in BASE_EXCEPTIONS:
                raise BASE_EXCEPTIONS[self.kind](f"{self.kind} in fetch")
            values = [f"{self.kind}:{key}" for key in keys]
            return values[:-1] if self.kind == "short" else values
        except BaseException as error:
            if self.kind not in BASE_EXCEPTIONS and not isinstance(error, Exception):
                COUNTERS[f"fetch-interrupted:{self.kind}:{type(error).__name__}"] += 1
            raise
        finally:
            COUNTERS[f"fetch-ended:{self.kind}"] += 1


class UserValues(Source):
    """Values for the requesting user (header ``X-User``), read from Flask's ``request`` in ``fetch``.

    Shared between requests, its cache would hand one user another's values.
    """

    def __init__(self, level: int) -> None:
        self.level = level

    def fetch(self, keys: List[Any]) -> List[Any]:
        user = request.headers["X-User"]
        gevent.sleep(0.001)  # cooperative I/O: the other requests' fetches interleave
        return [f"{user}:{self.level}:{key}" for key in keys]


def user_value(user: str, key: int) -> List[str]:
    """What ``/soak/user`` answers for one key (the test's expected value)."""
    return [f"{user}:1:{key}", f"{user}:2:{user}:1:{key}"]


def _float(name: str, default: Optional[float] = None) -> Optional[float]:
    raw = request.args.get(name)
    return default if raw is None else float(raw)


def _keys() -> List[int]:
    return [int(key) for key in request.args.get("keys", "1,2,3").split(",") if key]


def _load_fault(kind: str, key: int, seconds: float, timeout: Optional[float], give_up: Optional[float]) -> Any:
    dl = current_dataloader()
    assert dl is not None
    handle = dl.with_(FaultSource, kind, seconds, timeout).request(key)
    if give_up is None:
        return handle.load()
    timer = gevent.Timeout(give_up)
    try:
        with timer:
            return handle.load()
    except gevent.Timeout as error:
        if error is not timer:  # someone else's
            raise
        COUNTERS["gave-up"] += 1
        raise TimeoutError(f"gave up waiting for {kind}:{key} after {give_up} s") from None


def load_view(kind: str) -> Response:
    dl = current_dataloader()
    assert dl is not None
    seconds, timeout, give_up = _float("seconds", 0.0), _float("timeout"), _float("give_up")
    map_give_up = _float("map_give_up")

    def job(key: int) -> List[Any]:
        COUNTERS["job-started"] += 1
        try:
            healthy = dl.with_(FaultSource, "ok").request(key)
            value = _load_fault(kind, key, seconds or 0.0, timeout, give_up)
            return [healthy.load(), value]
        finally:
            COUNTERS["job-ended"] += 1

    if map_give_up is None:
        return jsonify(dl.map(job, _keys()))
    timer = gevent.Timeout(map_give_up)
    try:
        with timer:
            return jsonify(dl.map(job, _keys()))
    except gevent.Timeout as error:
        if error is not timer:
            raise
        COUNTERS["gave-up-map"] += 1
        raise TimeoutError(f"gave up waiting for the map after {map_give_up} s") from None


def user_view() -> Response:
    dl = current_dataloader()
    assert dl is not None

    def job(key: int) -> List[str]:
        first = dl.with_(UserValues, 1).load(key)
        return [first, dl.with_(UserValues, 2).load(first)]

    return jsonify({"user": request.headers["X-User"], "values": dl.map(job, _keys())})


def stream_view() -> Response:
    chunks, size = int(request.args.get("chunks", "10")), int(request.args.get("size", "100"))
    fail_at = int(request.args.get("fail_at", "-1"))

    def body() -> Iterator[bytes]:
        COUNTERS["stream-started"] += 1
        try:
            for index in range(chunks):
                dl = current_dataloader()  # each step runs as a job of the request's dataloader
                assert dl is not None
                value = dl.with_(FaultSource, "raise" if index == fail_at else "ok", 0.005).load(index)
                yield (value + "\n").encode().ljust(size, b".")
            COUNTERS["stream-finished"] += 1
        except BaseException as error:  # GeneratorExit: closed at a yield; else: raised in a step
            COUNTERS[f"stream-ended-by:{type(error).__name__}"] += 1
            raise
        finally:
            COUNTERS["stream-closed"] += 1

    return Response(body(), mimetype="text/plain")


def park_view() -> Response:
    dl = current_dataloader()
    assert dl is not None

    def job(key: int) -> Any:
        COUNTERS["parked"] += 1
        try:
            return dl.with_(FaultSource, "hang", 60.0).load(key)
        finally:
            COUNTERS["unparked"] += 1

    return jsonify(dl.map(job, range(int(request.args.get("jobs", "5")))))


# -- GraphQL ----------------------------------------------------------------------------

SDL = """
type Query {
  ok(key: Int!): String
  fault(kind: String!, key: Int!, seconds: Float = 0, timeout: Float, giveUp: Float): String
}
"""


def build_schema() -> graphql.GraphQLSchema:
    schema = graphql.build_schema(SDL)
    fields = schema.query_type.fields  # type: ignore[union-attr]

    def ok(_: Any, info: Any, key: int) -> Any:
        return current_dataloader().with_(FaultSource, "ok").load(key)  # type: ignore[union-attr]

    def fault(_: Any, info: Any, kind: str, key: int, seconds: float = 0.0, timeout: Optional[float] = None,
              giveUp: Optional[float] = None) -> Any:
        return _load_fault(kind, key, seconds, timeout, giveUp)

    fields["ok"].resolve = ok
    fields["fault"].resolve = fault
    return schema


SCHEMA = build_schema()


def graphql_view() -> Tuple[Response, int]:
    body = request.get_json(silent=True) or {}
    result = graphql_sync(SCHEMA, body.get("query", ""), variable_values=body.get("variables"))
    payload: Dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [error.formatted for error in result.errors]
    return jsonify(payload), 200


# -- the app and the WSGI entry -----------------------------------------------------------


def json_exception(error: Exception) -> Any:
    """Any exception a view lets escape: JSON naming it; 504 for a timeout."""
    if isinstance(error, HTTPException):
        return error
    status = 504 if isinstance(error, TimeoutError) else 500
    return jsonify({"error": type(error).__name__, "message": str(error)}), status


def create_soak_app(database: str, dataloader_class: Any = None) -> Flask:
    app = create_app(database, dataloader_class=dataloader_class)
    app.register_error_handler(Exception, json_exception)
    app.add_url_rule("/soak/load/<kind>", "soak_load", load_view)
    app.add_url_rule("/soak/user", "soak_user", user_view)
    app.add_url_rule("/soak/stream", "soak_stream", stream_view)
    app.add_url_rule("/soak/park", "soak_park", park_view)
    app.add_url_rule("/soak/graphql", "soak_graphql", graphql_view, methods=["POST"])
    return app


def _fds(own: Optional[int]) -> List[str]:
    """What every open fd points to, but the listing's own and the asking connection's."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        if fd == str(own):
            continue
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the directory's own fd, closed by now
            pass
    return sorted(targets)


def _describe(greenlet: Any) -> str:
    run = getattr(greenlet, "_run", None) or getattr(greenlet, "run", None)
    name = getattr(run, "__qualname__", None) or type(run).__name__
    return f"{type(greenlet).__module__}.{type(greenlet).__qualname__}({name})"


def _sqlite_bookkeeping(obj: Any) -> bool:
    """What sqlite3 keeps per connection, bounded but by more than a leak bound over a few thousand
    requests: up to 128 prepared statements, and weak references to its cursors (dead ones are
    dropped every 200 cursors)."""
    kind = type(obj)
    if kind is weakref.ref:
        return obj() is None and obj.__callback__ is None
    return kind.__name__ == "Statement" and kind.__module__ == "sqlite3"


def stats(own_fd: Optional[int] = None) -> Dict[str, Any]:
    """What the worker holds right now (after a full collection); ``own_fd``: the asking connection."""
    # live_greenlets() collects first and leaves out gevent's hubs; a thread's
    # root greenlet (no parent) lives as long as the thread, like its hub
    greenlets = sorted(_describe(g) for g in live_greenlets() if g.parent is not None)
    dataloaders, sources, counted = [], [], 0
    for obj in gc.get_objects():  # one pass: the worker holds ~90,000 objects
        kind = type(obj)
        if issubclass(kind, Dataloader):
            dataloaders.append(kind.__name__)
        elif issubclass(kind, Source):
            sources.append(kind.__name__)
        elif _sqlite_bookkeeping(obj):
            continue
        counted += 1
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {
        "pid": os.getpid(), "greenlets": greenlets, "pooled": len(idle_pool()),
        "pool_bound": keep_bound(dataloader_class()), "fds": _fds(own_fd), "dataloaders": sorted(dataloaders),
        "sources": sorted(sources), "rss": rss, "gc_objects": counted,
        "counters": dict(COUNTERS), "requests": len(REQUESTS),
    }


_served: "weakref.WeakSet[Any]" = weakref.WeakSet()  # worker greenlets that have served a run


class PoolUse(Extension):
    """Counts the worker greenlets runs use, and those of them that served an earlier run."""

    def fiber_started(self, dataloader: Any) -> None:
        worker = gevent.getcurrent()
        COUNTERS["fibers"] += 1
        if worker in _served:
            COUNTERS["fibers-reused"] += 1
        else:
            _served.add(worker)


def kill(soak_id: str) -> Dict[str, Any]:
    target = REQUESTS.get(soak_id)
    if target is None:
        return {"killed": False}
    target.kill(block=True, timeout=10)  # a gevent Greenlet: gunicorn spawned it
    return {"killed": True, "dead": target.dead}


def make_application(flask_app: Flask) -> Callable[..., Iterable[bytes]]:
    def application(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/_soak/stats", "/_soak/counters", "/_soak/kill"):
            if path == "/_soak/stats":
                connection = environ.get("gunicorn.socket")
                payload = stats(connection.fileno() if connection is not None else None)
            elif path == "/_soak/counters":  # cheap: no garbage collection
                payload = dict(COUNTERS)
            else:
                payload = kill(environ.get("QUERY_STRING", "").partition("id=")[2])
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(payload).encode()]
        soak_id = environ.get("HTTP_X_SOAK_ID")
        if soak_id:
            REQUESTS[soak_id] = gevent.getcurrent()
        return flask_app(environ, start_response)

    return application


def from_environment() -> Callable[..., Iterable[bytes]]:
    """The WSGI app for gunicorn (``tests.soak_app:from_environment()``): the blog database is ``$BLOG_DB``."""
    return make_application(create_soak_app(os.environ["BLOG_DB"]))
