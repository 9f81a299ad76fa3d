"""Core overhead of fiberloader, per load, next to two other Python dataloaders.

What it measures
================

Microseconds per ``load`` for three scenarios, each with ``N`` keys
(``--n``, default 10,000), median over ``--repeat`` runs (default 7).  Every
run builds fresh loaders.  Each row is timed twice: with the garbage
collector on (the default) and with ``gc.disable()`` around the timed part.

Peers:

* **graphql-sync-dataloaders** (``SyncDataLoader``): synchronous, returns
  ``SyncFuture`` objects that graphql-core's execution context resolves with
  callbacks.  The ratio column divides every row by its value-returning
  graphql-sync-dataloaders row (marked ``*``).
* **aiodataloader** (``DataLoader``): asyncio futures, one event loop per run
  (``asyncio.run`` is outside the timed part).
* **floor**: the same work with no loader at all, the lower bound.  Scenario
  (c) has a second floor, bare greenlets: one per job, parked and resumed by
  hand around one fetch -- the least any greenlet scheduler can cost.

Scenarios
=========

(a) cached loads
    The cache holds all N keys (primed outside the timed part: fiberloader
    ``merge``, graphql-sync-dataloaders a load + dispatch, aiodataloader
    ``prime``); one job loads every key in turn.  Only the loop of loads is
    timed.  fiberloader must serve these without switching greenlets: its
    stats must show exactly one worker greenlet (the job's) and no fetch.
    graphql-sync-dataloaders is shown twice: ``load(k)`` only hands back the
    cached future, ``load(k).result()`` gets the value (what the others do).
    fiberloader under ``NullDataloader`` (no greenlets at all) is a reference.

(b) one load_all of N distinct keys
    One job asks for N uncached keys at once: one batch, one fetch.  Timed:
    making the loader, the loads, the fetch, collecting the values.

(c) N jobs, one distinct key each
    N jobs each load one uncached key: all N wait, one fetch, all N resume.
    fiberloader: N ``append_job`` closures then ``run()``, and the same via
    ``dl.map()``; graphql-sync-dataloaders: a done-callback per future (how
    graphql-core resumes a field); aiodataloader: ``asyncio.gather`` of N
    coroutines.  Timed: making the loader, queueing, loading, resuming.

Every run checks that its values equal the expected list and that the batch
function was called as often as expected (0 for (a), 1 for (b) and (c)); a
wrong result aborts the benchmark.

How to run
==========

::

    python benchmarks/bench_core.py            # after: python -m pip install -e ".[bench]"
    python benchmarks/bench_core.py --n 50000 --repeat 11
    python benchmarks/bench_core.py --quick    # smoke run, a second or two
    python benchmarks/bench_core.py --profile  # cProfile of fiberloader (c)

``--profile`` prints, instead of the table, the 25 functions with the most
own time (``tottime``) in scenario (c) for fiberloader.  cProfile sees one
thread, not greenlets: a ``switch`` is counted as a call that returns in the
greenlet it switched to, so per-function times are approximate.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import aiodataloader
from graphql_sync_dataloaders import SyncDataLoader
from greenlet import getcurrent, greenlet

import _report
from fiberloader import Dataloader, DataloaderStats, NullDataloader, Source

# -- the data -------------------------------------------------------------------


def value_for(key: int) -> int:
    """The value the batch function returns for ``key``."""
    return key * 2 + 1


class CountingBatch:
    """The batch function every loader calls; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, keys: List[int]) -> List[int]:
        self.calls += 1
        return [value_for(key) for key in keys]

    async def coroutine(self, keys: List[int]) -> List[int]:
        """The same, as the coroutine function aiodataloader requires."""
        return self(keys)


class KeySource(Source[int, int]):
    """A fiberloader source over a :class:`CountingBatch`."""

    def __init__(self, batch: CountingBatch) -> None:
        self.batch = batch

    def fetch(self, keys: List[int]) -> List[int]:
        return self.batch(keys)


# -- timing -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of a variant produced, for the checks."""

    values: List[Any]
    fetches: int  # calls of the batch function during the timed part
    stats: Optional[DataloaderStats] = None  # fiberloader only


Runner = Callable[[List[int], _report.Timer], Outcome]


def require(condition: bool, message: str) -> None:
    """``assert`` that also holds under ``python -O``."""
    if not condition:
        raise AssertionError(message)


def require_stats(stats: DataloaderStats, *, fetches: int, greenlets: Optional[int] = None) -> None:
    require(stats.fetches == fetches, f"expected {fetches} fetches, got {stats!r}")
    if greenlets is not None:
        require(stats.greenlets == greenlets, f"expected {greenlets} greenlets, got {stats!r}")


def run_async(main: Callable[[List[int], _report.Timer], Any], keys: List[int], timer: _report.Timer) -> Outcome:
    """Run an async variant in a fresh event loop (loop setup is not timed)."""
    return asyncio.run(main(keys, timer))  # type: ignore[no-any-return]


# -- (a) cached loads -----------------------------------------------------------------


def floor_cached(keys: List[int], timer: _report.Timer) -> Outcome:
    cache = {key: value_for(key) for key in keys}
    with timer:
        values = [cache[key] for key in keys]
    return Outcome(values, 0)


def fiberloader_cached(dataloader_class: "type[Dataloader]", greenlets: int) -> Runner:
    """fiberloader cached loads under ``dataloader_class``, expecting ``greenlets`` workers."""

    def run(keys: List[int], timer: _report.Timer) -> Outcome:
        batch = CountingBatch()

        dl_box: List[Dataloader] = []

        def job(dl: Dataloader) -> List[int]:
            dl_box.append(dl)
            source = dl.with_(KeySource, batch)
            source.merge({key: value_for(key) for key in keys})  # primed, untimed
            with timer:
                return [source.load(key) for key in keys]

        values = dataloader_class.with_dataloading(job)
        stats = dl_box[0].stats
        require_stats(stats, fetches=0, greenlets=greenlets)
        return Outcome(values, batch.calls, stats)

    return run


def primed_sync_loader(keys: List[int]) -> "tuple[SyncDataLoader, CountingBatch]":
    """A SyncDataLoader whose cache holds every key (loaded and dispatched)."""
    batch = CountingBatch()
    loader = SyncDataLoader(batch)
    for key in keys:
        loader.load(key)
    loader.dispatch_queue()
    require(batch.calls == 1, "priming SyncDataLoader should fetch once")
    batch.calls = 0  # count the timed loads only
    return loader, batch


def sync_cached_futures(keys: List[int], timer: _report.Timer) -> Outcome:
    loader, batch = primed_sync_loader(keys)
    with timer:
        futures = [loader.load(key) for key in keys]
    return Outcome([future.result() for future in futures], batch.calls)


def sync_cached_values(keys: List[int], timer: _report.Timer) -> Outcome:
    loader, batch = primed_sync_loader(keys)
    with timer:
        values = [loader.load(key).result() for key in keys]
    return Outcome(values, batch.calls)


async def aio_cached(keys: List[int], timer: _report.Timer) -> Outcome:
    batch = CountingBatch()
    loader = aiodataloader.DataLoader(batch.coroutine)
    for key in keys:
        loader.prime(key, value_for(key))
    with timer:
        values = [await loader.load(key) for key in keys]
    return Outcome(values, batch.calls)


# -- (b) one load_all of N keys ------------------------------------------------------


def floor_batch(keys: List[int], timer: _report.Timer) -> Outcome:
    """Call the batch function once, then look every key up in its result."""
    batch = CountingBatch()
    with timer:
        by_key = dict(zip(keys, batch(keys)))
        values = [by_key[key] for key in keys]
    return Outcome(values, batch.calls)


def fiberloader_load_all(keys: List[int], timer: _report.Timer) -> Outcome:
    batch = CountingBatch()
    dl_box: List[Dataloader] = []

    def job(dl: Dataloader) -> List[int]:
        dl_box.append(dl)
        return dl.with_(KeySource, batch).load_all(keys)

    with timer:
        values = Dataloader.with_dataloading(job)
    require_stats(dl_box[0].stats, fetches=1)
    return Outcome(values, batch.calls, dl_box[0].stats)


def sync_load_all(keys: List[int], timer: _report.Timer) -> Outcome:
    batch = CountingBatch()
    with timer:
        loader = SyncDataLoader(batch)
        futures = [loader.load(key) for key in keys]
        loader.dispatch_queue()  # what futures[0].deferred_callback() calls
        values = [future.result() for future in futures]
    return Outcome(values, batch.calls)


async def aio_load_many(keys: List[int], timer: _report.Timer) -> Outcome:
    batch = CountingBatch()
    with timer:
        loader = aiodataloader.DataLoader(batch.coroutine)
        values = await loader.load_many(keys)
    return Outcome(values, batch.calls)


# -- (c) N jobs, one key each ----------------------------------------------------------


def greenlet_floor(keys: List[int], timer: _report.Timer) -> Outcome:
    """The least a greenlet scheduler can do: one bare greenlet per job parks, one fetch, resume all."""
    batch = CountingBatch()
    values: List[Any] = [None] * len(keys)

    def job(index: int) -> None:
        values[index] = hub.switch()  # park; the hub resumes it with the value

    with timer:
        hub = getcurrent()
        parked = []
        for index in range(len(keys)):
            worker = greenlet(job, hub)
            worker.switch(index)
            parked.append(worker)
        for worker, value in zip(parked, batch(keys)):
            worker.switch(value)
    return Outcome(values, batch.calls)


def fiberloader_jobs(keys: List[int], timer: _report.Timer) -> Outcome:
    batch = CountingBatch()
    values: List[Any] = [None] * len(keys)

    def make_job(source: KeySource, index: int, key: int) -> Callable[[], None]:
        def job() -> None:
            values[index] = source.load(key)

        return job

    with timer:
        dl = Dataloader()
        source = dl.with_(KeySource, batch)
        for index, key in enumerate(keys):
            dl.append_job(make_job(source, index, key))
        dl.run()
    require_stats(dl.stats, fetches=1)
    return Outcome(values, batch.calls, dl.stats)


def fiberloader_map(keys: List[int], timer: _report.Timer) -> Outcome:
    batch = CountingBatch()
    dl_box: List[Dataloader] = []

    def job(dl: Dataloader) -> List[int]:
        dl_box.append(dl)
        source = dl.with_(KeySource, batch)
        return dl.map(lambda key: source.load(key), keys)

    with timer:
        values = Dataloader.with_dataloading(job)
    require_stats(dl_box[0].stats, fetches=1)
    return Outcome(values, batch.calls, dl_box[0].stats)


def sync_callbacks(keys: List[int], timer: _report.Timer) -> Outcome:
    batch = CountingBatch()
    values: List[Any] = [None] * len(keys)

    def make_callback(index: int, future: Any) -> Callable[[], None]:
        def callback() -> None:  # SyncFuture calls its callbacks with no argument
            values[index] = future.result()

        return callback

    with timer:
        loader = SyncDataLoader(batch)
        for index, key in enumerate(keys):
            future = loader.load(key)
            future.add_done_callback(make_callback(index, future))
        loader.dispatch_queue()
    return Outcome(values, batch.calls)


async def aio_gather(keys: List[int], timer: _report.Timer) -> Outcome:
    batch = CountingBatch()
    with timer:
        loader = aiodataloader.DataLoader(batch.coroutine)

        async def job(key: int) -> int:
            return await loader.load(key)

        values = await asyncio.gather(*(job(key) for key in keys))
    return Outcome(list(values), batch.calls)


# -- the scenarios ----------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    run: Runner
    baseline: bool = False  # the graphql-sync-dataloaders row the ratios divide by


@dataclass
class Scenario:
    label: str
    fetches: int  # batch function calls every variant must make
    variants: Sequence[Variant]


def asynchronous(main: Callable[[List[int], _report.Timer], Any]) -> Runner:
    return lambda keys, timer: run_async(main, keys, timer)


SCENARIOS = [
    Scenario(
        "(a) cached",
        0,
        [
            Variant("floor: dict lookup", floor_cached),
            Variant("fiberloader Dataloader load(k)", fiberloader_cached(Dataloader, greenlets=1)),
            Variant("fiberloader NullDataloader load(k)", fiberloader_cached(NullDataloader, greenlets=0)),
            Variant("gsd load(k) [future only]", sync_cached_futures),
            Variant("gsd load(k).result()", sync_cached_values, baseline=True),
            Variant("aiodataloader await load(k)", asynchronous(aio_cached)),
        ],
    ),
    Scenario(
        "(b) load_all",
        1,
        [
            Variant("floor: fetch once + dict", floor_batch),
            Variant("fiberloader load_all(keys)", fiberloader_load_all),
            Variant("gsd load x N, dispatch, result()", sync_load_all, baseline=True),
            Variant("aiodataloader await load_many", asynchronous(aio_load_many)),
        ],
    ),
    Scenario(
        "(c) N jobs",
        1,
        [
            Variant("floor: fetch once + dict", floor_batch),
            Variant("floor: bare greenlets, park + resume", greenlet_floor),
            Variant("fiberloader append_job x N, run()", fiberloader_jobs),
            Variant("fiberloader map(load, keys)", fiberloader_map),
            Variant("gsd load + done-callback, dispatch", sync_callbacks, baseline=True),
            Variant("aiodataloader gather(await load)", asynchronous(aio_gather)),
        ],
    ),
]


# -- measuring ------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    variant: Variant
    gc_on: float  # median µs per load
    gc_off: float
    stats: Optional[DataloaderStats]


def run_checked(
    scenario: Scenario,
    variant: Variant,
    keys: List[int],
    gc_off: bool,
    profiler: Optional[cProfile.Profile] = None,
) -> "tuple[float, Outcome]":
    """One fresh run of ``variant``: its time per load in µs, after checking its results.

    ``profiler``, if given, is enabled around the run only (not the checks).
    """
    gc.collect()
    timer = _report.Timer(gc_off)
    if profiler is not None:
        profiler.enable()
    try:
        outcome = variant.run(keys, timer)
    finally:
        if profiler is not None:
            profiler.disable()
    where = f"{scenario.label} / {variant.name}"
    require(timer.elapsed is not None, f"{where}: the timed region never ran")
    require(outcome.values == [value_for(key) for key in keys], f"{where}: wrong values")
    require(
        outcome.fetches == scenario.fetches,
        f"{where}: batch function called {outcome.fetches} times, expected {scenario.fetches}",
    )
    return timer.elapsed * 1e6 / len(keys), outcome  # type: ignore[operator]


def measure(scenario: Scenario, variant: Variant, keys: List[int], repeat: int) -> Row:
    _, outcome = run_checked(scenario, variant, keys, gc_off=False)  # warm-up, untimed
    medians = {}
    for gc_off in (False, True):
        times = [run_checked(scenario, variant, keys, gc_off)[0] for _ in range(repeat)]
        medians[gc_off] = statistics.median(times)
    return Row(scenario.label, variant, medians[False], medians[True], outcome.stats)


# -- output -----------------------------------------------------------------------------


def print_machine_info(n: int, repeat: int) -> None:
    _report.print_machine_info(
        ("fiberloader", "greenlet", "gevent", "graphql-sync-dataloaders", "aiodataloader")
    )
    print(f"N={n}, repeat={repeat} (median), gsd = graphql-sync-dataloaders")
    print()


def print_table(rows: List[Row]) -> None:
    baselines = {row.scenario: row.gc_on for row in rows if row.variant.baseline}
    header = ["scenario", "variant", "µs/load gc on", "µs/load gc off", "ratio vs gsd (gc on)"]
    cells = []
    for row in rows:
        mark = " *" if row.variant.baseline else ""
        cells.append(
            [
                row.scenario,
                row.variant.name + mark,
                f"{row.gc_on:.3f}",
                f"{row.gc_off:.3f}",
                f"{row.gc_on / baselines[row.scenario]:.2f}x",
            ]
        )
    print(_report.rst_table(header, cells, right=[False, False, True, True, True]))
    print("* = the graphql-sync-dataloaders row each scenario's ratios divide by")
    print()
    print("fiberloader stats (last checked run):")
    for row in rows:
        if row.stats is not None:
            print(f"  {row.scenario} / {row.variant.name}: {row.stats!r}")


def profile(keys: List[int]) -> None:
    """cProfile scenario (c) for fiberloader; print the top 25 functions by tottime."""
    scenario = SCENARIOS[2]
    for variant in scenario.variants:
        if not variant.name.startswith("fiberloader"):
            continue
        run_checked(scenario, variant, keys, gc_off=False)  # warm-up
        profiler = cProfile.Profile()
        per_load, outcome = run_checked(scenario, variant, keys, gc_off=False, profiler=profiler)
        print(f"--- cProfile: {scenario.label} / {variant.name} ({per_load:.2f} µs/load under the profiler)")
        print(f"    {outcome.stats!r}")
        pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(25)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, help="keys per scenario (default 10000)")
    parser.add_argument("--repeat", type=int, help="runs per row and gc mode; the median is shown (default 7)")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=200, repeat=2")
    parser.add_argument("--profile", action="store_true", help="cProfile scenario (c) for fiberloader instead")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (200 if args.quick else 10_000)
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else 7)
    if n < 1 or repeat < 1:
        parser.error("--n and --repeat must be positive")
    keys = list(range(n))

    print_machine_info(n, repeat)
    if args.profile:
        profile(keys)
        return
    rows = [measure(scenario, variant, keys, repeat) for scenario in SCENARIOS for variant in scenario.variants]
    print_table(rows)


if __name__ == "__main__":
    main()
