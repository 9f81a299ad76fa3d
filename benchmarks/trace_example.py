"""Traces of one GraphQL request of the example blog app, under sync and async, as PNGs.

Makes ``docs/trace-sync.png`` and ``docs/trace-async.png`` (the README's
pictures): the same query (3 posts with their author, tags, comments and
the comments' authors) on a freshly seeded SQLite database, traced with
``fiberloader.tracing.PerfettoTrace`` after three untraced warm-up requests,
rendered by ``render_trace.py``.  Run from the repository root::

    python benchmarks/trace_example.py            # writes docs/trace-{sync,async}.png
    python benchmarks/trace_example.py --out /tmp  # elsewhere
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.blog.app import create_app  # noqa: E402
from examples.blog.seed import seed  # noqa: E402
from fiberloader.tracing import PerfettoTrace  # noqa: E402

QUERY = """query Posts($first: Int) {
  posts(first: $first) { id title author { id name } tags { name } comments { id body author { id name } } }
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where the PNGs go (default: docs/)")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp()
    database = os.path.join(tmp, "blog.db")
    seed(database, users=20, posts=30, comments_per_post=3, tags=6)
    for mode in ("sync", "async"):
        path = os.path.join(tmp, f"trace-{mode}.json")
        app = create_app(database, dataloader_class=mode)
        client = app.test_client()
        body = {"query": QUERY, "variables": {"first": 3}}
        for _ in range(3):  # warm up: SQLAlchemy's statement cache, Flask, graphql-core's parse
            assert client.post("/graphql", json=body).status_code == 200
        trace = PerfettoTrace(path)
        app.config["FIBERLOADER_EXTENSIONS"] = [trace]
        response = client.post("/graphql", json=body)
        assert response.status_code == 200, response.get_json()
        trace.close()
        app.extensions["blog"].engine.dispose()
        title = (
            "examples/blog, one GraphQL request (3 posts with author, tags, comments and their authors)\n"
            f"FIBERLOADER_DATALOADER={mode}: {response.headers['X-SQL-Count']} SQL statements, "
            "one fetch per source per round"
        )
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_trace.py"), path,
                        str(out / f"trace-{mode}.png"), "--title", title], check=True)
        print(mode, path, out / f"trace-{mode}.png")


if __name__ == "__main__":
    main()
