"""Unchanged ORM code, with and without lazy-load batching, on SQLite and PostgreSQL.

What it measures
================

The code under test is written without fiberloader: a view that loops over
posts reading ``post.author``, ``post.comments.all()``, ... and GraphQL
types with no resolvers of their own.  One run, every variant side by side,
interleaved round by round, on each database:

Django (``tests/django_app``'s models, 50 posts, 10 authors, 5 comments and
up to 3 tags per post, seeded by this script):

* **REST, naive**: ``views.naive_rows()`` called plainly: Django's lazy
  loads, one query per relation per row.
* **REST, lazy sync / lazy async**: the same function as the job of a
  ``Dataloader`` / ``AsyncDataloader`` with
  ``FIBERLOADER_BATCH_LAZY_LOADS = True``.
* **REST, hand-written sync**: the same JSON built with ``RecordSource`` and
  ``AssociationSource`` in ``dataloader.map`` (what a user writes today to
  batch).
* **GraphQL, naive**: Graphene-Django ``DjangoObjectType``\\ s with no
  resolvers (``schema.plain_schema``), executed by graphene.
* **GraphQL, lazy sync / lazy async**: the same schema executed with
  ``fiberloader.graphql.DataloaderExecutionContext`` and the setting on.

SQLAlchemy (the example blog, ``examples/blog``, seeded with 200 posts; 50
per request):

* **blog REST** (``/api/posts?first=50``) and **blog GraphQL** (the same
  posts with authors, comments, commenters and tags), through Flask's test
  client: **naive** (``create_app(batching=False)``: lazy loads, one query
  per row), **lazy sync / lazy async** (the same naive code with
  ``lazy_loads=True``: ``batch_lazy_loads(Base)`` and a dataloader per
  request), **hand-written sync** (``batching=True``: the app's sources).
* **graphene-sqlalchemy**: ``SQLAlchemyObjectType``\ s with no resolvers
  over the blog's models: **naive** (graphene's execution), **lazy sync /
  lazy async** (``DataloaderExecutionContext``, ``batch_lazy_loads``), and
  **own batching** (graphene-sqlalchemy's ``batching = True``: aiodataloader
  under ``schema.execute_async``).

Each variant's response is checked equal to the naive one; a mismatch
aborts.  Columns: SQL statements per request, the median time per request
(ms) over ``--rounds`` rounds of ``--requests`` requests, and that time as
a ratio to the naive variant of its workload.  PostgreSQL runs in its own
throwaway server on 127.0.0.1 (``benchmarks/_postgres.py``), so every
statement pays a real loopback round trip; SQLite is an in-process file.
Django configures its settings once per process: each database runs in a
child process of this script.

Run::

    python benchmarks/bench_lazy.py                 # SQLite, and PostgreSQL if found
    python benchmarks/bench_lazy.py --no-postgres
    python benchmarks/bench_lazy.py --quick         # a smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _report  # noqa: E402
from _postgres import find_postgres, postgres_description, postgres_server  # noqa: E402

POSTS, AUTHORS, COMMENTS, TAGS = 50, 10, 5, 8
RIGHT = (False, False, True, True, True)  # which columns are right-aligned


# -- the child: one database, Django configured for it -----------------------------------


def configure_django(database: Dict[str, Any]) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        DATABASES={"default": database},
        INSTALLED_APPS=["tests.django_app"],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
    )
    django.setup()


def seed_django() -> None:
    from django.apps import apps
    from django.db import connection

    from tests.django_app.models import Author, Comment, Post, Profile, Tag

    with connection.schema_editor() as editor:
        for model in apps.get_app_config("django_app").get_models():
            editor.create_model(model)
    authors = Author.objects.bulk_create([Author(pk=i + 1, name=f"author {i + 1}") for i in range(AUTHORS)])
    Profile.objects.bulk_create([Profile(author=a, bio=f"bio of {a.name}") for a in authors[::2]])
    tags = Tag.objects.bulk_create([Tag(pk=i + 1, name=f"tag {i + 1}") for i in range(TAGS)])
    posts = Post.objects.bulk_create([
        Post(pk=i + 1, title=f"post {i + 1}", author=authors[i % AUTHORS],
             editor=authors[(i + 3) % AUTHORS] if i % 2 else None)
        for i in range(POSTS)
    ])  # fmt: skip
    Comment.objects.bulk_create([
        Comment(post=p, author=authors[(p.pk + k) % AUTHORS], body=f"comment {k} on {p.pk}")
        for p in posts for k in range(COMMENTS)
    ])  # fmt: skip
    through = Post.tags.through
    through.objects.bulk_create([
        through(post_id=p.pk, tag_id=tags[(p.pk + k) % TAGS].pk) for p in posts for k in range(p.pk % 3 + 1)
    ])  # fmt: skip


def handwritten_rows(dl: Any) -> List[Dict[str, Any]]:
    """``views.naive_rows()``'s JSON, written with fiberloader's Django sources."""
    from fiberloader.django import AssociationSource, RecordSource
    from tests.django_app.models import Author, Post

    def row(post: Any) -> Dict[str, Any]:
        authors = dl.with_(RecordSource, Author)
        author = authors.load(post.author_id)
        editor = authors.load(post.editor_id) if post.editor_id is not None else None
        comments = dl.with_(AssociationSource, Post, "comments").load(post)
        tags = dl.with_(AssociationSource, Post, "tags").load(post)
        profile = dl.with_(AssociationSource, Author, "profile").load(author)
        return {
            "title": post.title,
            "author": author.name,
            "editor": editor.name if editor else None,
            "comments": [{"body": c.body, "author": authors.load(c.author_id).name} for c in comments],
            "tags": [tag.name for tag in tags],
            "bio": profile.bio if profile is not None else None,
        }

    return dl.map(row, Post.objects.order_by("id"))  # type: ignore[no-any-return]


def django_variants() -> Dict[Tuple[str, str], Callable[[], Any]]:
    from django.test import override_settings

    import fiberloader
    from fiberloader import Dataloader
    from fiberloader.graphql import DataloaderExecutionContext
    from tests.django_app import views
    from tests.django_app.schema import PLAIN_QUERY, plain_schema

    schedulers = {"sync": Dataloader, "async": fiberloader.AsyncDataloader}

    def lazily(cls: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with override_settings(FIBERLOADER_BATCH_LAZY_LOADS=True):
                return cls.with_dataloading(lambda dl: fn())
        return call

    def graphql(scheduler: Optional[str]) -> Callable[[], Any]:
        def call() -> Any:
            if scheduler is None:
                result = plain_schema.execute(PLAIN_QUERY)
            else:
                with override_settings(FIBERLOADER_BATCH_LAZY_LOADS=True, FIBERLOADER_DATALOADER=scheduler):
                    result = plain_schema.execute(PLAIN_QUERY, execution_context_class=DataloaderExecutionContext)
            assert result.errors is None, result.errors
            return result.data
        return call

    return {
        ("REST loop", "naive"): views.naive_rows,
        ("REST loop", "lazy sync"): lazily(schedulers["sync"], views.naive_rows),
        ("REST loop", "lazy async"): lazily(schedulers["async"], views.naive_rows),
        ("REST loop", "hand-written sync"): lambda: Dataloader.with_dataloading(handwritten_rows),
        ("Graphene-Django", "naive"): graphql(None),
        ("Graphene-Django", "lazy sync"): graphql("sync"),
        ("Graphene-Django", "lazy async"): graphql("async"),
    }


def canonical(value: Any) -> Any:
    """``value`` with every list sorted: the relations have no ``ordering``, so SQL gives them in
    no defined order (PostgreSQL's plan for one post's rows and for fifty posts' rows differ)."""
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted((canonical(item) for item in value), key=lambda item: json.dumps(item, sort_keys=True))
    return value


class django_statements:
    """The statements Django ran inside the block: ``.count`` after it."""

    def __enter__(self) -> "django_statements":
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        self._capture = CaptureQueriesContext(connection)
        self._capture.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._capture.__exit__(*exc)
        self.count = len(self._capture)


def measure(variants: Dict[Tuple[str, str], Callable[[], Any]], requests: int, rounds: int,
            counter: Any) -> Dict[str, Any]:
    """Statements and the median time per request of each variant, rounds interleaved."""
    expected: Dict[str, Any] = {}
    statements: Dict[Tuple[str, str], int] = {}
    for key, call in variants.items():
        call()  # warm: imports, compiled statements
        with counter() as counted:
            value = json.loads(json.dumps(call()))
        statements[key] = counted.count
        workload = key[0]
        if workload in expected and canonical(value) != canonical(expected[workload]):
            raise SystemExit(f"{workload} {key[1]}: the response differs from the naive variant's:\n"
                             f"{json.dumps(value)[:3000]}\n{json.dumps(expected[workload])[:3000]}")
        expected.setdefault(workload, value)
    times: Dict[Tuple[str, str], List[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, call in variants.items():
            started = time.perf_counter()
            for _ in range(requests):
                call()
            times[key].append((time.perf_counter() - started) / requests)
    return {
        f"{workload}|{name}": {"statements": statements[workload, name], "ms": statistics.median(times[workload, name]) * 1e3}
        for workload, name in variants
    }


def child(database: Dict[str, Any], requests: int, rounds: int) -> None:
    configure_django(database)
    seed_django()
    print(json.dumps(measure(django_variants(), requests, rounds, django_statements)))


# -- SQLAlchemy: the example blog, and graphene-sqlalchemy over its models ---------------

BLOG_QUERY = "{ posts(first: 50) { title author { name } comments { body author { name } } tags { name } } }"
GRAPHENE_QUERY = "{ posts { title author { name } comments { body author { name } } tags { name } } }"


def graphene_sqlalchemy_schema(batching: bool) -> Any:
    """The blog's models as ``SQLAlchemyObjectType``\\ s without resolvers (but the root list)."""
    import graphene
    from sqlalchemy.orm import strategies

    if batching and not hasattr(strategies, "SelectInLoader"):
        # graphene-sqlalchemy 3.0.0rc2 batches only if strategies.SelectInLoader exists; SQLAlchemy
        # 2.1 renamed it _SelectInLoader, which turns its batching off without a word.  Give it the
        # name back, so that its row shows its batching (before its converter module is imported).
        strategies.SelectInLoader = strategies._SelectInLoader  # type: ignore[attr-defined]
    from graphene_sqlalchemy import SQLAlchemyObjectType
    from graphene_sqlalchemy.registry import Registry
    from sqlalchemy import select

    from examples.blog.models import Comment, Post, Tag, User

    registry = Registry()

    def object_type(model: Any) -> Any:
        meta = type("Meta", (), {"model": model, "registry": registry, "batching": batching})
        return type(f"{model.__name__}Type", (SQLAlchemyObjectType,), {"Meta": meta})

    user, post, _, _ = (object_type(model) for model in (User, Post, Comment, Tag))

    def resolve_posts(root: Any, info: Any) -> Any:
        return info.context["session"].scalars(select(Post).order_by(Post.id).limit(50)).all()

    query = type("Query", (graphene.ObjectType,), {
        "posts": graphene.List(graphene.NonNull(post)), "resolve_posts": resolve_posts,
    })
    return graphene.Schema(query=query, types=[user])


def sqlalchemy_variants(url: str) -> Dict[Tuple[str, str], Callable[[], Any]]:
    import asyncio

    from sqlalchemy.orm import Session

    from examples.blog.app import create_app
    from fiberloader.graphql import DataloaderExecutionContext

    apps = {
        "naive": create_app(url, batching=False),
        "lazy sync": create_app(url, batching=False, lazy_loads=True, dataloader_class="sync"),
        "lazy async": create_app(url, batching=False, lazy_loads=True, dataloader_class="async"),
        "hand-written sync": create_app(url, batching=True, dataloader_class="sync"),
    }
    clients = {name: app.test_client() for name, app in apps.items()}
    engine = apps["naive"].extensions["blog"].engine

    def rest(client: Any) -> Callable[[], Any]:
        return lambda: client.get("/api/posts?first=50").get_json()

    def blog_graphql(client: Any) -> Callable[[], Any]:
        return lambda: client.post("/graphql", json={"query": BLOG_QUERY}).get_json()

    own, plain = graphene_sqlalchemy_schema(True), graphene_sqlalchemy_schema(False)
    contexts = {name: type(f"{name}Context", (DataloaderExecutionContext,), {"dataloader_setting": name})
                for name in ("sync", "async")}

    def graphene(scheduler: Optional[str]) -> Callable[[], Any]:
        def call() -> Any:
            with Session(engine) as session:
                if scheduler is None:
                    result = plain.execute(GRAPHENE_QUERY, context_value={"session": session})
                else:
                    result = plain.execute(GRAPHENE_QUERY, context_value={"session": session},
                                           execution_context_class=contexts[scheduler])
            assert result.errors is None, result.errors
            return result.data
        return call

    def graphene_own() -> Any:
        with Session(engine) as session:
            result = asyncio.run(own.execute_async(GRAPHENE_QUERY, context_value={"session": session}))
        assert result.errors is None, result.errors
        return result.data

    variants: Dict[Tuple[str, str], Callable[[], Any]] = {}
    for name, client in clients.items():
        variants["blog REST", name] = rest(client)
    for name, client in clients.items():
        variants["blog GraphQL", name] = blog_graphql(client)
    variants["graphene-sqlalchemy", "naive"] = graphene(None)
    variants["graphene-sqlalchemy", "lazy sync"] = graphene("sync")
    variants["graphene-sqlalchemy", "lazy async"] = graphene("async")
    variants["graphene-sqlalchemy", "own batching"] = graphene_own
    return variants


def sqlalchemy_child(url: str, requests: int, rounds: int) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from examples.blog.seed import seed

    seed(url, posts=200)
    variants = sqlalchemy_variants(url)

    statements: List[str] = []
    event.listen(Engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    class Counter:
        """The statements every engine ran inside the block: ``.count`` after it."""

        def __enter__(self) -> "Counter":
            statements.clear()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.count = len(statements)

    print(json.dumps(measure(variants, requests, rounds, Counter)))


# -- the parent: one child per database, the tables --------------------------------------


def run_child(kind: str, database: Any, requests: int, rounds: int) -> Dict[str, Any]:
    """Run one ORM's variants on one database in a child process; its figures."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", json.dumps([kind, database]),
            "--requests", str(requests), "--rounds", str(rounds)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} run on {database} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def postgres_database(conninfo: str) -> Dict[str, Any]:
    fields = dict(part.split("=", 1) for part in conninfo.split())
    return {
        "ENGINE": "django.db.backends.postgresql", "NAME": fields["dbname"], "USER": fields["user"],
        "HOST": fields["host"], "PORT": fields["port"], "OPTIONS": {"sslmode": "disable"},
    }  # fmt: skip


def table(results: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for key, figures in results.items():
        workload, name = key.split("|")
        naive = results[f"{workload}|naive"]["ms"]
        rows.append([workload, name, str(figures["statements"]), f"{figures['ms']:.2f}", f"{figures['ms'] / naive:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per round (default 20)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the median is reported (default 7)")
    parser.add_argument("--quick", action="store_true",
                        help="2 requests x 2 rounds, SQLite only unless --postgres: a smoke run")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres", dest="postgres", action="store_true", default=None,
                       help="also on PostgreSQL (an error if it is not found)")
    group.add_argument("--no-postgres", dest="postgres", action="store_false", help="SQLite only")
    parser.add_argument("--pg-bin", metavar="DIR", help="where initdb, pg_ctl and postgres are")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    requests, rounds = (2, 2) if args.quick else (args.requests, args.rounds)
    if args.child:
        kind, database = json.loads(args.child)
        (child if kind == "django" else sqlalchemy_child)(database, requests, rounds)
        return
    _report.print_machine_info(["fiberloader", "Django", "graphene-django", "SQLAlchemy", "graphene-sqlalchemy",
                                "Flask", "graphene", "graphql-core", "gevent", "aiodataloader"])
    headers = ["workload", "variant", "SQL / request", "ms / request", "/ naive"]
    print(f"\n{rounds} rounds of {requests} requests per variant, interleaved; the median round")

    def report(title: str, django: Dict[str, Any], url: str) -> None:
        print(f"\n{title}\n")
        results = {**run_child("django", django, requests, rounds), **run_child("sqlalchemy", url, requests, rounds)}
        print(_report.rst_table(headers, table(results), RIGHT))

    with tempfile.TemporaryDirectory(prefix="bench_lazy.") as directory:
        report("SQLite (a file)", {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(directory, "django.db")},
               os.path.join(directory, "blog.db"))
    if args.postgres is None and args.quick:
        args.postgres = False
    bin_dir, why = find_postgres(args.pg_bin) if args.postgres is not False else (None, "--no-postgres or --quick")
    if bin_dir is None:
        if args.postgres:
            raise SystemExit(f"--postgres: {why}")
        print(f"\nPostgreSQL skipped: {why}")
        return
    with postgres_server(bin_dir) as conninfo:
        fields = dict(part.split("=", 1) for part in conninfo.split())
        url = f"postgresql+psycopg://{fields['user']}@{fields['host']}:{fields['port']}/{fields['dbname']}"
        report(f"PostgreSQL {postgres_description(bin_dir)}", postgres_database(conninfo), url)


if __name__ == "__main__":
    main()
