"""Traces of fiberloader runs for Perfetto: which greenlet ran what, and when.

Attach a :class:`PerfettoTrace` as an extension (or set
``$FIBERLOADER_TRACE=trace.json``: one shared trace per process) and every
run of the dataloaders it is attached to is written to ``path`` as Chrome
trace-event JSON, which https://ui.perfetto.dev and ``chrome://tracing``
open::

    from fiberloader import Dataloader
    from fiberloader.tracing import PerfettoTrace

    trace = PerfettoTrace("trace.json")
    Dataloader(extensions=[trace])   # or FIBERLOADER_EXTENSIONS, or a subclass's `extensions`

What is on it (timestamps in microseconds of ``time.perf_counter()``):

* a *track* (``tid``) per greenlet, named by ``thread_name`` metadata (and
  ordered by ``thread_sort_index``): ``run hub`` (the greenlet that called
  ``run()``), ``worker 1``, ``worker 2``... (a run's workers in start order;
  `` (run N)`` is added to the names of the N-th run's), ``pool thread 1``...
  (gevent's threads, for ``blocking`` sources under ``AsyncDataloader``);
  ``pid`` is the process's, named by ``process_name``;
* complete slices (``"ph": "X"``), nested on their track:

  - ``run`` (``run_isolated`` when nested) on the hub's track, ``cat``
    ``run``; args ``dataloader`` (its class), the run's ``fetches``,
    ``loads`` and ``cache_hits``, ``error``;
  - ``job`` per job, ``cat`` ``job``; args ``graphql.paths`` (in a
    fiberloader GraphQL execution: the field it starts with, if it takes
    over a loop of the executor, then the field of each park; the first
    names the slice, ``job posts.1.author``), ``error``;
  - ``fetch <source>`` per ``fetch()`` call, ``cat`` ``fetch``, in the
    greenlet (or pool thread) that ran it; args ``source``,
    ``source_class``, ``batch_parameters``, ``key_count``, ``keys`` (the
    first ``SHOWN_KEYS``), ``graphql.path`` (a NullDataloader's fetch,
    inline in a field), ``error``;
  - ``waiting on <source>`` (else ``waiting for loop items``, ``yield``),
    ``cat`` ``wait``, inside the job or fetch that parked, from its park to
    its resume; args ``source``, ``key_count``, ``keys``, ``graphql.path``;

* flow arrows (``"ph": "s"`` then ``"f"`` with ``"bp": "e"``, ``cat``
  ``flow``, name ``fetched by``, one ``id`` each), each bound to the slice
  around it: from a wait on keys to each fetch that fetched some of them.

Keys and batch parameters are shown without calling the application's
``__repr__`` (an ORM instance's may load expired attributes): plain values
as ``repr`` shows them, SQLAlchemy instances by identity, others by class.

Events are kept in memory (at most ``max_events`` between two writes) and
appended to the file when the outermost run of a dataloader finishes; the
file is a JSON array left open (the format allows the missing ``]``), so it
grows run after run, also from several processes.
:meth:`PerfettoTrace.close` (called at exit) closes the array;
:func:`read_trace` reads a file either way.
"""

from __future__ import annotations

import _thread
import atexit
import datetime
import decimal
import enum
import itertools
import json
import os
import sys
import uuid
import warnings
import weakref
from time import perf_counter
from typing import Any, Dict, Hashable, List, Optional, Set, Tuple

from greenlet import getcurrent

from ._errors import class_name, short_repr
from ._orm import Same
from ._extensions import Extension, around, fetch_result_keys
from ._source import _hashable

try:  # POSIX: processes appending to one file take turns
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["PerfettoTrace", "read_trace", "MAX_EVENTS", "SHOWN_KEYS"]

# Loaded by fiberloader.graphql: without it no GraphQL execution runs, and no path is looked for.
_GRAPHQL_LOOPS = "fiberloader._graphql_loops"
SHOWN_KEYS = 32  # keys listed in a fetch's or a wait's args (key_count counts them all)
MAX_EVENTS = 1_000_000  # events kept in memory between two writes; later ones are dropped (and counted)
DROPPED_EVENT = "fiberloader_dropped_events"  # the metadata event that counts them
FLOW_NAME = "fetched by"  # the name (and, with "flow", the category) of the flow events

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False)

# Per process: track ids and flow ids, unique across every trace of the process.
_tids = itertools.count(1)
_flows = itertools.count(1)


def _native_lock() -> Any:
    """A lock of the OS, also after gevent's monkey-patching (pool threads take it too)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            return monkey.get_original("_thread", "allocate_lock")()
        except Exception:  # pragma: no cover - a gevent without get_original
            pass
    return _thread.allocate_lock()


def _native_ident() -> int:
    """The OS thread's id (gevent's monkey-patching makes ``_thread.get_ident`` a greenlet's)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            return monkey.get_original("_thread", "get_ident")()  # type: ignore[no-any-return]
        except Exception:  # pragma: no cover - a gevent without get_original
            pass
    return _thread.get_ident()


def _now() -> float:
    return round(perf_counter() * 1e6, 3)


def _path_text(path: List[Any]) -> str:
    return ".".join(str(part) for part in path)


class _Slice:
    """A slice that began and has not ended yet (a run, a job, a fetch)."""

    __slots__ = ("cat", "name", "start", "args", "flows", "paths", "counts")

    def __init__(self, cat: str, name: str, args: Dict[str, Any]) -> None:
        self.cat = cat
        self.name = name
        self.start = _now()
        self.args = args
        self.flows: List[int] = []  # a fetch: the flows that end on it
        self.paths: List[str] = []  # a job: the GraphQL paths it resolved
        self.counts: Tuple[int, int, int] = (0, 0, 0)  # a run: the stats when it began


class _Wait:
    """A park: who waits, since when, on which keys; the flows that start on it."""

    __slots__ = ("start", "name", "args", "source", "rks", "flows")

    def __init__(self, name: str, args: Dict[str, Any], source: Any, rks: List[Hashable]) -> None:
        self.start = _now()
        self.name = name
        self.args = args
        self.source = source
        self.rks = rks
        self.flows: List[int] = []


class _Track:
    """A greenlet's track: its tid, the slices open on it, its current park."""

    __slots__ = ("tid", "stack", "wait")

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.stack: List[_Slice] = []
        self.wait: Optional[_Wait] = None


class _RunState:
    """Per dataloader, from its outermost run's start to its end."""

    __slots__ = ("number", "depth", "workers", "waiters", "fetching", "params")

    def __init__(self, number: int) -> None:
        self.number = number
        self.depth = 0  # runs going on (a run_isolated nests)
        self.workers = 0  # worker greenlets started so far
        # (id(source), result key) -> the parks waiting on it
        self.waiters: Dict[Tuple[int, Hashable], List[_Wait]] = {}
        # fetches going on: (source, their result keys, their slice)
        self.fetching: List[Tuple[Any, Set[Hashable], _Slice]] = []
        self.params: Dict[int, Optional[str]] = {}  # id(source) -> its batch parameters


class PerfettoTrace(Extension):
    """An extension that writes a Chrome / Perfetto trace of every run to ``path``.

    One instance may serve any number of dataloaders, also at once (gevent);
    ``$FIBERLOADER_TRACE`` makes one per process.  See the module docstring
    for what it records.

    Args:
        path: the JSON file; appended to (created with ``[`` if missing or
            empty).  Delete it to start a new trace.
        max_events: events kept in memory until the next write; more are
            dropped and counted in a ``fiberloader_dropped_events`` metadata
            event.
    """

    def __init__(self, path: "str | os.PathLike[str]", max_events: int = MAX_EVENTS) -> None:
        self.path = os.fspath(path)
        self.max_events = max_events
        self._lock = _native_lock()  # the buffer and the waits: pool threads touch them too
        self._write_lock = _native_lock()  # one write (or close) at a time
        self._reset(os.getpid())
        atexit.register(self.close)

    def _reset(self, pid: int) -> None:
        """Start afresh in process ``pid`` (also in a forked child: the parent writes its own)."""
        self._pid = pid
        self._events: List[Dict[str, Any]] = []
        self._kept = 0  # events in _events that count against max_events (not metadata)
        self._dropped = 0
        self._tracks: "weakref.WeakKeyDictionary[Any, _Track]" = weakref.WeakKeyDictionary()
        self._runs: Dict[int, _RunState] = {}
        self._run_numbers = itertools.count(1)
        self._pool_threads = itertools.count(1)
        self._greenlets = itertools.count(1)
        self._named_process = False

    def __repr__(self) -> str:
        return f"PerfettoTrace({self.path!r})"

    # -- events ----------------------------------------------------------------------

    def _emit(self, event: Dict[str, Any]) -> None:
        with self._lock:
            if self._kept < self.max_events:
                self._kept += 1
                self._events.append(event)
            else:
                self._dropped += 1

    def _metadata(self, tid: int, name: str, args: Dict[str, Any]) -> None:
        """Metadata: kept even when the buffer is full (a track without its name is useless)."""
        with self._lock:
            self._events.append({"ph": "M", "pid": self._pid, "tid": tid, "name": name, "args": args})

    def _complete(self, track: _Track, cat: str, name: str, start: float, args: Dict[str, Any]) -> float:
        end = _now()
        self._emit({
            "ph": "X", "cat": cat, "name": name, "pid": self._pid, "tid": track.tid,
            "ts": start, "dur": round(end - start, 3), "args": args,
        })
        return end

    def _flow(self, phase: str, track: _Track, flow_id: int, start: float, end: float) -> None:
        """A flow event inside the slice [start, end] of ``track``: it binds to that slice."""
        event: Dict[str, Any] = {
            "ph": phase, "cat": "flow", "name": FLOW_NAME, "id": self._pid * 10**9 + flow_id,
            "pid": self._pid, "tid": track.tid, "ts": round(start + min(1.0, (end - start) / 2), 3),
        }
        if phase == "f":
            event["bp"] = "e"
        self._emit(event)

    # -- tracks ----------------------------------------------------------------------

    def _new_track(self, greenlet: Any, name: str) -> _Track:
        if not self._named_process:
            self._named_process = True
            self._metadata(0, "process_name", {"name": f"fiberloader (pid {self._pid})"})
        track = _Track(next(_tids))
        with self._lock:
            self._tracks[greenlet] = track
        self._metadata(track.tid, "thread_name", {"name": name})
        self._metadata(track.tid, "thread_sort_index", {"sort_index": track.tid})
        return track

    def _track(self) -> _Track:
        """The calling greenlet's track; a greenlet seen first here is a pool thread's."""
        current = getcurrent()
        track = self._tracks.get(current)
        if track is None:
            if _native_ident() != _main_thread:
                track = self._new_track(current, f"pool thread {next(self._pool_threads)}")
            else:
                track = self._new_track(current, f"greenlet {next(self._greenlets)}")
        return track

    def _state(self, dataloader: Any) -> _RunState:
        state = self._runs.get(id(dataloader))
        if state is None:  # a hook outside run_started..run_finished: keep going
            state = self._runs[id(dataloader)] = _RunState(next(self._run_numbers))
        return state

    # -- the hooks -------------------------------------------------------------------

    def run_started(self, dataloader: Any) -> None:
        pid = os.getpid()
        if pid != self._pid:  # a forked child: the parent's events are the parent's to write
            self._lock, self._write_lock = _native_lock(), _native_lock()
            self._reset(pid)
        current = getcurrent()
        track = self._tracks.get(current)
        state = self._runs.get(id(dataloader))
        if state is None:
            state = self._runs[id(dataloader)] = _RunState(next(self._run_numbers))
        if track is None:
            track = self._new_track(current, "run hub" if state.number == 1 else f"run hub (run {state.number})")
        state.depth += 1
        run = _Slice("run", "run" if state.depth == 1 else "run_isolated", {"dataloader": type(dataloader).__name__})
        stats = dataloader.stats
        run.counts = (stats.fetches, stats.loads, stats.cache_hits)
        track.stack.append(run)

    def run_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        track = self._track()
        run = self._pop(track, "run")
        state = self._state(dataloader)
        if run is not None:
            stats = dataloader.stats
            fetches, loads, hits = run.counts
            run.args.update(fetches=stats.fetches - fetches, loads=stats.loads - loads, cache_hits=stats.cache_hits - hits)
            if error is not None:
                run.args["error"] = short_repr(error)
            self._complete(track, "run", run.name, run.start, run.args)
        state.depth -= 1
        if state.depth <= 0:
            self._runs.pop(id(dataloader), None)
            self.flush()

    def fiber_started(self, dataloader: Any) -> None:
        state = self._state(dataloader)
        state.workers += 1
        name = f"worker {state.workers}"
        if state.number > 1:
            name += f" (run {state.number})"
        self._new_track(getcurrent(), name)  # a kept greenlet serving a new run: a new track

    def fiber_finished(self, dataloader: Any) -> None:
        current = getcurrent()
        track = self._tracks.get(current)
        if track is None:
            return
        while track.stack:  # defensive: nothing is open at the end of a worker
            open_slice = track.stack.pop()
            self._complete(track, open_slice.cat, open_slice.name, open_slice.start, open_slice.args)
        with self._lock:
            self._tracks.pop(current, None)

    def job_started(self, dataloader: Any) -> None:
        track = self._track()
        job = _Slice("job", "job", {})
        path = _starting_job_path()
        if path is not None:
            job.paths.append(_path_text(path))
        track.stack.append(job)

    def job_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        track = self._track()
        job = self._pop(track, "job")
        if job is None:
            return
        args = job.args
        if job.paths:
            args["graphql.paths"] = job.paths
            name = f"job {job.paths[0]}"
        else:
            name = "job"
        if error is not None:
            args["error"] = short_repr(error)
        self._complete(track, "job", name, job.start, args)

    def job_suspended(self, dataloader: Any, source: Any, keys: Any) -> None:
        track = self._track()
        args: Dict[str, Any] = {}
        if source is None:
            name = "yield" if getattr(getcurrent(), "waiting", None) is None else "waiting for loop items"
        else:
            name = f"waiting on {source!r}"
            args.update(source=repr(source), key_count=len(keys), keys=_shown(keys))
        graphql = sys.modules.get(_GRAPHQL_LOOPS)
        path = graphql.field_path() if graphql is not None else None
        if path is not None:
            text = args["graphql.path"] = _path_text(path)
            for open_slice in reversed(track.stack):
                if open_slice.cat == "job":
                    if text not in open_slice.paths:
                        open_slice.paths.append(text)
                    break
        wait = track.wait = _Wait(name, args, source, list(keys) if source is not None else [])
        if source is None:
            return
        state = self._state(dataloader)
        with self._lock:
            waiters = state.waiters
            for rk in wait.rks:
                key = (id(source), rk)
                found = waiters.get(key)
                if found is None:
                    waiters[key] = [wait]
                elif found[-1] is not wait:
                    found.append(wait)
            # keys already in flight (another job asked first): the fetch going on
            for fetching, rks, fetch in state.fetching:
                if fetching is source and not rks.isdisjoint(wait.rks):
                    flow = next(_flows)
                    wait.flows.append(flow)
                    fetch.flows.append(flow)

    def job_resumed(self, dataloader: Any) -> None:
        track = self._track()
        wait, track.wait = track.wait, None
        if wait is None:
            return
        end = self._complete(track, "wait", wait.name, wait.start, wait.args)
        if wait.source is None:
            return
        for flow in wait.flows:
            self._flow("s", track, flow, wait.start, end)
        state = self._runs.get(id(dataloader))
        if state is None:
            return
        with self._lock:
            waiters = state.waiters
            source_id = id(wait.source)
            for rk in wait.rks:
                found = waiters.get((source_id, rk))
                if found is not None and wait in found:
                    found.remove(wait)
                    if not found:
                        del waiters[(source_id, rk)]

    def fetch_started(self, dataloader: Any, source: Any, keys: List[Any]) -> None:
        track = self._track()
        state = self._state(dataloader)
        args: Dict[str, Any] = {"source": repr(source), "source_class": class_name(type(source))}
        source_id = id(source)
        if source_id not in state.params:
            state.params[source_id] = _batch_parameters(dataloader, source)
        params = state.params[source_id]
        if params is not None:
            args["batch_parameters"] = params
        args.update(key_count=len(keys), keys=_shown(keys))
        graphql = sys.modules.get(_GRAPHQL_LOOPS)
        if graphql is not None and track.stack and track.stack[-1].cat == "job":  # inline (NullDataloader)
            path = graphql.field_path()
            if path is not None:
                args["graphql.path"] = text = _path_text(path)
                if text not in track.stack[-1].paths:
                    track.stack[-1].paths.append(text)
        fetch = _Slice("fetch", f"fetch {source!r}", args)
        rks = fetch_result_keys(source, keys)
        with self._lock:
            seen = set()
            waiters = state.waiters
            for rk in rks:
                for wait in waiters.get((source_id, rk), ()):
                    if id(wait) not in seen:
                        seen.add(id(wait))
                        flow = next(_flows)
                        wait.flows.append(flow)
                        fetch.flows.append(flow)
            state.fetching.append((source, _key_set(rks), fetch))
        track.stack.append(fetch)

    def fetch_finished(self, dataloader: Any, source: Any, keys: List[Any], error: Optional[BaseException]) -> None:
        track = self._track()
        fetch = self._pop(track, "fetch")
        if fetch is None:
            return
        if error is not None:
            fetch.args["error"] = short_repr(error)
        end = self._complete(track, "fetch", fetch.name, fetch.start, fetch.args)
        for flow in fetch.flows:
            self._flow("f", track, flow, fetch.start, end)
        state = self._runs.get(id(dataloader))
        if state is not None:
            with self._lock:
                state.fetching = [entry for entry in state.fetching if entry[2] is not fetch]

    def _pop(self, track: _Track, cat: str) -> Optional[_Slice]:
        """Take the innermost open slice of ``cat`` off ``track`` (ending any left open inside it)."""
        stack = track.stack
        for index in range(len(stack) - 1, -1, -1):
            if stack[index].cat == cat:
                while len(stack) > index + 1:  # defensive: close what a failure left open
                    inner = stack.pop()
                    self._complete(track, inner.cat, inner.name, inner.start, inner.args)
                return stack.pop()
        return None

    # -- the file ----------------------------------------------------------------------

    def flush(self) -> None:
        """Append the events kept in memory to the file (``run_finished`` of an outermost run does)."""
        with self._write_lock:
            with self._lock:
                events, self._events = self._events, []
                dropped, self._dropped, self._kept = self._dropped, 0, 0
            if dropped:
                events.append({
                    "ph": "M", "pid": self._pid, "tid": 0, "name": DROPPED_EVENT, "args": {"dropped": dropped},
                })
            if events:
                self._write(events, close=False)

    def close(self) -> None:
        """Write what is kept and end the JSON array (``]``): the file is then plain JSON.

        Registered with ``atexit``.  A later run appends again (the ``]`` is
        taken off first).
        """
        self.flush()
        with self._write_lock:
            if os.path.exists(self.path):
                self._write([], close=True)

    def _write(self, events: List[Dict[str, Any]], close: bool) -> None:
        # One call for the lot (the C encoder is set up once): one line per write.
        body = _ENCODER.encode(events)[1:-1].encode() if events else b""
        try:
            with open(self.path, "a+b") as file:
                if fcntl is not None:
                    fcntl.flock(file.fileno(), fcntl.LOCK_EX)
                try:
                    _append(file, body, close)
                finally:
                    if fcntl is not None:
                        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        except OSError as error:  # a trace must not fail the runs it watches
            warnings.warn(f"fiberloader could not write the trace {self.path!r}: {error}", RuntimeWarning, 2)


def _append(file: Any, body: bytes, close: bool) -> None:
    """Append ``body`` (events joined by commas) to the JSON array in ``file``; ``close``: end it."""
    end, tail = _content_end(file, file.seek(0, os.SEEK_END))
    if tail.endswith(b"]"):  # closed already
        if not body:
            return
        end, tail = _content_end(file, end - 1)  # open it again: the "]" goes
        file.truncate(end)
    if not tail:
        prefix = b"[\n"
    elif tail.endswith(b"["):
        prefix = b""
    else:
        prefix = b",\n"
    if body or not tail:
        file.write(prefix + body)
    if close:
        file.write(b"\n]\n")


def _content_end(file: Any, size: int) -> Tuple[int, bytes]:
    """Where the content of the first ``size`` bytes ends (trailing space left out), and its last bytes."""
    while size > 0:
        start = max(0, size - 256)
        file.seek(start)
        tail = file.read(size - start).rstrip()
        if tail:
            return start + len(tail), tail
        size = start
    return 0, b""


def read_trace(path: "str | os.PathLike[str]") -> List[Dict[str, Any]]:
    """The events of a trace file, whether its JSON array is closed or not."""
    with open(path, encoding="utf-8") as file:
        text = file.read().strip()
    if not text:
        return []
    if text.startswith("{"):  # the object format
        return list(json.loads(text).get("traceEvents", []))
    if not text.endswith("]"):
        text = text.rstrip(",").rstrip() + "]"
    return list(json.loads(text))


def _shown(keys: Any) -> List[str]:
    """The first ``SHOWN_KEYS`` keys, each as a short text (``_key_text``)."""
    return [_key_text(key) for key in itertools.islice(keys, SHOWN_KEYS)]


def _key_set(rks: List[Hashable]) -> Set[Hashable]:
    try:
        return set(rks)
    except TypeError:  # a result_key_for that failed: fetch keys that are not hashable
        return {rk for rk in rks if _hashable(rk)}


def _batch_parameters(dataloader: Any, source: Any) -> Optional[str]:
    """The batch parameters ``with_()`` made ``source`` for, or ``None`` when there are none."""
    for batch_key, instance in dict(getattr(dataloader, "_sources", {}).get(type(source), {})).items():
        if instance is source:
            return None if batch_key == () else _brief(batch_key)
    return None


def _brief(value: Any) -> str:
    """A short text of a batch parameter: classes by name, objects as keys are (``_key_text``)."""
    if type(value) is tuple:
        return "(" + ", ".join(_brief(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, type):
        return class_name(value)
    return _key_text(value)


# Shown with repr(): values whose repr runs no code of the application.
_PLAIN_TYPES = frozenset({
    int, float, complex, bool, str, bytes, type(None), decimal.Decimal, uuid.UUID,
    datetime.date, datetime.datetime, datetime.time, datetime.timedelta,
})


def _key_text(key: Any) -> str:
    """A key as text, without calling the application's ``__repr__``.

    An ORM instance's ``repr`` may load expired attributes (one SQL query
    each): a trace must not change what the traced code does.  Plain values
    are shown as ``repr`` shows them; SQLAlchemy instances by their
    identity; anything else by its class.
    """
    kind = type(key)
    if kind is int or kind is str and len(key) <= 40:  # the usual keys: repr() as it is
        return repr(key)
    if kind in _PLAIN_TYPES or isinstance(key, enum.Enum):
        return short_repr(key)
    if kind is tuple:
        shown = ", ".join(_key_text(item) for item in key[:8])
        return "(" + shown + (", ..." if len(key) > 8 else "," if len(key) == 1 else "") + ")"
    if kind is Same:  # an ORM lazy load's or AssociationSource's result key
        return _key_text(key.instance)
    sqlalchemy = sys.modules.get("sqlalchemy")
    if sqlalchemy is not None:
        try:
            state = sqlalchemy.inspect(key, raiseerr=False)
            identity = getattr(state, "identity", None) if getattr(state, "mapper", None) is not None else None
        except Exception:
            identity = None
        if identity is not None:  # from the identity map: no SQL
            return f"<{class_name(kind)} {', '.join(_key_text(part) for part in identity)}>"
    return f"<{class_name(kind)}>"


def _starting_job_path() -> Optional[List[Any]]:
    """The GraphQL path of the job ``job_started`` is called for, or ``None``.

    ``job_started`` is not given the job: it is read from the frame that
    calls the hook (``fiberloader._extensions.around(pairs, head, fn)``).
    """
    graphql = sys.modules.get(_GRAPHQL_LOOPS)
    if graphql is None:  # no GraphQL execution in this process
        return None
    frame = sys._getframe(2)  # this <- job_started <- around(pairs, (dataloader,), job)
    if frame.f_code is not _AROUND:
        return None
    return graphql.job_field_path(frame.f_locals.get("fn"))  # type: ignore[no-any-return]


_AROUND = around.__code__  # the frame that calls job_started: its fn is the job


_main_thread = _native_ident()  # the thread that imported this module: the one whose greenlets run jobs
