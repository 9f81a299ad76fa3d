"""N+1 queries collapsing into batches, on an embedded SQLite database.

A "list posts" view written as plain synchronous code: for each post, fetch
its author and its comments, and each comment's author.  Written naively it
issues one query per row (the N+1 problem).  The same code with fiberloader
sources issues one query per table per level, whatever the number of posts.

Run it (after ``pip install .``)::

    python examples/sqlite_demo.py            # 200 posts
    python examples/sqlite_demo.py --posts 2000

It prints the SQL statement count and the median wall time of each variant,
and checks that all variants return the same data.  In-process SQLite answers
a query in microseconds, so there the N+1 loop is cheap; a networked database
adds a round trip to every statement.  The script measures a loopback TCP
round trip (an echo thread on 127.0.0.1) and shows, per variant, the estimate
``time + statements x round trip``, and the same with a 1 ms round trip.
"""

from __future__ import annotations

import argparse
import random
import socket
import sqlite3
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from fiberloader import Dataloader, NullDataloader, Source

# -- the database ---------------------------------------------------------------


def make_database(posts: int, users: int = 50, comments_per_post: int = 3) -> sqlite3.Connection:
    """A deterministic blog: users, posts, comments (in memory)."""
    rng = random.Random(7)
    db = sqlite3.connect(":memory:")
    db.executescript(
        """
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL,
                            author_id INTEGER NOT NULL REFERENCES users(id));
        CREATE TABLE comments (id INTEGER PRIMARY KEY, body TEXT NOT NULL,
                               post_id INTEGER NOT NULL REFERENCES posts(id),
                               author_id INTEGER NOT NULL REFERENCES users(id));
        CREATE INDEX comments_post ON comments(post_id);
        """
    )
    db.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"user {i}") for i in range(1, users + 1)])
    db.executemany(
        "INSERT INTO posts VALUES (?, ?, ?)",
        [(i, f"post {i}", rng.randint(1, users)) for i in range(1, posts + 1)],
    )
    db.executemany(
        "INSERT INTO comments (body, post_id, author_id) VALUES (?, ?, ?)",
        [
            (f"comment {c} on {p}", p, rng.randint(1, users))
            for p in range(1, posts + 1)
            for c in range(comments_per_post)
        ],
    )
    db.commit()
    return db


class StatementCounter:
    """Counts the SQL statements a connection runs (sqlite3's trace hook)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.count = 0

    def __enter__(self) -> "StatementCounter":
        self.db.set_trace_callback(self._seen)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.db.set_trace_callback(None)

    def _seen(self, statement: str) -> None:
        self.count += 1


def placeholders(keys: List[Any]) -> str:
    return ", ".join("?" for _ in keys)


# -- naive: one query per row -------------------------------------------------------


def naive_view(db: sqlite3.Connection) -> List[Dict[str, Any]]:
    def user(user_id: int) -> str:
        return db.execute("SELECT name FROM users WHERE id = ?", (user_id,)).fetchone()[0]  # type: ignore[no-any-return]

    result = []
    for post_id, title, author_id in db.execute("SELECT id, title, author_id FROM posts ORDER BY id"):
        comments = db.execute(
            "SELECT body, author_id FROM comments WHERE post_id = ? ORDER BY id", (post_id,)
        ).fetchall()
        result.append({
            "title": title,
            "author": user(author_id),
            "comments": [{"body": body, "author": user(cid)} for body, cid in comments],
        })
    return result


# -- fiberloader: the same shape of code, loads batched ----------------------------------


class DatabaseSource(Source):
    """A source reading one SQLite connection, its batch parameter."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @classmethod
    def batch_key_for(cls, db: sqlite3.Connection) -> Any:
        return id(db)  # one instance per connection


class UserName(DatabaseSource):
    """users.name by id: one query per batch."""

    def fetch(self, ids: List[int]) -> Dict[int, str]:
        rows = self.db.execute(f"SELECT id, name FROM users WHERE id IN ({placeholders(ids)})", ids)
        return dict(rows.fetchall())  # a dict keyed by key: missing ids give None


class CommentsOfPost(DatabaseSource):
    """(body, author_id) of each post's comments, by post id: one query per batch."""

    def fetch(self, post_ids: List[int]) -> List[List[Tuple[str, int]]]:
        by_post: Dict[int, List[Tuple[str, int]]] = {post_id: [] for post_id in post_ids}
        rows = self.db.execute(
            f"SELECT post_id, body, author_id FROM comments WHERE post_id IN ({placeholders(post_ids)}) "
            "ORDER BY id",
            post_ids,
        )
        for post_id, body, author_id in rows:
            by_post[post_id].append((body, author_id))
        return [by_post[post_id] for post_id in post_ids]


def batched_view(dl: Dataloader, db: sqlite3.Connection) -> List[Dict[str, Any]]:
    users = dl.with_(UserName, db)

    def one_post(row: Tuple[int, str, int]) -> Dict[str, Any]:
        post_id, title, author_id = row
        author = users.request(author_id)  # queue it now, read it later
        comments = dl.with_(CommentsOfPost, db).load(post_id)  # waits; other posts go on
        return {
            "title": title,
            "author": author.load(),  # fetched in the same round as the comments
            "comments": [{"body": body, "author": name}
                         for (body, _), name in zip(comments, users.load_all([c for _, c in comments]))],
        }

    rows = db.execute("SELECT id, title, author_id FROM posts ORDER BY id").fetchall()
    return dl.map(one_post, rows)  # each post is a job: their loads batch together


def handles_view(dl: Dataloader, db: sqlite3.Connection) -> List[Dict[str, Any]]:
    """One job, no job per post: request() every key first, load() the handles after."""
    users = dl.with_(UserName, db)
    comments_of = dl.with_(CommentsOfPost, db)
    rows = db.execute("SELECT id, title, author_id FROM posts ORDER BY id").fetchall()
    queued = [(title, users.request(author_id), comments_of.request(post_id))  # nothing waits yet
              for post_id, title, author_id in rows]
    # The first load() waits once: one round fetches every post author and every post's comments.
    posts = [(title, author.load(), comments.load()) for title, author, comments in queued]
    names = iter(users.request_all([cid for _, _, comments in posts for _, cid in comments]).load())
    return [{"title": title, "author": author,
             "comments": [{"body": body, "author": next(names)} for body, _ in comments]}
            for title, author, comments in posts]


# -- the comparison -----------------------------------------------------------------


def loopback_round_trip(pings: int = 200) -> float:
    """Seconds of one TCP round trip on 127.0.0.1: the median of ``pings`` 4-byte pings.

    The echo server is a thread of this process; the first pings (a warm-up)
    are not counted.
    """
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = conn.recv(64)
            while data:
                conn.sendall(data)
                data = conn.recv(64)

    thread = threading.Thread(target=echo, name="loopback echo", daemon=True)
    thread.start()
    times = []
    try:
        with socket.create_connection(server.getsockname()) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(pings + 20):
                started = time.perf_counter()
                client.sendall(b"ping")
                received = b""
                while len(received) < 4:
                    chunk = client.recv(64)
                    if not chunk:
                        raise ConnectionError("the loopback echo server closed the connection")
                    received += chunk
                if i >= 20:
                    times.append(time.perf_counter() - started)
    finally:
        thread.join(timeout=5)  # ends when the client closes
        server.close()
    return statistics.median(times)


def measure(name: str, db: sqlite3.Connection, view: Callable[[], Any],
            repeat: int) -> Tuple[str, int, float, Any]:
    """(name, SQL statements of one run, median seconds of ``repeat`` runs, the first run's result)."""
    times = []
    counts = set()
    result: Any = None
    for run in range(repeat):
        with StatementCounter(db) as counter:
            started = time.perf_counter()
            value = view()
            times.append(time.perf_counter() - started)
        counts.add(counter.count)
        if run == 0:
            result = value
        elif value != result:
            result = object()  # not the same data twice: equal to no other result
    if len(counts) != 1:
        raise AssertionError(f"{name}: a different number of statements in each run: {sorted(counts)}")
    return name, counts.pop(), statistics.median(times), result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=200, help="number of posts (default 200)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each variant; the median is shown (default 5)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    round_trip = loopback_round_trip()
    far = 0.001  # a database in another zone
    db = make_database(args.posts)
    try:
        rows = [
            measure("naive N+1 loop", db, lambda: naive_view(db), args.repeat),
            measure("NullDataloader (no batching)", db,
                    lambda: NullDataloader.with_dataloading(lambda dl: batched_view(dl, db)), args.repeat),
            measure("Dataloader, a job per post", db,
                    lambda: Dataloader.with_dataloading(lambda dl: batched_view(dl, db)), args.repeat),
            measure("Dataloader, request() handles", db,
                    lambda: Dataloader.with_dataloading(lambda dl: handles_view(dl, db)), args.repeat),
        ]
    finally:
        db.close()  # Python 3.13 warns (ResourceWarning) about a connection left open
    expected = rows[0][3]
    rtt = f"{round_trip * 1000:.2g} ms"  # printed rounded; the estimates use the measured value
    print(f"{args.posts} posts, 3 comments each, 50 users; SQLite in memory; median of {args.repeat} runs")
    print(f"Loopback round trip, measured just now: {rtt} (median of 200 TCP pings to an echo thread)\n")
    print(f"{'variant':30} {'SQL statements':>14} {'time ms':>8} {'+ ' + rtt + ' RTT':>16} {'+ 1 ms RTT':>11}")
    for name, statements, elapsed, result in rows:
        same = "" if result == expected else "   <-- DIFFERENT RESULT"
        near = (elapsed + statements * round_trip) * 1000
        distant = (elapsed + statements * far) * 1000
        print(f"{name:30} {statements:>14} {elapsed * 1000:>8.1f} {near:>16.1f} {distant:>11.1f}{same}")
    if any(result != expected for *_, result in rows):
        return 1
    naive_statements, naive_time = rows[0][1], rows[0][2]
    print(f"""
time ms: measured, in process.  The RTT columns are estimates from the measured numbers,
time + SQL statements x round trip: with the {rtt} loopback round trip per statement,
the least a networked database adds (it also runs the statement: SELECT 1 on loopback
PostgreSQL took ~0.1 ms in benchmarks/bench_graphql.py), and with 1 ms (a database in
another zone).

Same result from every variant.  fiberloader ran one query per table per level: posts;
then comments and post authors; then comment authors not yet cached.

Batching pays when each statement costs a round trip: in-process SQLite answered the naive
loop in {naive_time / naive_statements * 1e6:.1f} us per statement, so there the N+1 loop is cheap.""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
