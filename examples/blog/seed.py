"""Create the blog's SQLite database, filled with deterministic data.

From the repository root::

    python examples/blog/seed.py /tmp/blog.db                 # 50 users, 200 posts
    python examples/blog/seed.py /tmp/blog.db --posts 2000

or from Python: ``examples.blog.seed.seed(path, posts=...)``.  The same
arguments always give the same database (``random.Random(SEED)``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

if __package__ in (None, ""):  # run as a script: make `examples.blog` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import create_engine, insert

from examples.blog.models import Base, Comment, Post, Tag, User, post_tags

__all__ = ["SEED", "seed", "main"]

SEED = 20240601

FIRST_NAMES = ["Ada", "Grace", "Barbara", "Linus", "Guido", "Margaret", "Ken", "Dennis", "Frances",
               "Edsger", "Radia", "Donald", "Hedy", "Alan", "Katherine", "Tim", "Sophie", "John"]
LAST_NAMES = ["Lovelace", "Hopper", "Liskov", "Torvalds", "van Rossum", "Hamilton", "Thompson",
              "Ritchie", "Allen", "Dijkstra", "Perlman", "Knuth", "Lamarr", "Turing", "Johnson"]
WORDS = ["greenlet", "fiber", "batch", "query", "cache", "loader", "request", "schema", "resolver",
         "session", "index", "latency", "join", "table", "worker", "socket", "python", "ruby",
         "graph", "field", "round", "trip", "plan", "commit", "lazy", "eager", "key", "value"]
TAG_NAMES = ["python", "graphql", "sqlalchemy", "flask", "gevent", "performance", "databases",
             "testing", "async", "ruby", "web", "tutorial"]


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def seed(path: Union[str, "os.PathLike[str]"], users: int = 50, posts: int = 200,
         comments_per_post: int = 5, tags: int = 10) -> None:
    """(Re)create the SQLite database at ``path`` with deterministic content.

    Every post has a random author, ``comments_per_post`` comments by random
    users and zero to three tags.  An existing file is replaced.  ``path``
    may also be an SQLAlchemy URL (``postgresql+psycopg://...``): the
    blog's tables there are dropped and created again.
    """
    if users < 1 or posts < 0 or comments_per_post < 0 or tags < 0:
        raise ValueError("seed() needs at least one user and no negative counts")
    rng = random.Random(SEED)
    path = os.fspath(path)
    if "://" not in path and os.path.exists(path):
        os.remove(path)
    engine = create_engine(path if "://" in path else f"sqlite:///{path}")
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        user_rows = [{"id": i, "name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)} #{i}"}
                     for i in range(1, users + 1)]
        tag_rows = [{"id": i, "name": TAG_NAMES[i - 1] if i <= len(TAG_NAMES) else f"topic-{i}"}
                    for i in range(1, tags + 1)]
        post_rows: List[Dict[str, Any]] = []
        tag_links: List[Dict[str, Any]] = []
        comment_rows: List[Dict[str, Any]] = []
        for post_id in range(1, posts + 1):
            post_rows.append({
                "id": post_id,
                "title": f"{_words(rng, 3).capitalize()} ({post_id})",
                "body": _words(rng, 30),
                "author_id": rng.randint(1, users),
            })
            for tag_id in sorted(rng.sample(range(1, tags + 1), min(tags, rng.randint(0, 3)))):
                tag_links.append({"post_id": post_id, "tag_id": tag_id})
            for _ in range(comments_per_post):
                comment_rows.append({
                    "id": len(comment_rows) + 1,
                    "body": _words(rng, 8),
                    "post_id": post_id,
                    "author_id": rng.randint(1, users),
                })
        with engine.begin() as connection:
            connection.execute(insert(User), user_rows)
            if tag_rows:
                connection.execute(insert(Tag), tag_rows)
            if post_rows:
                connection.execute(insert(Post), post_rows)
            if tag_links:
                connection.execute(insert(post_tags), tag_links)
            if comment_rows:
                connection.execute(insert(Comment), comment_rows)
    finally:
        engine.dispose()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("path", help="the SQLite file to (re)create")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--comments-per-post", type=int, default=5)
    parser.add_argument("--tags", type=int, default=10)
    args = parser.parse_args(argv)
    seed(args.path, users=args.users, posts=args.posts,
         comments_per_post=args.comments_per_post, tags=args.tags)
    print(f"{args.path}: {args.users} users, {args.posts} posts, "
          f"{args.posts * args.comments_per_post} comments, {args.tags} tags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
