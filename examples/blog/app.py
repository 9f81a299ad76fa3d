"""The blog app: the same JSON API written twice, batched and naive.

``create_app(database, batching=True)`` serves

* ``GET /api/posts?first=N``: the first N posts (default 20), each with its
  author, sorted tag names and comments with their authors;
* ``POST /graphql``: the same data through GraphQL
  (``{"query": ..., "variables": ...}``);
* ``GET /api/users/<id>/feed``: a user's name, post titles and comment counts;
* ``GET /api/slow``: three remote services of 20 ms each.

With ``batching=True`` each request runs in its own dataloader
(``fiberloader.flask.Fiberloader``) and the views load through sources
(``fiberloader.sqlalchemy.RecordSource`` and ``AssociationSource``, and two
sources written here), so ``/api/posts`` costs at most 5 SQL statements
whatever N.  With ``batching=False`` it is the same app written the usual
way -- lazy-loaded relationships, a query per row -- the N+1 baseline.
``create_app(database, batching=False, lazy_loads=True)`` serves that naive
code, unchanged, inside fiberloader's Flask integration with
``fiberloader.sqlalchemy.batch_lazy_loads(Base)`` on: SQLAlchemy's own lazy
loads batch, so ``/api/posts`` costs what the batched code costs.  The
responses are identical; the ``X-SQL-Count`` header tells the difference,
and where a dataloader runs ``X-Fiberloader-Stats`` says what the request's
dataloader did (``dataloader.stats``: fetches, keys, loads, cache hits and
errors in all and per source, the most greenlets alive).

Run it (from the repository root)::

    python examples/blog/seed.py /tmp/blog.db
    python examples/blog/app.py /tmp/blog.db              # dev server, port 5000
    python examples/blog/app.py /tmp/blog.db --naive --lazy-loads   # naive code, lazy loads batched
    curl -si 'localhost:5000/api/posts?first=50' | grep X-SQL-Count

or under gunicorn, see ``examples/blog/wsgi.py``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make `examples.blog` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gevent
import graphql
from flask import Flask, Response, abort, current_app, g, has_request_context, jsonify, request
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from examples.blog.models import Base, Comment, Post, Tag, User
from fiberloader import Dataloader, Source, current_dataloader
from fiberloader import graphql as fiberloader_graphql
from fiberloader.sqlalchemy import AssociationSource, RecordSource, batch_lazy_loads

__all__ = ["create_app", "get_session", "serialize_post", "serialize_post_naive", "build_schema"]

DEFAULT_FIRST = 20
MAX_FIRST = 1000
SLOW_SECONDS = 0.02  # each remote service of /api/slow
AUTH_SECONDS = 0.002  # the "auth service" asked who the viewer of a feed is


class BlogState:
    """What one app holds: its engine, its session factory, its mode and schema."""

    def __init__(self, engine: Engine, batching: bool) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine)
        self.batching = batching
        self.schema = build_schema(batching)
        self.in_flight = 0  # requests being served right now (X-Concurrent-Requests)
        self.lock = threading.Lock()


def state() -> BlogState:
    return current_app.extensions["blog"]  # type: ignore[no-any-return]


def get_session() -> Session:
    """The request's SQLAlchemy session, opened on first use, closed at teardown."""
    session = g.get("db_session")
    if session is None:
        session = g.db_session = state().sessions()
    return session  # type: ignore[no-any-return]


def loader() -> Dataloader:
    """The request's dataloader (the view runs as one of its jobs)."""
    dataloader = current_dataloader()
    if dataloader is None:
        raise RuntimeError("no dataloader is running: batched views need fiberloader.flask.Fiberloader")
    g.dataloader_name = type(dataloader).__name__
    return dataloader


# -- JSON shapes, shared by both modes ----------------------------------------------


def user_json(user: User) -> Dict[str, Any]:
    return {"id": user.id, "name": user.name}


def post_json(post: Post, author: User, tags: Sequence[Tag], comments: Sequence[Comment],
              comment_authors: Sequence[User]) -> Dict[str, Any]:
    by_id = sorted(zip(comments, comment_authors), key=lambda pair: pair[0].id)
    return {
        "id": post.id,
        "title": post.title,
        "author": user_json(author),
        "tags": sorted(tag.name for tag in tags),
        "comments": [{"id": c.id, "body": c.body, "author": user_json(a)} for c, a in by_id],
    }


# -- /api/posts ---------------------------------------------------------------------


def serialize_post(post: Post) -> Dict[str, Any]:
    """One post as JSON, loading what it needs through sources (runs as a job).

    ``request`` registers the three loads before the job waits, so the
    author, the comments and the tags of every post of the page are fetched
    in one round: one query each.  The comments' authors are the next round.
    """
    dl, session = loader(), get_session()
    users = dl.with_(RecordSource, session, User)
    author = users.request(post.author_id)
    comments = dl.with_(AssociationSource, session, Post, "comments").request(post)
    tags = dl.with_(AssociationSource, session, Post, "tags").request(post)
    comment_list = comments.load()
    comment_authors = users.load_all([comment.author_id for comment in comment_list])
    return post_json(post, author.load(), tags.load(), comment_list, comment_authors)


def serialize_post_naive(post: Post) -> Dict[str, Any]:
    """The same JSON the usual way: every relationship is a lazy load, a query per row."""
    comments = post.comments
    return post_json(post, post.author, post.tags, comments, [comment.author for comment in comments])


def first_argument() -> int:
    raw = request.args.get("first", str(DEFAULT_FIRST))
    try:
        first = int(raw)
    except ValueError:
        first = -1
    if not 0 <= first <= MAX_FIRST:
        abort(400, f"first must be an integer from 0 to {MAX_FIRST}, not {raw!r}")
    return first


def list_posts() -> Response:
    session = get_session()
    posts = session.scalars(select(Post).order_by(Post.id).limit(first_argument())).all()
    if state().batching:
        return jsonify(loader().map(serialize_post, posts))
    return jsonify([serialize_post_naive(post) for post in posts])


# -- /api/users/<id>/feed ------------------------------------------------------------


class ViewerSource(Source[str, Optional[User]]):
    """Who is looking at the feed: asks an "auth service", then loads the user.

    Its key is always ``"viewer"`` and its answer comes from Flask's
    ``request``: shared between two requests, its cache would hand one user
    the other's feed.  Each request has its own dataloader, so it never does.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def fetch(self, keys: List[str]) -> List[Optional[User]]:
        user_id = request.view_args["user_id"]  # type: ignore[index]
        gevent.sleep(AUTH_SECONDS)  # cooperative I/O: other requests run meanwhile
        users = self.dataloader.with_(RecordSource, self.session, User)  # type: ignore[union-attr]
        user = users.load(user_id)  # a fetch may load from another source
        return [user for _ in keys]


class CommentCounts(Source[int, int]):
    """Number of comments per post id: one ``GROUP BY`` query per batch.

    A source of your own on the request's session.  Under ``AsyncDataloader``
    the fetches of one round run concurrently; this one never shares its
    round with another query here (and sqlite3 never yields mid-statement),
    so it needs no turn-taking on the session as ``fiberloader.sqlalchemy``'s
    sources do.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def fetch(self, post_ids: List[int]) -> List[int]:
        rows = self.session.execute(
            select(Comment.post_id, func.count()).where(Comment.post_id.in_(post_ids)).group_by(Comment.post_id))
        counts = {post_id: count for post_id, count in rows}
        return [counts.get(post_id, 0) for post_id in post_ids]


def feed_json(user: User, posts: Sequence[Post], counts: Sequence[int]) -> Dict[str, Any]:
    pairs = sorted(zip(posts, counts), key=lambda pair: pair[0].id)
    return {"user": user_json(user), "posts": [{"id": p.id, "title": p.title, "comments": n} for p, n in pairs]}


def user_feed(user_id: int) -> Response:
    session = get_session()
    if state().batching:
        dl = loader()
        user = dl.with_(ViewerSource, session).load("viewer")
        if user is None:
            abort(404, f"no user {user_id}")
        posts = dl.with_(AssociationSource, session, User, "posts").load(user)
        counts = dl.map(dl.with_(CommentCounts, session).load, [post.id for post in posts])
        return jsonify(feed_json(user, posts, counts))
    gevent.sleep(AUTH_SECONDS)
    user = session.get(User, user_id)
    if user is None:
        abort(404, f"no user {user_id}")
    posts = user.posts
    counts = [session.scalar(select(func.count()).where(Comment.post_id == post.id)) or 0 for post in posts]
    return jsonify(feed_json(user, posts, counts))


# -- /api/slow: three remote services -----------------------------------------------


class SlowService(Source[Any, Any]):
    """A remote service: 20 ms of cooperative I/O per call, answers derived from the keys."""

    @classmethod
    def call(cls, keys: List[Any]) -> List[Any]:
        gevent.sleep(SLOW_SECONDS)  # an HTTP call, with gevent-friendly sockets
        return [cls.answer(key) for key in keys]

    @staticmethod
    def answer(key: Any) -> Any:
        raise NotImplementedError

    def fetch(self, keys: List[Any]) -> List[Any]:
        return self.call(keys)


class WeatherService(SlowService):
    @staticmethod
    def answer(city: str) -> Dict[str, Any]:
        return {"city": city, "celsius": sum(map(ord, city)) % 35}


class ExchangeRateService(SlowService):
    @staticmethod
    def answer(currency: str) -> Dict[str, Any]:
        return {"currency": currency, "per_euro": round(0.5 + sum(map(ord, currency)) % 97 / 10, 2)}


class QuoteService(SlowService):
    QUOTES = ["Simple is better than complex.", "Readability counts.", "Now is better than never."]

    @classmethod
    def answer(cls, number: int) -> str:
        return cls.QUOTES[number % len(cls.QUOTES)]


CITIES, CURRENCIES, QUOTE = ["Oslo", "Lima", "Kyoto"], ["USD", "JPY"], 7


def slow_json(weather: List[Any], rates: List[Any], quote: str) -> Dict[str, Any]:
    return {"weather": weather, "rates": rates, "quote": quote}


def slow() -> Response:
    if state().batching:
        dl = loader()
        # three jobs, one per service: the three fetches are one round, which
        # AsyncDataloader runs concurrently (~20 ms) and Dataloader in turn (~60 ms)
        weather, rates, quote = dl.map(lambda job: job(), [
            lambda: dl.with_(WeatherService).load_all(CITIES),
            lambda: dl.with_(ExchangeRateService).load_all(CURRENCIES),
            lambda: dl.with_(QuoteService).load(QUOTE),
        ])
        return jsonify(slow_json(weather, rates, quote))
    weather = WeatherService.call(CITIES)
    rates = ExchangeRateService.call(CURRENCIES)
    (quote,) = QuoteService.call([QUOTE])
    return jsonify(slow_json(weather, rates, quote))


# -- /graphql -------------------------------------------------------------------------

SDL = """
type Query {
  users: [User!]!
  user(id: Int!): User
  posts(first: Int = 20): [Post!]!
  post(id: Int!): Post
  comments(first: Int = 20): [Comment!]!
  tags: [Tag!]!
}

type User { id: Int! name: String! posts: [Post!]! comments: [Comment!]! }
type Post { id: Int! title: String! body: String! author: User! comments: [Comment!]! tags: [Tag!]! }
type Comment { id: Int! body: String! post: Post! author: User! }
type Tag { id: Int! name: String! posts: [Post!]! }
"""


def _by_id(items: Sequence[Any]) -> List[Any]:
    return sorted(items, key=lambda item: item.id)


def _by_name(items: Sequence[Any]) -> List[Any]:
    return sorted(items, key=lambda item: item.name)


def _top_level_resolvers() -> Dict[Tuple[str, str], Callable[..., Any]]:
    """Root lists: one query each, the same in both modes."""
    def first_rows(model: Any) -> Callable[..., Sequence[Any]]:
        def resolve(_: Any, info: Any, first: int = DEFAULT_FIRST) -> Sequence[Any]:
            if not 0 <= first <= MAX_FIRST:
                raise graphql.GraphQLError(f"first must be from 0 to {MAX_FIRST}, not {first}")
            return get_session().scalars(select(model).order_by(model.id).limit(first)).all()
        return resolve

    return {
        ("Query", "users"): lambda _, info: get_session().scalars(select(User).order_by(User.id)).all(),
        ("Query", "posts"): first_rows(Post),
        ("Query", "comments"): first_rows(Comment),
        ("Query", "tags"): lambda _, info: get_session().scalars(select(Tag).order_by(Tag.name)).all(),
    }


def _batched_resolvers() -> Dict[Tuple[str, str], Callable[..., Any]]:
    """Plain resolvers that ``load``: the executor batches them across the whole query."""
    def record(model: Any, key: Any) -> Any:
        return current_dataloader().with_(RecordSource, get_session(), model).load(key)  # type: ignore[union-attr]

    def related(model: Any, name: str, instance: Any) -> Any:
        return current_dataloader().with_(  # type: ignore[union-attr]
            AssociationSource, get_session(), model, name).load(instance)

    return {
        ("Query", "user"): lambda _, info, id: record(User, id),
        ("Query", "post"): lambda _, info, id: record(Post, id),
        ("User", "posts"): lambda user, info: _by_id(related(User, "posts", user)),
        ("User", "comments"): lambda user, info: _by_id(related(User, "comments", user)),
        ("Post", "author"): lambda post, info: record(User, post.author_id),
        ("Post", "comments"): lambda post, info: _by_id(related(Post, "comments", post)),
        ("Post", "tags"): lambda post, info: _by_name(related(Post, "tags", post)),
        ("Comment", "author"): lambda comment, info: record(User, comment.author_id),
        ("Comment", "post"): lambda comment, info: record(Post, comment.post_id),
        ("Tag", "posts"): lambda tag, info: _by_id(related(Tag, "posts", tag)),
    }


def _naive_resolvers() -> Dict[Tuple[str, str], Callable[..., Any]]:
    """The usual resolvers: attribute access, a lazy load per object."""
    return {
        ("Query", "user"): lambda _, info, id: get_session().get(User, id),
        ("Query", "post"): lambda _, info, id: get_session().get(Post, id),
        ("User", "posts"): lambda user, info: _by_id(user.posts),
        ("User", "comments"): lambda user, info: _by_id(user.comments),
        ("Post", "author"): lambda post, info: post.author,
        ("Post", "comments"): lambda post, info: _by_id(post.comments),
        ("Post", "tags"): lambda post, info: _by_name(post.tags),
        ("Comment", "author"): lambda comment, info: comment.author,
        ("Comment", "post"): lambda comment, info: comment.post,
        ("Tag", "posts"): lambda tag, info: _by_id(tag.posts),
    }


def build_schema(batching: bool) -> graphql.GraphQLSchema:
    """The blog's GraphQL schema with batched (``load``) or naive resolvers."""
    schema = graphql.build_schema(SDL)
    resolvers = {**_top_level_resolvers(), **(_batched_resolvers() if batching else _naive_resolvers())}
    for (type_name, field_name), resolve in resolvers.items():
        schema.get_type(type_name).fields[field_name].resolve = resolve  # type: ignore[union-attr]
    return schema


def graphql_view() -> Tuple[Response, int]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        abort(400, 'expected a JSON object {"query": "...", "variables": {...}}')
    variables = body.get("variables")
    if variables is not None and not isinstance(variables, dict):
        abort(400, "variables must be a JSON object")
    execute: Callable[..., graphql.ExecutionResult] = graphql.graphql_sync
    if state().batching:
        loader()  # the operation runs in the request's dataloader
        execute = fiberloader_graphql.graphql_sync
    result = execute(state().schema, body["query"], variable_values=variables,
                     operation_name=body.get("operationName"))
    payload: Dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [error.formatted for error in result.errors]
    return jsonify(payload), 200 if result.data is not None else 400


# -- the app --------------------------------------------------------------------------


def _count_statement(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                     executemany: bool) -> None:
    """Engine event: note every SQL statement of the current request in ``g``."""
    if has_request_context():
        statements = g.get("sql_statements")
        if statements is not None:
            statements.append(statement)  # list.append: safe from a thread-pool fetch too


def _engine(database: str) -> Engine:
    url = database if "://" in database else f"sqlite:///{database}"
    # sqlite3 connections may serve the request greenlets of other threads' pools
    connect_args = {"check_same_thread": False} if url.startswith("sqlite") else {}
    # pool: one connection per concurrent request, never a wait for one (under
    # gevent a wait would switch greenlets in the middle of a session's work)
    return create_engine(url, connect_args=connect_args, pool_size=10, max_overflow=-1)


def stats_header(dataloader: Dataloader) -> str:
    """What the request's dataloader did: totals, then each source (``dataloader.stats``)."""
    stats = dataloader.stats
    parts = [
        f"fetches={stats.fetches} keys_fetched={stats.keys_fetched} loads={stats.loads} "
        f"cache_hits={stats.cache_hits} errors={stats.errors} max_greenlets={stats.max_alive}"
    ]
    for source, counts in stats.sources.items():
        parts.append(f"{source!r}: {counts.fields()}")
    return "; ".join(parts)


def create_app(database: str, *, batching: bool = True, lazy_loads: bool = False,
               dataloader_class: Any = None) -> Flask:
    """The blog app on the SQLite file ``database``.

    Args:
        database: path of a SQLite file made by ``examples/blog/seed.py``
            (or an SQLAlchemy URL).
        batching: ``True``: views and resolvers load through fiberloader
            sources, in a dataloader per request.  ``False``: the naive N+1
            baseline.
        lazy_loads: ``True``: ``batch_lazy_loads(Base)`` (for the whole
            process: it is a switch on the models), and every request runs
            in a dataloader, so the naive code's lazy loads batch too.
            ``False`` with ``batching=False``: the naive code without
            fiberloader.
        dataloader_class: the scheduler (``"sync"``, ``"async"``,
            ``"null"``, a class); ``None``: ``app.config`` /
            ``$FIBERLOADER_DATALOADER`` decide.  Ignored without a
            dataloader (``batching=False, lazy_loads=False``).
    """
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep {"id", "title", ...} in order
    engine = _engine(database)
    event.listen(engine, "before_cursor_execute", _count_statement)
    blog = app.extensions["blog"] = BlogState(engine, batching)
    dataloading = batching or lazy_loads
    if lazy_loads:
        batch_lazy_loads(Base)
    if dataloading:
        from fiberloader.flask import Fiberloader

        Fiberloader(app, dataloader_class=dataloader_class)

    @app.before_request
    def start_counting() -> None:
        g.sql_statements = []
        g.started = time.perf_counter()
        if current_dataloader() is not None:  # the extension runs the whole dispatch in it
            g.dataloader_name = type(current_dataloader()).__name__
        with blog.lock:
            blog.in_flight += 1
            g.counted_in_flight = True

    @app.after_request
    def report(response: Response) -> Response:
        headers = response.headers
        headers["X-SQL-Count"] = str(len(g.get("sql_statements", ())))
        headers["X-Elapsed-Ms"] = f"{(time.perf_counter() - g.get('started', 0)) * 1000:.1f}"
        headers["X-Concurrent-Requests"] = str(blog.in_flight)  # this one included
        if dataloading:
            headers["X-Dataloader"] = g.get("dataloader_name", "none")
            dataloader = current_dataloader()  # after_request runs in the request's job
            if dataloader is not None:
                headers["X-Fiberloader-Stats"] = stats_header(dataloader)
        return response

    @app.teardown_request
    def done(error: Optional[BaseException]) -> None:
        if g.pop("counted_in_flight", False):
            with blog.lock:
                blog.in_flight -= 1

    @app.teardown_appcontext
    def close_session(error: Optional[BaseException]) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()

    @app.errorhandler(400)
    @app.errorhandler(404)
    @app.errorhandler(405)
    def json_error(error: Any) -> Tuple[Response, int]:
        return jsonify({"error": error.description}), error.code

    app.add_url_rule("/api/posts", "posts", list_posts, methods=["GET"])
    app.add_url_rule("/api/users/<int:user_id>/feed", "feed", user_feed, methods=["GET"])
    app.add_url_rule("/api/slow", "slow", slow, methods=["GET"])
    app.add_url_rule("/graphql", "graphql", graphql_view, methods=["POST"])
    return app


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run the blog app on Flask's development server.")
    parser.add_argument("database", help="the SQLite file made by examples/blog/seed.py")
    parser.add_argument("--naive", action="store_true", help="the N+1 baseline, without fiberloader")
    parser.add_argument("--lazy-loads", action="store_true",
                        help="batch SQLAlchemy's lazy loads (with --naive: the naive code, unchanged, batched)")
    parser.add_argument("--dataloader", default=None,
                        help="sync, async or null (default: $FIBERLOADER_DATALOADER, else sync)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    if not Path(args.database).exists():
        parser.error(f"{args.database} does not exist: run python examples/blog/seed.py {args.database}")
    app = create_app(args.database, batching=not args.naive, lazy_loads=args.lazy_loads,
                     dataloader_class=args.dataloader)
    app.run(host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
