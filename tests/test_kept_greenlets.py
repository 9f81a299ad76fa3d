"""The pool of idle workers: kept between runs by default, bounded, per OS thread.

The lifetime rule (API.md): after ``run()`` no greenlet it created is
running or holds anything of the run; idle workers may wait in a bounded
pool of their OS thread for a later run.  These tests check that the pool
is used, that nothing of a request survives in it (context, cache,
sources, the run's hub, hook state, frames of jobs, greenlet-local state),
that it never exceeds its bound, that failed and nested runs give nothing
back, the setting that sizes or turns it off, ``release_idle_greenlets()``,
and (in a subprocess) the per-OS-thread pool under gevent's monkey-patching.
"""

from __future__ import annotations

import contextvars
import gc
import json
import subprocess
import sys
import threading
import weakref
from typing import Any, Dict, List, Optional, Type

import gevent
import gevent.local
import pytest
from greenlet import getcurrent, greenlet

import fiberloader
from fiberloader import AsyncDataloader, ConfigurationError, Dataloader, Extension, Source, release_idle_greenlets
from fiberloader._worker import DEFAULT_KEEP_GREENLETS, idle_pool

from .conftest import Recorder, live_greenlets, pooled_workers, started_greenlets

VAR: "contextvars.ContextVar[str]" = contextvars.ContextVar("kept_var", default="unset")


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch: Any) -> Any:
    """Each test starts and ends with this thread's pool empty, the setting unset."""
    monkeypatch.delenv("FIBERLOADER_KEEP_GREENLETS", raising=False)
    release_idle_greenlets()
    yield
    release_idle_greenlets()


class Hooks(Extension):
    """Records the greenlet of every fiber_started / fiber_finished, per run."""

    def __init__(self) -> None:
        self.started: List[greenlet] = []
        self.finished: List[greenlet] = []
        self.pool_sizes: List[int] = []  # the thread's pool, at every hook

    def fiber_started(self, dataloader: Any) -> None:
        self.started.append(getcurrent())
        self.pool_sizes.append(len(idle_pool()))

    def fiber_finished(self, dataloader: Any) -> None:
        self.finished.append(getcurrent())
        self.pool_sizes.append(len(idle_pool()))

    def run_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        self.pool_sizes.append(len(idle_pool()))


def bounded(scheduler: Type[Dataloader], size: int) -> Type[Dataloader]:
    return type(f"Keep{size}", (scheduler,), {"keep_greenlets": size})


def park_jobs(dataloader: Dataloader, count: int, seen: List[Any]) -> None:
    """``count`` jobs that each park on one key, note the ContextVar they see, then set it."""
    for key in range(count):
        def job(key: int = key) -> None:
            seen.append((VAR.get(), dataloader.with_(Recorder).load(key)))
            VAR.set(f"set by job {key}")  # must not be seen by any later job
        dataloader.append_job(job)


# -- reuse, context, hooks ----------------------------------------------------------------


def test_later_runs_reuse_pooled_greenlets_with_a_fresh_context_and_hooks_per_run(scheduler: Type[Dataloader]) -> None:
    runs = []
    for run_number in range(3):
        hooks = Hooks()
        dataloader = scheduler(extensions=[hooks])
        seen: List[Any] = []
        token = VAR.set(f"run {run_number}")
        try:
            park_jobs(dataloader, 10, seen)
            dataloader.run()
        finally:
            VAR.reset(token)
        # each job sees the context of its own run() call, none what a job of an earlier run set
        assert sorted(seen) == [(f"run {run_number}", f"r:{key}") for key in range(10)]
        stats = dataloader.stats
        assert stats.greenlets == 11  # ten parked jobs and the fetch, pool or not
        assert stats.reused == (0 if run_number == 0 else 11)
        # fiber_started and fiber_finished: once per greenlet per run, in that run
        assert len(hooks.started) == len(set(hooks.started)) == stats.greenlets
        assert sorted(map(id, hooks.finished)) == sorted(map(id, hooks.started))
        runs.append({id(g) for g in hooks.started})
    assert runs[0] == runs[1] == runs[2]  # the same greenlets served all three runs
    assert len(pooled_workers()) == len(idle_pool()) == 11


def test_the_pool_is_on_by_default_and_never_exceeds_its_bound(scheduler: Type[Dataloader]) -> None:
    assert Dataloader().keep_greenlets == DEFAULT_KEEP_GREENLETS == 256
    dataloader = scheduler()
    park_jobs(dataloader, 10, [])
    dataloader.run()
    assert len(idle_pool()) == 11 and not live_greenlets()
    small = bounded(scheduler, 3)()
    park_jobs(small, 10, [])
    small.run()
    assert small.stats.reused == 11 and len(idle_pool()) == 3  # took all eleven, gave three back
    big = scheduler()
    park_jobs(big, DEFAULT_KEEP_GREENLETS + 50, [])
    big.run()
    assert big.stats.greenlets == DEFAULT_KEEP_GREENLETS + 51
    assert len(idle_pool()) == DEFAULT_KEEP_GREENLETS
    assert len(started_greenlets()) == DEFAULT_KEEP_GREENLETS  # the rest ended


def test_runs_ending_at_once_under_gevent_never_overfill_the_pool(scheduler: Type[Dataloader]) -> None:
    # Twenty requests at once, each closing its run while the others run;
    # the cleanup of every worker yields to gevent, so closes interleave.
    hooks = Hooks()
    cls = bounded(scheduler, 50)

    class Yielding(cls):  # type: ignore[valid-type, misc]
        def cleanup_fiber(self) -> None:
            gevent.sleep(0)

    def request(index: int) -> List[Any]:
        dataloader = Yielding(extensions=[hooks])
        return dataloader.map(lambda key: (gevent.sleep(0), dataloader.with_(Recorder).load(key))[1],
                              range(index, index + 30))

    results = [greenlet.value for greenlet in gevent.joinall([gevent.spawn(request, i) for i in range(20)])]
    assert results == [[f"r:{key}" for key in range(i, i + 30)] for i in range(20)]
    assert max(hooks.pool_sizes) == 50 == len(idle_pool())
    assert not live_greenlets()


# -- nothing of a run survives in the pool ------------------------------------------------


class Value:
    """Something a request made: a cached value, a job's local, a context value."""


class Values(Source):
    def __init__(self, name: str) -> None:
        self.name = name

    def fetch(self, keys: List[Any]) -> List[Any]:
        return [Value() for _ in keys]


def test_pooled_greenlets_hold_nothing_of_the_finished_request(scheduler: Type[Dataloader]) -> None:
    refs: Dict[str, Any] = {}
    hooks = Hooks()

    def request() -> None:
        """A request greenlet: its own dataloader, context, sources and nested runs."""
        context_value = Value()
        VAR.set(context_value)  # type: ignore[arg-type]
        dataloader = scheduler(extensions=[hooks])

        def job(key: int) -> Any:
            local = Value()  # a frame local of the job
            refs.setdefault("locals", []).append(weakref.ref(local))
            refs["run"] = weakref.ref(getcurrent().owner.jobs)  # type: ignore[attr-defined]  # the run's queue
            value = dataloader.with_(Values, "outer").load(key)
            inner = dataloader.run_isolated(lambda: dataloader.with_(Values, "inner").load(key))
            return value, inner, local

        values = dataloader.map(job, range(8))
        refs["values"] = [weakref.ref(v) for item in values for v in item]
        refs["sources"] = [weakref.ref(s) for instances in dataloader._sources.values() for s in instances.values()]
        refs["dataloader"] = weakref.ref(dataloader)
        refs["context"] = weakref.ref(context_value)

    hub = gevent.spawn(request)  # a request greenlet, as gunicorn's gevent worker spawns them
    hub.join()
    gevent.sleep(0)  # gevent's hub lets go of the greenlet it last switched to
    assert hub.dead and hub.successful() and len(refs["sources"]) == 2
    refs["hub"] = weakref.ref(hub)
    del hub
    assert idle_pool()
    pooled_workers()  # conftest: no run, context, wait, frame local or greenlet-local state; parent: root or hub
    assert len(hooks.started) == len(hooks.finished) > 8
    hooks.started.clear()  # the nested runs' ended workers: a dead greenlet keeps its context
    hooks.finished.clear()
    gc.collect()
    alive = {name: [r for r in (ref if isinstance(ref, list) else [ref]) if r() is not None]
             for name, ref in refs.items()}
    assert not any(alive.values()), alive


def test_nested_runs_give_no_worker_to_the_pool(scheduler: Type[Dataloader]) -> None:
    # A greenlet keeps the recursion depth of the stack that started it: a
    # worker started under a nested run's hub would hand that depth on.
    inner_workers: List[greenlet] = []
    dataloader = scheduler()

    def job(key: int) -> Any:
        def inner() -> Any:
            return dataloader.map(lambda k: (inner_workers.append(getcurrent()),
                                             dataloader.with_(Recorder, "inner").load(k))[1], [key, key + 10])
        return dataloader.with_(Recorder).load(key), dataloader.run_isolated(inner)

    assert dataloader.map(job, range(4)) == [(f"r:{k}", [f"inner:{k}", f"inner:{k + 10}"]) for k in range(4)]
    assert len(inner_workers) == 8 and all(worker.dead for worker in inner_workers)  # ended, not pooled
    assert idle_pool() and not live_greenlets()  # the outer run's idle workers were kept


def test_a_worker_with_greenlet_local_state_is_not_pooled_and_its_state_dies_with_it(
        scheduler: Type[Dataloader]) -> None:
    # gevent.local.local: what threading.local is under gevent's monkey-patching (per greenlet)
    local = gevent.local.local()
    seen: List[Any] = []
    refs: List[Any] = []
    users: List[Any] = []
    for run_number in range(2):
        dataloader = scheduler()

        def job(key: int, run_number: int = run_number, dataloader: Dataloader = dataloader) -> Any:
            if key % 2:  # half the jobs touch the local
                seen.append((run_number, getattr(local, "user", None)))
                user = local.user = Value()
                refs.append(weakref.ref(user))
                users.append(weakref.ref(getcurrent()))
            return dataloader.with_(Recorder).load(key)

        dataloader.map(job, range(10))
    assert seen == [(run, None) for run in (0, 1) for _ in range(5)]  # never another request's value
    gc.collect()
    assert all(user() is None for user in users)  # those workers ended (and are gone)
    assert all(ref() is None for ref in refs)  # and so did their greenlet-local values
    assert idle_pool()  # the others were kept


# -- failed runs ----------------------------------------------------------------------------


def fill_pool(scheduler: Type[Dataloader], count: int) -> List[greenlet]:
    dataloader = scheduler()
    park_jobs(dataloader, count - 1, [])
    dataloader.run()
    assert len(idle_pool()) == count
    return list(idle_pool())


def failing_run(scheduler: Type[Dataloader], how: str, hooks: Hooks) -> None:
    dataloader = scheduler(extensions=[hooks])
    park_jobs(dataloader, 5, [])  # they finish before the failure: their workers are idle, and clean

    def sleeper() -> None:
        dataloader.with_(Recorder).load("s")
        gevent.sleep(10)

    if how == "exception":
        dataloader.append_job(lambda: (dataloader.with_(Recorder).load("x"), 1 / 0))
        with pytest.raises(ZeroDivisionError):
            dataloader.run()
    elif how == "timeout":  # a gevent.Timeout around run(): under Dataloader a clear error, a failure too
        dataloader.append_job(sleeper)
        with pytest.raises((gevent.Timeout, fiberloader.FiberloaderError)):
            with gevent.Timeout(0.05):
                dataloader.run()
    else:  # the greenlet running run() is killed
        dataloader.append_job(sleeper)
        runner = gevent.spawn(dataloader.run)
        gevent.sleep(0.05)
        runner.kill(timeout=5)
        assert runner.dead


@pytest.mark.parametrize("how", ["exception", "timeout", "kill"])
def test_a_failed_run_gives_no_worker_back(scheduler: Type[Dataloader], how: str) -> None:
    before = fill_pool(scheduler, 4)
    hooks = Hooks()
    failing_run(scheduler, how, hooks)
    used = set(map(id, hooks.started))
    assert len(used) >= 6
    assert not any(id(worker) in used for worker in idle_pool())  # none of its workers, dirty or not
    assert all(worker in before for worker in idle_pool()) and len(idle_pool()) < 4
    assert sorted(map(id, hooks.finished)) == sorted(used)  # every one ran its cleanup
    assert not live_greenlets()


def test_a_throw_into_a_pooled_worker_takes_it_out_of_the_pool(scheduler: Type[Dataloader]) -> None:
    # A job that starts a gevent.Timeout and never cancels it: the timer
    # fires into the worker once it waits in the pool.  It leaves the pool
    # and the timeout ends up where it would have with no pool (the greenlet
    # running gevent's loop hands it on); later runs are unaffected.
    dataloader = scheduler()
    leaker: List[greenlet] = []

    def job(key: int) -> Any:
        value = dataloader.with_(Recorder).load(key)
        if key == 2:
            gevent.Timeout(0.01).start()
            leaker.append(getcurrent())
        return value

    dataloader.map(job, range(5))
    assert leaker[0] in idle_pool()
    try:
        gevent.sleep(0.1)
    except gevent.Timeout:
        pass
    assert leaker[0].dead and leaker[0] not in idle_pool()
    pooled = len(pooled_workers())  # every other pooled worker still holds nothing and waits
    assert pooled == len(idle_pool()) == 5
    again = scheduler()
    assert again.map(again.with_(Recorder).load, range(5)) == [f"r:{k}" for k in range(5)]
    assert again.stats.reused == pooled


# -- the setting ----------------------------------------------------------------------------


def plain_run(cls: Type[Dataloader]) -> Dataloader:
    dataloader = cls()
    park_jobs(dataloader, 5, [])
    dataloader.run()
    return dataloader


def test_the_environment_variable_sets_the_bound_and_zero_turns_the_pool_off(monkeypatch: Any) -> None:
    monkeypatch.setenv("FIBERLOADER_KEEP_GREENLETS", "0")
    assert plain_run(Dataloader).keep_greenlets == 0
    assert not started_greenlets()  # every greenlet a run started has ended
    monkeypatch.setenv("FIBERLOADER_KEEP_GREENLETS", " 4 ")
    plain_run(Dataloader)
    assert len(idle_pool()) == 4
    assert bounded(Dataloader, 2)().keep_greenlets == 2  # the class attribute wins
    monkeypatch.setenv("FIBERLOADER_KEEP_GREENLETS", "")
    assert Dataloader().keep_greenlets == DEFAULT_KEEP_GREENLETS


def test_the_frameworks_setting_comes_before_the_environment(monkeypatch: Any) -> None:
    from flask import Flask

    from tests.django_app import setup

    monkeypatch.setenv("FIBERLOADER_KEEP_GREENLETS", "7")
    app = Flask(__name__)
    app.config["FIBERLOADER_KEEP_GREENLETS"] = 0
    with app.app_context():
        assert plain_run(Dataloader).keep_greenlets == 0
    assert not idle_pool()
    setup()
    from django.test import override_settings

    with override_settings(FIBERLOADER_KEEP_GREENLETS=3):
        assert Dataloader().keep_greenlets == 3
    assert Dataloader().keep_greenlets == 7


@pytest.mark.parametrize("value", ["-1", "many", "2.5", "٣"])
def test_a_bad_environment_value_is_a_clear_error(monkeypatch: Any, value: str) -> None:
    monkeypatch.setenv("FIBERLOADER_KEEP_GREENLETS", value)
    with pytest.raises(ConfigurationError,
                       match=r"\$FIBERLOADER_KEEP_GREENLETS is .* an int >= 0 \(0 turns the pool off"):
        Dataloader()


@pytest.mark.parametrize("value", [-1, True, 2.5, "8"])
def test_a_bad_class_attribute_is_a_clear_error(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"KeepBad.keep_greenlets is"):
        type("KeepBad", (Dataloader,), {"keep_greenlets": value})()


# -- release_idle_greenlets ----------------------------------------------------------------


def test_release_idle_greenlets_ends_the_threads_pooled_workers_of_every_class() -> None:
    assert "release_idle_greenlets" in fiberloader.__all__
    plain_run(Dataloader)
    plain_run(AsyncDataloader)  # the pool is the thread's: the async run reused the six and gave them back
    async_run = plain_run(AsyncDataloader)
    assert async_run.stats.reused == 6
    pooled = list(idle_pool())
    assert len(pooled) == len(started_greenlets()) == 6
    assert release_idle_greenlets() == 6
    assert all(worker.dead for worker in pooled) and not started_greenlets()
    assert release_idle_greenlets() == 0
    plain_run(Dataloader)
    assert Dataloader.release_kept_greenlets() == 6 and not started_greenlets()  # the old name


# -- per OS thread -------------------------------------------------------------------------


def test_each_os_thread_has_its_own_pool_which_ends_with_the_thread() -> None:
    plain_run(Dataloader)
    mine = list(idle_pool())
    seen: Dict[str, Any] = {}

    def other_thread() -> None:
        dataloader = plain_run(Dataloader)
        seen["reused"] = dataloader.stats.reused
        seen["pool"] = [weakref.ref(worker) for worker in idle_pool()]

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen["reused"] == 0 and len(seen["pool"]) == 6  # not this thread's pool
    assert idle_pool() == mine
    gc.collect()
    assert all(ref() is None for ref in seen["pool"])  # the thread ended: so did its pooled workers


MONKEY_PATCHED = r"""
from gevent import monkey
monkey.patch_all()

import gc, json, sys, threading, time, weakref
import gevent
from fiberloader import Dataloader, Source
from fiberloader._worker import idle_pool

class Keys(Source):
    def fetch(self, keys):
        return keys

def request(count):
    dataloader = Dataloader()
    dataloader.map(dataloader.with_(Keys).load, range(count))
    return dataloader.stats

out = {"local_is_per_greenlet": threading.local.__module__}

# 1. "threads" of the patched threading module are greenlets of one OS thread: one pool
reused = []
for _ in range(2):
    thread = threading.Thread(target=lambda: reused.append(request(10).reused))
    thread.start()
    thread.join()
out["reused"] = reused
out["pooled"] = len(idle_pool())

# 2. the patched threading.local is per greenlet: a worker that used one is not pooled
local = threading.local()
seen = []
for run in range(2):
    dataloader = Dataloader()
    def job(key, run=run, dataloader=dataloader):
        seen.append(getattr(local, "user", None))
        local.user = f"run {run} key {key}"
        return dataloader.with_(Keys).load(key)
    dataloader.map(job, range(4))
out["seen"] = seen
out["pooled_kept"] = len(idle_pool())  # those that touched the local ended

# 3. a real OS thread has its own pool, which ends with the thread
start_new_thread = monkey.get_original("_thread", "start_new_thread")
finished = monkey.get_original("_thread", "allocate_lock")()
finished.acquire()
result = {}
def os_thread():
    try:
        stats = request(5)
        result["reused"] = stats.reused
        result["pool"] = [weakref.ref(worker) for worker in idle_pool()]
    finally:
        finished.release()
start_new_thread(os_thread, ())
while not finished.acquire(False):
    gevent.sleep(0.01)
deadline = time.monotonic() + 10
while any(ref() is not None for ref in result["pool"]) and time.monotonic() < deadline:
    gevent.sleep(0.01)  # until the thread has ended and its state is cleared
    gc.collect()
out["os_thread"] = {"reused": result["reused"], "pooled": len(result["pool"]),
                    "alive": sum(ref() is not None for ref in result["pool"])}
out["pooled_after"] = len(idle_pool())
print(json.dumps(out))
"""


def test_under_gevent_monkey_patching_the_pool_is_per_os_thread_not_per_greenlet() -> None:
    done = subprocess.run([sys.executable, "-c", MONKEY_PATCHED], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr, done.stderr
    out = json.loads(done.stdout)
    assert out["local_is_per_greenlet"].startswith("gevent")
    assert out["reused"] == [0, 11] and out["pooled"] == 11  # the second "thread" reused the first's
    assert out["seen"] == [None] * 8  # no run saw another's thread-local value
    assert out["os_thread"] == {"reused": 0, "pooled": 6, "alive": 0}
    assert out["pooled_kept"] == 3 and out["pooled_after"] == 3  # the main thread's pool: untouched by the other
