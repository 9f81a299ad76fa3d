"""N+1 detection: sources fetched one key at a time, again and again, in one run.

Attach an :class:`NPlusOneDetector` to a dataloader (``Dataloader(extensions=[...])``,
a subclass's ``extensions``, or ``FIBERLOADER_EXTENSIONS``).  At the end of
each outermost ``run()`` it reports every source instance whose loads did
not batch: one :class:`NPlusOne` per source, kept in ``detector.reports``,
logged as a WARNING on the ``fiberloader.diagnostics`` logger, and, with
``raise_=True``, raised as :class:`NPlusOneError` out of ``run()``::

    detector = NPlusOneDetector()
    Dataloader(extensions=[detector])
    ...
    # UserSource(): 5 fetches of 1 key in one run (keys 1, 2, 3, 4, 5), loaded
    # at app/views.py:42 (5 times). Load them in separate jobs
    # (dataloader.map) or with load_all, so they batch.

The rule
========

A *source* is a source instance: a source class with one set of batch
parameters (what ``dataloader.with_(Cls, *args)`` returns).  *One run* is
one outermost ``run()`` of a dataloader; the ``run_isolated`` and ``map``
runs nested in it belong to it.

Only fetches of exactly one key count.  Each one is attributed to the first
*unit* that waited for its key, and to the *call path* of that unit's load:
the chain of (code, line) from the load call up to the start of the job.  A
unit is a job, a fetch (its own loads), or one item of a loop that
fiberloader runs (an item of ``dataloader.map``, a field or list item of a
GraphQL execution): such items become jobs of their own as soon as one
waits.  A source is reported when, in one run, at least ``threshold``
(default 2) of its one-key fetches share the same unit **and** the same call
path.  The report counts the fetches of every such group, and lists their
load sites (the first frame outside fiberloader and the greenlet/gevent
internals) with how often each was hit.

Why the same unit and the same call path:

* A unit that loads again from the same line of the same call path, after
  the previous load of that line waited for a fetch, is a loop in your code
  (``for id in ids: source.load(id)``, a comprehension, a helper called in
  a loop, a GraphQL resolver that loads in a loop).  Its keys are usually
  all known before the first load: ``load_all`` or ``dataloader.map``
  batches them.
* Two one-key fetches are *not* always batchable: the second key may come
  from the first value (``post = posts.load(1)`` then
  ``posts.load(post.parent_id)``).  Such a dependency chain is written as
  different lines, or, in GraphQL, as nested fields, whose resolvers run
  deeper on the stack: the call paths differ and nothing is reported.
  Different jobs are never grouped: a job appended, or a GraphQL field
  completed, after a fetch is usually a chain of the same kind.
* Reports are about the code, not the scheduler.  Under
  :class:`~fiberloader.NullDataloader` every fetch has one key, but its
  ``map`` items and GraphQL items are units of their own there too, and a
  ``load_all`` of several keys is one load, as under ``Dataloader``: loops
  in your code are reported, the batches NullDataloader leaves out are not.
  (Two jobs that loop side by side are reported there only: their fetches
  do not pair up.)

What the rule gets wrong, knowingly:

* A chain walked *in a loop* (``while node: node = nodes.load(node.parent_id)``)
  is reported, although no scheduler can batch it.  Fetch the chain in one
  query (a source keyed by the start node), or raise ``threshold``.
* Loads that batch partly are not reported: two jobs that each load in a
  loop, side by side, make fetches of two keys.
* One-key fetches made by different units are not reported, even when the
  units ran one after another rather than together (jobs appended one by
  one, ``map`` items waiting in turn under a low ``fiber_limit``, a loop of
  one-item ``map`` calls): that cannot be told from a chain of jobs.

How it works: ``job_started`` / ``fetch_started`` number each job and fetch
(per greenlet, as a stack: NullDataloader nests them in one greenlet).
``job_suspended`` of one key notes the job's number and the frame it parks
in (``sys._getframe``), nothing more: most parks end in a batch.
``fetch_started`` of one key takes the first job parked on that key and
walks its stack, still parked at the load, for the call path, the load
site and the loop items it is in (the frame each fiberloader frame on the
path called: a new one is a new item).  Under NullDataloader nothing parks:
``fetch_started`` runs inline in the loading job and walks the stack there.
Cost, measured on a batched GraphQL query: about 5 us per park; a stack
walk (10-30 us) per one-key fetch.

Per-run state is keyed by the dataloader (weakly) and refers to it, its
sources and its greenlets by ``id()`` only; it holds the frames of the jobs
parked now and of the loop items running now (dropped when they resume or
end), and is dropped at the outermost ``run_finished``.

ORM lazy loads: with lazy-load batching on (``FIBERLOADER_BATCH_LAZY_LOADS``,
``fiberloader.sqlalchemy.batch_lazy_loads``), a lazy load in a job is a
load of a source (``lazy loads of Post.author`` for Django,
``AssociationSource(session, Post, 'author')`` for SQLAlchemy), so one-key
fetches of it are reported like any other.  TODO: with batching off, a lazy
load in a job runs the ORM's own query, which this detector does not see;
the place to tell it is the fallback path of the integrations' patched
descriptors (``fiberloader._django_lazy``) and of the patched
``_emit_lazyload`` (``fiberloader.sqlalchemy``), the way ``job_suspended``
does here, reporting "lazy load of Post.author" with its load site.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import weakref
from dataclasses import dataclass, field
from importlib.util import find_spec
from types import CodeType, FrameType
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

from greenlet import getcurrent

from ._errors import ConfigurationError, FiberloaderError, short_repr
from . import _extensions
from ._extensions import Extension, fetch_result_keys
from ._null import NullDataloader

__all__ = ["NPlusOne", "NPlusOneDetector", "NPlusOneError", "raising_detector"]

logger = logging.getLogger("fiberloader.diagnostics")

MAX_KEYS = 5  # keys kept per report
MAX_BELOW = 64  # frames walked below a load's site (fiberloader's own), at most
MAX_PATH = 32  # frames of a call path, from the site up, at most

Site = Tuple[str, int]  # (file, line) of a load
Group = Tuple[int, Tuple[int, ...], Tuple[int, ...]]  # (job or fetch number, call path, loop items)


@dataclass
class NPlusOne:
    """One source that was fetched one key at a time, again and again, in one run."""

    source: str  #: ``repr()`` of the source instance, e.g. ``"UserSource()"``
    fetches: int  #: the one-key fetches counted (see the module docstring)
    keys: Tuple[Any, ...]  #: the first keys those fetches fetched (at most 5), in order
    sites: Dict[Site, int] = field(default_factory=dict)  #: load site (file, line) -> fetches; most first
    scheduler: str = "Dataloader"  #: the dataloader's class name

    def __str__(self) -> str:
        keys = ", ".join(short_repr(key) for key in self.keys)
        if self.fetches > len(self.keys):
            keys += ", ..."
        sites = ", ".join(
            f"{_shown(file)}:{line} ({'once' if count == 1 else f'{count} times'})"
            for (file, line), count in self.sites.items()
        )
        return (
            f"{self.source}: {self.fetches} fetches of 1 key in one run (keys {keys}), loaded at "
            f"{sites}. Load them in separate jobs (dataloader.map) or with load_all, so they batch."
        )


class NPlusOneError(FiberloaderError):
    """Raised out of ``run()`` by ``NPlusOneDetector(raise_=True)``: ``.reports`` lists what it found."""

    def __init__(self, text: str, reports: Sequence[NPlusOne] = ()) -> None:
        super().__init__(text)
        self.reports: List[NPlusOne] = list(reports)


class _Group:
    """The one-key fetches of one source attributed to one (job, call path)."""

    __slots__ = ("site", "count", "keys")

    def __init__(self, site: Site) -> None:
        self.site = site
        self.count = 0
        self.keys: List[Tuple[int, Any]] = []  # (order, key), the first MAX_KEYS


class _Tally:
    """The one-key fetches of one source in one run."""

    __slots__ = ("label", "groups")

    def __init__(self, label: str) -> None:
        self.label = label
        self.groups: Dict[Group, _Group] = {}


class _RunState:
    """One dataloader's outermost run, as the detector sees it.

    It refers to the dataloader, its sources and greenlets by ``id()`` only;
    the only objects of the run it holds are frames: of the jobs parked now
    (``parked``) and of the loop items running now (``items``).
    """

    __slots__ = ("run", "depth", "jobs", "items", "parked", "parking", "sources")

    def __init__(self, run: int) -> None:
        self.run = run  # id() of the outermost Run object
        self.depth = 1  # runs open: the outermost and those nested in it
        self.jobs: Dict[int, List[int]] = {}  # id(greenlet) -> numbers of its open jobs and fetches
        # job or fetch number -> (index on the call path, code, line) of a fiberloader
        # frame -> [the frame it called last (the loop item), that item's number]
        self.items: Dict[int, Dict[Tuple[int, int, int], List[Any]]] = {}
        # (id(source), result key) -> id(greenlet) -> (job or fetch number, the frame
        # it parked in): jobs parked on one key, in the order they parked
        self.parked: Dict[Tuple[int, Hashable], Dict[int, Tuple[int, FrameType]]] = {}
        self.parking: Dict[int, Tuple[int, Hashable]] = {}  # id(greenlet) -> where it is in `parked`
        self.sources: Dict[int, _Tally] = {}  # id(source) -> its one-key fetches


class NPlusOneDetector(Extension):
    """Reports sources fetched one key at a time by the same code of the same job.

    Args:
        raise_: raise :class:`NPlusOneError` out of ``run()`` at the end of an
            outermost run that found something (and did not fail already).
        threshold: how many one-key fetches of one source, by one job from
            one call path, make a report (at least 2).
        max_reports: how many reports ``reports`` keeps (the latest).

    One detector may serve many dataloaders, also at once (gevent).  See the
    module docstring for the exact rule.
    """

    def __init__(self, raise_: bool = False, *, threshold: int = 2, max_reports: int = 1000) -> None:
        if type(threshold) is not int or threshold < 2:
            raise ConfigurationError(
                f"NPlusOneDetector(threshold={short_repr(threshold)}): it takes an int >= 2, the "
                "number of one-key fetches of one source that make a report."
            )
        if type(max_reports) is not int or max_reports < 0:
            raise ConfigurationError(
                f"NPlusOneDetector(max_reports={short_repr(max_reports)}): it takes an int >= 0."
            )
        self.raise_ = raise_
        self.threshold = threshold
        self.max_reports = max_reports
        #: The latest reports (at most ``max_reports``), oldest first.
        self.reports: List[NPlusOne] = []
        self._runs: "weakref.WeakKeyDictionary[Any, _RunState]" = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)  # jobs and fetches
        self._order = itertools.count()  # one-key fetches, for the order of the keys

    def __repr__(self) -> str:
        return f"NPlusOneDetector(raise_={self.raise_!r}, threshold={self.threshold})"

    # -- runs ------------------------------------------------------------------------

    def run_started(self, dataloader: Any) -> None:
        run = id(getattr(dataloader, "_run", None))  # the outermost run's, also in a nested one
        state = self._runs.get(dataloader)
        if state is not None and state.run == run:
            state.depth += 1  # a run_isolated (or map) inside the run
        else:  # a new outermost run (or one whose run_finished never came: start over)
            self._runs[dataloader] = _RunState(run)

    def run_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        state = self._runs.get(dataloader)
        if state is None:
            return
        state.depth -= 1
        if state.depth > 0:
            return
        del self._runs[dataloader]
        reports = self._reports(state, type(dataloader).__name__)
        if not reports:
            return
        for report in reports:
            logger.warning("%s", report)
        self.reports.extend(reports)
        if len(self.reports) > self.max_reports:
            del self.reports[: len(self.reports) - self.max_reports]
        if self.raise_ and error is None:  # a failed run raises its own error
            raise NPlusOneError(
                f"N+1 loads in one run of {type(dataloader).__name__}:\n"
                + "\n".join(f"  {report}" for report in reports),
                reports,
            )

    def _reports(self, state: _RunState, scheduler: str) -> List[NPlusOne]:
        reports = []
        for tally in state.sources.values():
            groups = [group for group in tally.groups.values() if group.count >= self.threshold]
            if not groups:
                continue
            sites: Dict[Site, int] = {}
            for group in groups:
                sites[group.site] = sites.get(group.site, 0) + group.count
            ordered = dict(sorted(sites.items(), key=lambda item: -item[1]))  # stable: first seen first
            keys = sorted((pair for group in groups for pair in group.keys), key=lambda pair: pair[0])
            reports.append(NPlusOne(
                source=tally.label,
                fetches=sum(group.count for group in groups),
                keys=tuple(key for _, key in keys[:MAX_KEYS]),
                sites=ordered,
                scheduler=scheduler,
            ))
        return reports

    # -- jobs and fetches: numbered per greenlet ---------------------------------------

    def job_started(self, dataloader: Any) -> None:
        state = self._runs.get(dataloader)
        if state is not None:
            state.jobs.setdefault(id(getcurrent()), []).append(next(self._numbers))

    def job_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        state = self._runs.get(dataloader)
        if state is not None:
            _pop(state, id(getcurrent()))

    def job_suspended(self, dataloader: Any, source: Any, keys: Sequence[Any]) -> None:
        if source is None or len(keys) != 1:  # a yield_, a map's wait, a load_all of several keys
            return
        state = self._runs.get(dataloader)
        if state is None:
            return
        me = id(getcurrent())
        numbers = state.jobs.get(me)
        if not numbers:
            return
        # The stack is walked only if a fetch of this one key comes (fetch_started),
        # while the job is still parked there: most parks end in a batch.
        where = (id(source), keys[0])  # keys[0]: the result key, hashable (load checked it)
        state.parked.setdefault(where, {})[me] = (numbers[-1], sys._getframe(1))
        state.parking[me] = where

    def job_resumed(self, dataloader: Any) -> None:
        state = self._runs.get(dataloader)
        if state is None:
            return
        me = id(getcurrent())
        where = state.parking.pop(me, None)
        if where is None:
            return
        parked = state.parked.get(where)
        if parked is not None:
            parked.pop(me, None)
            if not parked:
                del state.parked[where]

    def fetch_started(self, dataloader: Any, source: Any, keys: List[Any]) -> None:
        state = self._runs.get(dataloader)
        if state is None:
            return
        me = id(getcurrent())
        if len(keys) == 1:
            if isinstance(dataloader, NullDataloader):
                # Nothing parked: the fetch runs here, inline in the loading job.
                numbers = state.jobs.get(me)
                if numbers:
                    frames, loops, waited = _frames(sys._getframe(1))
                    if frames is not None and waited <= 1:  # not a load_all of several keys
                        group, site = self._group(state, numbers[-1], frames, loops)
                        self._count(state, source, keys[0], group, site)
            else:
                rks = fetch_result_keys(source, keys)
                parked = state.parked.get((id(source), rks[0])) if rks else None
                if parked:
                    number, frame = next(iter(parked.values()))  # the first job that asked
                    frames, loops, _ = _frames(frame)  # its stack, parked at the load
                    if frames is not None:
                        group, site = self._group(state, number, frames, loops)
                        self._count(state, source, keys[0], group, site)
        state.jobs.setdefault(me, []).append(next(self._numbers))  # a fetch's loads are its own

    def fetch_finished(self, dataloader: Any, source: Any, keys: List[Any], error: Optional[BaseException]) -> None:
        state = self._runs.get(dataloader)
        if state is not None:
            _pop(state, id(getcurrent()))

    def _group(self, state: _RunState, number: int, frames: List[FrameType], loops: List[int]) -> Tuple[Group, Site]:
        """The group of a load (see the module docstring) and its site.

        ``frames``: from the load's site up; ``loops``: the indexes of the
        fiberloader frames among them (above the site).
        """
        path: List[int] = []  # id() of each code: cheap to hash (a code object's hash is not cached)
        for frame in frames:
            path += (id(frame.f_code), frame.f_lineno)
        site = (frames[0].f_code.co_filename, path[1])
        if not loops:
            return (number, tuple(path), ()), site
        # Each fiberloader frame above the site that called another frame than
        # the one it called last time (in this unit, at this place of the call
        # path) is a loop (map, GraphQL fields or list items) on a new item.
        known = state.items.get(number)
        if known is None:
            known = state.items.setdefault(number, {})
        items = []
        for index in loops:
            child = frames[index - 1]
            place = (index, path[2 * index], path[2 * index + 1])
            item = known.get(place)
            if item is None:
                item = known[place] = [child, next(self._numbers)]
            elif item[0] is not child:  # held, so never a new frame at an old address
                item[0], item[1] = child, next(self._numbers)
            items.append(item[1])
        return (number, tuple(path), tuple(items)), site

    def _count(self, state: _RunState, source: Any, key: Any, group_key: Group, site: Site) -> None:
        tally = state.sources.get(id(source))
        if tally is None:
            tally = state.sources.setdefault(id(source), _Tally(_label(source)))
        group = tally.groups.get(group_key)
        if group is None:
            group = tally.groups.setdefault(group_key, _Group(site))
        group.count += 1
        if len(group.keys) < MAX_KEYS:
            group.keys.append((next(self._order), key))


def raising_detector() -> NPlusOneDetector:
    """``NPlusOneDetector(raise_=True)``: a factory for ``FIBERLOADER_EXTENSIONS``.

    ``FIBERLOADER_EXTENSIONS=fiberloader.diagnostics:raising_detector`` makes
    every dataloader whose extensions are not given raise on N+1 loads.
    """
    return NPlusOneDetector(raise_=True)


# -- helpers ------------------------------------------------------------------------------


def _pop(state: _RunState, me: int) -> None:
    numbers = state.jobs.get(me)
    if numbers:
        state.items.pop(numbers.pop(), None)  # the frames of its loop items
        if not numbers:
            del state.jobs[me]


def _label(source: Any) -> str:
    try:
        return repr(source)
    except Exception:
        return f"{type(source).__name__}()"


# Where a call path starts: the frame that runs a job or a fetch between its
# hooks (the first such frame above a load is its job's or fetch's).
_BOUNDARIES = frozenset({_extensions.around.__code__})
_NULL_WAIT = NullDataloader._wait.__code__  # where NullDataloader fetches a load's keys, inline

_USER, _FIBERLOADER, _GREENLETS = 0, 1, 2  # who wrote a file


def _directory_of(package: str) -> Optional[str]:
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):  # pragma: no cover - not installed
        return None
    if spec is None or not spec.origin:  # pragma: no cover
        return None
    return os.path.dirname(os.path.abspath(spec.origin)) + os.sep


_FIBERLOADER_DIRECTORY = os.path.dirname(os.path.abspath(__file__)) + os.sep
_GREENLET_DIRECTORIES = tuple(filter(None, (_directory_of("greenlet"), _directory_of("gevent"))))
_kinds: Dict[str, int] = {}  # co_filename -> _USER, _FIBERLOADER or _GREENLETS


def _kind(filename: str) -> int:
    if filename.startswith("<"):  # <string>, <frozen ...>
        kind = _USER
    else:
        path = os.path.abspath(filename)
        if path.startswith(_FIBERLOADER_DIRECTORY):
            kind = _FIBERLOADER
        elif _GREENLET_DIRECTORIES and path.startswith(_GREENLET_DIRECTORIES):
            kind = _GREENLETS
        else:
            kind = _USER
    _kinds[filename] = kind
    return kind


def _frames(frame: Optional[FrameType]) -> Tuple[Optional[List[FrameType]], List[int], int]:
    """The frames of a load, from its site up to the first frame of its job or fetch.

    The site is the first frame outside fiberloader, greenlet and gevent
    (``None`` when there is none); at most ``MAX_PATH`` frames from it.  Also
    returns the indexes of the fiberloader frames above the site, and how
    many keys the NullDataloader wait below the site asked for (0: none).
    """
    kinds = _kinds
    waited = 0
    depth = 0
    while True:  # below the site: fiberloader's frames (and greenlet's, gevent's)
        if frame is None or depth == MAX_BELOW:
            return None, [], waited
        code: CodeType = frame.f_code
        kind = kinds.get(code.co_filename)
        if kind is None:
            kind = _kind(code.co_filename)
        if kind == _USER:
            break
        if code is _NULL_WAIT:
            waited = len(frame.f_locals.get("rks", ()))
        frame = frame.f_back
        depth += 1
    frames = [frame]
    loops = []
    frame = frame.f_back
    while frame is not None and len(frames) < MAX_PATH:
        code = frame.f_code
        if code in _BOUNDARIES:
            break
        kind = kinds.get(code.co_filename)
        if kind is None:
            kind = _kind(code.co_filename)
        if kind == _FIBERLOADER:
            loops.append(len(frames))
        frames.append(frame)
        frame = frame.f_back
    return frames, loops, waited


def _shown(filename: str) -> str:
    """``filename`` relative to the working directory when it is inside it."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # pragma: no cover - another drive (Windows)
        return filename
    return filename if relative.startswith(os.pardir) else relative
