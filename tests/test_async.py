"""AsyncDataloader: what it does that Dataloader does not, and gevent corner cases.

The scheduler-agnostic suite already runs under AsyncDataloader through the
``scheduler`` fixture.  Timing tests assert overlap by ratios with generous
tolerances and by recorded start/end events, never by tight absolute times:
the machine is shared and noisy.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import time
import weakref
from typing import Any, Dict, List, Tuple, Type

import gevent
from greenlet import settrace as greenlet_settrace
import pytest
from gevent.event import Event

from fiberloader import (
    AsyncDataloader, Dataloader, FiberloaderError, NotRunningError, NullDataloader, Source, current_dataloader,
    dataloader_class,
)

from .conftest import Recorder, live_greenlets

T = 0.1  # seconds of "I/O" per fetch


class Sleepy(Source):
    """Each fetch records start/end events around ``gevent.sleep(T)``."""

    def __init__(self, name: str, log: List[Tuple[str, str, float]]) -> None:
        self.name = name
        self.log = log

    @classmethod
    def batch_key_for(cls, name: str, log: Any) -> Any:
        return name

    def fetch(self, keys: List[Any]) -> List[Any]:
        self.log.append(("start", self.name, time.perf_counter()))
        gevent.sleep(T)
        self.log.append(("end", self.name, time.perf_counter()))
        return [f"{self.name}:{key}" for key in keys]


def load_from_sources(cls: Type[Dataloader], names: List[str]) -> Tuple[Any, float, List[Any]]:
    log: List[Tuple[str, str, float]] = []

    def job(dl: Dataloader) -> Any:
        handles = [dl.with_(Sleepy, name, log).request(1) for name in names]
        return [handle.load() for handle in handles]

    started = time.perf_counter()
    result = cls.with_dataloading(job)
    return result, time.perf_counter() - started, log


def test_fetches_of_different_sources_run_concurrently() -> None:
    names = ["a", "b", "c", "d"]
    result, elapsed, log = load_from_sources(AsyncDataloader, names)
    assert result == ["a:1", "b:1", "c:1", "d:1"]
    # Every fetch started before any ended: they overlapped.
    kinds = [kind for kind, _, _ in log]
    assert kinds == ["start"] * 4 + ["end"] * 4
    assert elapsed < 0.6 * len(names) * T  # about T, far from 4 T


def test_dataloader_runs_the_same_fetches_one_after_another() -> None:
    result, elapsed, log = load_from_sources(Dataloader, ["a", "b", "c"])
    assert result == ["a:1", "b:1", "c:1"]
    assert [kind for kind, _, _ in log] == ["start", "end"] * 3
    assert elapsed > 2.5 * T


def test_async_makes_the_same_fetch_calls_as_sync_on_a_deterministic_workload() -> None:
    def workload(cls: Type[Dataloader]) -> Any:
        dl = cls()
        out: Dict[int, Any] = {}

        def job(key: int) -> None:
            post = dl.with_(Recorder, "post").load(key)
            author = dl.with_(Recorder, "author").load(post)
            tags = dl.with_(Recorder, "tag").load_all([key % 3, key % 5])
            out[key] = (author, tags)

        for key in range(30):
            dl.append_job(lambda key=key: job(key))
        dl.run()
        calls = {name: [sorted(call, key=repr) for call in dl.with_(Recorder, name).calls]
                 for name in ("post", "author", "tag")}
        return out, calls, dl.stats.fetches

    assert workload(AsyncDataloader) == workload(Dataloader)


def test_jobs_blocked_in_io_overlap_and_still_batch() -> None:
    def view(dl: Dataloader) -> Any:
        def item(key: int) -> Any:
            gevent.sleep(T)  # cooperative I/O in the job itself
            return dl.with_(Recorder).load(key)

        return dl.map(item, range(5))

    dataloader = AsyncDataloader()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(view(dataloader)))
    started = time.perf_counter()
    dataloader.run()
    elapsed = time.perf_counter() - started
    assert box == [[f"r:{key}" for key in range(5)]]
    assert dataloader.with_(Recorder).calls == [[0, 1, 2, 3, 4]]  # one batch
    assert elapsed < 0.6 * 5 * T


def test_jobs_that_never_block_run_in_one_greenlet() -> None:
    dataloader = AsyncDataloader()
    for key in range(50):
        dataloader.append_job(lambda key=key: key * 2)
    dataloader.run()
    assert dataloader.stats.greenlets == 1


def parked_jobs(dl: Dataloader) -> Any:
    """Three levels of loads from 20 jobs: every job parks three times."""
    def job(key: int) -> Any:
        first = dl.with_(Recorder).load(key)
        return dl.with_(Recorder, "b").load(first), dl.with_(Recorder, "c").load_all([key, key + 1])

    return dl.map(job, range(20))


def test_a_run_that_never_blocks_never_passes_through_gevents_hub() -> None:
    # Jobs that park on keys and fetches that do no I/O are switched to
    # directly, as under Dataloader: not one hand-over through gevent's
    # loop, so the request costs what it costs under Dataloader, and
    # another greenlet (another request) runs only after it.
    hub = gevent.get_hub()
    into_hub: List[Any] = []

    def tracer(event: str, args: Any) -> None:
        if event in ("switch", "throw") and args[1] is hub:
            into_hub.append(args[0])

    others: List[str] = []
    gevent.spawn(others.append, "other")  # runnable from the start
    expected = Dataloader.with_dataloading(parked_jobs)
    previous = greenlet_settrace(tracer)
    try:
        result = AsyncDataloader.with_dataloading(parked_jobs)
        ran_before = list(others)
    finally:
        greenlet_settrace(previous)
    assert result == expected
    assert into_hub == [] and ran_before == []
    gevent.sleep(0)
    assert others == ["other"]


def test_a_run_leaves_nothing_waiting_in_gevents_loop() -> None:
    # The guard queued in gevent's loop for the run's direct switches is
    # stopped when the run ends: run() returns with nothing of the run left
    # to gevent (here, the dataloader is garbage without gevent's loop running).
    dataloader = AsyncDataloader()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(parked_jobs(current_dataloader())))
    dataloader.run()
    assert len(box[0]) == 20 and dataloader.stats.greenlets > 1  # jobs parked: direct switches
    alive = weakref.ref(dataloader)
    del dataloader
    gc.collect()
    assert alive() is None


def test_a_job_that_blocks_after_direct_switches_still_lets_its_siblings_run() -> None:
    # Direct switches until one job blocks: from then on the others overlap
    # with it, and the run still batches every job's keys together.
    log: List[Tuple[str, int]] = []
    fetches: List[Any] = []

    def view(dl: Dataloader) -> Any:
        def item(key: int) -> Any:
            value = dl.with_(Recorder).load(key)  # parks: direct switches
            log.append(("before", key))
            if key == 0:
                gevent.sleep(3 * T)  # blocks: the hub gets control back
            log.append(("after", key))
            return dl.with_(Recorder, "second", fetches).load(value)

        return dl.map(item, range(4))

    dataloader = AsyncDataloader()
    started = time.perf_counter()
    result = dataloader.with_dataloading(view)
    elapsed = time.perf_counter() - started
    assert result == [f"second:r:{key}" for key in range(4)]
    assert log.index(("after", 0)) == len(log) - 1  # the others went on while key 0 slept
    assert [(what, name, sorted(keys)) for what, name, keys in fetches] == [
        ("fetch", "second", [f"r:{key}" for key in range(4)])  # one batch
    ]
    assert elapsed < 6 * T


def test_sync_dataloader_treats_gevent_io_in_a_job_as_blocking_the_run() -> None:
    # Decided: under Dataloader, a job in cooperative I/O blocks the whole
    # run (like graphql-ruby's blocking fibers); other gevent greenlets of the
    # process, outside the run, keep running meanwhile.
    ticks: List[float] = []

    def ticker() -> None:
        for _ in range(5):
            ticks.append(time.perf_counter())
            gevent.sleep(T / 5)

    def view(dl: Dataloader) -> Any:
        def item(key: int) -> Any:
            gevent.sleep(T)
            return dl.with_(Recorder).load(key)

        return dl.map(item, range(3))

    other = gevent.spawn(ticker)
    dataloader = Dataloader()
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(view(dataloader)))
    started = time.perf_counter()
    dataloader.run()
    elapsed = time.perf_counter() - started
    other.join()
    assert box == [["r:0", "r:1", "r:2"]]
    assert dataloader.with_(Recorder).calls == [[0, 1, 2]]  # still one batch...
    assert elapsed > 2.5 * T  # ...but the three sleeps ran one after another
    assert len(ticks) == 5 and ticks[2] < started + elapsed  # the ticker ran during the run


class SleepInThread(Source):
    blocking = True

    def fetch(self, keys: List[Any]) -> List[Any]:
        time.sleep(T)  # blocks in C: no gevent cooperation
        return [("slept", key) for key in keys]


def test_blocking_sources_run_in_the_thread_pool_and_overlap() -> None:
    class A(SleepInThread):
        pass

    class B(SleepInThread):
        pass

    class C(SleepInThread):
        pass

    def job(dl: Dataloader) -> Any:
        handles = [dl.with_(cls).request(1) for cls in (A, B, C)]
        return [handle.load() for handle in handles]

    started = time.perf_counter()
    assert AsyncDataloader.with_dataloading(job) == [("slept", 1)] * 3
    assert time.perf_counter() - started < 0.6 * 3 * T


class Meter:
    """How many blocking fetches run at once (hashable: a batch parameter)."""

    def __init__(self, expected: int) -> None:
        import threading

        self.lock = threading.Lock()
        self.now = self.most = 0
        self.expected = expected
        self.all_in = threading.Event()  # every fetch of the round has started (or gave up)

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if self.most >= self.expected:
                self.all_in.set()

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


class Overlap(Source):
    """A blocking fetch that holds its thread until every fetch of the round has started."""

    blocking = True

    def __init__(self, name: int, meter: Meter) -> None:
        self.meter = meter

    def fetch(self, keys: List[Any]) -> List[Any]:
        self.meter.enter()
        self.meter.all_in.wait(0.5)  # a pool too small never gets them all in: 0.5 s, then go on
        self.meter.leave()
        return keys


def overlapping_fetches(cls: Type[AsyncDataloader], sources: int) -> int:
    """How many of ``sources`` blocking fetches of one round ran at once."""
    meter = Meter(sources)

    def job(dl: Dataloader) -> Any:
        handles = [dl.with_(Overlap, name, meter).request(name) for name in range(sources)]
        return [handle.load() for handle in handles]

    assert cls.with_dataloading(job) == list(range(sources))
    return meter.most


def test_a_round_of_sixteen_blocking_fetches_all_overlap() -> None:
    """Issue 14: gevent's process-wide pool has 10 threads, so 16 fetches took two turns."""
    assert overlapping_fetches(AsyncDataloader, 16) == 16


def test_blocking_threads_bounds_the_overlap_and_release_ends_the_threads() -> None:
    class FourThreads(AsyncDataloader):
        blocking_threads = 4

    try:
        assert overlapping_fetches(FourThreads, 8) == 4
    finally:
        assert FourThreads.release_blocking_threads() == 4
    assert FourThreads.release_blocking_threads() == 0  # nothing left
    assert overlapping_fetches(AsyncDataloader, 3) == 3  # the default pool again


def test_blocking_source_sees_the_context_and_cannot_load_from_its_thread() -> None:
    import contextvars

    var: "contextvars.ContextVar[str]" = contextvars.ContextVar("var", default="unset")

    class Nested(Source):
        blocking = True

        def fetch(self, keys: List[Any]) -> List[Any]:
            seen = var.get()
            try:
                self.dataloader.with_(Recorder).load("inner")  # type: ignore[union-attr]
            except NotRunningError as error:
                return [(seen, "refused" if "not one of this dataloader's jobs" in str(error) else "?")]
            return [(seen, "loaded?")]

    var.set("request value")
    try:
        assert AsyncDataloader.with_dataloading(lambda dl: dl.with_(Nested).load(1)) == ("request value", "refused")
    finally:
        var.set("unset")


def test_manual_parallelism_with_yield_as_in_the_guide(scheduler: Type[Dataloader]) -> None:
    # graphql-ruby's parallelism guide: fetch starts the requests in the
    # background, calls dataloader.yield so the other fetches start theirs,
    # then collects the answers.  Works under both schedulers.
    class Service(Source):
        def __init__(self, name: str) -> None:
            self.name = name

        def fetch(self, keys: List[Any]) -> List[Any]:
            requests = [gevent.spawn(lambda key=key: (gevent.sleep(T), f"{self.name}:{key}")[1]) for key in keys]
            self.dataloader.yield_()  # type: ignore[union-attr]
            return [request.get() for request in requests]

    def job(dl: Dataloader) -> Any:
        handles = [dl.with_(Service, name).request_all([1, 2]) for name in ("a", "b", "c")]
        return [handle.load() for handle in handles]

    started = time.perf_counter()
    assert scheduler.with_dataloading(job) == [["a:1", "a:2"], ["b:1", "b:2"], ["c:1", "c:2"]]
    assert time.perf_counter() - started < 0.6 * 3 * T


def test_job_failure_while_siblings_sit_in_io_keeps_the_original_error(no_leaked_greenlets: Any) -> None:
    # graphql-ruby #5702: the first error must surface, not an internal one,
    # and siblings blocked in I/O are ended.
    ended: List[str] = []

    def sibling(name: str) -> None:
        try:
            gevent.sleep(10)
        finally:
            ended.append(name)

    def failer() -> None:
        gevent.sleep(T / 10)
        raise LookupError("the real error")

    dataloader = AsyncDataloader()
    dataloader.append_job(lambda: sibling("a"))
    dataloader.append_job(failer)
    dataloader.append_job(lambda: sibling("b"))
    started = time.perf_counter()
    with pytest.raises(LookupError, match="the real error"):
        dataloader.run()
    assert time.perf_counter() - started < 5
    assert sorted(ended) == ["a", "b"]


def test_timeout_around_run_ends_every_greenlet_and_keeps_delivered_results(no_leaked_greenlets: Any) -> None:
    class Slow(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            gevent.sleep(10)
            return keys

    dataloader = AsyncDataloader()
    dataloader.append_job(lambda: dataloader.with_(Recorder).load("fast"))
    dataloader.append_job(lambda: (dataloader.with_(Recorder).load("fast"), dataloader.with_(Slow).load(1)))
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.3):
            dataloader.run()
    # What was fetched before the timeout stays delivered.
    assert dataloader.with_(Recorder).load("fast") == "r:fast"
    assert dataloader.with_(Recorder).calls == [["fast"]]
    # The dataloader works again afterwards.
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(dataloader.with_(Recorder).load("again")))
    dataloader.run()
    assert box == ["r:again"]


def test_timeout_around_one_load_fails_that_job_only(no_leaked_greenlets: Any) -> None:
    class Slow(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            gevent.sleep(3 * T)
            return keys

    outcomes: List[Any] = []

    def impatient() -> None:
        try:
            with gevent.Timeout(T):
                dataloader.with_(Slow).load("slow")
        except gevent.Timeout:
            outcomes.append("timed out")
        outcomes.append(dataloader.with_(Recorder).load("after"))

    def patient() -> None:
        outcomes.append(dataloader.with_(Slow).load("slow"))

    dataloader = AsyncDataloader()
    dataloader.append_job(impatient)
    dataloader.append_job(patient)
    dataloader.run()
    assert sorted(outcomes, key=str) == ["r:after", "slow", "timed out"]


def test_timeout_around_a_load_under_dataloader_is_a_clear_error(no_leaked_greenlets: Any) -> None:
    # Dataloader switches greenlets itself; a gevent.Timeout resuming a parked
    # job behind its back cannot be honoured, and says what to use instead.
    class Slow(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            gevent.sleep(3 * T)
            return keys

    def impatient(dl: Dataloader) -> None:
        try:
            with gevent.Timeout(T):
                dl.with_(Slow).load("slow")
        except gevent.Timeout:
            dl.with_(Recorder).load("after")

    with pytest.raises(FiberloaderError, match="use AsyncDataloader"):
        Dataloader.with_dataloading(impatient)


def test_killing_the_greenlet_that_runs_the_dataloader_leaks_nothing(no_leaked_greenlets: Any) -> None:
    started = Event()
    cleaned: List[str] = []

    class Hooked(AsyncDataloader):
        def cleanup_fiber(self) -> None:
            cleaned.append("cleaned")

    def job() -> None:
        started.set()
        gevent.sleep(10)

    dataloader = Hooked()
    for _ in range(3):
        dataloader.append_job(job)

    greenlet = gevent.spawn(dataloader.run)
    started.wait(5)
    gevent.sleep(T)  # let all three jobs reach their sleep
    greenlet.kill(timeout=5)
    assert greenlet.dead
    assert dataloader.stats.greenlets == 3  # three jobs blocked in I/O: three workers...
    assert len(cleaned) == 3  # ...each ended with its cleanup hook


def test_fiber_limit_caps_live_gevent_greenlets() -> None:
    alive: List[int] = []

    def job(dl: Dataloader, key: int) -> Any:
        gevent.sleep(T / 10)
        alive.append(len([g for g in live_greenlets() if type(g).__name__ == "Worker"]))
        return dl.with_(Recorder).load(key)

    dataloader = AsyncDataloader(fiber_limit=4)
    box: List[Any] = []
    dataloader.append_job(lambda: box.append(dataloader.map(lambda key: job(dataloader, key), range(10))))
    dataloader.run()
    assert box == [[f"r:{key}" for key in range(10)]]
    assert dataloader.stats.max_alive <= 4
    assert max(alive) <= 4


def test_setting_picks_the_async_scheduler(monkeypatch: Any) -> None:
    assert dataloader_class("async") is AsyncDataloader
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "async")
    assert dataloader_class() is AsyncDataloader


def test_swapping_schedulers_changes_no_result() -> None:
    def view(dl: Dataloader) -> Any:
        def item(key: int) -> Any:
            gevent.sleep(0.001 * (key % 3))
            user = dl.with_(Recorder, "user").load(key % 4)
            return user, dl.with_(Recorder, "posts").load_all([user, key])

        return dl.map(item, range(12))

    results = [cls.with_dataloading(view) for cls in (Dataloader, AsyncDataloader, NullDataloader)]
    assert results[0] == results[1] == results[2]


MONKEY_PATCHED = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import socket, threading, time
    from fiberloader import AsyncDataloader, Source

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]

    def serve():
        for _ in range(4):
            conn, _ = server.accept()
            def answer(conn=conn):
                data = conn.recv(100)
                time.sleep(0.2)            # patched: cooperative
                conn.sendall(data.upper())
                conn.close()
            threading.Thread(target=answer).start()   # patched: a greenlet

    threading.Thread(target=serve).start()

    class Echo(Source):
        def __init__(self, name):
            self.name = name
        def fetch(self, keys):
            with socket.create_connection(("127.0.0.1", port)) as conn:   # patched socket
                conn.sendall(f"{self.name}{keys}".encode())
                return [conn.recv(100).decode()] * len(keys)

    def job(dl):
        handles = [dl.with_(Echo, name).request(1) for name in "abcd"]
        return [h.load() for h in handles]

    started = time.perf_counter()
    result = AsyncDataloader.with_dataloading(job)
    elapsed = time.perf_counter() - started
    server.close()
    print(result, round(elapsed, 3))
    assert result == ["A[1]", "B[1]", "C[1]", "D[1]"], result
    assert elapsed < 0.6, elapsed      # four 0.2 s exchanges overlapped
    """
)


def test_works_under_monkey_patch_all_with_stdlib_sockets() -> None:
    result = subprocess.run([sys.executable, "-c", MONKEY_PATCHED], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_isolated_while_siblings_run_concurrently() -> None:
    # Under AsyncDataloader a job's run_isolated overlaps siblings of the
    # outer run that are still in I/O: each must keep working in its own run.
    log: List[Any] = []
    dataloader = AsyncDataloader()

    def isolating() -> None:
        inner = dataloader.run_isolated(
            lambda: dataloader.map(lambda key: (gevent.sleep(2 * T), dataloader.with_(Recorder).load(key))[1], [1, 2])
        )
        log.append(("isolated", inner))

    def sibling() -> None:
        gevent.sleep(T)  # still running when the isolated run starts
        dataloader.append_job(lambda: log.append(("appended", dataloader.with_(Recorder).load(4))))
        log.append(("sibling", dataloader.with_(Recorder).load(3)))

    dataloader.append_job(isolating)
    dataloader.append_job(sibling)
    dataloader.run()
    assert sorted(log, key=repr) == [("appended", "r:4"), ("isolated", ["r:1", "r:2"]), ("sibling", "r:3")]


class Latency(Source):
    """Logs (name, batch size), sleeps ``seconds`` cooperatively, returns f"{name}{key}"."""

    def __init__(self, name: str, seconds: float, log: List[Tuple[str, int]]) -> None:
        self.name, self.seconds, self.log = name, seconds, log

    @classmethod
    def batch_key_for(cls, name: str, seconds: float, log: Any) -> Any:
        return name

    def fetch(self, keys: List[Any]) -> List[Any]:
        self.log.append((self.name, len(keys)))
        gevent.sleep(self.seconds)
        return [f"{self.name}{key}" for key in keys]


def branches_workload(dl: Dataloader, log: List[Tuple[str, int]]) -> Any:
    """graphql-ruby's "runs dataloaders in parallel across branches": A -> B -> C beside D."""

    def chain(key: int) -> Any:
        a = dl.with_(Latency, "A", T, log).load(key)
        b = dl.with_(Latency, "B", T, log).load(a)
        return dl.with_(Latency, "C", T, log).load(b)

    def slow(key: int) -> Any:
        return dl.with_(Latency, "D", 3 * T, log).load(key)

    return dl.map(lambda job: job[0](job[1]), [(chain, k) for k in range(3)] + [(slow, k) for k in range(3)])


def test_layers_wait_for_the_slowest_fetch_by_default() -> None:
    log: List[Tuple[str, int]] = []
    started = time.perf_counter()
    result = AsyncDataloader.with_dataloading(lambda dl: branches_workload(dl, log))
    elapsed = time.perf_counter() - started
    assert result[0] == "CBA0" and result[-1] == "D2"
    assert sorted(log) == [("A", 3), ("B", 3), ("C", 3), ("D", 3)]
    assert elapsed > 4.5 * T  # D (3 T) holds up B and C: about 5 T


def test_eager_resume_lets_fast_branches_go_on_with_the_same_batches() -> None:
    log: List[Tuple[str, int]] = []
    started = time.perf_counter()
    result = AsyncDataloader.with_dataloading(lambda dl: branches_workload(dl, log), eager_resume=True)
    elapsed = time.perf_counter() - started
    assert result[0] == "CBA0" and result[-1] == "D2"
    assert sorted(log) == [("A", 3), ("B", 3), ("C", 3), ("D", 3)]  # same batches
    assert elapsed < 4 * T  # A, B, C ran while D did: about 3 T


def test_eager_resume_splits_a_batch_when_fast_and_slow_jobs_share_a_next_source() -> None:
    # The price of eager_resume: jobs that resume early fetch from the next
    # source without the jobs still waiting, so that source is fetched twice.
    log: List[Tuple[str, int]] = []

    def view(dl: Dataloader) -> Any:
        def item(job: Tuple[str, float, int]) -> Any:
            first = dl.with_(Latency, job[0], job[1], log).load(job[2])
            return dl.with_(Latency, "shared", T / 10, log).load(first)

        return dl.map(item, [("fast", T / 10, k) for k in range(3)] + [("slow", T, k + 10) for k in range(3)])

    for eager, shared_fetches in ((False, [("shared", 6)]), (True, [("shared", 3), ("shared", 3)])):
        log.clear()
        result = AsyncDataloader.with_dataloading(view, eager_resume=eager)
        assert result == ["sharedfast0", "sharedfast1", "sharedfast2", "sharedslow10", "sharedslow11", "sharedslow12"]
        assert [entry for entry in log if entry[0] == "shared"] == shared_fetches


def test_import_fiberloader_does_not_import_gevent() -> None:
    code = "import sys, fiberloader; assert 'gevent' not in sys.modules; fiberloader.AsyncDataloader; assert 'gevent' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
