"""The example blog app under gunicorn -k gevent: naive N+1 next to fiberloader's schedulers.

What it measures
================

One run, every variant side by side.  The example app (``examples/blog``)
is seeded into a SQLite file in a temporary directory (deleted at exit),
then served by a real ``gunicorn -k gevent --workers 1`` on 127.0.0.1,
once per variant, each server started, warmed up and stopped in turn:

* **naive**: the same app without fiberloader (``BLOG_BATCHING=0``): plain
  attribute access and one query per row, the three slow calls one after
  another.
* **null**, **sync**, **async**: the app with ``fiberloader.flask``, and
  ``FIBERLOADER_DATALOADER`` set to that scheduler.
* **lazy-sync**, **lazy-async**: the naive app's code, unchanged, in a
  dataloader per request with ``batch_lazy_loads`` on (``BLOG_BATCHING=0
  BLOG_LAZY_LOADS=1``): SQLAlchemy's own lazy loads batch.

Against each server, for each endpoint, a bounded load: ``--requests``
requests (default 200) from ``--clients`` client threads (default 8), each
with its own keep-alive connection.  Endpoints:

* ``/api/posts?first=50``: pure SQLite (posts, authors, tags, comments,
  comment authors).
* ``/api/slow``: three sources whose fetch does 20 ms of cooperative I/O
  (``gevent.sleep``) each, loaded from three jobs.
* ``POST /graphql``: 50 posts with their authors, comments, commenters and
  tags (CPU-bound: the GraphQL execution is most of the time).

Columns: requests per second, p50 and p99 latency in ms (client side), the
SQL statements per request the app reports (``X-SQL-Count``: the same for
every request of a row, else the range).  Every response body is checked
equal to the naive variant's; a mismatch aborts the benchmark.

``--variants sync,async --endpoints graphql`` runs only those (bodies are
then checked against the first variant that runs).

Targets: SQL per request minimal under sync and async (and with lazy
loads, but ``/api/slow``, whose naive code calls the services one after
another); under async, p50 of ``/api/slow`` ≤ 1.3 × the slowest single
source (20 ms); for ``/graphql``, async's throughput ≥ 0.95 × sync's and
its p99 ≤ 1.3 × sync's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import _report  # noqa: E402

from examples.blog.seed import seed  # noqa: E402

VARIANTS = ("naive", "null", "sync", "async", "lazy-sync", "lazy-async")
ENDPOINTS = {"posts": "/api/posts?first=50", "slow": "/api/slow", "graphql": "/graphql"}
GRAPHQL_BODY = json.dumps(
    {"query": "{ posts(first: 50) { title author { name } comments { body author { name } } tags { name } } }"})
SOURCE_MS = 20.0  # the cooperative I/O of one slow source
MINIMAL_SQL = {"posts": 5, "slow": 0, "graphql": 5}  # posts, authors, comments, tags, comment authors


@dataclass
class Row:
    variant: str
    endpoint: str
    seconds: float
    latencies: List[float] = field(default_factory=list)
    sql: List[int] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    @property
    def sql_text(self) -> str:
        low, high = min(self.sql), max(self.sql)
        return str(low) if low == high else f"{low}-{high}"


def get(connection: http.client.HTTPConnection, path: str) -> Tuple[int, bytes, int]:
    if path == "/graphql":
        connection.request("POST", path, GRAPHQL_BODY, {"Content-Type": "application/json"})
    else:
        connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    return response.status, body, int(response.getheader("X-SQL-Count", "-1"))


class Server:
    """A gunicorn -k gevent serving the example app with one variant's environment."""

    def __init__(self, database: str, variant: str) -> None:
        self.port = _report.free_port()
        env = dict(os.environ, BLOG_DB=database, PYTHONPATH=ROOT)
        env["BLOG_BATCHING"] = "0" if variant == "naive" or variant.startswith("lazy-") else "1"
        env["BLOG_LAZY_LOADS"] = "1" if variant.startswith("lazy-") else "0"
        if variant != "naive":
            env["FIBERLOADER_DATALOADER"] = variant.removeprefix("lazy-")
        command = [
            sys.executable, "-m", "gunicorn", "-k", "gevent", "--workers", "1", "--no-control-socket",
            "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning", "examples.blog.wsgi:application",
        ]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                status, _, _ = get(connection, "/api/posts?first=1")
                connection.close()
                if status == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"gunicorn for {variant!r} did not come up on port {self.port}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def load(port: int, path: str, requests: int, clients: int, expected: Optional[bytes]) -> Tuple[Row, bytes]:
    """``requests`` GETs of ``path`` from ``clients`` threads; every body checked."""
    local = threading.local()
    lock = threading.Lock()
    latencies: List[float] = []
    sql: List[int] = []
    bodies: List[bytes] = []

    def one(_: int) -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start = time.perf_counter()
        status, body, count = get(connection, path)
        elapsed = time.perf_counter() - start
        if status != 200:
            raise SystemExit(f"{path}: HTTP {status}: {body[:200]!r}")
        with lock:
            latencies.append(elapsed)
            sql.append(count)
            if not bodies:
                bodies.append(body)
            elif body != bodies[0]:
                raise SystemExit(f"{path}: two requests gave different bodies")

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    if expected is not None and bodies[0] != expected:
        raise SystemExit(f"{path}: the body differs from the naive variant's")
    row = Row("", path, seconds, latencies, sql)
    return row, bodies[0]


def measure(
    database: str, variants: Sequence[str], requests: int, clients: int, endpoints: Optional[Dict[str, str]] = None
) -> List[Row]:
    rows: List[Row] = []
    expected: Dict[str, bytes] = {}
    for variant in variants:
        server = Server(database, variant)
        try:
            for key, path in (ENDPOINTS if endpoints is None else endpoints).items():
                load(server.port, path, clients * 2, clients, None)  # warm-up, untimed
                row, body = load(server.port, path, requests, clients, expected.get(key))
                expected.setdefault(key, body)
                row.variant, row.endpoint = variant, key
                rows.append(row)
        finally:
            server.stop()
    return rows


def targets(rows: List[Row]) -> List[Tuple[str, str, str, bool]]:
    found = []
    by_key = {(row.variant, row.endpoint): row for row in rows}
    for row in rows:
        batching = row.variant in ("sync", "async") or (row.variant.startswith("lazy-") and row.endpoint != "slow")
        if batching:
            found.append((f"{row.endpoint}: SQL per request, {row.variant}", f"= {MINIMAL_SQL[row.endpoint]}",
                          row.sql_text, max(row.sql) <= MINIMAL_SQL[row.endpoint]))
        if row.variant == "async" and row.endpoint == "slow":
            limit = 1.3 * SOURCE_MS
            p50 = row.percentile(0.5)
            found.append(("slow: p50 ms, async", f"≤ {limit:.0f}", f"{p50:.1f}", p50 <= limit))
    sync, async_ = by_key.get(("sync", "graphql")), by_key.get(("async", "graphql"))
    if sync is not None and async_ is not None:
        ratio = async_.rps / sync.rps
        found.append(("graphql: req/s, async / sync", "≥ 0.95", f"{ratio:.2f}", ratio >= 0.95))
        tail = async_.percentile(0.99) / sync.percentile(0.99)
        found.append(("graphql: p99, async / sync", "≤ 1.3", f"{tail:.2f}", tail <= 1.3))
    return found


def chosen(parser: argparse.ArgumentParser, flag: str, text: Optional[str], known: Sequence[str]) -> Tuple[str, ...]:
    """The names a ``--variants``/``--endpoints`` list gives, in the table's order (all if none)."""
    if not text:
        return tuple(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        parser.error(f"{flag} takes names from {', '.join(known)}; got {text!r}")
    return tuple(name for name in known if name in names)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint and variant")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client connections")
    parser.add_argument("--posts", type=int, default=200, help="posts in the seeded database")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 requests, 4 clients, 60 posts")
    parser.add_argument("--variants", metavar="A,B", help=f"only these variants (of {','.join(VARIANTS)})")
    parser.add_argument("--endpoints", metavar="A,B", help=f"only these endpoints (of {','.join(ENDPOINTS)})")
    args = parser.parse_args(argv)
    variants = chosen(parser, "--variants", args.variants, VARIANTS)
    endpoints = {key: ENDPOINTS[key] for key in chosen(parser, "--endpoints", args.endpoints, tuple(ENDPOINTS))}
    requests, clients, posts = (40, 4, 60) if args.quick else (args.requests, args.clients, args.posts)
    if min(requests, clients, posts) < 1:
        parser.error("--requests, --clients and --posts must be positive")
    _report.print_machine_info(("fiberloader", "greenlet", "gevent", "gunicorn", "Flask", "SQLAlchemy"))
    print(f"requests={requests} per endpoint and variant, clients={clients}, posts={posts}, "
          f"gunicorn -k gevent --workers 1 on 127.0.0.1, SQLite file")
    print()
    with tempfile.TemporaryDirectory(prefix="bench_web.") as directory:
        database = os.path.join(directory, "blog.db")
        seed(database, posts=posts)
        rows = measure(database, variants, requests, clients, endpoints)
    header = ("variant", "endpoint", "req/s", "p50 ms", "p99 ms", "SQL/request")
    table = [
        (row.variant, ENDPOINTS[row.endpoint], f"{row.rps:.0f}", f"{row.percentile(0.5):.1f}",
         f"{row.percentile(0.99):.1f}", row.sql_text)
        for row in sorted(rows, key=lambda row: (row.endpoint, VARIANTS.index(row.variant)))
    ]
    print(_report.rst_table(header, table, (False, False, True, True, True, True)))
    print()
    found = targets(rows)
    print(_report.rst_table(("target", "limit", "measured", "met"),
                            [(name, limit, value, "yes" if met else "NO") for name, limit, value, met in found],
                            (False, True, True, False)))


if __name__ == "__main__":
    main()
