"""Django: one dataloader per request, database connections per greenlet, ORM sources.

::

    # settings.py
    MIDDLEWARE = [
        ...,
        "fiberloader.django.DataloaderMiddleware",   # last: innermost, around the view
    ]
    FIBERLOADER_DATALOADER = "sync"    # or "async", "null", "pkg.mod:Class" (optional)

    # a view
    from fiberloader import current_dataloader
    from fiberloader.django import AssociationSource, RecordSource

    def posts(request):
        dl = request.dataloader                    # or current_dataloader()
        def row(post):
            author = dl.with_(RecordSource, Author).load(post.author_id)
            comments = dl.with_(AssociationSource, Post, "comments").load(post)
            return {"title": post.title, "author": author.name, "comments": len(comments)}
        return JsonResponse({"posts": dl.map(row, Post.objects.all())})

The middleware
==============

For each request :class:`DataloaderMiddleware` makes a fresh dataloader and
runs the rest of the middleware chain and the view (``get_response``) as a
job of it: ``request.dataloader`` and ``fiberloader.current_dataloader()``
give it, in the view, in every job it starts and in every ``fetch``.  A
normal response is complete when the view returns: the dataloader's cache
and sources are dropped right away.  A ``StreamingHttpResponse`` may still
``load`` while the server iterates it: each step runs as a job of the same
dataloader, and so does the closing of its iterator; the cache is dropped
when Django closes the response.  Nothing of the request outlives it or a
step (idle workers wait in the thread's pool, holding nothing of it).

Place it *last* in ``MIDDLEWARE``.  Jobs and fetches run in a copy of the
``contextvars`` context that was current when the request's run started, and
Django keeps per-request state there (the active translation, the time
zone, the URLconf): what the middleware before this one activates is then
visible in every job and fetch, while what code inside one job activates is
seen by that job only.

The scheduler is resolved once, when Django loads the middleware, first
match wins: ``settings.FIBERLOADER_DATALOADER``; ``$FIBERLOADER_DATALOADER``;
``"sync"``.  A bad value raises ``ConfigurationError`` (naming the setting)
at start-up, not at the first request.

Database connections
====================

Django's connections are per thread, which under gevent's monkey-patching
(``gunicorn -k gevent``) means per greenlet: every worker greenlet of a
dataloader would open connections of its own, and none would be closed.
The middleware therefore attaches the :class:`DjangoConnections` extension
to each request's dataloader (an instance of exactly the class the setting
names), and so does a GraphQL execution that makes its own dataloader in a
configured Django process:

* Without monkey-patching every greenlet of the thread shares the request's
  connection, as it always did; nothing changes.
* Under monkey-patching, with ``Dataloader`` (workers run one at a time),
  each worker borrows the request greenlet's connection: one connection
  per request, and ORM code in jobs and fetches runs inside the request's
  transactions (``transaction.atomic()``, ``ATOMIC_REQUESTS``).
* Under monkey-patching, with ``AsyncDataloader`` (fetches overlap, so
  they cannot share a connection), each worker greenlet that touches the
  ORM opens its own connection, in autocommit: *outside* a transaction the
  view opened.  Each is closed when its greenlet ends.

The request greenlet's own connection is never closed by fiberloader (it
may be inside a transaction); Django closes it at the end of the request
as usual.

ORM sources
===========

:class:`RecordSource` and :class:`AssociationSource` mirror graphql-ruby's
``ActiveRecordSource`` and ``ActiveRecordAssociationSource``: one ``IN``
query per batch of keys, one query per relation level per batch of
instances; the records an association loads warm the ``RecordSource``
cache of the same dataloader.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Type

from django.conf import settings  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]
from greenlet import getcurrent

from ._dataloader import Dataloader
from ._extensions import Extension
from ._frameworks import SETTING_NAME
from ._settings import framework_extensions, resolve_first
from ._django_lazy import BatchLazyLoads
from ._django_orm import AssociationSource, RecordSource
from ._web import JobBody, finish

__all__ = [
    "DataloaderMiddleware",
    "RecordSource",
    "AssociationSource",
    "DjangoConnections",
    "BatchLazyLoads",
    "SETTING_NAME",
]


# -- the scheduler setting --------------------------------------------------------------


def _configured_scheduler() -> Type[Dataloader]:
    """``settings.FIBERLOADER_DATALOADER``, else ``$FIBERLOADER_DATALOADER``, else ``"sync"``."""
    return resolve_first((getattr(settings, SETTING_NAME, None), f"settings.{SETTING_NAME}"))


# -- database connections ---------------------------------------------------------------


class DjangoConnections(Extension):
    """Extension: worker greenlets use Django's connections without leaking any.

    The middleware attaches it to every request's dataloader, and a GraphQL
    execution that makes its own dataloader attaches it in a configured
    Django process; attach it yourself (``Dataloader(extensions=
    [DjangoConnections()])``) to a dataloader you run outside a request (a
    management command, a task) under gevent's monkey-patching.

    When a run starts it notes the connection objects of the calling
    greenlet (the request's).  Without gevent's monkey-patching every
    greenlet of the thread sees those same objects, and it does nothing
    else.  Under monkey-patching a worker greenlet would open connections of
    its own:

    * If the scheduler's workers run one at a time (``Dataloader``), each
      worker *borrows* the request's connections for as long as it lives:
      one connection per request, and jobs and fetches run inside the
      request's transactions, as without gevent.
    * If they overlap (``AsyncDataloader``), sharing a connection would mix
      two queries on one socket: each worker keeps its own connections.

    ``fiber_finished``, in each worker as it ends, gives back what it
    borrowed and closes every other connection it opened: none outlives its
    request.  The request's own connections are never closed here.  One
    instance may serve any number of dataloaders at once.

    Args:
        share_connections: whether workers borrow the request's connections
            under monkey-patching; ``None``: yes unless the scheduler runs
            workers concurrently (an ``AsyncDataloader``).
    """

    def __init__(self, share_connections: Optional[bool] = None) -> None:
        self.share_connections = share_connections
        # Per running dataloader: [runs under way, the request greenlet's
        # connections by alias, worker greenlet -> aliases it borrowed].
        self._runs: Dict[Any, List[Any]] = {}

    def run_started(self, dataloader: Any) -> None:
        state = self._runs.get(dataloader)
        if state is not None:  # a run_isolated: its workers use the same connections
            state[0] += 1
            return
        # connections[alias] makes the (lazy, unconnected) wrapper if this
        # greenlet has none yet: every alias then has a known owner.
        request = None if _greenlet_local is False else {alias: connections[alias] for alias in connections}
        self._runs[dataloader] = [1, request, {}]

    def run_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        state = self._runs[dataloader]
        state[0] -= 1
        if not state[0]:
            del self._runs[dataloader]

    def fiber_started(self, dataloader: Any) -> None:
        global _greenlet_local
        state = self._runs.get(dataloader)
        request = None if state is None else state[1]
        if _greenlet_local is False or request is None:
            return  # the common case: one connection per thread, shared by its greenlets
        mine = {connection.alias: connection for connection in connections.all(initialized_only=True)}
        if _greenlet_local is None:
            # Fixed for the process: Django made its thread-local storage when
            # django.db was imported, before or after gevent's patching.
            _greenlet_local = not any(mine.get(alias) is c for alias, c in request.items())
            if not _greenlet_local:
                return
        if self._shares_connections(dataloader):
            borrowed = _borrow(request, mine)
            if borrowed:
                state[2][getcurrent()] = borrowed  # type: ignore[index]

    def fiber_finished(self, dataloader: Any) -> None:
        state = self._runs.get(dataloader)
        if not _greenlet_local or state is None or state[1] is None:
            return
        request = state[1]
        borrowed = state[2].pop(getcurrent(), None)
        if borrowed:
            _give_back(request, borrowed)
        _close_own(request)

    def _shares_connections(self, dataloader: Any) -> bool:
        share = self.share_connections
        if share is None:
            concurrent = sys.modules.get("fiberloader._async")
            share = concurrent is None or not isinstance(dataloader, concurrent.AsyncDataloader)
        return share

    def __repr__(self) -> str:
        return f"DjangoConnections(share_connections={self.share_connections!r})"


#: Whether Django's connections are per greenlet (gevent's monkey-patching
#: came before ``import django.db``); ``None`` until a worker has looked.
_greenlet_local: Optional[bool] = None


def _borrow(request: Dict[str, Any], mine: Dict[str, Any]) -> List[str]:
    """In a worker greenlet: use the request's connection objects; return the aliases borrowed."""
    borrowed = []
    for alias, connection in request.items():
        own = mine.get(alias)
        if own is connection:
            continue
        if own is not None:  # left over from an earlier run of a kept greenlet
            own.close()
        connection.inc_thread_sharing()  # Django checks the greenlet's "thread" on use
        connections[alias] = connection
        borrowed.append(alias)
    return borrowed


def _give_back(request: Dict[str, Any], borrowed: List[str]) -> None:
    """Undo :func:`_borrow` (in the same greenlet)."""
    for alias in borrowed:
        try:
            del connections[alias]
        except AttributeError:  # pragma: no cover - someone removed it already
            pass
        request[alias].dec_thread_sharing()


def _close_own(request: Dict[str, Any]) -> None:
    """Close the calling greenlet's initialized connections that are not the request's."""
    error: Optional[BaseException] = None
    for connection in connections.all(initialized_only=True):
        if request.get(connection.alias) is not connection:
            try:
                connection.close()
            except Exception as failure:  # close the others anyway
                error = error or failure
    if error is not None:
        raise error


# -- the middleware ---------------------------------------------------------------------


class DataloaderMiddleware:
    """Django middleware: each request runs in a fresh dataloader.

    Add ``"fiberloader.django.DataloaderMiddleware"`` to
    ``settings.MIDDLEWARE`` (last).  The scheduler comes from
    ``settings.FIBERLOADER_DATALOADER``, else ``$FIBERLOADER_DATALOADER``,
    else ``"sync"``, resolved here, once.  ``get_response`` runs as a job of
    the request's dataloader (``request.dataloader``); a streaming
    response's steps and its closing run as jobs too.

    Raises:
        ConfigurationError: the setting names no scheduler.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        #: The scheduler the setting names: each request gets one of it.
        self.dataloader_class = self.scheduler = _configured_scheduler()
        #: Attached to every request's dataloader, after the setting's: DjangoConnections.
        self.extensions = framework_extensions()

    def __call__(self, request: Any) -> Any:
        dataloader = self.dataloader_class()
        dataloader._add_extensions(*self.extensions)
        request.dataloader = dataloader
        try:
            response = dataloader._call_as_job(lambda: self.get_response(request))
        except BaseException:
            finish(dataloader)
            raise
        if not getattr(response, "streaming", False) or getattr(response, "is_async", False) or (
            getattr(response, "file_to_stream", None) is not None
        ):
            # Complete, or iterated where no job can run (an async iterator),
            # or a file the server may send on its own: nothing of it loads.
            finish(dataloader)
            return response
        _stream_in_jobs(response, dataloader)
        return response


def _stream_in_jobs(response: Any, dataloader: Dataloader) -> None:
    """Make each step of ``response``'s iteration, and its closing, a job of ``dataloader``."""
    # The closers registered so far (the iterator's own close()) run in a
    # job too, before the cache is dropped; Django calls the new list's
    # closers from response.close().
    closers = response._resource_closers
    earlier = list(closers)
    closers.clear()
    response.streaming_content = JobBody(dataloader, _Closing(response.streaming_content, earlier))


class _Closing:
    """An iterable whose ``close()`` calls the given closers (in the caller's job)."""

    __slots__ = ("_iterable", "_closers")

    def __init__(self, iterable: Iterable[Any], closers: List[Callable[[], Any]]) -> None:
        self._iterable = iterable
        self._closers = closers

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        error: Optional[BaseException] = None
        for close in closers:
            try:
                close()
            except Exception as failure:  # Django ignores closers' errors; keep the first
                error = error or failure
        if error is not None:
            raise error
