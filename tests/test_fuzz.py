"""Differential fuzzer: random programs under every scheduler against a naive oracle.

A *program* is plain data (named tuples, which hypothesis shrinks): 1-4
sources and one or two runs of jobs (``run()`` twice on one dataloader,
the second also after a first that raised).  Each source has batch
parameters or not, a ``max_batch_size``, keys that fail (an ``Exception``
returned at their position), keys whose batch makes ``fetch`` raise,
``yield_()`` and cooperative I/O (``gevent.sleep``) in ``fetch``, and nested loads from sources of a higher index
(so there are no cycles) made with ``load``, ``load_all``, ``request``,
``request_all``, ``map`` or ``run_isolated``.  Jobs load, ``load_all``, ``request`` and
load the handles later, ``map``, ``yield_()``, do cooperative I/O
(``gevent.sleep``: under AsyncDataloader the worker blocks and the run
goes on without it), ``run_isolated``, append
jobs, ``merge``, ``clear_cache`` and fail.  The program also picks
``fiber_limit`` (2-8, or none) and, under ``AsyncDataloader``,
``eager_resume``.

``run_program`` interprets a program under a scheduler; ``oracle``
interprets it with no dataloader at all, every key computed directly, one
job after another.  Every value is a pure function of its source and key
(``merge`` puts the same value a fetch would give), so no scheduler may
change any result.

Properties, for every scheduler:

1. every job, ``map`` item and ``run_isolated`` body records the results
   of its steps; each record is a prefix of the oracle's (same values,
   same exception types), and when ``run()`` returns normally, every job
   of the run recorded all of its steps and its end (and every
   ``run_isolated`` returned only after the jobs it queued had ended);
2. ``run()`` raises exactly when a job fails in the oracle, and then
   the job's own exception; the jobs of a run that raised are abandoned
   (README): the next ``run()`` of the same dataloader works as usual and
   runs none of them;
3. nothing hangs: a spin detector (too many greenlet switches) and a
   watchdog (a deadline) fail the example with the stacks;
4. no key is fetched again after a fetch or a ``merge`` gave it a result,
   unless a ``clear_cache`` came between (a fetch that was stopped before
   it returned -- its run failed -- gives nothing); each ``fetch`` gets
   distinct keys, at most ``max_batch_size`` of them;
5. batching schedulers, with no ``fiber_limit`` and no ``eager_resume``:
   fetch calls per source stay within the dependency depth (see
   ``fetch_bound``);
6. no greenlet started during the run is alive after ``run()`` but the idle
   workers waiting in the thread's pool, each holding nothing of any run,
   at most the pool's bound.

Examples: 300 per scheduler by default, derandomized (the same programs on
every CI run, no example database).  ``FIBERLOADER_FUZZ_EXAMPLES=20000``
runs that many per scheduler with fresh random programs (and the local
example database, so a failure found is replayed first next time);
``FIBERLOADER_FUZZ_SEED=n`` makes such a run repeatable.  CI does not
shrink a failing program (it prints it, with every property it broke);
``FIBERLOADER_FUZZ_SHRINK=1`` does, and long runs do by default.
``FIBERLOADER_FUZZ_WATCHDOG`` sets the per-run deadline (seconds, default 10).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, FrozenSet, List, NamedTuple, Optional, Tuple, Type, Union

import gevent
import pytest
from gevent.hub import Hub
from greenlet import getcurrent, greenlet, settrace
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from fiberloader import AsyncDataloader, ConfigurationError, Dataloader, NullDataloader, Source
from fiberloader._worker import idle_pool

from ._hooks import Recorder, hook_problems
from .conftest import assert_holds_nothing
from ._watchdog import Hang, dump_stacks, watchdog

NKEYS = 6  # keys are 0..5: small, so loads overlap and de-duplicate
# Seconds one run() may take.  A spin is caught sooner, by counting greenlet
# switches (run_program); the deadline is the backstop for a wait that never
# switches.  Programs take milliseconds, but on a loaded machine a garbage
# collection of the whole test process alone took 3 s once: keep it wide.
WATCHDOG = float(os.environ.get("FIBERLOADER_FUZZ_WATCHDOG", "10"))


# -- the program: plain data ------------------------------------------------------


class Ref(NamedTuple):
    """A source instance: ``with_(S<src>)`` or ``with_(S<src>, param)``."""

    src: int
    param: Optional[int]


class Nested(NamedTuple):
    """A load made inside ``fetch``: for each key k, key ``(k * mul + add) % NKEYS`` of ``target``."""

    target: Ref
    mode: str  # load | load_all | request | request_all | map | isolated
    mul: int
    add: int


class SourceSpec(NamedTuple):
    params: bool  # takes a batch parameter (0 or 1): two instances
    shared: bool  # batch_key_for maps every parameter to one instance (graphql-ruby #5046)
    max_batch_size: Optional[int]
    errors: FrozenSet[int]  # keys whose result is an Exception instance
    poison: FrozenSet[int]  # keys that fail; a batch of only such keys makes fetch raise
    raise_early: bool  # raise before the nested loads, not after
    nested: Tuple[Nested, ...]
    yield_before: bool  # yield_() first thing in fetch
    yield_after: bool  # yield_() after the nested loads
    isolated_noop: bool  # run_isolated(lambda: None) first thing in fetch
    io: bool = False  # cooperative I/O (gevent.sleep) first thing in fetch


class Load(NamedTuple):
    ref: Ref
    key: int


class LoadAll(NamedTuple):
    ref: Ref
    keys: Tuple[int, ...]


class Request(NamedTuple):
    """``request`` each key (or ``request_all``); the handles load at ``Handles`` or at the end."""

    ref: Ref
    keys: Tuple[int, ...]
    all: bool


class Handles(NamedTuple):
    pass


class Yield(NamedTuple):
    pass


class Io(NamedTuple):
    """Cooperative I/O in the job: ``gevent.sleep(seconds)`` (0: a bare yield to gevent's hub).

    Under AsyncDataloader the worker blocks and the hub goes on without it
    (the guard of its direct switch, or a blocked hub's wake); under the
    other schedulers it blocks the run.
    """

    seconds: float


class Clear(NamedTuple):
    ref: Optional[Ref]  # None: dataloader.clear_cache()


class Merge(NamedTuple):
    ref: Ref
    key: int


class Map(NamedTuple):
    items: Tuple[Tuple[Any, ...], ...]  # each item runs its own steps


class Isolated(NamedTuple):
    body: Tuple[Any, ...]
    clear_before: bool


class Append(NamedTuple):
    job: Tuple[Any, ...]


class Fail(NamedTuple):
    pass


Op = Union[Load, LoadAll, Request, Handles, Yield, Io, Clear, Merge, Map, Isolated, Append, Fail]
Ops = Tuple[Op, ...]


class Program(NamedTuple):
    sources: Tuple[SourceSpec, ...]
    runs: Tuple[Tuple[Ops, ...], ...]  # run() after run(), same dataloader
    clear_between: bool  # clear_cache() between runs
    fiber_limit: Optional[int]
    eager_resume: bool  # AsyncDataloader only


# -- errors and values ----------------------------------------------------------


class KeyFailed(Exception):
    """A key whose result is an Exception instance."""


class Poisoned(Exception):
    """A poison key (raised by fetch when its batch holds only poison keys)."""


class JobFailed(Exception):
    """A job's own failure (the ``Fail`` step)."""


def derive(nested: Nested, key: int) -> int:
    return (key * nested.mul + nested.add) % NKEYS


def eff_param(program: Program, ref: Ref) -> Optional[int]:
    """The parameter a value depends on: none when every parameter shares one instance."""
    return None if program.sources[ref.src].shared else ref.param


def expected(program: Program, ref: Ref, key: int) -> Any:
    """The oracle's result of ``key``: a value, or the exception class that fails it."""
    spec = program.sources[ref.src]
    if key in spec.poison:
        return Poisoned
    if key in spec.errors:
        return KeyFailed
    values = []
    for nested in spec.nested:
        value = expected(program, nested.target, derive(nested, key))
        if isinstance(value, type):
            return value
        values.append(value)
    return ("v", ref.src, eff_param(program, ref), key, tuple(values))


def outcome_of(result: Any) -> Any:
    """How a step records a value or an exception (class or instance)."""
    if isinstance(result, type) and issubclass(result, BaseException):
        return ("error", result.__name__)
    if isinstance(result, BaseException):
        return ("error", type(result).__name__)
    return result


# -- the oracle: no dataloader, one job after another -----------------------------------


class Oracle:
    """Interprets a program directly: the results every scheduler must give."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.events: Dict[Tuple[Any, ...], List[Any]] = {}
        self.run_fails: List[bool] = []  # per run: does run() raise?

    def run_all(self) -> "Oracle":
        for index, jobs in enumerate(self.program.runs):
            queue: Deque[Tuple[Tuple[Any, ...], Ops]] = deque(
                (("run", index, position), job) for position, job in enumerate(jobs)
            )
            self.run_fails.append(self.drain(queue))
        return self

    def drain(self, queue: Deque[Tuple[Tuple[Any, ...], Ops]]) -> bool:
        """Run a queue's jobs (and those they append) in turn; whether any failed."""
        failed = False
        while queue:
            jid, ops = queue.popleft()
            try:
                self.job(jid, ops, queue)
            except JobFailed:
                failed = True  # go on: every job's own results are wanted
        return failed

    def load(self, ref: Ref, key: int) -> Any:
        return outcome_of(expected(self.program, ref, key))

    def load_all(self, ref: Ref, keys: Tuple[int, ...]) -> Any:
        results = [expected(self.program, ref, key) for key in keys]
        for result in results:
            if isinstance(result, type):
                return outcome_of(result)
        return results

    def job(self, jid: Tuple[Any, ...], ops: Ops, queue: Deque[Tuple[Tuple[Any, ...], Ops]]) -> Tuple[Any, ...]:
        events = self.events[jid] = []
        handles: List[Tuple[Ref, Any, bool]] = []
        for index, op in enumerate(ops):
            if isinstance(op, Fail):
                events.append(("fail",))
                raise JobFailed(jid)
            events.append(self.step(jid, index, op, queue, handles))
        if handles:
            events.append(self.step(jid, len(ops), Handles(), queue, handles))
        result = tuple(events)
        events.append(("end",))
        return result

    def step(self, jid: Tuple[Any, ...], index: int, op: Op, queue: Any, handles: List[Any]) -> Any:
        if isinstance(op, Load):
            return self.load(op.ref, op.key)
        if isinstance(op, LoadAll):
            return self.load_all(op.ref, op.keys)
        if isinstance(op, Request):
            if op.all:
                handles.append((op.ref, op.keys, True))
            else:
                handles.extend((op.ref, key, False) for key in op.keys)
            return None
        if isinstance(op, Handles):
            results = [self.load_all(ref, k) if many else self.load(ref, k) for ref, k, many in handles]
            handles.clear()
            return ("handles", results)
        if isinstance(op, Map):
            results = []
            failed = False
            for position, item in enumerate(op.items):
                try:
                    results.append(self.job(jid + ("map", index, position), item, queue))
                except JobFailed:
                    failed = True
            return ("error", "JobFailed") if failed else ("map", results)
        if isinstance(op, Isolated):
            inner: Deque[Tuple[Tuple[Any, ...], Ops]] = deque()
            body: Any = None
            try:
                body = self.job(jid + ("isolated", index), op.body, inner)
                failed = False
            except JobFailed:
                failed = True
            failed = self.drain(inner) or failed
            return ("error", "JobFailed") if failed else ("isolated", body, True)
        if isinstance(op, Append):
            queue.append((jid + ("append", index), op.job))
            return None
        return None  # Yield, Io, Clear, Merge: no result, no change of any value


# -- the interpreter under a scheduler ------------------------------------------------------


class Ctx:
    """One run (run(), or a run_isolated): the jobs queued in it, in order."""

    __slots__ = ("members",)

    def __init__(self) -> None:
        self.members: List[Tuple[Any, ...]] = []


class World:
    """Everything one program's run under one scheduler records."""

    def __init__(self, program: Program, dataloader: Dataloader) -> None:
        self.program = program
        self.dl = dataloader
        self.classes = [self.make_source_class(index, spec) for index, spec in enumerate(program.sources)]
        self.events: Dict[Tuple[Any, ...], List[Any]] = {}
        self.clock = 0
        # (source id, keys, start tick, end tick or None if it never returned)
        self.fetches: List[List[Any]] = []
        self.clears: List[Tuple[int, Optional[Tuple[int, Optional[int]]]]] = []
        self.merges: List[Tuple[int, Tuple[int, Optional[int]], int]] = []  # (tick, source id, key)
        self.violations: List[str] = []  # found inside fetch, where an assert would be a key error
        self.nested_loads: Dict[Tuple[int, Optional[int]], int] = {}  # loads made inside fetches, per source
        self.isolated_phases = 0  # phases nested runs may add (see fetch_bound)
        self.isolated_runs = 0
        self.run_index = 0  # the run() going on
        self.started_in: Dict[Tuple[Any, ...], int] = {}  # job id -> the run() it started in

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def sid(self, ref: Ref) -> Tuple[int, Optional[int]]:
        return (ref.src, eff_param(self.program, ref))

    def source(self, ref: Ref) -> Source:
        cls = self.classes[ref.src]
        return self.dl.with_(cls) if ref.param is None else self.dl.with_(cls, ref.param)

    def make_source_class(self, index: int, spec: SourceSpec) -> Type[Source]:
        world = self

        def __init__(self: Any, param: Optional[int] = None) -> None:
            self.param = param

        def fetch(self: Any, keys: List[Any]) -> List[Any]:
            return world.fetch(index, self, keys)

        namespace: Dict[str, Any] = {"__init__": __init__, "fetch": fetch, "max_batch_size": spec.max_batch_size}
        if spec.shared:
            namespace["batch_key_for"] = classmethod(lambda cls, *args, **kwargs: "shared")
        return type(f"S{index}", (Source,), namespace)

    # -- fetch ------------------------------------------------------------------

    def fetch(self, index: int, source: Any, keys: List[Any]) -> List[Any]:
        spec = self.program.sources[index]
        ref = Ref(index, source.param)
        sid = self.sid(ref)
        entry: List[Any] = [sid, list(keys), self.tick(), None]
        self.fetches.append(entry)
        if not keys or len(set(keys)) != len(keys):
            self.violations.append(f"S{index}.fetch({keys}): keys must be distinct and at least one")
        if spec.max_batch_size is not None and len(keys) > spec.max_batch_size:
            self.violations.append(f"S{index}.fetch({keys}): more than max_batch_size={spec.max_batch_size}")
        dl = self.dl
        all_poison = bool(keys) and all(key in spec.poison for key in keys)
        if spec.io:
            gevent.sleep(0)
        if spec.isolated_noop:
            self.count_isolated(1)
            dl.run_isolated(lambda: None)
        if spec.yield_before:
            dl.yield_()
        if spec.raise_early and all_poison:
            entry[3] = self.tick()
            raise Poisoned(index, keys)
        nested_results = [self.nested(nested, keys) for nested in spec.nested]
        if spec.yield_after:
            dl.yield_()
        entry[3] = self.tick()
        if all_poison:
            raise Poisoned(index, keys)
        results = []
        for position, key in enumerate(keys):
            if key in spec.poison:
                results.append(Poisoned(index, key))
            elif key in spec.errors:
                results.append(KeyFailed(index, key))
            else:
                values = [found[position] for found in nested_results]
                error = next((value for value in values if isinstance(value, BaseException)), None)
                results.append(error if error is not None else ("v", index, sid[1], key, tuple(values)))
        return results

    def nested(self, nested: Nested, keys: List[Any]) -> List[Any]:
        """The results (values or exceptions) of one nested load, one per key."""
        dl = self.dl
        source = self.source(nested.target)
        sid = self.sid(nested.target)
        wanted = [derive(nested, key) for key in keys]

        def count(n: int) -> None:
            self.nested_loads[sid] = self.nested_loads.get(sid, 0) + n

        def one(key: int) -> Any:
            count(1)
            try:
                return source.load(key)
            except Exception as error:
                return error

        mode = nested.mode
        if mode == "load":
            return [one(key) for key in wanted]
        if mode == "request":
            count(len(wanted))
            handles = [source.request(key) for key in wanted]
            results = []
            for handle in handles:
                try:
                    results.append(handle.load())
                except Exception as error:
                    results.append(error)
            return results
        count(len(wanted))
        try:
            if mode == "load_all":
                return source.load_all(wanted)
            if mode == "request_all":
                return source.request_all(wanted).load()
            if mode == "map":
                self.count_isolated(1)  # map inside fetch runs as run_isolated
                return dl.map(source.load, wanted)
            self.count_isolated(1)
            return dl.run_isolated(lambda: source.load_all(wanted))
        except Exception:
            # Some key failed: every key is resolved now; read each on its own.
            return [one(key) for key in wanted]

    def count_isolated(self, phases: int) -> None:
        self.isolated_runs += 1
        self.isolated_phases += phases + 1

    # -- jobs -------------------------------------------------------------------

    def clear(self, ref: Optional[Ref]) -> None:
        self.clears.append((self.tick(), None if ref is None else self.sid(ref)))
        if ref is None:
            self.dl.clear_cache()
        else:
            self.source(ref).clear_cache()

    def expected_value(self, ref: Ref, key: int) -> Any:
        value = expected(self.program, ref, key)
        return value(ref.src, key) if isinstance(value, type) else value

    def job(self, jid: Tuple[Any, ...], ops: Ops, ctx: Ctx) -> Tuple[Any, ...]:
        events = self.events[jid] = []
        self.started_in[jid] = self.run_index
        handles: List[Tuple[Any, bool]] = []
        for index, op in enumerate(ops):
            if isinstance(op, Fail):
                events.append(("fail",))
                raise JobFailed(jid)
            try:
                result = self.step(jid, index, op, ctx, handles)
            except Exception as error:
                result = ("error", type(error).__name__)
            events.append(result)
        if handles:
            try:
                result = self.step(jid, len(ops), Handles(), ctx, handles)
            except Exception as error:
                result = ("error", type(error).__name__)
            events.append(result)
        result = tuple(events)
        events.append(("end",))
        return result

    def load_outcome(self, load: Callable[[], Any]) -> Any:
        try:
            return load()
        except Exception as error:
            return ("error", type(error).__name__)

    def step(self, jid: Tuple[Any, ...], index: int, op: Op, ctx: Ctx, handles: List[Any]) -> Any:
        dl = self.dl
        if isinstance(op, Load):
            return self.source(op.ref).load(op.key)
        if isinstance(op, LoadAll):
            return self.source(op.ref).load_all(list(op.keys))
        if isinstance(op, Request):
            source = self.source(op.ref)
            if op.all:
                handles.append((source.request_all(list(op.keys)), True))
            else:
                handles.extend((source.request(key), False) for key in op.keys)
            return None
        if isinstance(op, Handles):
            results = [self.load_outcome(handle.load) for handle, _ in handles]
            handles.clear()
            return ("handles", results)
        if isinstance(op, Yield):
            dl.yield_()
            return None
        if isinstance(op, Io):
            gevent.sleep(op.seconds)
            return None
        if isinstance(op, Clear):
            self.clear(op.ref)
            return None
        if isinstance(op, Merge):
            self.merges.append((self.tick(), self.sid(op.ref), op.key))
            self.source(op.ref).merge({op.key: self.expected_value(op.ref, op.key)})
            return None
        if isinstance(op, Map):
            ids = [jid + ("map", index, position) for position in range(len(op.items))]
            ctx.members.extend(ids)
            return ("map", dl.map(lambda position: self.job(ids[position], op.items[position], ctx), range(len(op.items))))
        if isinstance(op, Isolated):
            inner = Ctx()
            body_id = jid + ("isolated", index)
            inner.members.append(body_id)
            if op.clear_before:
                self.clear(None)
            self.count_isolated(Rounds(self.program).span((op.body,)))
            body = dl.run_isolated(lambda: self.job(body_id, op.body, inner))
            return ("isolated", body, all(self.ended(member) for member in inner.members))
        if isinstance(op, Append):
            child = jid + ("append", index)
            ctx.members.append(child)
            dl.append_job(lambda: self.job(child, op.job, ctx))
            return None
        raise AssertionError(f"unknown step {op!r}")  # pragma: no cover

    def ended(self, jid: Tuple[Any, ...]) -> bool:
        events = self.events.get(jid)
        return bool(events) and events[-1] in (("end",), ("fail",))


# -- running a program ------------------------------------------------------------------


class Outcome(NamedTuple):
    world: World
    raised: List[Optional[BaseException]]  # per run: what run() raised
    ctxs: List[Ctx]
    alive: List[greenlet]  # but pooled workers
    pooled: List[str]  # what is wrong with the pool (empty: nothing)
    limit_used: Optional[int]
    hooks: List[Any]  # what the Recorder extension saw


def make_dataloader(cls: Type[Dataloader], program: Program) -> Tuple[Dataloader, Optional[int]]:
    """The scheduler with the program's options; a limit below the minimum is left out."""
    options: Dict[str, Any] = {}
    if issubclass(cls, AsyncDataloader) and program.eager_resume:
        options["eager_resume"] = True
    limit = program.fiber_limit
    if limit is not None:
        try:
            cls(fiber_limit=limit)
        except ConfigurationError:
            limit = None  # below the construction minimum: not a limit this scheduler offers
    # Every program runs with an extension that records every hook call:
    # its record must keep the rules of tests/_hooks.py whatever happens.
    return cls(fiber_limit=limit, extensions=[Recorder()], **options), limit


SPIN_SWITCHES = 50_000  # greenlet switches in one run() that mean a spin (programs here: < 1,000)


def steps_in(program: Program) -> int:
    """How many steps a program has, nested ones included (for the spin threshold)."""

    def count(ops: Ops) -> int:
        total = 0
        for op in ops:
            total += 1
            if isinstance(op, Map):
                total += sum(count(item) for item in op.items)
            elif isinstance(op, Isolated):
                total += count(op.body)
            elif isinstance(op, Append):
                total += count(op.job)
        return total

    return sum(count(job) for jobs in program.runs for job in jobs)


def run_program(cls: Type[Dataloader], program: Program, deadline: float = WATCHDOG) -> Outcome:
    """Run ``program`` under ``cls``; record everything the properties need.

    A hang shows up as an ``AssertionError`` with the stacks: either the
    watchdog's deadline passed, or the run made more than
    ``SPIN_SWITCHES`` greenlet switches (a hub that keeps resuming parked
    greenlets that get nowhere: caught in a fraction of a second, so that
    shrinking a hang stays cheap).  Normal programs here switch fewer than
    1,000 times; the threshold is 50,000, more for big programs.
    """
    dataloader, limit = make_dataloader(cls, program)
    world = World(program, dataloader)
    raised: List[Optional[BaseException]] = []
    ctxs: List[Ctx] = []
    seen: "weakref.WeakSet[greenlet]" = weakref.WeakSet()
    threshold = max(SPIN_SWITCHES, 200 * steps_in(program))
    switches = [0, threshold]  # count, next count at which to stop a spin
    spin: List[str] = []

    def trace(event: str, args: Any) -> None:
        if event in ("switch", "throw"):
            seen.add(args[1])
            switches[0] += 1
            if switches[0] > switches[1] and not isinstance(args[0], Hub):
                # Raised in the greenlet switching away (never in gevent's hub).
                switches[1] = switches[0] + threshold
                if not spin:
                    spin.append(dump_stacks(threading.get_ident()))
                raise Hang(f"{switches[0]} greenlet switches: a spin")
        if previous is not None:
            previous(event, args)

    previous = settrace(trace)
    try:
        for index, jobs in enumerate(program.runs):
            world.run_index = index
            if index and program.clear_between:
                world.clear(None)
            ctx = Ctx()
            ctxs.append(ctx)
            for position, job in enumerate(jobs):
                jid = ("run", index, position)
                ctx.members.append(jid)
                dataloader.append_job(lambda jid=jid, job=job, ctx=ctx: world.job(jid, job, ctx))
            try:
                with watchdog(deadline):
                    try:
                        dataloader.run()
                    except Exception as error:  # the next run() must work all the same
                        raised.append(error)
                    else:
                        raised.append(None)
            except BaseException as error:
                if spin:  # whatever the Hang turned into on its way out
                    raise AssertionError(
                        f"hung: run() kept switching greenlets ({switches[0]} switches). "
                        f"Stacks when the spin was stopped:\n{spin[0]}"
                    ) from error
                raise
            if spin:
                raise AssertionError(f"hung, then recovered: {switches[0]} switches. Stacks:\n{spin[0]}")
    finally:
        settrace(previous)
    here = getcurrent()
    pool = idle_pool()
    alive = [g for g in list(seen) if g and not g.dead and g is not here and not isinstance(g, Hub) and g not in pool]
    bound = dataloader.keep_greenlets
    pooled = [] if len(pool) <= bound else [f"{len(pool)} pooled, bound {bound}"]
    for worker in pool:
        try:
            assert_holds_nothing(worker)
        except AssertionError as error:
            pooled.append(f"a pooled worker holds something: {error}")
    return Outcome(world, raised, ctxs, alive, pooled, limit, dataloader.extensions[0].events)


# -- the properties -------------------------------------------------------------------------


class Rounds:
    """How many rounds (job phase + fetch phase) jobs can wait through.

    A step that waits costs one round (``map``: its longest item), a step
    that cannot wait none.  Handles: loading them costs one round, but when
    the program clears caches, keys requested earlier may have been cleared
    meanwhile, and each handle then waits for a round of its own.
    """

    def __init__(self, program: Program) -> None:
        self.clears = any(self._clears(job) for jobs in program.runs for job in jobs)

    def _clears(self, ops: Ops) -> bool:
        for op in ops:
            if isinstance(op, Clear) or (isinstance(op, Isolated) and op.clear_before):
                return True
            inner: Tuple[Ops, ...] = ()
            if isinstance(op, Map):
                inner = op.items
            elif isinstance(op, Isolated):
                inner = (op.body,)
            elif isinstance(op, Append):
                inner = (op.job,)
            if any(self._clears(ops) for ops in inner):
                return True
        return False

    def costs(self, ops: Ops) -> List[int]:
        """The rounds of each step, then of the handles loaded at the end."""
        costs = []
        handles = 0
        for op in ops:
            cost = 0
            if isinstance(op, (Load, LoadAll, Yield, Isolated)):
                cost = 1
            elif isinstance(op, Map):
                cost = max([1] + [self.chain(item) for item in op.items])
            elif isinstance(op, Request):
                handles += 1 if op.all else len(op.keys)
            elif isinstance(op, Handles):
                cost = self._handles(handles)
                handles = 0
            costs.append(cost)
        costs.append(self._handles(handles))
        return costs

    def _handles(self, count: int) -> int:
        return min(count, 1) if not self.clears else count

    def chain(self, ops: Ops) -> int:
        return sum(self.costs(ops))

    def span(self, jobs: Tuple[Ops, ...], start: int = 0) -> int:
        """The last round any of these jobs, or a job they append, can wait in."""
        last = start
        for ops in jobs:
            at = start
            for op, cost in zip(ops, self.costs(ops)):
                if isinstance(op, Append):
                    last = max(last, self.span((op.job,), at))
                elif isinstance(op, Map):
                    last = max(last, self.span(op.items, at))
                at += cost
            last = max(last, start + self.chain(ops))
        return last


def fetch_bound(program: Program, world: World, runs: int) -> Dict[Tuple[int, Optional[int]], int]:
    """The most fetch calls each source may get from a batching scheduler.

    A source's pending keys are taken (and fetched, split by
    ``max_batch_size``) at most once per round for the keys jobs asked for
    -- jobs do not run while fetches do -- plus once per load made inside
    a fetch (a nested load can make the source pending again in the same
    fetch phase), plus once per ``run_isolated`` (it sets pending keys
    aside and puts them back).  Rounds: for each run, the longest chain of
    waits of its jobs (``Rounds.span``; a job appended at step n starts at
    n); plus the rounds of every nested run (``run_isolated``, also the
    one ``map`` makes inside a fetch) that actually ran; plus one per
    ``clear_cache`` (a job that finds its fetched key cleared asks again
    in the next round).  A take of n keys is ceil(n / max_batch_size)
    fetch calls, so a source gets at most takes + keys // max_batch_size
    calls.  Deliberately loose, so that it holds for any scheduler that
    fetches only when no job can proceed and then resumes every job whose
    keys arrived; with no nested work, no clear and no run_isolated it is
    graphql-ruby's "one fetch per source per level of dependency".  Not
    checked with a ``fiber_limit`` (jobs beyond it wait for a later round:
    smaller batches, by design) nor with ``eager_resume`` (jobs resumed
    early fetch without those still waiting, by design).
    """
    rounds = sum(Rounds(program).span(program.runs[index]) for index in range(runs))
    rounds += world.isolated_phases + len(world.clears)
    bounds: Dict[Tuple[int, Optional[int]], int] = {}
    keys: Dict[Tuple[int, Optional[int]], int] = {}
    for sid, batch, _, _ in world.fetches:
        keys[sid] = keys.get(sid, 0) + len(batch)
    for sid, count in keys.items():
        size = program.sources[sid[0]].max_batch_size
        takes = rounds + world.nested_loads.get(sid, 0) + world.isolated_runs
        bounds[sid] = takes + (count // size if size else 0)
    return bounds


def check(cls: Type[Dataloader], program: Program, outcome: Outcome, oracle: Oracle) -> List[str]:
    problems: List[str] = []
    world = outcome.world
    problems.extend(world.violations)
    # 1. every record is a prefix of the oracle's
    for jid, events in world.events.items():
        want = oracle.events.get(jid)
        if want is None:
            problems.append(f"{jid} ran, but the oracle never runs it: {events}")
        elif events != want[: len(events)]:
            problems.append(f"{jid} recorded {events}, the oracle {want}")
    # 2. run() raises exactly when the oracle's run has a failing job; the jobs
    # of a run that raised are abandoned (README): none of them runs later
    for jid, started in world.started_in.items():
        if started != jid[1]:
            problems.append(f"{jid}, queued in run {jid[1]}, ran in run {started} (run {jid[1]} raised)")
    for index, error in enumerate(outcome.raised):
        fails = oracle.run_fails[index]
        if error is not None and not isinstance(error, JobFailed):
            problems.append(f"run {index}: run() raised {type(error).__name__}: {error}")
        elif error is None and fails:
            problems.append(f"run {index}: run() returned, but a job raised JobFailed")
        elif error is not None and not fails:
            problems.append(f"run {index}: run() raised {error!r}, but no job fails")
        if error is None:  # every job of the run ran to its end
            for jid in outcome.ctxs[index].members:
                events = world.events.get(jid)
                if events != oracle.events.get(jid):
                    problems.append(f"run {index} returned, but {jid} recorded {events}, not {oracle.events.get(jid)}")
    # 4. no key fetched twice, nor after a merge, unless cleared in between
    timeline: Dict[Tuple[Any, Any], List[Tuple[int, Optional[List[Any]]]]] = {}
    starts = {entry[2] for entry in world.fetches}
    for tick, sid, key in world.merges:
        timeline.setdefault((sid, key), []).append((tick, None))
    for entry in world.fetches:
        for key in entry[1]:
            timeline.setdefault((entry[0], key), []).append((entry[2], entry))
    for (sid, key), events in timeline.items():
        provided: Optional[int] = None  # tick of the last merge or fetch that gave the key a result
        for tick, fetch in sorted(events, key=lambda event: event[0]):
            if fetch is not None and provided is not None:
                if not any(provided < at < tick and scope in (None, sid) for at, scope in world.clears):
                    problems.append(f"S{sid[0]}{sid[1:]} key {key} fetched again, with no clear_cache since "
                                    f"it was {'fetched' if provided in starts else 'merged'} (tick {provided})")
            if fetch is None or fetch[3] is not None:  # a stopped fetch gave it nothing
                provided = tick
    # 5. batching: fetch calls within the dependency depth
    eager = issubclass(cls, AsyncDataloader) and program.eager_resume
    if cls is not NullDataloader and outcome.limit_used is None and not eager:
        bounds = fetch_bound(program, world, len(outcome.raised))
        calls: Dict[Tuple[int, Optional[int]], int] = {}
        for sid, _, _, _ in world.fetches:
            calls[sid] = calls.get(sid, 0) + 1
        for sid, count in calls.items():
            if count > bounds[sid]:
                problems.append(f"S{sid[0]}{sid[1:]}: {count} fetch calls, more than the bound {bounds[sid]}")
    # 7. the extension hooks: well formed, one fetch_started per fetch call, and
    # a run_started per run (and per run_isolated) with its run_finished
    problems.extend(hook_problems(outcome.hooks, getcurrent()))
    names = [event[0] for event in outcome.hooks]
    if names.count("fetch_started") != len(world.fetches):
        problems.append(f"{names.count('fetch_started')} fetch_started hooks for {len(world.fetches)} fetch calls")
    if names.count("run_started") < len(outcome.raised):
        problems.append(f"{names.count('run_started')} run_started hooks for {len(outcome.raised)} runs")
    # 6. no greenlet alive but idle pooled workers, each holding nothing, within the bound
    if outcome.alive:
        problems.append(f"greenlets alive after run(): {outcome.alive}")
    problems.extend(outcome.pooled)
    return problems


def verify(cls: Type[Dataloader], program: Program) -> None:
    oracle = Oracle(program).run_all()
    outcome = run_program(cls, program)
    problems = check(cls, program, outcome, oracle)
    assert not problems, f"{cls.__name__}:\n  " + "\n  ".join(problems)


# -- generating programs ----------------------------------------------------------------------

KEY = st.integers(min_value=0, max_value=NKEYS - 1)
KEYSET = st.frozensets(KEY, max_size=2)


NESTED_MODES = ("load_all", "load", "request", "request_all", "map", "isolated")


@st.composite
def programs(draw: Any, without: FrozenSet[str] = frozenset()) -> Program:
    """Random programs.  ``without`` leaves features out (for triage): a step's
    class name (``"Yield"``), a nested mode (``"nested:map"``), or one of
    ``nested fetch_yield fetch_io isolated_noop isolated_clear errors poison
    max_batch_size params shared fiber_limit eager_resume runs clear_between``.
    """

    def maybe(feature: str, strategy: Any, otherwise: Any) -> Any:
        return st.just(otherwise) if feature in without else strategy

    def rarely(feature: str, one_in: int) -> bool:
        return feature not in without and draw(st.integers(0, one_in - 1)) == 0

    count = draw(st.integers(min_value=1, max_value=4))
    params = [draw(maybe("params", st.booleans(), False)) for _ in range(count)]

    def ref(lowest: int = 0) -> Any:
        return st.integers(min_value=lowest, max_value=count - 1).flatmap(
            lambda src: st.builds(Ref, st.just(src), st.sampled_from([0, 1]) if params[src] else st.none())
        )

    modes = [mode for mode in NESTED_MODES if f"nested:{mode}" not in without]
    sources = []
    for index in range(count):
        nested: Any = st.just(())
        if index < count - 1 and modes and "nested" not in without:
            nested = st.lists(
                st.builds(
                    Nested,
                    ref(index + 1),
                    st.sampled_from(modes),
                    st.integers(min_value=1, max_value=3),
                    st.integers(min_value=0, max_value=NKEYS - 1),
                ),
                max_size=2,
            ).map(tuple)
        sources.append(
            SourceSpec(
                params=params[index],
                shared=params[index] and rarely("shared", 4),
                max_batch_size=draw(maybe("max_batch_size", st.sampled_from([None, None, None, 1, 2, 3]), None)),
                errors=draw(maybe("errors", KEYSET, frozenset())),
                poison=draw(maybe("poison", st.sampled_from([frozenset(), frozenset()]) | KEYSET, frozenset())),
                raise_early=draw(st.booleans()),
                nested=draw(nested),
                yield_before=rarely("fetch_yield", 6),
                yield_after=rarely("fetch_yield", 6),
                isolated_noop=rarely("isolated_noop", 10),
                io=rarely("fetch_io", 5),
            )
        )

    keys = st.lists(KEY, max_size=4).map(tuple)
    leaves = [
        (6, Load, st.builds(Load, ref(), KEY)),
        (4, LoadAll, st.builds(LoadAll, ref(), keys)),
        (3, Request, st.builds(Request, ref(), keys, st.booleans())),
        (2, Handles, st.builds(Handles)),
        (2, Yield, st.builds(Yield)),
        (2, Io, st.builds(Io, st.sampled_from([0.0, 0.0, 0.0005]))),
        (1, Clear, st.builds(Clear, st.none() | ref())),
        (1, Merge, st.builds(Merge, ref(), KEY)),
        (1, Fail, st.builds(Fail)),
    ]

    def ops(depth: int) -> Any:
        choices = [s for weight, kind, s in leaves if kind.__name__ not in without for _ in range(weight)]
        if depth:
            inner = ops(depth - 1)
            items = st.lists(inner, min_size=1, max_size=3).map(tuple)
            nesting = [(Map, st.builds(Map, items)), (Map, st.builds(Map, items)),
                       (Isolated, st.builds(Isolated, inner, maybe("isolated_clear", st.booleans(), False))),
                       (Append, st.builds(Append, inner))]
            choices += [s for kind, s in nesting if kind.__name__ not in without]
        return st.lists(st.one_of(choices), max_size=4).map(tuple)

    jobs = st.lists(ops(2), min_size=1, max_size=4).map(tuple)
    runs = draw(st.lists(jobs, min_size=1, max_size=1 if "runs" in without else 2).map(tuple))
    return Program(
        sources=tuple(sources),
        runs=runs,
        clear_between=draw(maybe("clear_between", st.booleans(), False)),
        fiber_limit=draw(
            maybe("fiber_limit", st.sampled_from([None, None, None]) | st.integers(min_value=2, max_value=8), None)
        ),
        eager_resume=draw(maybe("eager_resume", st.booleans(), False)),
    )


# -- the tests ----------------------------------------------------------------------------

LONG_RUN = "FIBERLOADER_FUZZ_EXAMPLES" in os.environ
# CI does not shrink: with a bug present, hypothesis spends up to five minutes
# shrinking per scheduler.  The failure still prints the program, every
# property it broke and a @reproduce_failure blob; FIBERLOADER_FUZZ_SHRINK=1
# (the default for long runs) shrinks it to a minimal program.
SHRINK = os.environ.get("FIBERLOADER_FUZZ_SHRINK", "1" if LONG_RUN else "0") == "1"
FUZZ = settings(
    max_examples=int(os.environ.get("FIBERLOADER_FUZZ_EXAMPLES", "300")),
    derandomize=not LONG_RUN,  # CI: the same programs every time
    database=None if not LONG_RUN else settings.default.database,
    deadline=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else []),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,  # no_leaked_greenlets: once around all examples, on purpose
    ],
)

SCHEDULERS: List[Type[Dataloader]] = [Dataloader, AsyncDataloader, NullDataloader]


def _seeded(test: Any) -> Any:
    value = os.environ.get("FIBERLOADER_FUZZ_SEED")
    return seed(int(value))(test) if value and LONG_RUN else test


@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda cls: cls.__name__)
@_seeded
@FUZZ
@given(program=programs())
def test_every_scheduler_gives_the_oracles_results(
    cls: Type[Dataloader], program: Program, no_leaked_greenlets: Any
) -> None:
    """Each example checks its own greenlets; the fixture checks once more, with
    a full garbage collection, after all examples of the scheduler."""
    verify(cls, program)
