"""GraphQL execution with fiberloader, next to graphql-sync-dataloaders, aiodataloader and plain SQL.

What it measures
================

Two workloads, every variant side by side in one run, over the same data.
Each row is timed ``--repeat`` times (default 7, median shown) after one
untimed warm-up run, twice: with the garbage collector on (what users run)
and with ``gc.disable()`` around the timed part.  ``gc.collect()`` runs
before every run.  The timed part is one whole request: making the
per-execution loaders (or context), ``graphql_sync``/``graphql`` (parse,
validate, execute) and every SQL statement.  Every run's ``result.data`` is
checked against the reference row's and ``result.errors`` must be empty; a
mismatch aborts the benchmark (it is a bug in the benchmark).

All variants call graphql-core's own ``graphql_sync`` (or ``graphql``) with
an ``execution_context_class``; the fiberloader rows pass a subclass of
``DataloaderExecutionContext`` whose ``dataloader_setting`` is ``"sync"``,
``"async"`` or ``"null"``.

W1: a blog over SQLite
    A deterministic database (``random.Random(SEED)``): ``--posts`` posts
    (default 1,000), 5 comments per post, 200 users, in an on-disk file in
    a temporary directory (deleted at exit), read through one ``sqlite3``
    connection shared by every variant.  The query::

        { posts(first: P) { title author { name } comments { body author { name } } } }

    Variants:

    * **naive**: plain graphql-core; each resolver runs its own SELECT
      (1 + P * (1 + 1 + 5) statements).
    * **floor** (the reference): the minimal SQL up front -- the posts, their
      comments, the users they need: 3 statements -- builds pre-joined dicts,
      then plain graphql-core with default resolvers over them.
    * **graphql-sync-dataloaders** (gsd): ``SyncDataLoader`` per source, made
      per execution and passed in the context; resolvers return
      ``loader.load(key)``; ``DeferredExecutionContext`` (as its README says).
    * **aiodataloader**: graphql-core's async ``graphql()``; async resolvers
      ``return await loader.load(key)``; loaders made per execution inside the
      event loop.  One ``asyncio.Runner`` (one event loop) is reused for every
      async run of the benchmark; its setup is not timed.  The batch functions
      call sqlite3 directly (it has no asyncio API; there is no other I/O).
    * **fiberloader** ``Dataloader``, ``AsyncDataloader`` (gevent) and
      ``NullDataloader``; resolvers either ``load()`` (the resolver's greenlet
      parks) or return ``request()`` handles (the executor completes the
      field after the batch, no greenlet).  One more row runs ``load()`` under
      a ``Dataloader`` subclass with ``keep_greenlets = 16384``: a pool of
      idle greenlets large enough for the whole request (the default, 256,
      covers a request of a few hundred parked resolvers; filled by the
      warm-up run).  The sqlite3 sources are not
      marked ``blocking``: every statement runs in the calling thread under
      all three schedulers.
    * Two rows split the cost (no target judges them): the floor's pre-joined
      dicts under fiberloader's ``DataloaderExecutionContext``, and under
      gsd's ``DeferredExecutionContext`` -- what each execution context costs
      before any load.

    Columns: SQL statements (counted with ``Connection.set_trace_callback`` in
    the warm-up run), median wall ms, ratio to the floor, and the peak of
    traced memory (``tracemalloc``, in a separate untimed run with gc on; it
    counts Python allocations, greenlet stacks saved on the heap included).

W1 on PostgreSQL
    W1 again over a real database, where each statement is a round trip, the
    cost an N+1 pays in production too (more over a real network).  The
    script starts its own PostgreSQL server: ``initdb`` into a fresh temporary
    directory (run as the ``postgres`` user when the script runs as root:
    initdb refuses root), ``pg_ctl start`` on a free port, listening on
    127.0.0.1 only (its Unix socket in that directory), and at the end, also
    after an error, Ctrl-C or SIGTERM, ``pg_ctl stop -m fast`` and the
    directory removed.  The same rows as the SQLite file, loaded with ``COPY``
    (the same tables, the same index on ``comments(post_id)``, then
    ``ANALYZE``), read through one psycopg 3 connection over TCP in
    autocommit mode (no BEGIN round trips), psycopg's defaults otherwise (a
    statement is prepared server-side from its 5th execution on).

    The same variants, resolvers and sources as W1 (the SQL helpers take
    either connection: ``IN (?, ...)`` on SQLite, ``= ANY(%s)`` with one list
    on PostgreSQL, so the fiberloader sources take the psycopg connection as
    their batch parameter): naive, floor, gsd, ``Dataloader`` ``load()`` and
    handles, ``NullDataloader`` ``load()``.  Left out: the split rows (no SQL
    in what they split); aiodataloader (a blocking connection in async
    resolvers; a fair row needs psycopg's ``AsyncConnection``);
    ``AsyncDataloader`` (psycopg 3 waits in libpq, which cooperates with
    gevent only under monkey-patching, and that would change every other row
    of the process; unpatched, the row times ``Dataloader`` plus the hub).
    Statements are counted by a cursor class whose ``execute`` counts, set on
    the connection for the warm-up run only.  The floor's data must also equal
    the SQLite floor's.  A line above the table gives the median round trip
    of ``SELECT 1`` on that connection: on a VM it depends on whether the
    other CPUs are idle (waking an idle vCPU is slow), so read the rows
    against it.

    ``--postgres`` runs it (an error if psycopg or the binaries are missing);
    a run without the flag includes it unless it is ``--quick`` or
    ``--no-postgres``, and only if psycopg and ``initdb``/``pg_ctl`` (on
    ``PATH``, else the newest ``/usr/lib/postgresql/*/bin``, or
    ``--pg-bin DIR``) are found; otherwise a line says why it was skipped.

W3: per-item overhead
    ``{ items(n: N) { value } }``: a list of N items (``--n``, default
    10,000), each resolving ``value`` through one load from a source whose
    fetch returns its keys (one batch of N keys).  The reference is the same
    query whose resolver returns the plain value under plain graphql-core;
    each row shows its extra µs per item over that.  Three rows without a
    loader split the cost: plain values under fiberloader's and under gsd's
    execution context, and plain values from async resolvers under
    ``graphql()``.  The fiberloader rows run ``Dataloader``.

Targets
=======

The targets table divides the rows named there (gc on and gc off, each
judged against the same limit) and prints ``yes`` or ``NO``: W1 handles
≤ 1.25x the floor and ≤ 1.0x gsd; W1 plain ``load()`` ≤ 2.0x the floor;
every fiberloader W1 row ≤ 0.5x aiodataloader; W3 handles' extra ≤ 0.5x
gsd's extra, W3 ``load()``'s extra ≤ 1.5x gsd's, both ≤ 0.5x aiodataloader's
extra; W1 peak memory of every fiberloader row ≤ 2x the floor's; W1 on
PostgreSQL: plain ``load()`` ≤ 1.5x the floor, with naive N+1 / floor
reported beside it (no limit).

How to run
==========

::

    python benchmarks/bench_graphql.py            # after: python -m pip install -e ".[bench]"
    python benchmarks/bench_graphql.py --quick    # smoke run: posts=100, N=1000, repeat=2
    python benchmarks/bench_graphql.py --posts 2000 --n 50000 --repeat 11
    python benchmarks/bench_graphql.py --workload w1 --only "Dataloader load" --repeat 30   # for a profiler
    python benchmarks/bench_graphql.py --workload w1 --postgres --no-plot   # needs: pip install "psycopg[binary]"

Without ``--quick`` it writes a bar chart (matplotlib, Agg backend) of the W1
ratios to the floor (SQLite, and PostgreSQL when it ran) and the W3 extra µs
per item, all gc on, to ``benchmarks/bench_graphql.png`` (``--plot PATH``
elsewhere, ``--no-plot`` not at all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import os
import random
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import aiodataloader
from graphql import (
    ExecutionResult,
    GraphQLArgument,
    GraphQLField,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    graphql,
    graphql_sync,
)
from graphql_sync_dataloaders import DeferredExecutionContext, SyncDataLoader

import _report
from _postgres import find_postgres, postgres_description, postgres_server
from fiberloader import Dataloader, DataloaderStats, Source, current_dataloader
from fiberloader.graphql import DataloaderExecutionContext

if TYPE_CHECKING:
    import psycopg

    Db = Union[sqlite3.Connection, psycopg.Connection[Any]]  # W1: where the SQL runs

SEED = 20261125
USERS = 200
COMMENTS_PER_POST = 5
PLOT_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_graphql.png")

# -- counting and timing ---------------------------------------------------------------


class Counter:
    """Counts its calls: SQL statements (as sqlite3's trace callback, or from psycopg's cursor) or batch calls."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *_: Any) -> None:
        self.n += 1


CALLS = Counter()  # W1: SQL statements (only while the trace hook is set); W3: batch calls


GC_MODES = (False, True)  # gc_off: every row is timed with the collector on, then off


def require(condition: bool, message: str) -> None:
    """``assert`` that also holds under ``python -O``."""
    if not condition:
        raise AssertionError(message)


@dataclass
class Context:
    """``info.context`` of one execution."""

    conn: Optional[Db] = None
    users: Any = None  # per-execution loaders (gsd, aiodataloader)
    comments: Any = None
    values: Any = None
    dataloader: Any = None  # fiberloader: the running dataloader, for its stats


@dataclass
class Outcome:
    result: ExecutionResult
    context: Context

    @property
    def stats(self) -> Optional[DataloaderStats]:
        return self.context.dataloader.stats if self.context.dataloader is not None else None


Runner = Callable[[_report.Timer], Outcome]


def sync_runner(
    schema: GraphQLSchema,
    query: str,
    make_context: Callable[[], Context],
    execution_context_class: Any = None,
    make_root: Callable[[], Any] = lambda: None,
) -> Runner:
    def run(timer: _report.Timer) -> Outcome:
        with timer:
            context = make_context()
            result = graphql_sync(
                schema, query, root_value=make_root(), context_value=context,
                execution_context_class=execution_context_class,
            )  # fmt: skip
        return Outcome(result, context)

    return run


def async_runner(
    loop: asyncio.Runner, schema: GraphQLSchema, query: str, make_context: Callable[[], Context]
) -> Runner:
    """graphql-core's async ``graphql()`` in ``loop``; the context (loaders) is made inside it."""

    async def execute() -> Outcome:
        context = make_context()
        return Outcome(await graphql(schema, query, context_value=context), context)

    def run(timer: _report.Timer) -> Outcome:
        with timer:
            return loop.run(execute())

    return run


class KeepingDataloader(Dataloader):
    """``Dataloader`` whose pool of idle greenlets (256 by default) is big enough for W3."""

    keep_greenlets = 16384


def fiberloader_context_class(setting: Any) -> type:
    """A ``DataloaderExecutionContext`` that runs its own dataloader of ``setting``."""
    name = setting if isinstance(setting, str) else "kept"
    return type(f"{name.title()}DataloaderExecutionContext", (DataloaderExecutionContext,), {
        "dataloader_setting": setting,
    })  # fmt: skip


# -- W1: the database ------------------------------------------------------------------


BLOG_TABLES = """
    CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL,
                        author_id INTEGER NOT NULL REFERENCES users(id));
    CREATE TABLE comments (id INTEGER PRIMARY KEY, body TEXT NOT NULL,
                           post_id INTEGER NOT NULL REFERENCES posts(id),
                           author_id INTEGER NOT NULL REFERENCES users(id));
    CREATE INDEX comments_post ON comments(post_id);
"""  # SQLite and PostgreSQL alike


def blog_rows(posts: int) -> Dict[str, List[Tuple[Any, ...]]]:
    """Users, posts and comments (table -> rows, in insertion order), the same for a given ``posts`` everywhere."""
    rng = random.Random(SEED)
    words = ["graph", "fiber", "batch", "query", "cache", "loader", "field", "schema", "greenlet", "index"]

    def text(count: int) -> str:
        return " ".join(rng.choice(words) for _ in range(count))

    users = [(i, f"{text(1)} {i}") for i in range(1, USERS + 1)]
    post_rows = [(i, text(4), rng.randint(1, USERS)) for i in range(1, posts + 1)]
    comments = [
        ((p - 1) * COMMENTS_PER_POST + c + 1, text(8), p, rng.randint(1, USERS))
        for p in range(1, posts + 1)
        for c in range(COMMENTS_PER_POST)
    ]
    return {"users": users, "posts": post_rows, "comments": comments}


def make_database(path: str, posts: int) -> None:
    """The SQLite file."""
    with sqlite3.connect(path) as conn:
        conn.executescript(BLOG_TABLES)
        for table, rows in blog_rows(posts).items():
            conn.executemany(f"INSERT INTO {table} VALUES ({marks(rows[0])})", rows)
    conn.close()


# The SQL every variant runs, on either connection: rows as dicts.


def select(conn: Db, sql: str, params: Sequence[Any]) -> List[Dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [column[0] for column in cursor.description]  # type: ignore[union-attr]  # None: no result set
    return [dict(zip(names, row)) for row in cursor]


def marks(keys: Sequence[Any]) -> str:
    return ", ".join("?" * len(keys))


def mark(conn: Db) -> str:
    """One parameter's placeholder."""
    return "?" if isinstance(conn, sqlite3.Connection) else "%s"


def key_in(conn: Db, column: str, keys: Sequence[Any]) -> Tuple[str, Sequence[Any]]:
    """``column IN (?, ...)``, one parameter a key, on SQLite; ``column = ANY(%s)`` with one list on PostgreSQL."""
    if isinstance(conn, sqlite3.Connection):
        return f"{column} IN ({marks(keys)})", keys
    return f"{column} = ANY(%s)", [list(keys)]


def posts_page(conn: Db, first: int) -> List[Dict[str, Any]]:
    return select(conn, f"SELECT id, title, author_id FROM posts ORDER BY id LIMIT {mark(conn)}", (first,))


def users_by_id(conn: Db, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
    where, params = key_in(conn, "id", ids)
    rows = select(conn, f"SELECT id, name FROM users WHERE {where}", params)
    return {row["id"]: row for row in rows}


def comments_by_post_id(conn: Db, post_ids: Sequence[int]) -> Dict[int, List[Dict[str, Any]]]:
    """Every post's comments, in id order ([] for a post without comments)."""
    grouped: Dict[int, List[Dict[str, Any]]] = {post_id: [] for post_id in post_ids}
    where, params = key_in(conn, "post_id", post_ids)
    for row in select(conn, f"SELECT id, post_id, body, author_id FROM comments WHERE {where} ORDER BY id", params):
        grouped[row["post_id"]].append(row)
    return grouped


def user_batch(conn: Db, ids: List[int]) -> List[Optional[Dict[str, Any]]]:
    """The users in key order, as gsd and aiodataloader want them."""
    users = users_by_id(conn, ids)
    return [users.get(user_id) for user_id in ids]


def comment_batch(conn: Db, post_ids: List[int]) -> List[List[Dict[str, Any]]]:
    return list(comments_by_post_id(conn, post_ids).values())  # keys in post_ids order


def blog_query(posts: int) -> str:
    return f"{{ posts(first: {posts}) {{ title author {{ name }} comments {{ body author {{ name }} }} }} }}"


def blog_schema(
    posts: Any = None, author: Any = None, comments: Any = None
) -> GraphQLSchema:
    """The W1 schema; ``author`` resolves both ``Post.author`` and ``Comment.author``.

    A resolver left ``None`` is graphql-core's default (a dict lookup).
    """
    user = GraphQLObjectType("User", {"name": GraphQLField(GraphQLNonNull(GraphQLString))})
    comment = GraphQLObjectType("Comment", {
        "body": GraphQLField(GraphQLNonNull(GraphQLString)),
        "author": GraphQLField(GraphQLNonNull(user), resolve=author),
    })  # fmt: skip
    post = GraphQLObjectType("Post", {
        "title": GraphQLField(GraphQLNonNull(GraphQLString)),
        "author": GraphQLField(GraphQLNonNull(user), resolve=author),
        "comments": GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(comment))), resolve=comments),
    })  # fmt: skip
    query = GraphQLObjectType("Query", {
        "posts": GraphQLField(
            GraphQLNonNull(GraphQLList(GraphQLNonNull(post))),
            args={"first": GraphQLArgument(GraphQLNonNull(GraphQLInt))},
            resolve=posts,
        ),
    })  # fmt: skip
    return GraphQLSchema(query)


def resolve_posts(root: Any, info: Any, first: int) -> List[Dict[str, Any]]:
    return posts_page(info.context.conn, first)


# W1 floor: 3 statements up front, pre-joined dicts, default resolvers.


def prejoined_posts(conn: Db, first: int) -> List[Dict[str, Any]]:
    posts = posts_page(conn, first)
    comments = comments_by_post_id(conn, [post["id"] for post in posts])
    needed = {post["author_id"] for post in posts}
    needed.update(comment["author_id"] for post_comments in comments.values() for comment in post_comments)
    users = users_by_id(conn, sorted(needed))
    return [
        {
            "title": post["title"],
            "author": users[post["author_id"]],
            "comments": [
                {"body": comment["body"], "author": users[comment["author_id"]]}
                for comment in comments[post["id"]]
            ],
        }
        for post in posts
    ]


# W1 naive: one SELECT per resolver.


def naive_author(obj: Dict[str, Any], info: Any) -> Dict[str, Any]:
    conn = info.context.conn
    return select(conn, f"SELECT id, name FROM users WHERE id = {mark(conn)}", (obj["author_id"],))[0]


def naive_comments(post: Dict[str, Any], info: Any) -> List[Dict[str, Any]]:
    conn = info.context.conn
    sql = f"SELECT id, post_id, body, author_id FROM comments WHERE post_id = {mark(conn)} ORDER BY id"
    return select(conn, sql, (post["id"],))


# W1 graphql-sync-dataloaders: SyncFutures from per-execution loaders.


def gsd_author(obj: Dict[str, Any], info: Any) -> Any:
    return info.context.users.load(obj["author_id"])


def gsd_comments(post: Dict[str, Any], info: Any) -> Any:
    return info.context.comments.load(post["id"])


# W1 aiodataloader: async resolvers.


async def aio_author(obj: Dict[str, Any], info: Any) -> Any:
    return await info.context.users.load(obj["author_id"])


async def aio_comments(post: Dict[str, Any], info: Any) -> Any:
    return await info.context.comments.load(post["id"])


def aio_loaders(conn: Db) -> Context:
    """Per-execution aiodataloader loaders; call it inside the running loop."""

    async def users(ids: List[int]) -> List[Optional[Dict[str, Any]]]:
        return user_batch(conn, ids)

    async def comments(post_ids: List[int]) -> List[List[Dict[str, Any]]]:
        return comment_batch(conn, post_ids)

    return Context(conn, users=aiodataloader.DataLoader(users), comments=aiodataloader.DataLoader(comments))


# W1 fiberloader: sources with the connection as their batch parameter.


class UserById(Source[int, Dict[str, Any]]):
    def __init__(self, conn: Db) -> None:
        self.conn = conn

    def fetch(self, ids: List[int]) -> Dict[int, Dict[str, Any]]:
        return users_by_id(self.conn, ids)  # a dict keyed by id: fiberloader matches the keys


class CommentsByPostId(Source[int, List[Dict[str, Any]]]):
    def __init__(self, conn: Db) -> None:
        self.conn = conn

    def fetch(self, post_ids: List[int]) -> Dict[int, List[Dict[str, Any]]]:
        return comments_by_post_id(self.conn, post_ids)


def fiberloader_posts(root: Any, info: Any, first: int) -> List[Dict[str, Any]]:
    info.context.dataloader = current_dataloader()  # for the stats line; not needed otherwise
    return posts_page(info.context.conn, first)


def fiberloader_author(obj: Dict[str, Any], info: Any) -> Any:
    source = current_dataloader().with_(UserById, info.context.conn)  # type: ignore[union-attr]
    return source.load(obj["author_id"])


def fiberloader_comments(post: Dict[str, Any], info: Any) -> Any:
    source = current_dataloader().with_(CommentsByPostId, info.context.conn)  # type: ignore[union-attr]
    return source.load(post["id"])


def fiberloader_author_handle(obj: Dict[str, Any], info: Any) -> Any:
    source = current_dataloader().with_(UserById, info.context.conn)  # type: ignore[union-attr]
    return source.request(obj["author_id"])


def fiberloader_comments_handle(post: Dict[str, Any], info: Any) -> Any:
    source = current_dataloader().with_(CommentsByPostId, info.context.conn)  # type: ignore[union-attr]
    return source.request(post["id"])


FIBERLOADER = "fiberloader"  # the kind of row the targets judge


@dataclass
class Variant:
    key: str  # what the targets and the plot call it
    name: str
    run: Runner
    kind: str = "peer"  # "reference", "peer", FIBERLOADER (judged by the targets) or "split"

    @property
    def short(self) -> str:
        """The name in the targets table."""
        return self.name.split(":")[0].removeprefix("fiberloader ").removesuffix(", async graphql()")


def w1_variants(conn: Db, posts: int, loop: asyncio.Runner) -> List[Variant]:
    """The floor first: it is the reference every other row is checked against."""
    query = blog_query(posts)
    plain = lambda: Context(conn)  # noqa: E731

    def gsd_context() -> Context:
        users = SyncDataLoader(lambda ids: user_batch(conn, ids))
        comments = SyncDataLoader(lambda post_ids: comment_batch(conn, post_ids))
        return Context(conn, users=users, comments=comments)

    def floor(execution_context_class: Any = None) -> Runner:
        root = lambda: {"posts": prejoined_posts(conn, posts)}  # noqa: E731
        return sync_runner(blog_schema(), query, plain, execution_context_class, make_root=root)

    def fiberloader(setting: Any, handles: bool) -> Runner:
        author, comments = (
            (fiberloader_author_handle, fiberloader_comments_handle) if handles
            else (fiberloader_author, fiberloader_comments)
        )  # fmt: skip
        schema = blog_schema(fiberloader_posts, author, comments)
        return sync_runner(schema, query, plain, fiberloader_context_class(setting))

    return [
        Variant("floor", "floor: 3 SELECTs up front, default resolvers", floor(), "reference"),
        Variant("floor-dl", "floor, fiberloader context", floor(fiberloader_context_class("sync")), "split"),
        Variant("floor-gsd", "floor, gsd DeferredExecutionContext", floor(DeferredExecutionContext), "split"),
        Variant(
            "naive", "naive N+1 resolvers",
            sync_runner(blog_schema(resolve_posts, naive_author, naive_comments), query, plain),
        ),
        Variant(
            "gsd", "graphql-sync-dataloaders",
            sync_runner(
                blog_schema(resolve_posts, gsd_author, gsd_comments), query, gsd_context, DeferredExecutionContext
            ),
        ),
        Variant(
            "aio", "aiodataloader, async graphql()",
            async_runner(loop, blog_schema(resolve_posts, aio_author, aio_comments), query, lambda: aio_loaders(conn)),
        ),
        Variant("dl-load", "fiberloader Dataloader load()", fiberloader("sync", False), FIBERLOADER),
        Variant("dl-handle", "fiberloader Dataloader handles", fiberloader("sync", True), FIBERLOADER),
        Variant(
            "dl-load-kept", "fiberloader Dataloader load(), kept greenlets",
            fiberloader(KeepingDataloader, False), FIBERLOADER,
        ),
        Variant("async-load", "fiberloader AsyncDataloader load()", fiberloader("async", False), FIBERLOADER),
        Variant("async-handle", "fiberloader AsyncDataloader handles", fiberloader("async", True), FIBERLOADER),
        Variant("null-load", "fiberloader NullDataloader load()", fiberloader("null", False), FIBERLOADER),
    ]  # fmt: skip


# -- W1 on PostgreSQL: a server of its own ----------------------------------------------

POSTGRES_VARIANTS = ("floor", "naive", "gsd", "dl-load", "dl-load-kept", "dl-handle", "null-load")  # the module docstring says why
def w1_postgres_variants(conn: Db, posts: int, loop: asyncio.Runner) -> List[Variant]:
    """W1's own rows (the floor first), over the psycopg connection."""
    return [variant for variant in w1_variants(conn, posts, loop) if variant.key in POSTGRES_VARIANTS]


@contextlib.contextmanager
def postgres_blog(conninfo: str, posts: int) -> Iterator[psycopg.Connection[Any]]:
    """One autocommit connection to a database holding the W1 tables and rows."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(BLOG_TABLES)
        with conn.cursor() as cursor:
            for table, rows in blog_rows(posts).items():
                with cursor.copy(f"COPY {table} FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        conn.execute("ANALYZE")
        yield conn


def round_trip_us(conn: Db, times: int = 1000) -> float:
    """Median µs of ``SELECT 1`` through ``Connection.execute``: the least a statement costs."""
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        conn.execute("SELECT 1").fetchall()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


@functools.lru_cache(maxsize=None)
def counting_cursor() -> type:
    """A psycopg cursor class whose ``execute`` counts in CALLS."""
    import psycopg

    class CountingCursor(psycopg.Cursor[Any]):
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            CALLS()
            return super().execute(*args, **kwargs)

    return CountingCursor


# -- W3: N items, one load each ---------------------------------------------------------


def items_query(n: int) -> str:
    return f"{{ items(n: {n}) {{ value }} }}"


def items_schema(value: Any) -> GraphQLSchema:
    item = GraphQLObjectType("Item", {"value": GraphQLField(GraphQLNonNull(GraphQLInt), resolve=value)})
    query = GraphQLObjectType("Query", {
        "items": GraphQLField(
            GraphQLNonNull(GraphQLList(GraphQLNonNull(item))),
            args={"n": GraphQLArgument(GraphQLNonNull(GraphQLInt))},
            resolve=resolve_items,
        ),
    })  # fmt: skip
    return GraphQLSchema(query)


def resolve_items(root: Any, info: Any, n: int) -> List[int]:
    info.context.dataloader = current_dataloader()  # None outside fiberloader
    return list(range(n))  # each item is its own key


def echo_batch(keys: List[int]) -> List[int]:
    CALLS()
    return keys


async def echo_batch_async(keys: List[int]) -> List[int]:
    return echo_batch(keys)


class Echo(Source[int, int]):
    def fetch(self, keys: List[int]) -> List[int]:
        return echo_batch(keys)


def plain_value(item: int, info: Any) -> int:
    return item


async def plain_value_async(item: int, info: Any) -> int:
    return item


def gsd_value(item: int, info: Any) -> Any:
    return info.context.values.load(item)


async def aio_value(item: int, info: Any) -> Any:
    return await info.context.values.load(item)


def fiberloader_value(item: int, info: Any) -> Any:
    return current_dataloader().with_(Echo).load(item)  # type: ignore[union-attr]


def fiberloader_value_handle(item: int, info: Any) -> Any:
    return current_dataloader().with_(Echo).request(item)  # type: ignore[union-attr]


def w3_variants(n: int, loop: asyncio.Runner) -> List[Variant]:
    """The plain-values row first: the reference of the other rows' extra time."""
    query = items_query(n)
    dataloader = fiberloader_context_class("sync")

    def sync(value: Any, context: Callable[[], Context] = Context, execution_context_class: Any = None) -> Runner:
        return sync_runner(items_schema(value), query, context, execution_context_class)

    def asynchronous(value: Any, context: Callable[[], Context] = Context) -> Runner:
        return async_runner(loop, items_schema(value), query, context)

    return [
        Variant("plain", "plain values, graphql-core", sync(plain_value), "reference"),
        Variant("plain-dl", "plain values, fiberloader context", sync(plain_value, Context, dataloader), "split"),
        Variant("dl-load", "fiberloader Dataloader load()", sync(fiberloader_value, Context, dataloader), FIBERLOADER),
        Variant(
            "dl-load-kept", "fiberloader Dataloader load(), kept greenlets",
            sync(fiberloader_value, Context, fiberloader_context_class(KeepingDataloader)), FIBERLOADER,
        ),
        Variant(
            "dl-handle", "fiberloader Dataloader handles",
            sync(fiberloader_value_handle, Context, dataloader), FIBERLOADER,
        ),
        Variant(
            "plain-gsd", "plain values, gsd DeferredExecutionContext",
            sync(plain_value, Context, DeferredExecutionContext), "split",
        ),
        Variant(
            "gsd", "graphql-sync-dataloaders",
            sync(gsd_value, lambda: Context(values=SyncDataLoader(echo_batch)), DeferredExecutionContext),
        ),
        Variant("plain-async", "plain values, async resolvers, graphql()", asynchronous(plain_value_async), "split"),
        Variant(
            "aio", "aiodataloader, async graphql()",
            asynchronous(aio_value, lambda: Context(values=aiodataloader.DataLoader(echo_batch_async))),
        ),
    ]  # fmt: skip


# -- measuring --------------------------------------------------------------------------


@dataclass
class Row:
    variant: Variant
    calls: int  # W1: SQL statements; W3: batch function calls
    ms: Dict[bool, float]  # gc_off -> median wall ms
    peak_bytes: int
    stats: Optional[DataloaderStats]


@dataclass
class Workload:
    label: str
    variants: List[Variant]
    conn: Optional[Db] = None  # W1: where statements are counted
    expected: Any = None  # the reference row's data, once measured
    rows: List[Row] = field(default_factory=list)


def run_checked(workload: Workload, variant: Variant, timer: _report.Timer) -> Outcome:
    gc.collect()
    outcome = variant.run(timer)
    where = f"{workload.label} / {variant.name}"
    require(timer.elapsed is not None, f"{where}: the timed region never ran")
    require(not outcome.result.errors, f"{where}: errors {outcome.result.errors!r}")
    if workload.expected is None:
        workload.expected = outcome.result.data  # the reference row runs first
    require(outcome.result.data == workload.expected, f"{where}: result.data differs from the reference row's")
    return outcome


def count_statements(conn: Db, on: bool) -> None:
    """While ``on``, every SQL statement on ``conn`` counts in CALLS; nothing is wrapped otherwise.

    sqlite3: its trace callback; psycopg: a cursor class whose ``execute`` counts
    (``Connection.execute`` makes one cursor of ``cursor_factory`` per statement).
    """
    if isinstance(conn, sqlite3.Connection):
        conn.set_trace_callback(CALLS if on else None)
    else:
        import psycopg

        conn.cursor_factory = counting_cursor() if on else psycopg.Cursor


def counted_run(workload: Workload, variant: Variant) -> Tuple[int, Outcome]:
    """One untimed run that counts SQL statements (W1) or batch calls (W3)."""
    CALLS.n = 0
    if workload.conn is not None:
        count_statements(workload.conn, True)
    try:
        outcome = run_checked(workload, variant, _report.Timer(gc_off=False))
    finally:
        if workload.conn is not None:
            count_statements(workload.conn, False)
    return CALLS.n, outcome


def peak_memory(workload: Workload, variant: Variant) -> int:
    """Peak traced bytes of one run (gc on), from a tracemalloc start just before it."""
    gc.collect()
    tracemalloc.start()
    try:
        outcome = variant.run(_report.Timer(gc_off=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    where = f"{workload.label} / {variant.name}"
    require(outcome.result.data == workload.expected, f"{where}: wrong data under tracemalloc")
    return peak


def measure(workload: Workload, variant: Variant, repeat: int) -> Row:
    calls, outcome = counted_run(workload, variant)  # also the warm-up
    ms = {}
    for gc_off in GC_MODES:
        times = []
        for _ in range(repeat):
            timer = _report.Timer(gc_off)
            run_checked(workload, variant, timer)
            times.append(timer.elapsed * 1000)  # type: ignore[operator]
        ms[gc_off] = statistics.median(times)
    return Row(variant, calls, ms, peak_memory(workload, variant), outcome.stats)


def measure_all(workload: Workload, repeat: int, only: Optional[str]) -> None:
    for index, variant in enumerate(workload.variants):
        if index == 0 or only is None or only.lower() in variant.name.lower():  # the reference always runs
            workload.rows.append(measure(workload, variant, repeat))


# -- targets ------------------------------------------------------------------------------

# (row, divided by, limit).  W1 divides median wall times, W3 extra µs per item.
W1_TARGETS = [
    ("dl-handle", "floor", 1.25), ("dl-handle", "gsd", 1.0), ("dl-load", "floor", 2.0), ("dl-load-kept", "floor", 2.0),
]
W1_FIBERLOADER_OVER_AIO = 0.5  # every fiberloader W1 row / aiodataloader
W3_TARGETS = [
    ("dl-handle", "gsd", 0.5), ("dl-load", "gsd", 1.5), ("dl-load-kept", "gsd", 1.5),
    ("dl-handle", "aio", 0.5), ("dl-load", "aio", 0.5),
]
MEMORY_LIMIT = 2.0  # W1 peak memory of every fiberloader row / the floor's
POSTGRES_TARGETS = [("dl-load", "floor", 1.5), ("dl-load-kept", "floor", 1.5), ("naive", "floor", None)]  # None: reported beside it, no limit


@dataclass
class Target:
    label: str
    limit: Optional[float]  # None: reported, not judged
    ratio: Dict[bool, float]  # gc_off -> the measured ratio (memory: gc on only)


def by_key(rows: Iterable[Row]) -> Dict[str, Row]:
    return {row.variant.key: row for row in rows}


def extra_us(rows: Dict[str, Row], key: str, gc_off: bool, n: int) -> float:
    """W3: µs per item over the plain-values row."""
    return (rows[key].ms[gc_off] - rows["plain"].ms[gc_off]) * 1000 / n


def targets(w1: List[Row], w3: List[Row], n: int, pg: Sequence[Row] = ()) -> List[Target]:
    """Every target whose rows were measured."""
    one, three, on_pg = by_key(w1), by_key(w3), by_key(pg)
    fiberloader_w1 = [row.variant.key for row in w1 if row.variant.kind == FIBERLOADER]
    found = []
    for key, over, limit in [*W1_TARGETS, *((key, "aio", W1_FIBERLOADER_OVER_AIO) for key in fiberloader_w1)]:
        if key in one and over in one:
            ratio = {gc_off: one[key].ms[gc_off] / one[over].ms[gc_off] for gc_off in GC_MODES}
            found.append(Target(f"W1 ms: {one[key].variant.short} / {one[over].variant.short}", limit, ratio))
    for key, over, pg_limit in POSTGRES_TARGETS:
        if key in on_pg and over in on_pg:
            ratio = {gc_off: on_pg[key].ms[gc_off] / on_pg[over].ms[gc_off] for gc_off in GC_MODES}
            label = f"PostgreSQL W1 ms: {on_pg[key].variant.short} / {on_pg[over].variant.short}"
            found.append(Target(label, pg_limit, ratio))
    for key, over, limit in W3_TARGETS:
        if key in three and over in three:
            ratio = {gc_off: extra_us(three, key, gc_off, n) / extra_us(three, over, gc_off, n) for gc_off in GC_MODES}
            label = f"W3 extra µs/item: {three[key].variant.short} / {three[over].variant.short}"
            found.append(Target(label, limit, ratio))
    for key in fiberloader_w1:
        ratio = {False: one[key].peak_bytes / one["floor"].peak_bytes}
        found.append(Target(f"W1 peak memory: {one[key].variant.short} / floor", MEMORY_LIMIT, ratio))
    return found


# -- output -------------------------------------------------------------------------------


def megabytes(size: int) -> str:
    return f"{size / 2**20:.1f}"


def print_w1(rows: List[Row], label: str = "W1") -> None:
    floor = by_key(rows)["floor"]
    header = [
        f"{label} variant", "SQL", "ms gc on", "ms gc off", "x floor gc on", "x floor gc off", "peak MB", "x floor MB"
    ]  # fmt: skip
    cells = [
        [
            row.variant.name,
            str(row.calls),
            f"{row.ms[False]:.1f}",
            f"{row.ms[True]:.1f}",
            f"{row.ms[False] / floor.ms[False]:.2f}x",
            f"{row.ms[True] / floor.ms[True]:.2f}x",
            megabytes(row.peak_bytes),
            f"{row.peak_bytes / floor.peak_bytes:.2f}x",
        ]
        for row in rows
    ]
    print(_report.rst_table(header, cells, right=[False, *[True] * 7]))


def print_w3(rows: List[Row], n: int) -> None:
    keyed = by_key(rows)
    header = [
        "W3 variant", "fetches", "ms gc on", "ms gc off", "extra µs/item gc on", "extra µs/item gc off", "peak MB"
    ]  # fmt: skip
    cells = [
        [
            row.variant.name,
            str(row.calls),
            f"{row.ms[False]:.1f}",
            f"{row.ms[True]:.1f}",
            f"{extra_us(keyed, row.variant.key, False, n):.2f}",
            f"{extra_us(keyed, row.variant.key, True, n):.2f}",
            megabytes(row.peak_bytes),
        ]
        for row in rows
    ]
    print(_report.rst_table(header, cells, right=[False, *[True] * 6]))


def print_targets(found: List[Target]) -> None:
    def verdict(target: Target, gc_off: bool) -> List[str]:
        if gc_off not in target.ratio:
            return ["-", "-"]
        ratio = target.ratio[gc_off]
        if target.limit is None:
            return [f"{ratio:.2f}x", "-"]
        return [f"{ratio:.2f}x", "yes" if ratio <= target.limit else "NO"]

    header = ["target", "limit", "gc on", "met", "gc off", "met"]
    cells = [
        [t.label, "-" if t.limit is None else f"≤ {t.limit:g}x", *verdict(t, False), *verdict(t, True)] for t in found
    ]
    print(_report.rst_table(header, cells, right=[False, True, True, False, True, False]))


def print_stats(workloads: Sequence[Workload]) -> None:
    print("fiberloader stats (the warm-up run):")
    for workload in workloads:
        for row in workload.rows:
            if row.stats is not None:
                print(f"  {workload.label} / {row.variant.name}: {row.stats!r}")


def plot(path: str, w1: List[Row], w3: List[Row], n: int, title: str, pg: List[Row]) -> None:
    """Bars: W1 wall time / floor (SQLite, PostgreSQL) and W3 extra µs per item, gc on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {"reference": "black", "peer": "tab:gray", FIBERLOADER: "tab:blue", "split": "lightsteelblue"}

    def color(row: Row) -> str:
        return colors[row.variant.kind]

    def bars(ax: Any, rows: List[Row], values: List[float], fmt: str) -> None:
        positions = range(len(rows))
        ax.barh(positions, values, color=[color(row) for row in rows])
        ax.set_yticks(list(positions), [row.variant.name for row in rows])
        ax.invert_yaxis()
        for position, value in zip(positions, values):
            ax.annotate(fmt.format(value), (max(value, 0), position), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)  # fmt: skip

    ratio_panels = [
        (rows, label) for rows, label in (
            (w1, "W1 wall time / floor (gc on; lower is better)"),
            (pg, "W1 on PostgreSQL: wall time / floor (gc on; lower is better)"),
        ) if rows
    ]  # fmt: skip
    panels = len(ratio_panels) + bool(w3)
    figure, axes = plt.subplots(1, panels, figsize=(7 * panels, 5.5), layout="constrained", squeeze=False)
    column = iter(axes[0])
    for rows, label in ratio_panels:
        ax = next(column)
        floor = by_key(rows)["floor"].ms[False]
        ratios = [row.ms[False] / floor for row in rows]
        bars(ax, rows, ratios, "{:.2f}x")
        ax.axvline(1.0, color="black", linewidth=0.8)
        if max(ratios) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.margins(x=0.15)
    if w3:
        ax = next(column)
        keyed = by_key(w3)
        loaded = [row for row in w3 if row.variant.key != "plain"]
        bars(ax, loaded, [extra_us(keyed, row.variant.key, False, n) for row in loaded], "{:.2f}")
        ax.set_xlabel(f"W3 extra µs/item over plain values (N={n}, gc on)")
        ax.margins(x=0.15)
    handles = [Patch(color=value, label=label) for label, value in colors.items()]
    figure.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=len(handles))
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# -- main ---------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, help="W1: posts in the database and the query (default 1000)")
    parser.add_argument("--n", type=int, help="W3: items in the list (default 10000)")
    parser.add_argument("--repeat", type=int, help="timed runs per row and gc mode; the median is shown (default 7)")
    parser.add_argument("--workload", choices=("w1", "w3"), action="append", help="only this workload (repeatable)")
    parser.add_argument("--only", metavar="TEXT", help="only the variants whose name contains TEXT (and the reference)")
    parser.add_argument(
        "--plot", metavar="PATH", help=f"write the bar chart here (default without --quick: {PLOT_DEFAULT})"
    )
    parser.add_argument("--no-plot", action="store_true", help="write no chart")
    parser.add_argument("--quick", action="store_true", help="smoke run: posts=100, N=1000, repeat=2, no chart")
    parser.add_argument(
        "--postgres", action=argparse.BooleanOptionalAction,
        help="W1 on PostgreSQL too (default: yes if psycopg and the server binaries are found, no with --quick)",
    )  # fmt: skip
    parser.add_argument("--pg-bin", metavar="DIR", help="where initdb, pg_ctl and postgres are")
    args = parser.parse_args(argv)
    posts = args.posts if args.posts is not None else (100 if args.quick else 1000)
    n = args.n if args.n is not None else (1000 if args.quick else 10_000)
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else 7)
    workloads = args.workload or ["w1", "w3"]
    plot_path = None if args.no_plot else args.plot or (None if args.quick else PLOT_DEFAULT)
    if min(posts, n, repeat) < 1:
        parser.error("--posts, --n and --repeat must be positive")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("the chart needs matplotlib (python -m pip install matplotlib), or pass --no-plot")
    pg_bin: Optional[str] = None  # set: W1 runs on PostgreSQL too, with the binaries there
    pg_skipped = ""  # otherwise why not, when W1 runs
    if args.postgres and "w1" not in workloads:
        parser.error("--postgres runs W1 on PostgreSQL: add --workload w1")
    if "w1" not in workloads:
        pass
    elif args.postgres is False:
        pg_skipped = "--no-postgres"
    elif args.postgres is None and args.quick:
        pg_skipped = "--quick starts no server (add --postgres to run them)"
    else:
        pg_bin, why_not = find_postgres(args.pg_bin)
        if pg_bin is None and args.postgres:
            parser.error(f"--postgres: {why_not}")
        pg_skipped = why_not

    _report.print_machine_info((
        "fiberloader", "greenlet", "gevent", "graphql-core", "graphql-sync-dataloaders", "aiodataloader",
        *(["psycopg"] if pg_bin is not None else []),
    ))  # fmt: skip
    print(f"sqlite3 (library) {sqlite3.sqlite_version}, on-disk file in a temporary directory")
    if pg_bin is not None:
        print(f"PostgreSQL {postgres_description(pg_bin)}")
    elif pg_skipped:
        print(f"PostgreSQL rows skipped: {pg_skipped}")
    print(
        f"W1 posts={posts} ({COMMENTS_PER_POST} comments each, {USERS} users), W3 N={n}, "
        f"repeat={repeat} (median) after 1 warm-up, gsd = graphql-sync-dataloaders"
    )
    print()

    w1 = Workload("W1", [])
    pg = Workload("W1 PostgreSQL", [])
    pg_round_trip = 0.0  # µs
    w3 = Workload("W3", [])
    with tempfile.TemporaryDirectory(prefix="bench_graphql.") as directory, asyncio.Runner() as loop:
        if "w1" in workloads:
            path = os.path.join(directory, "blog.db")
            make_database(path, posts)
            conn = sqlite3.connect(path)
            try:
                w1 = Workload("W1", w1_variants(conn, posts, loop), conn)
                measure_all(w1, repeat, args.only)
            finally:
                conn.close()
        if pg_bin is not None:
            with postgres_server(pg_bin) as conninfo, postgres_blog(conninfo, posts) as pg_conn:
                pg = Workload("W1 PostgreSQL", w1_postgres_variants(pg_conn, posts, loop), pg_conn)
                pg_round_trip = round_trip_us(pg_conn)
                measure_all(pg, repeat, args.only)
            require(pg.expected == w1.expected, "W1 PostgreSQL: the floor's result.data differs from SQLite's")
        if "w3" in workloads:
            w3 = Workload("W3", w3_variants(n, loop))
            measure_all(w3, repeat, args.only)

    if w1.rows:
        print_w1(w1.rows)
        print()
    if pg.rows:
        print(f"{pg.label}: one round trip (SELECT 1, median of 1000, before the rows) {pg_round_trip:.0f} µs")
        print_w1(pg.rows, pg.label)
        print()
    if w3.rows:
        print_w3(w3.rows, n)
        print()
    found = targets(w1.rows, w3.rows, n, pg.rows)
    if found:
        print_targets(found)
        print()
    print_stats([w1, pg, w3])
    if plot_path is not None:
        title = f"bench_graphql.py: W1 posts={posts}, W3 N={n}, median of {repeat}, gc on"
        plot(plot_path, w1.rows, w3.rows, n, title, pg.rows)
        print(f"\nchart: {plot_path}")


if __name__ == "__main__":
    main()
