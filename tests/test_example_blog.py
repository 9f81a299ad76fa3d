"""The blog example (examples/blog): batched and naive serve the same JSON, batched with minimal SQL.

Also the third mode: the naive code, unchanged, with SQLAlchemy's lazy
loads batched (``lazy_loads=True``).  Real parts throughout: a seeded SQLite
file, the Flask app through its test client, and a real gunicorn with
gevent workers driven by concurrent requests.
"""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.blog.app import create_app
from examples.blog.models import Base
from examples.blog.seed import seed
from fiberloader.sqlalchemy import batch_lazy_loads

from ._servers import fetch, gunicorn

USERS, POSTS, COMMENTS_PER_POST, TAGS = 20, 30, 3, 6
SCHEDULERS = {"sync": "Dataloader", "async": "AsyncDataloader", "null": "NullDataloader"}
BATCHING = ["sync", "async"]

URLS = [
    "/api/posts",
    "/api/posts?first=0",
    "/api/posts?first=1",
    f"/api/posts?first={POSTS}",
    "/api/posts?first=-1",  # 400
    "/api/posts?first=many",  # 400
    "/api/users/1/feed",
    "/api/users/8/feed",  # no posts
    "/api/users/16/feed",  # four posts
    f"/api/users/{USERS}/feed",
    f"/api/users/{USERS + 1}/feed",  # 404
    "/api/slow",
]

POSTS_QUERY = """query Posts($first: Int) {
  posts(first: $first) { id title author { id name } tags { name } comments { id body author { id name } } }
}"""

OTHER_QUERIES = [
    ("{ users { id name posts { id title } comments { id post { id title author { name } } } } }", None),
    ("{ tags { name posts { id title tags { name } } } }", None),
    ("query One($id: Int!) { user(id: $id) { name posts { title comments { body } } } }", {"id": 3}),
    ("query One($id: Int!) { user(id: $id) { name } }", {"id": 999}),
    ("{ post(id: 5) { title author { name } comments { post { id } author { posts { id } } } } }", None),
    ("{ comments(first: 40) { id body post { title tags { name } } author { name comments { id } } } }", None),
    ("{ posts(first: -1) { id } }", None),  # an error, the same in both modes
    ("{ posts { nope } }", None),  # a validation error
]


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("blog") / "blog.db"
    seed(path, users=USERS, posts=POSTS, comments_per_post=COMMENTS_PER_POST, tags=TAGS)
    return str(path)


@contextmanager
def blog_client(database: str, **options: Any) -> Iterator[FlaskClient]:
    app: Flask = create_app(database, **options)
    app.testing = True
    try:
        yield app.test_client()
    finally:
        app.extensions["blog"].engine.dispose()


@pytest.fixture(scope="module")
def naive(database: str) -> Iterator[FlaskClient]:
    with blog_client(database, batching=False) as client:
        yield client


@pytest.fixture(scope="module", params=list(SCHEDULERS))
def batched(request: Any, database: str) -> Iterator[Tuple[str, FlaskClient]]:
    """(scheduler name, client of the batching app with that dataloader_class)."""
    with blog_client(database, dataloader_class=request.param) as client:
        yield request.param, client


class Answer:
    def __init__(self, status: int, body: Any, headers: Any) -> None:
        self.status, self.body, self.headers = status, body, headers

    @property
    def sql(self) -> int:
        return int(self.headers["X-SQL-Count"])

    def same_as(self, other: "Answer") -> bool:
        return (self.status, self.body) == (other.status, other.body)


def get(client: FlaskClient, url: str) -> Answer:
    response = client.get(url)
    return Answer(response.status_code, response.get_json(), response.headers)


def post_graphql(client: FlaskClient, query: str, variables: Optional[Dict[str, Any]] = None) -> Answer:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    return Answer(response.status_code, response.get_json(), response.headers)


def dump(path: Any) -> List[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def minimal_statements(database: str, first: int) -> int:
    """What /api/posts?first=N must cost.

    The posts; then their authors, comments and tags; then the comments'
    authors that are not among the post authors (if any).
    """
    db = sqlite3.connect(database)
    try:
        posts = db.execute("SELECT id, author_id FROM posts ORDER BY id LIMIT ?", (first,)).fetchall()
        if not posts:
            return 1
        marks = ", ".join("?" * len(posts))
        commenters = {row[0] for row in db.execute(
            f"SELECT author_id FROM comments WHERE post_id IN ({marks})", [p[0] for p in posts])}
    finally:
        db.close()
    return 4 + bool(commenters - {author for _, author in posts})


# -- 1. the test client: same JSON, minimal SQL ------------------------------------------


def test_the_seeded_data_is_deterministic_and_rich_enough(database: str, tmp_path: Path,
                                                           naive: FlaskClient) -> None:
    again = tmp_path / "again.db"
    seed(again, users=USERS, posts=POSTS, comments_per_post=COMMENTS_PER_POST, tags=TAGS)
    assert dump(again) == dump(database)
    posts = get(naive, f"/api/posts?first={POSTS}").body
    assert len(posts) == POSTS
    assert all(len(post["comments"]) == COMMENTS_PER_POST for post in posts)
    assert sum(bool(post["tags"]) for post in posts) > POSTS // 2
    assert len(get(naive, "/api/users/8/feed").body["posts"]) == 0  # as URLS says
    assert len(get(naive, "/api/users/16/feed").body["posts"]) == 4
    # the minimal count is not trivially 4: some commenters are not post authors
    assert minimal_statements(database, POSTS) == 5


@pytest.mark.parametrize("url", URLS)
def test_every_endpoint_answers_as_the_naive_app(naive: FlaskClient, batched: Tuple[str, FlaskClient],
                                                 url: str) -> None:
    scheduler, client = batched
    expected, answer = get(naive, url), get(client, url)
    assert answer.status == expected.status
    assert answer.body == expected.body
    assert answer.headers["X-Dataloader"] == SCHEDULERS[scheduler]
    if expected.status == 200 and "first=0" not in url:
        assert answer.body  # not an empty list that two broken apps could agree on


def test_the_stats_header_says_what_the_request_dataloader_did(batched: Tuple[str, FlaskClient]) -> None:
    """X-Fiberloader-Stats: every statement but the root query is a fetch it counted."""
    scheduler, client = batched
    answer = get(client, f"/api/posts?first={POSTS}")
    totals, *per_source = answer.headers["X-Fiberloader-Stats"].split("; ")
    counts = dict(field.split("=") for field in totals.split())
    assert int(counts["fetches"]) == answer.sql - 1  # the posts query is not a fetch
    assert int(counts["errors"]) == 0
    assert int(counts["keys_fetched"]) <= int(counts["loads"])
    sources = {line.split(": ")[0]: dict(f.split("=") for f in line.split(": ")[1].split(", ")) for line in per_source}
    comments = sources["AssociationSource(session, Post, 'comments')"]
    assert comments["loads"] == str(POSTS)  # one load per post
    assert comments["keys_fetched"] == str(POSTS)
    assert comments["fetches"] == ("1" if scheduler != "null" else str(POSTS))
    assert sum(int(s["fetches"]) for s in sources.values()) == int(counts["fetches"])


@pytest.mark.parametrize("first", [1, 7, POSTS])
def test_posts_cost_at_most_five_statements_whatever_n(database: str, naive: FlaskClient,
                                                       batched: Tuple[str, FlaskClient], first: int) -> None:
    scheduler, client = batched
    url = f"/api/posts?first={first}"
    expected, answer = get(naive, url), get(client, url)
    assert answer.same_as(expected)
    assert expected.sql >= 1 + 2 * first  # the baseline: a comments and a tags query per post at least
    if scheduler == "null":  # NullDataloader: same answers, no batching
        assert first == 1 or answer.sql > minimal_statements(database, first)
    else:
        assert answer.sql == minimal_statements(database, first) <= 5


def test_graphql_gives_the_rest_data_with_the_same_minimal_sql(database: str, naive: FlaskClient,
                                                               batched: Tuple[str, FlaskClient]) -> None:
    scheduler, client = batched
    first = 12
    answer = post_graphql(client, POSTS_QUERY, {"first": first})
    assert answer.status == 200 and "errors" not in answer.body, answer.body
    assert answer.same_as(post_graphql(naive, POSTS_QUERY, {"first": first}))
    rest = get(naive, f"/api/posts?first={first}").body
    as_rest = [{**post, "tags": [tag["name"] for tag in post["tags"]]} for post in answer.body["data"]["posts"]]
    assert as_rest == rest
    if scheduler != "null":
        assert answer.sql == minimal_statements(database, first) <= 5
    else:
        assert answer.sql > minimal_statements(database, first)


@pytest.mark.parametrize("query, variables", OTHER_QUERIES)
def test_other_graphql_queries_answer_as_the_naive_app(naive: FlaskClient, batched: Tuple[str, FlaskClient],
                                                       query: str, variables: Any) -> None:
    _, client = batched
    expected, answer = post_graphql(naive, query, variables), post_graphql(client, query, variables)
    assert answer.same_as(expected), (answer.body, expected.body)
    data = expected.body.get("data")
    assert data is not None or expected.body["errors"]  # each query gives data or errors, never nothing


def test_graphql_rejects_a_request_without_a_query(batched: Tuple[str, FlaskClient]) -> None:
    _, client = batched
    response = client.post("/graphql", json={"variables": {}})
    assert response.status_code == 400 and "query" in response.get_json()["error"]


def test_the_feed_batches_too(database: str, naive: FlaskClient, batched: Tuple[str, FlaskClient]) -> None:
    scheduler, client = batched
    db = sqlite3.connect(database)
    try:
        (user_id, posts), = db.execute(
            "SELECT author_id, COUNT(*) FROM posts GROUP BY author_id ORDER BY 2 DESC, 1 LIMIT 1").fetchall()
    finally:
        db.close()
    url = f"/api/users/{user_id}/feed"
    expected, answer = get(naive, url), get(client, url)
    assert answer.same_as(expected) and len(expected.body["posts"]) == posts >= 3
    assert expected.sql == 2 + len(expected.body["posts"])  # user, posts, a count per post
    if scheduler != "null":
        assert answer.sql == 3  # user, posts, one GROUP BY for the counts


def test_slow_services_overlap_only_under_async(naive: FlaskClient, batched: Tuple[str, FlaskClient]) -> None:
    scheduler, client = batched

    def elapsed(c: FlaskClient) -> float:
        started = time.perf_counter()
        answer = get(c, "/api/slow")
        assert answer.status == 200
        return time.perf_counter() - started

    assert elapsed(naive) >= 0.055  # three 20 ms calls in a row
    if scheduler == "async":
        assert min(elapsed(client) for _ in range(3)) < 0.05  # ~20 ms: the three fetches overlapped
    else:
        assert elapsed(client) >= 0.055


# -- 2. FIBERLOADER_DATALOADER picks the scheduler -----------------------------------------


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_the_environment_variable_picks_the_scheduler(monkeypatch: pytest.MonkeyPatch, database: str,
                                                      naive: FlaskClient, scheduler: str) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", scheduler)
    with blog_client(database) as client:  # created after the variable is set
        for url in ["/api/posts?first=10", "/api/users/2/feed", "/api/slow"]:
            answer = get(client, url)
            assert answer.same_as(get(naive, url)), url
            assert answer.headers["X-Dataloader"] == SCHEDULERS[scheduler]
        answer = post_graphql(client, POSTS_QUERY, {"first": 10})
        assert answer.same_as(post_graphql(naive, POSTS_QUERY, {"first": 10}))
        assert answer.headers["X-Dataloader"] == SCHEDULERS[scheduler]


# -- 3. a real gunicorn with gevent workers ---------------------------------------------------


@pytest.mark.parametrize("scheduler", BATCHING)
def test_gunicorn_gevent_serves_concurrent_requests_each_its_own_answer(
        database: str, naive: FlaskClient, tmp_path: Path, scheduler: str) -> None:
    user_ids = [1 + i % (USERS + 1) for i in range(50)]  # USERS + 1 does not exist: 404
    expected = {user_id: get(naive, f"/api/users/{user_id}/feed") for user_id in set(user_ids)}
    with gunicorn(database, scheduler, tmp_path / "gunicorn.log") as base:
        with ThreadPoolExecutor(max_workers=len(user_ids)) as pool:
            answers = list(pool.map(lambda user_id: fetch(f"{base}/api/users/{user_id}/feed"), user_ids))
        for user_id, (status, body, headers) in zip(user_ids, answers):
            assert (status, body) == (expected[user_id].status, expected[user_id].body), user_id
            assert headers["X-Dataloader"] == SCHEDULERS[scheduler]
        # the requests really overlapped in the one worker process
        assert max(int(headers["X-Concurrent-Requests"]) for _, _, headers in answers) > 1

        for first in (3, POSTS):
            status, body, headers = fetch(f"{base}/api/posts?first={first}")
            assert status == 200 and body == get(naive, f"/api/posts?first={first}").body
            assert int(headers["X-SQL-Count"]) == minimal_statements(database, first) <= 5

        slow = [float(fetch(f"{base}/api/slow")[2]["X-Elapsed-Ms"]) for _ in range(3)]
        if scheduler == "async":
            assert min(slow) < 50, slow  # the three 20 ms fetches overlapped
        else:
            assert min(slow) >= 55, slow


# -- 4. the naive code, unchanged, with SQLAlchemy's lazy loads batched ----------------------


@pytest.fixture(scope="module", params=BATCHING)
def lazy(request: Any, database: str) -> Iterator[Tuple[str, FlaskClient]]:
    """(scheduler name, client of the naive code served with ``lazy_loads=True``)."""
    try:
        with blog_client(database, batching=False, lazy_loads=True, dataloader_class=request.param) as client:
            yield request.param, client
    finally:
        batch_lazy_loads(Base, enabled=False)  # a switch on the models: off for the other tests


@pytest.fixture(scope="module")
def sources(database: str) -> Iterator[FlaskClient]:
    """The code written with sources (``batching=True``), under Dataloader: what minimal SQL is."""
    with blog_client(database, dataloader_class="sync") as client:
        yield client


@contextmanager
def lazy_loads_off() -> Iterator[None]:
    batch_lazy_loads(Base, enabled=False)
    try:
        yield
    finally:
        batch_lazy_loads(Base)


@pytest.mark.parametrize("url", URLS)
def test_the_naive_code_with_lazy_loads_batched_answers_as_the_naive_app(
        naive: FlaskClient, lazy: Tuple[str, FlaskClient], url: str) -> None:
    scheduler, client = lazy
    expected, answer = get(naive, url), get(client, url)
    assert answer.same_as(expected)
    assert answer.headers["X-Dataloader"] == SCHEDULERS[scheduler]  # it runs in the request's dataloader


@pytest.mark.parametrize("first", [1, 7, POSTS])
def test_the_naive_posts_view_costs_the_minimal_sql(database: str, naive: FlaskClient,
                                                    lazy: Tuple[str, FlaskClient], first: int) -> None:
    """``[serialize_post_naive(post) for post in posts]``: the peers make one loop one batch per relationship."""
    _, client = lazy
    url = f"/api/posts?first={first}"
    expected, answer = get(naive, url), get(client, url)
    assert answer.same_as(expected)
    assert answer.sql == minimal_statements(database, first) <= 5 < expected.sql


@pytest.mark.parametrize("query, variables", [(POSTS_QUERY, {"first": 12})] + OTHER_QUERIES)
def test_the_naive_resolvers_cost_what_the_sources_cost(naive: FlaskClient, sources: FlaskClient,
                                                        lazy: Tuple[str, FlaskClient], query: str,
                                                        variables: Any) -> None:
    """graphql-core's own executor, the naive resolvers: the SQL of the resolvers written with sources."""
    _, client = lazy
    expected, answer = post_graphql(naive, query, variables), post_graphql(client, query, variables)
    assert answer.same_as(expected), (answer.body, expected.body)
    assert answer.sql == post_graphql(sources, query, variables).sql
    assert answer.sql < expected.sql or expected.sql <= 1


def test_the_naive_feed_keeps_its_count_per_post(naive: FlaskClient, lazy: Tuple[str, FlaskClient]) -> None:
    """The feed's COUNT per post is a query of its own, not a lazy load: nothing to batch.

    Its one lazy load (``user.posts``) is one statement either way.
    """
    _, client = lazy
    for url in ["/api/users/16/feed", f"/api/users/{USERS}/feed"]:
        expected, answer = get(naive, url), get(client, url)
        assert answer.same_as(expected)
        assert answer.sql == expected.sql == 2 + len(expected.body["posts"])


@pytest.mark.parametrize("how", ["switch off", "NullDataloader"])
def test_without_batching_the_naive_code_costs_the_naive_count(database: str, naive: FlaskClient,
                                                               lazy: Tuple[str, FlaskClient], how: str) -> None:
    scheduler, client = lazy
    requests = [("GET", url) for url in URLS] + [("POST", query) for query, _ in OTHER_QUERIES[:3]]

    def answers(c: FlaskClient) -> List[Answer]:
        return [get(c, what) if method == "GET" else post_graphql(c, what) for method, what in requests]

    expected = answers(naive)
    if how == "switch off":
        with lazy_loads_off():
            got = answers(client)
    else:
        with blog_client(database, batching=False, lazy_loads=True, dataloader_class="null") as null:
            got = answers(null)
    assert [(a.status, a.body) for a in got] == [(a.status, a.body) for a in expected]
    assert [a.sql for a in got] == [a.sql for a in expected]
    assert sum(a.sql for a in expected) > 100  # the N+1 the batches avoid


def test_the_wsgi_module_serves_the_lazy_mode_under_gunicorn(database: str, naive: FlaskClient,
                                                             tmp_path: Path) -> None:
    """BLOG_BATCHING=0 BLOG_LAZY_LOADS=1, gevent workers, AsyncDataloader, concurrent requests."""
    urls = [f"/api/posts?first={1 + i % POSTS}" for i in range(30)] + ["/api/users/16/feed"] * 5
    expected = {url: get(naive, url) for url in set(urls)}
    env = {"BLOG_BATCHING": "0", "BLOG_LAZY_LOADS": "1"}
    with gunicorn(database, "async", tmp_path / "gunicorn.log", env=env) as base:
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            answers = list(pool.map(lambda url: fetch(f"{base}{url}"), urls))
    for url, (status, body, headers) in zip(urls, answers):
        assert (status, body) == (expected[url].status, expected[url].body), url
        assert headers["X-Dataloader"] == "AsyncDataloader"
        if url.startswith("/api/posts"):
            assert int(headers["X-SQL-Count"]) == minimal_statements(database, int(url.split("=")[1])), url
    assert max(int(headers["X-Concurrent-Requests"]) for _, _, headers in answers) > 1
