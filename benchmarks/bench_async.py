"""Wall time of k slow fetches under each scheduler, next to aiodataloader.

What it measures
================

One job asks each of k sources (``--k``, default 1, 4 and 16) for one key
and then waits for all k values: k batches of one key, so k ``fetch`` calls,
each of which takes t (``--t-ms``, default 50 ms).  The row shows the wall
time of that run, median over ``--repeat`` runs (default 5), and that time
divided by t.  Each row has one untimed warm-up run first (connections,
threads).  The timed part covers the whole run: making the dataloader (or
the loaders), the requests, the fetches, and collecting the values.

Two kinds of slow fetch (the ``scheme`` column):

http
    One GET per fetch to a local HTTP server that answers after t:
    ``benchmarks/_delay_server.py``, a ``ThreadingHTTPServer`` started in a
    subprocess so it does not compete with the client for the GIL.  It
    listens on 127.0.0.1 only, on a free port.  It stops after the number
    of requests this run needs, after a time limit, or when this script
    exits.  The fiberloader sources use gevent's cooperative socket module
    directly and connect to the numeric address, so no getaddrinfo call
    goes to gevent's thread pool.  The process is not monkey-patched, so
    asyncio works next to gevent.  aiodataloader uses asyncio streams.
    Both send a bare HTTP/1.0 request and read until the server closes the
    connection.
sleep
    ``time.sleep(t)``, standing in for a driver that blocks in C.  The
    fiberloader source sets ``blocking = True``, so ``AsyncDataloader`` runs
    its ``fetch`` in a thread pool of its own that grows to the round's
    blocking fetches (up to ``AsyncDataloader.blocking_threads``, 32).  The
    floor goes through gevent's hub thread pool (10 threads by default).
    The aiodataloader batch function awaits ``loop.run_in_executor(None,
    ...)``: asyncio's default executor, which has ``min(32, os.cpu_count() +
    4)`` threads, shown at its default size and again resized to 16 threads
    (the ``pool 16`` row).

Variants:

* **floor**: no loader.  k bare gevent greenlets each make one fetch and
  are joined (for the sleep scheme, through the hub thread pool).  This is
  the least that k concurrent fetches cost on this machine.
* **AsyncDataloader**: when no job can go on, the fetches of all pending
  sources run at once as gevent greenlets.  Target: at most 1.1·t + 5 ms
  for every k (the last column).
* **Dataloader**: the fetches run one after another, so about k·t.
* **NullDataloader**: no batching.  Each ``load`` fetches its key at once,
  in turn, so about k·t.
* **aiodataloader**: k ``DataLoader`` instances, and ``asyncio.gather`` of
  the k loads.  Each row has one event loop (``asyncio.Runner``) that its
  warm-up and timed runs share.  Making the loop is not timed.

Every run checks that source i returned ``"i:key"`` for its key (the HTTP
server builds these strings itself), and that ``fetch`` was called exactly k
times (``dl.stats.fetches``, or a count of batch function calls for
aiodataloader).  A wrong result aborts the benchmark.

How to run
==========

::

    python benchmarks/bench_async.py            # after: python -m pip install -e ".[bench,gevent]"
    python benchmarks/bench_async.py --t-ms 100 --k 1 8 32 --repeat 9
    python benchmarks/bench_async.py --scheme http   # one scheme, e.g. under py-spy
    python benchmarks/bench_async.py --quick    # smoke run, a few seconds: t=20 ms, k=1,4, repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Awaitable, Callable, ContextManager, Iterator, List, Optional, Sequence

import aiodataloader
import gevent
from gevent import socket as gsocket

import _report
from fiberloader import AsyncDataloader, Dataloader, NullDataloader, Source

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_delay_server.py")
HOST = "127.0.0.1"
IO_TIMEOUT = 10.0  # seconds, for any one connect or read: a stuck server fails the run
RESIZED_POOL = 16  # threads in the "pool 16" rows


def target_ms(t_ms: float) -> float:
    """The AsyncDataloader target: every k within 1.1·t + 5 ms."""
    return 1.1 * t_ms + 5


def value_for(index: int, key: int) -> str:
    """What source ``index`` returns for ``key`` (the HTTP server builds the same string)."""
    return f"{index}:{key}"


def require(condition: bool, message: str) -> None:
    """``assert`` that also holds under ``python -O``."""
    if not condition:
        raise AssertionError(message)


# -- the slow fetches --------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """Where the delay server listens, and how long it makes each request take."""

    port: int
    delay_ms: float


def http_request(server: Server, index: int, keys: List[int]) -> bytes:
    joined = ",".join(map(str, keys))
    path = f"/delay?ms={server.delay_ms:g}&src={index}&keys={joined}"
    return f"GET {path} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode()


def http_values(reply: bytes) -> List[str]:
    """The values in a reply of the delay server: one ``src:key`` line per key."""
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    require(status.split()[1:2] == [b"200"], f"delay server answered {status!r}: {body!r}")
    return body.decode().splitlines()


def http_fetch(server: Server, index: int, keys: List[int]) -> List[str]:
    """One GET over gevent's cooperative socket (without monkey-patching)."""
    with gsocket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
        conn.settimeout(IO_TIMEOUT)
        conn.connect((HOST, server.port))  # a numeric address: no getaddrinfo
        conn.sendall(http_request(server, index, keys))
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return http_values(b"".join(chunks))


async def http_fetch_async(server: Server, index: int, keys: List[int]) -> List[str]:
    """The same GET over asyncio streams."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, server.port), IO_TIMEOUT)
    try:
        writer.write(http_request(server, index, keys))
        reply = await asyncio.wait_for(reader.read(), IO_TIMEOUT)  # until the server closes
    finally:
        writer.close()
        await writer.wait_closed()
    return http_values(reply)


def sleep_fetch(delay_ms: float, index: int, keys: List[int]) -> List[str]:
    """A fetch that blocks the thread it runs in."""
    time.sleep(delay_ms / 1000)
    return [value_for(index, key) for key in keys]


async def sleep_fetch_async(delay_ms: float, index: int, keys: List[int]) -> List[str]:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, sleep_fetch, delay_ms, index, keys)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Scheme:
    """One kind of slow fetch, as a plain function and as a coroutine function."""

    name: str
    fetch: Callable[[int, List[int]], List[str]]  # (source index, keys) -> values
    fetch_async: Callable[[int, List[int]], Awaitable[List[str]]]
    blocking: bool  # blocks its thread: run it in a thread pool to overlap it

    @property
    def source_class(self) -> "type[SchemeSource]":
        return BlockingSource if self.blocking else SchemeSource


def http_scheme(server: Server) -> Scheme:
    return Scheme("http", partial(http_fetch, server), partial(http_fetch_async, server), blocking=False)


def sleep_scheme(delay_ms: float) -> Scheme:
    return Scheme("sleep", partial(sleep_fetch, delay_ms), partial(sleep_fetch_async, delay_ms), blocking=True)


class SchemeSource(Source[int, str]):
    """fiberloader source number ``index``: each batch is one fetch of ``scheme``."""

    def __init__(self, scheme: Scheme, index: int) -> None:
        self.scheme = scheme
        self.index = index

    def fetch(self, keys: List[int]) -> List[str]:
        return self.scheme.fetch(self.index, keys)


class BlockingSource(SchemeSource):
    blocking = True  # AsyncDataloader: fetch in gevent's thread pool


@contextmanager
def delay_server(delay_ms: float, max_requests: int, max_seconds: float) -> Iterator[Server]:
    """Run ``_delay_server.py`` in a subprocess for the duration of the block."""
    command = [
        sys.executable, SERVER_SCRIPT,
        "--max-requests", str(max_requests), "--max-seconds", f"{max_seconds:.0f}",
    ]  # fmt: skip
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            require(line.strip().isdigit(), f"the delay server did not start (exit code {process.poll()})")
            yield Server(int(line), delay_ms)
        finally:
            process.terminate()  # closing its stdin (Popen.__exit__) would stop it too
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()


# -- one run of each variant ---------------------------------------------------------


@dataclass
class Outcome:
    values: List[str]
    fetches: int
    elapsed: float  # seconds


def floor_once(scheme: Scheme, k: int, key: int) -> Outcome:
    """k bare gevent greenlets, one fetch each (blocking ones through the hub thread pool)."""
    pool = gevent.get_hub().threadpool

    def fetch(index: int) -> List[str]:
        if scheme.blocking:
            return pool.apply(scheme.fetch, (index, [key]))  # type: ignore[no-any-return]
        return scheme.fetch(index, [key])

    start = time.perf_counter()
    greenlets = [gevent.spawn(fetch, index) for index in range(k)]
    gevent.joinall(greenlets, raise_error=True)
    values = [value for greenlet in greenlets for value in greenlet.get()]
    return Outcome(values, k, time.perf_counter() - start)


def fiberloader_once(dataloader_class: "type[Dataloader]", scheme: Scheme, k: int, key: int) -> Outcome:
    """One job requests ``key`` from k sources, then loads the k values."""
    source_class = scheme.source_class
    dataloaders: List[Dataloader] = []

    def job(dl: Dataloader) -> List[str]:
        dataloaders.append(dl)
        handles = [dl.with_(source_class, scheme, index).request(key) for index in range(k)]
        return [handle.load() for handle in handles]

    start = time.perf_counter()
    values = dataloader_class.with_dataloading(job)
    elapsed = time.perf_counter() - start
    return Outcome(values, dataloaders[0].stats.fetches, elapsed)


async def aiodataloader_once(scheme: Scheme, k: int, key: int) -> Outcome:
    """k DataLoaders, one load each, gathered."""
    calls = 0

    def loader(index: int) -> "aiodataloader.DataLoader[int, str]":
        async def batch(keys: List[int]) -> List[str]:
            nonlocal calls
            calls += 1
            return await scheme.fetch_async(index, keys)

        return aiodataloader.DataLoader(batch)

    start = time.perf_counter()
    loaders = [loader(index) for index in range(k)]
    values = await asyncio.gather(*(each.load(key) for each in loaders))
    elapsed = time.perf_counter() - start
    return Outcome(list(values), calls, elapsed)


# -- variants: each opens a session (pools, event loop) in which runs are timed ------------

RunOnce = Callable[[int], Outcome]  # key -> outcome
Session = Callable[[Scheme, int], ContextManager[RunOnce]]  # (scheme, k)


@contextmanager
def hub_pool_size(threads: Optional[int]) -> Iterator[None]:
    """Resize gevent's hub thread pool for the block (``None``: leave it alone)."""
    if threads is None:
        yield
        return
    pool = gevent.get_hub().threadpool
    saved = pool.maxsize
    pool.maxsize = threads
    try:
        yield
    finally:
        pool.maxsize = saved


def gevent_session(once: Callable[..., Outcome], *args: Any, pool: Optional[int] = None) -> Session:
    """A session for a gevent-based run: ``once(*args, scheme, k, key)``."""

    @contextmanager
    def session(scheme: Scheme, k: int) -> Iterator[RunOnce]:
        with hub_pool_size(pool):
            yield partial(once, *args, scheme, k)

    return session


def aiodataloader_session(pool: Optional[int] = None) -> Session:
    """One event loop per row; ``pool``: its default executor's size (``None``: asyncio's)."""

    @contextmanager
    def session(scheme: Scheme, k: int) -> Iterator[RunOnce]:
        with asyncio.Runner() as runner:  # closing it shuts the executor down
            if pool is not None:
                runner.get_loop().set_default_executor(ThreadPoolExecutor(pool))
            yield lambda key: runner.run(aiodataloader_once(scheme, k, key))

    return session


@dataclass
class Variant:
    name: str
    session: Session
    target: bool = False  # an AsyncDataloader row: check it against the target
    blocking_only: bool = False  # a pool size only matters to a blocking fetch


VARIANTS = [
    Variant("floor: k bare gevent greenlets", gevent_session(floor_once)),
    Variant("AsyncDataloader", gevent_session(fiberloader_once, AsyncDataloader), target=True),
    Variant("Dataloader", gevent_session(fiberloader_once, Dataloader)),
    Variant("NullDataloader", gevent_session(fiberloader_once, NullDataloader)),
    Variant("aiodataloader", aiodataloader_session()),
    Variant(f"aiodataloader, pool {RESIZED_POOL}", aiodataloader_session(pool=RESIZED_POOL), blocking_only=True),
]


def variants_for(scheme_name: str) -> List[Variant]:
    return [variant for variant in VARIANTS if scheme_name == "sleep" or not variant.blocking_only]


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Row:
    scheme: str
    k: int
    variant: Variant
    median_ms: float
    min_ms: float
    fetches: int


def checked(outcome: Outcome, k: int, key: int, where: str) -> Outcome:
    expected = [value_for(index, key) for index in range(k)]
    require(outcome.values == expected, f"{where}: got {outcome.values!r}, expected {expected!r}")
    require(outcome.fetches == k, f"{where}: {outcome.fetches} fetch calls, expected {k}")
    return outcome


def measure(scheme: Scheme, k: int, variant: Variant, repeat: int) -> Row:
    where = f"{scheme.name} k={k} / {variant.name}"
    with variant.session(scheme, k) as run_once:
        checked(run_once(0), k, 0, where)  # warm-up, untimed
        outcomes = [checked(run_once(key), k, key, where) for key in range(1, repeat + 1)]
    times = [outcome.elapsed * 1000 for outcome in outcomes]
    return Row(scheme.name, k, variant, statistics.median(times), min(times), outcomes[-1].fetches)


def measure_scheme(scheme: Scheme, ks: Sequence[int], repeat: int) -> List[Row]:
    return [measure(scheme, k, variant, repeat) for k in ks for variant in variants_for(scheme.name)]


def http_requests_needed(ks: Sequence[int], repeat: int) -> int:
    """Requests the http scheme makes: k per run, warm-up included."""
    return len(variants_for("http")) * sum(ks) * (repeat + 1)


# -- output -------------------------------------------------------------------------------


def print_machine_info(t_ms: float, ks: Sequence[int], repeat: int) -> None:
    _report.print_machine_info(("fiberloader", "greenlet", "gevent", "aiodataloader"))
    asyncio_threads = min(32, (os.cpu_count() or 1) + 4)
    print(
        f"pools          gevent hub thread pool {gevent.get_hub().threadpool.maxsize} threads, "
        f"asyncio default executor {asyncio_threads} threads ('pool {RESIZED_POOL}' rows: both resized)"
    )
    print(
        f"t={t_ms:g} ms, k={','.join(map(str, ks))}, repeat={repeat} (median), "
        f"target for AsyncDataloader: 1.1·t + 5 ms = {target_ms(t_ms):g} ms"
    )
    print()


def print_table(rows: List[Row], t_ms: float) -> None:
    header = ["scheme", "k", "variant", "ms median", "ms min", "x t", "fetches", "≤ 1.1·t+5 ms"]
    cells = []
    for row in rows:
        verdict = ("yes" if row.median_ms <= target_ms(t_ms) else "NO") if row.variant.target else ""
        cells.append(
            [
                row.scheme,
                str(row.k),
                row.variant.name,
                f"{row.median_ms:.1f}",
                f"{row.min_ms:.1f}",
                f"{row.median_ms / t_ms:.2f}" if t_ms else "-",
                str(row.fetches),
                verdict,
            ]
        )
    print(_report.rst_table(header, cells, right=[False, True, False, True, True, True, True, False]))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--t-ms", type=float, help="time each fetch takes, ms (default 50)")
    parser.add_argument("--k", type=int, nargs="+", help="numbers of sources (default 1 4 16)")
    parser.add_argument("--repeat", type=int, help="timed runs per row; the median is shown (default 5)")
    parser.add_argument("--scheme", choices=("http", "sleep"), action="append", help="only this scheme (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: t=20 ms, k=1 4, repeat=1")
    args = parser.parse_args(argv)
    t_ms = args.t_ms if args.t_ms is not None else (20.0 if args.quick else 50.0)
    ks = args.k or ([1, 4] if args.quick else [1, 4, 16])
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    schemes = args.scheme or ["http", "sleep"]
    if t_ms < 0 or repeat < 1 or min(ks) < 1:
        parser.error("--t-ms must not be negative; --k and --repeat must be positive")

    print_machine_info(t_ms, ks, repeat)
    rows: List[Row] = []
    if "http" in schemes:
        needed = http_requests_needed(ks, repeat)
        # Time limit: every request one after another, plus two minutes.
        with delay_server(t_ms, max_requests=needed, max_seconds=120 + needed * t_ms / 1000) as server:
            rows += measure_scheme(http_scheme(server), ks, repeat)
    if "sleep" in schemes:
        rows += measure_scheme(sleep_scheme(t_ms), ks, repeat)
    print_table(rows, t_ms)


if __name__ == "__main__":
    main()
