"""N+1 queries collapsing into batches, on an embedded SQLite database.

A "list posts" view written as plain synchronous code: for each post, fetch
its author and its comments, and each comment's author.  Written naively it
issues one query per row (the N+1 problem).  The same code with fiberloader
sources issues one query per table per level, whatever the number of posts.

Run it (after ``pip install .``)::

    python examples/sqlite_demo.py            # 200 posts
    python examples/sqlite_demo.py --posts 2000

It prints the SQL statement count and the wall time of each variant, and
checks that all variants return the same data.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
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


# -- the comparison -----------------------------------------------------------------


def measure(name: str, db: sqlite3.Connection, view: Callable[[], Any]) -> Tuple[str, int, float, Any]:
    with StatementCounter(db) as counter:
        started = time.perf_counter()
        result = view()
        elapsed = time.perf_counter() - started
    return name, counter.count, elapsed, result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=200, help="number of posts (default 200)")
    args = parser.parse_args(argv)
    db = make_database(args.posts)
    try:
        rows = [
            measure("naive N+1 loop", db, lambda: naive_view(db)),
            measure("fiberloader, NullDataloader (no batching)", db,
                    lambda: NullDataloader.with_dataloading(lambda dl: batched_view(dl, db))),
            measure("fiberloader, Dataloader", db,
                    lambda: Dataloader.with_dataloading(lambda dl: batched_view(dl, db))),
        ]
    finally:
        db.close()  # Python 3.13 warns (ResourceWarning) about a connection left open
    expected = rows[0][3]
    print(f"{args.posts} posts, 3 comments each, 50 users; SQLite in memory\n")
    print(f"{'variant':45} {'SQL statements':>15} {'time (ms)':>10}")
    for name, statements, elapsed, result in rows:
        same = "" if result == expected else "   <-- DIFFERENT RESULT"
        print(f"{name:45} {statements:>15} {elapsed * 1000:>10.1f}{same}")
    if any(result != expected for *_, result in rows):
        return 1
    print("\nSame result from every variant. fiberloader ran one query per table per level:")
    print("posts; then comments and post authors together; then comment authors not yet cached.")
    print("In-memory SQLite answers a query in ~20 us, which hides what N+1 costs; over a")
    print("network each statement is a round trip (~0.1 ms on loopback PostgreSQL, more in production).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
