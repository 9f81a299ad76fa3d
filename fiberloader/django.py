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
when Django closes the response.  No greenlet outlives a request or a step.

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
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Tuple, Type

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import (  # type: ignore[import-untyped]
    FieldDoesNotExist,
    ObjectDoesNotExist,
    ValidationError,
)
from django.db import connections  # type: ignore[import-untyped]
from django.db.models import Manager, Model, prefetch_related_objects  # type: ignore[import-untyped]
from django.db.models.constants import LOOKUP_SEP  # type: ignore[import-untyped]
from greenlet import getcurrent

from ._dataloader import Dataloader
from ._errors import ConfigurationError, FiberloaderTypeError, short_repr
from ._extensions import Extension
from ._frameworks import SETTING_NAME
from ._settings import framework_extensions, resolve_first
from ._source import Source
from ._web import JobBody, finish

__all__ = [
    "DataloaderMiddleware",
    "RecordSource",
    "AssociationSource",
    "DjangoConnections",
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


# -- ORM sources ------------------------------------------------------------------------


def _check_model(model: Any, who: str) -> None:
    if not (isinstance(model, type) and issubclass(model, Model)):
        raise FiberloaderTypeError(
            f"{who}() takes a Django model class first, but got {short_repr(model)}."
        )


def _model_field(model: Any, field: str, who: str) -> Any:
    """The concrete field ``field`` of ``model`` (``"pk"``: its primary key)."""
    _check_model(model, who)
    if field == "pk":
        return model._meta.pk
    try:
        found = model._meta.get_field(field)
    except FieldDoesNotExist:
        found = None
    if found is None or not getattr(found, "concrete", False):
        raise ConfigurationError(
            f"{who}({model.__name__}, {field!r}) needs a concrete field of {model.__name__} "
            f"(a column), but {field!r} is {'not a field' if found is None else 'not a column'}. "
            "Use AssociationSource for relations."
        )
    return found


_record_batch_keys: Dict[Tuple[Any, Any], Tuple[Any, str]] = {}


class RecordSource(Source[Any, Any]):
    """Records of ``model`` by the value of ``field`` (default: the primary key).

    ``with_(RecordSource, Author).load(1)`` is the author with pk 1, or
    ``None``.  Keys are cast to the field's Python type first, so ``"1"`` and
    ``1`` are one key.  One query per batch:
    ``model._default_manager.filter(field__in=keys)``.  ``field`` should be
    unique; otherwise a key gives one of its records (the first in the
    manager's ordering).  A key the field cannot take (``"x"`` for an
    integer) fails that key alone with a ``ValueError``.

    Batch parameters: ``(model, field)``; ``"pk"`` and the primary key's name
    are one source.  graphql-ruby: ``ActiveRecordSource``.
    """

    def __init__(self, model: Type[Any], field: str = "pk") -> None:
        self.model = model
        self.field = _model_field(model, field, "RecordSource")
        self._lookup = f"{self.field.name}__in"

    @classmethod
    def batch_key_for(cls, model: Type[Any], field: str = "pk") -> Hashable:
        try:  # with_() asks on every call: remember the answer
            return _record_batch_keys[model, field]
        except (KeyError, TypeError):
            key = (model, _model_field(model, field, "RecordSource").name)
        _record_batch_keys[model, field] = key
        return key

    def result_key_for(self, key: Any) -> Any:
        try:
            return self.field.to_python(key)
        except (ValidationError, TypeError, ValueError):
            return key  # fetch fails this key alone

    def normalize_fetch_key(self, key: Any) -> Any:
        return self.result_key_for(key)

    def fetch(self, keys: List[Any]) -> List[Any]:
        results: Dict[Any, Any] = {}
        valid = []
        for key in keys:
            try:
                self.field.to_python(key)
            except (ValidationError, TypeError, ValueError) as error:
                results[key] = ValueError(
                    f"{self!r} cannot look up {short_repr(key)}: {error}"
                )
            else:
                valid.append(key)
        if valid:
            attname = self.field.attname
            for record in self.model._default_manager.filter(**{self._lookup: valid}):
                results.setdefault(getattr(record, attname), record)
        return [results.get(key) for key in keys]

    def __repr__(self) -> str:
        return f"RecordSource({self.model.__name__}, {self.field.name!r})"


_SINGLE = ("get_prefetch_querysets", "get_prefetch_queryset")  # the second: Django < 5.0


def _loaded_check(model: Any, attribute: str) -> Optional[Callable[[Any], bool]]:
    """How ``prefetch_related`` tells that ``attribute`` is loaded on an instance of ``model``.

    ``None``: ``attribute`` is not a relation that can be prefetched.
    """
    descriptor = getattr(model, attribute, None)
    if any(hasattr(descriptor, name) for name in _SINGLE):  # a foreign key, one-to-one, generic key
        is_cached = getattr(descriptor, "is_cached", None)
        return is_cached if callable(is_cached) else None
    if hasattr(descriptor, "related_manager_cls"):  # a reverse foreign key, many-to-many

        def in_prefetched_cache(instance: Any) -> bool:
            cache = getattr(instance, "_prefetched_objects_cache", None)
            return cache is not None and attribute in cache

        return in_prefetched_cache
    return None


class AssociationSource(Source[Any, Any]):
    """The related records ``name`` of instances of ``model``.

    ``with_(AssociationSource, Post, "comments").load(post)`` is the list of
    the post's comments; for a forward foreign key or a one-to-one relation
    the value is the related instance or ``None``.  ``name`` may span
    relations (``"comments__author"``): the value is the first relation's,
    with the deeper ones loaded on it.

    Each batch of instances costs one query per relation level
    (``prefetch_related_objects``), and the instances are filled as
    ``prefetch_related`` fills them, so ``post.comments.all()`` does not
    query again.  An instance whose relation is already loaded is answered
    at once, without waiting or caching.  Records a foreign key points at
    that the dataloader's ``RecordSource`` already holds are not queried
    again; every record loaded is merged into ``RecordSource(its model)``,
    so a later load by primary key needs no query.

    Keys are model instances (saved: they hash by primary key).  Batch
    parameters: ``(model, name)``.  graphql-ruby:
    ``ActiveRecordAssociationSource``.
    """

    def __init__(self, model: Type[Any], name: str) -> None:
        self.model = model
        self.name = name
        self._path = name.split(LOOKUP_SEP)
        self._first = self._path[0]
        loaded = _loaded_check(model, self._first)
        if loaded is None:
            raise ConfigurationError(
                f"AssociationSource({model.__name__}, {name!r}) needs a relation of "
                f"{model.__name__} (a foreign key, one-to-one, many-to-many or reverse "
                f"accessor), but {self._first!r} is not one. Use RecordSource for columns."
            )
        self._forward = self._forward_field()
        # The already-loaded shortcut only for one level: a deeper one may be missing.
        self._loaded: Optional[Callable[[Any], bool]] = loaded if len(self._path) == 1 else None

    @classmethod
    def batch_key_for(cls, model: Type[Any], name: str) -> Hashable:
        _check_model(model, "AssociationSource")
        if not isinstance(name, str) or not name:
            raise FiberloaderTypeError(
                f"AssociationSource({model.__name__}, ...) takes a relation name, but got "
                f"{short_repr(name)}."
            )
        return (model, name)

    def _forward_field(self) -> Any:
        """The forward foreign key or one-to-one field of a one-level ``name``, else ``None``."""
        if len(self._path) != 1:
            return None
        try:
            field = self.model._meta.get_field(self._first)
        except FieldDoesNotExist:
            return None
        if getattr(field, "concrete", False) and (field.many_to_one or field.one_to_one):
            return field
        return None

    # -- the already-loaded shortcut (graphql-ruby's) ----------------------------

    def _is_loaded(self, instance: Any) -> bool:
        loaded = self._loaded
        return loaded is not None and isinstance(instance, self.model) and loaded(instance)

    def load(self, key: Any) -> Any:
        """The related value of ``key``.  May suspend the calling job until the batch is fetched."""
        if self._is_loaded(key):
            return self._value(key)
        return super().load(key)

    def load_all(self, keys: Iterable[Any], return_exceptions: bool = False) -> List[Any]:
        """The related values of ``keys``, in order.  May suspend the calling job until fetched."""
        keys = list(keys)
        if all(self._is_loaded(key) for key in keys):
            return [self._value(key) for key in keys]
        return super().load_all(keys, return_exceptions)

    # -- fetch ---------------------------------------------------------------------

    def fetch(self, instances: List[Any]) -> List[Any]:
        good = [i for i in instances if isinstance(i, self.model)]
        self._take_cached_targets(good)
        prefetch_related_objects(good, self.name)
        values = {id(i): self._value(i) for i in good}
        self._warm(good)
        return [values[id(i)] if id(i) in values else self._not_an_instance(i) for i in instances]

    def _not_an_instance(self, key: Any) -> FiberloaderTypeError:
        return FiberloaderTypeError(
            f"{self!r}.load() takes saved {self.model.__name__} instances, but got {short_repr(key)}."
        )

    def _value(self, instance: Any) -> Any:
        """The loaded relation of ``instance``: a list, an instance or ``None``."""
        try:
            value = getattr(instance, self._first)
        except ObjectDoesNotExist:  # a missing reverse one-to-one
            return None
        if isinstance(value, Manager):  # reverse foreign key, many-to-many
            return list(value.all())  # the prefetched list: no query
        return value

    def _take_cached_targets(self, instances: List[Any]) -> None:
        """Fill a foreign key from the records ``RecordSource`` holds (no query for them)."""
        field = self._forward
        if field is None:
            return
        records = self.dataloader.with_(  # type: ignore[union-attr]
            RecordSource, field.related_model, field.target_field.name
        )
        for instance in instances:
            if field.is_cached(instance):
                continue
            value = getattr(instance, field.attname)
            if value is None:
                continue
            record = records.cached(value)
            if record is not None:
                field.set_cached_value(instance, record)

    def _warm(self, instances: List[Any]) -> None:
        """Merge every record loaded, level by level, into ``RecordSource(its model)``."""
        level = instances
        for attribute in self._path:
            is_loaded = _loaded_check(type(level[0]), attribute) if level else None
            if is_loaded is None:
                return
            found: List[Any] = []
            for instance in level:
                if not is_loaded(instance):
                    continue  # never read what is not loaded: that would query
                try:
                    value = getattr(instance, attribute)
                except ObjectDoesNotExist:
                    continue
                if isinstance(value, Manager):
                    found.extend(value.all())
                elif value is not None:
                    found.append(value)
            by_model: Dict[type, Dict[Any, Any]] = {}
            for record in found:
                if isinstance(record, Model) and record.pk is not None:
                    by_model.setdefault(type(record), {})[record.pk] = record
            for model, records in by_model.items():
                self.dataloader.with_(RecordSource, model).merge(records)  # type: ignore[union-attr]
            level = found

    def __repr__(self) -> str:
        return f"AssociationSource({self.model.__name__}, {self.name!r})"
