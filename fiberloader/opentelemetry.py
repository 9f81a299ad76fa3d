"""OpenTelemetry tracing for fiberloader: one span per ``fetch``.

Add the extension to a dataloader::

    from fiberloader import Dataloader
    from fiberloader.opentelemetry import OpenTelemetryExtension

    dataloader = Dataloader(extensions=[OpenTelemetryExtension()])

or name it in the ``FIBERLOADER_EXTENSIONS`` setting
(``"fiberloader.opentelemetry:OpenTelemetryExtension"``).
``OpenTelemetryExtension(tracer_provider=None)`` uses the global tracer
provider; pass one to use another.  This module is the only one of
fiberloader that imports ``opentelemetry`` (``pip install
'fiberloader[opentelemetry]'``).

The span
========

Every ``Source.fetch(keys)`` call gets one span, after the *DataLoader
batch span* of the GraphQL OpenTelemetry working group's draft semantic
conventions (``span.graphql.dataloader.batch.internal`` in
https://github.com/graphql/otel-wg, ``spec/spans.yaml`` and
``spec/registry.yaml``; proposed upstream as
open-telemetry/semantic-conventions#3515):

* name: ``GraphQL DataLoader Batch {graphql.dataloader.name}``; kind
  ``INTERNAL``;
* ``graphql.processing.type``: ``"dataloader_batch"``;
* ``graphql.dataloader.name``: the source's class name (``UserSource``);
  its batch parameters are left out of the name, which stays low-cardinality;
* ``graphql.dataloader.batch.size``: the number of keys passed to ``fetch``
  (de-duplicated: loads of a key that is cached or already asked for are
  not in the batch, they are counted below);
* ``graphql.dataloader.cache.hit_count`` / ``cache.miss_count``: the loads of
  that source instance served from its cache / not served from it, since
  its previous fetch in this run (or since the run started).  A miss is a
  load that had to wait, so several loads of one key are several misses:
  the miss count may exceed the batch size.  Taken from the source's
  counters (``dataloader.stats``); under ``NullDataloader``, which fetches
  at every miss, a fetch usually counts one miss;
* where the draft has no name: ``fiberloader.source`` (``repr(source)``:
  ``UserSource('users')``, with its batch parameters),
  ``fiberloader.source.class`` (``module.QualifiedName``) and
  ``fiberloader.dataloader`` (the scheduler's class name);
* a fetch that raises: status ``ERROR`` (description ``str(error)``), the
  exception recorded as an event, and the general convention's
  ``error.type`` (the exception's qualified class name).  Errors that
  ``fetch`` *returns* for single keys do not make the span an error.  The
  draft's opt-in ``graphql.dataloader.batch.keys`` is not recorded.

Parent and links
================

The draft makes the batch span a child of the span that triggered the
batch, and links it to every span whose code asked for one of its keys.
fiberloader knows who asked: the extension records, when a job or fetch
parks on keys of a source (``job_suspended``), the OpenTelemetry context
that was current there, for each key it is the first to ask for, and the
span of every later job that parks on a key not fetched yet.  At
``fetch_started`` it looks up the batch's keys:

* parent: the context recorded for the batch's first key that has one (the
  keys come in the order they were first asked for), so the fetch span sits
  under the job, resolver or outer fetch whose load caused it;
* links: one per distinct requesting span (the parent's span too), with
  the requester's ``graphql.selection.field.coordinate`` as the link's
  attribute when that span has it (the draft's link attribute); the SDK
  caps the number of links (``OTEL_SPAN_LINK_COUNT_LIMIT``, 128);
* keys nobody parked on (``request()`` / a GraphQL resolver that returns a
  request handle: no hook sees the request; a key asked for before
  ``run()``; every fetch under ``NullDataloader``, which does not park):
  the context current where the fetch runs -- under ``NullDataloader`` the
  job that loads, else the context ``run()`` was called in (the request
  span).

Keys are matched by their result key (``fiberloader._extensions.fetch_result_keys``:
the fetching worker's, or ``result_key_for(fetch key)`` in a pool thread).

The fetch span is the current span inside ``fetch`` (attached in
``fetch_started``, detached in ``fetch_finished``: a fetch runs in its own
copy of the run's ``contextvars`` context, also in a blocking fetch's pool thread), so
the spans its code starts (a database driver's) are its children, and the
fetches of the sources it loads from are too.

State
=====

One extension may serve many dataloaders, also at once under gevent: the
records are kept per dataloader, made at the outermost ``run_started`` and
dropped at its ``run_finished``.  A fetch span still open then (a fetch in
a thread that outlived the run, or a ``fetch_finished`` that was never
called) is ended there with status ``ERROR``.  Nothing outlives the run.
Hooks of ``blocking`` fetches run in a thread: the extension only makes
single dict operations there, which the GIL makes atomic.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

from opentelemetry import trace
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, get_current_span, set_span_in_context

from . import __version__
from ._extensions import Extension, fetch_result_keys
from ._fibers import current_dataloader

__all__ = ["OpenTelemetryExtension"]

SPAN_NAME = "GraphQL DataLoader Batch"
PROCESSING_TYPE = "graphql.processing.type"
DATALOADER_NAME = "graphql.dataloader.name"
BATCH_SIZE = "graphql.dataloader.batch.size"
CACHE_HITS = "graphql.dataloader.cache.hit_count"
CACHE_MISSES = "graphql.dataloader.cache.miss_count"
FIELD_COORDINATE = "graphql.selection.field.coordinate"
SOURCE = "fiberloader.source"
SOURCE_CLASS = "fiberloader.source.class"
DATALOADER = "fiberloader.dataloader"
ERROR_TYPE = "error.type"

_TRACER_NAME = "fiberloader.opentelemetry"


class _Asked:
    """Who asked for one key: the first asker's context, and every distinct asking span."""

    __slots__ = ("context", "spans")

    def __init__(self, context: Context, span: Span) -> None:
        self.context = context
        self.spans = [span]


class _Fetch:
    """An open fetch span, with what ``fetch_finished`` needs."""

    __slots__ = ("span", "token", "source", "rks")

    def __init__(self, span: Span, token: Any, source: Any, rks: List[Hashable]) -> None:
        self.span = span
        self.token = token
        self.source = source
        self.rks = rks


class _RunState:
    """One dataloader's records, from its outermost run_started to its run_finished."""

    __slots__ = ("depth", "asked", "counts", "fetches")

    def __init__(self, counts: Dict[Any, Tuple[int, int]]) -> None:
        self.depth = 0  # runs of this dataloader going on (run_isolated nests)
        self.asked: Dict[Any, Dict[Hashable, _Asked]] = {}  # source -> result key -> who asked
        self.counts = counts  # source -> (loads, cache hits) at its previous fetch, or run start
        self.fetches: Dict[int, _Fetch] = {}  # id(keys) -> the open fetch span


class OpenTelemetryExtension(Extension):
    """A span per ``fetch``, parented to the span of the code that asked for its keys.

    Args:
        tracer_provider: the ``TracerProvider`` to get the tracer from;
            ``None``: the global one (also when it is set later).

    See the module docstring for the span's name, attributes, parent and
    links.
    """

    def __init__(self, tracer_provider: Optional[trace.TracerProvider] = None) -> None:
        self.tracer = trace.get_tracer(_TRACER_NAME, __version__, tracer_provider=tracer_provider)
        self._runs: Dict[int, _RunState] = {}  # id(dataloader) -> its state, while it runs
        self._loose: Dict[int, _Fetch] = {}  # id(keys) -> a fetch span started outside any run state

    # -- the run -----------------------------------------------------------------

    def run_started(self, dataloader: Any) -> None:
        key = id(dataloader)
        state = self._runs.get(key)
        if state is not None and current_dataloader() is not dataloader:
            # A top-level run (not a run_isolated inside one), yet the last
            # run's state is here: a hook chain broke before our run_finished.
            del self._runs[key]
            _close(state)
            state = None
        if state is None:
            counts = {source: (stats.loads, stats.cache_hits) for source, stats in dataloader.stats.sources.items()}
            state = self._runs[key] = _RunState(counts)
        state.depth += 1

    def run_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        key = id(dataloader)
        state = self._runs.get(key)
        if state is None:
            return
        state.depth -= 1
        if state.depth <= 0:
            del self._runs[key]
            _close(state)

    # -- who asks for what -------------------------------------------------------

    def job_suspended(self, dataloader: Any, source: Any, keys: Sequence[Any]) -> None:
        if source is None or not keys:
            return  # yield_(), or a map() waiting on its items
        state = self._runs.get(id(dataloader))
        if state is None:
            return
        context = get_current()
        span = get_current_span(context)
        asked = state.asked.get(source)
        if asked is None:
            asked = state.asked[source] = {}
        for rk in keys:
            entry = asked.get(rk)
            if entry is None:
                asked[rk] = _Asked(context, span)
            elif span not in entry.spans:
                entry.spans.append(span)

    # -- the fetch ---------------------------------------------------------------

    def fetch_started(self, dataloader: Any, source: Any, keys: List[Any]) -> None:
        state = self._runs.get(id(dataloader))
        rks = fetch_result_keys(source, keys)
        parent: Optional[Context] = None
        askers: Dict[Tuple[int, int], Span] = {}
        asked = state.asked.get(source) if state is not None else None
        if asked:
            for rk in rks:
                entry = asked.pop(rk, None)
                if entry is None:
                    continue
                if parent is None:
                    parent = entry.context
                for span in entry.spans:
                    span_context = span.get_span_context()
                    if span_context.is_valid:
                        askers.setdefault((span_context.trace_id, span_context.span_id), span)
        if parent is None:
            parent = get_current()
        attributes = self._attributes(dataloader, source, keys, state)
        span = self.tracer.start_span(
            f"{SPAN_NAME} {attributes[DATALOADER_NAME]}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=[_link(span) for span in askers.values()],
            record_exception=False,
            set_status_on_exception=False,
        )
        token = attach(set_span_in_context(span))
        # Outside a run's state (an extension added while its dataloader
        # runs): kept on the extension until fetch_finished.
        fetches = state.fetches if state is not None else self._loose
        fetches[id(keys)] = _Fetch(span, token, source, rks)

    def fetch_finished(self, dataloader: Any, source: Any, keys: List[Any], error: Optional[BaseException]) -> None:
        state = self._runs.get(id(dataloader))
        fetch = state.fetches.pop(id(keys), None) if state is not None else None
        if fetch is None:
            fetch = self._loose.pop(id(keys), None)
        if fetch is None:
            return  # its run ended first, which ended the span
        span = fetch.span
        try:
            if error is not None:
                span.set_attribute(ERROR_TYPE, _qualified_name(type(error)))
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
        finally:
            span.end()
            detach(fetch.token)
            # Forget the keys that jobs parked on while they were in flight.
            asked = state.asked.get(source) if state is not None else None
            if asked:
                for rk in fetch.rks:
                    asked.pop(rk, None)

    def _attributes(self, dataloader: Any, source: Any, keys: List[Any], state: Optional[_RunState]) -> Dict[str, Any]:
        cls = type(source)
        stats = source._counts()
        counts = state.counts if state is not None else {}
        loads, hits = counts.get(source, (0, 0))
        counts[source] = (stats.loads, stats.cache_hits)
        new_hits = stats.cache_hits - hits
        return {
            PROCESSING_TYPE: "dataloader_batch",
            DATALOADER_NAME: cls.__name__,
            BATCH_SIZE: len(keys),
            CACHE_HITS: new_hits,
            CACHE_MISSES: stats.loads - loads - new_hits,
            SOURCE: repr(source),
            SOURCE_CLASS: _qualified_name(cls),
            DATALOADER: type(dataloader).__name__,
        }


def _link(span: Span) -> Link:
    """A link to a requesting span, with its field coordinate when it has one (SDK spans)."""
    attributes = getattr(span, "attributes", None)
    coordinate = attributes.get(FIELD_COORDINATE) if attributes else None
    if isinstance(coordinate, str):
        return Link(span.get_span_context(), {FIELD_COORDINATE: coordinate})
    return Link(span.get_span_context())


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _close(state: _RunState) -> None:
    """End the fetch spans of a run that is over; drop its records."""
    for fetch in list(state.fetches.values()):
        fetch.span.set_status(Status(StatusCode.ERROR, "the run ended before the fetch finished"))
        fetch.span.end()
    state.fetches.clear()
    state.asked.clear()
    state.counts.clear()
