"""Source: one kind of batched data, its cache and its pending keys.

A Source instance belongs to one dataloader (``dataloader.with_(Cls, *args)``
makes it, once per batch parameters).  It keeps three maps, all keyed by
*result key* (``result_key_for(key)``, the key itself by default):

``_results``   key -> value, the cache; a load that finds its key here
               returns at once, without switching greenlets.
``_errors``    key -> the exception that failed it (an ``Exception``
               returned by ``fetch`` at that position, or raised by it).
               Errors stay cached like values; each raise is a fresh copy.
``_fetching``  the keys of batches in flight, which are never put in a
               second batch (graphql-ruby #3707/#4747).

Only this module writes them.  The keys *waiting* for a batch are not the
source's: they belong to the run that asked for them (``run_isolated``
has its own), and the scheduler keeps them.

The life of a key:

1. ``load``/``load_all``/``request`` look in ``_results``, then
   ``_errors``; a miss goes to the scheduler (``Dataloader._wait`` or
   ``_request``), which adds it to the calling run's pending keys.
2. ``load`` waits there: the scheduler parks the calling job until the key
   is resolved.
3. The scheduler hands a run's pending keys of this source to
   ``_take_batches`` (minus those resolved or in flight meanwhile: they
   move in flight, split by ``max_batch_size``) and runs ``_run_batch`` for
   each batch in a worker greenlet; it checks what ``fetch`` returned and
   fills ``_results`` / ``_errors``.
4. The parked job resumes and reads its key.

This module knows nothing about greenlets: parking is the dataloader's
business, so the same Source serves every scheduler.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from types import MappingProxyType
from typing import (
    Any,
    ClassVar,
    Dict,
    Generic,
    Hashable,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    TypeVar,
)

from ._errors import (
    ConfigurationError,
    FetchError,
    FetchTimeoutError,
    InvariantError,
    KeyTypeError,
    NotRunningError,
    class_name,
    short_repr,
)
from ._fibers import copy_error
from ._stats import SourceStats

__all__ = ["Source", "Request", "RequestAll"]

K = TypeVar("K")
V = TypeVar("V")

_NOTHING: Mapping[Any, Any] = MappingProxyType({})  # the maps of a source not made by with_()
_MISSING: Any = object()  # not in the cache

def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def as_list(values: Any) -> Optional[List[Any]]:
    """``list(values)``, or ``None`` if ``values`` is not iterable.

    An iterable that fails while it is iterated raises its own error.
    """
    try:
        return list(values)
    except TypeError:
        if hasattr(values, "__iter__"):
            raise
        return None


# A batch as the scheduler hands it around: (result key, fetch key) pairs.
Batch = List[Tuple[Hashable, Any]]


class Source(Generic[K, V]):
    """Base class for a batched data source.

    Subclass it and implement :meth:`fetch`.  Get instances from a
    dataloader, never by calling the class yourself::

        class UserSource(Source):
            def __init__(self, table):      # the batch parameters of with_()
                self.table = table

            def fetch(self, keys):          # de-duplicated, in request order
                rows = db.users_by_id(self.table, keys)
                return [rows.get(k) for k in keys]

        user = dataloader.with_(UserSource, "users").load(1)

    ``__init__`` need not call ``super().__init__()``: the dataloader sets up
    the cache after constructing the instance, so ``self.dataloader`` is
    available in every method but ``__init__``.

    Class attributes:
        max_batch_size: ``None`` (no limit) or a positive int; a larger batch
            is split into several ``fetch`` calls.
        blocking: for ``AsyncDataloader``: run ``fetch`` in gevent's thread
            pool (a driver that blocks in C).  Ignored by ``Dataloader``.
        fetch_timeout: ``None`` (no limit) or seconds.  Under
            ``AsyncDataloader`` a fetch still running at the deadline is
            stopped; under ``Dataloader`` and ``NullDataloader``, which
            cannot interrupt a blocking call, a fetch that returns late is
            failed.  Either way every load waiting on its keys raises
            :class:`FetchTimeoutError` and the keys are not cached.  An
            instance may set ``self.fetch_timeout`` in ``__init__`` (from a
            batch parameter, say).
    """

    max_batch_size: ClassVar[Optional[int]] = None
    blocking: ClassVar[bool] = False
    fetch_timeout: Optional[float] = None

    #: The dataloader that owns this instance (``None`` until ``with_()``).
    dataloader: Any = None  # a Dataloader (this module sits below the schedulers)

    _results: Dict[Hashable, Any] = _NOTHING  # type: ignore[assignment]
    _errors: Dict[Hashable, BaseException] = _NOTHING  # type: ignore[assignment]
    _fetching: Set[Hashable] = frozenset()  # type: ignore[assignment]
    _label: Optional[str] = None
    # Counts for dataloader.stats (_counts): loads served from the cache,
    # loads that were not, fetch calls, keys fetched, keys failed.
    _hits = _misses = _fetches = _keys_fetched = _failed = 0
    # A holder of per-dataloader state that is a source only to live exactly as
    # long as the dataloader (made by with_()); it loads nothing, and
    # dataloader.stats.sources leaves it out.
    _holds_state: ClassVar[bool] = False

    # Set per subclass: whether the identity hooks are overridden, so the
    # hot paths can skip a method call per key.
    _plain_result_keys: bool = True  # copied into each instance by _attach
    _plain_fetch_keys: bool = True
    _plain_batch_key: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._plain_result_keys = cls.result_key_for is Source.result_key_for
        cls._plain_fetch_keys = cls.normalize_fetch_key is Source.normalize_fetch_key
        cls._plain_batch_key = cls.batch_key_for.__func__ is Source.batch_key_for.__func__  # type: ignore[attr-defined]

    # -- hooks a subclass implements or overrides ---------------------------

    def fetch(self, keys: List[Any]) -> Any:
        """Fetch values for ``keys``; implement it in every subclass.

        Args:
            keys: the fetch keys (``normalize_fetch_key`` of each requested
                key), de-duplicated, in the order they were first requested.

        Returns:
            A sequence of exactly ``len(keys)`` results in key order (or a
            mapping from fetch key to result; a missing key gives ``None``).
            An ``Exception`` instance at a position fails only that key.

        Raising fails every key of the batch.  ``fetch`` may call ``load``
        on other sources and ``dataloader.yield_()``; both may suspend it.
        """
        raise NotImplementedError(
            f"{class_name(type(self))} must implement fetch(keys) and return one "
            "result per key"
        )

    @classmethod
    def batch_key_for(cls, *args: Any, **kwargs: Any) -> Hashable:
        """The key that de-duplicates instances inside one dataloader.

        ``with_(Cls, *args, **kwargs)`` returns the same instance for equal
        batch keys.  Default: the arguments themselves.  Override it when
        arguments that mean the same batch compare unequal (e.g. return the
        SQL text of a query object).
        """
        if kwargs:
            return (args, tuple(sorted(kwargs.items())))
        return args

    def result_key_for(self, key: Any) -> Hashable:
        """The cache key for ``key`` (default: the key).  Must be hashable."""
        return key  # type: ignore[no-any-return]

    def normalize_fetch_key(self, key: Any) -> Any:
        """The value handed to ``fetch`` for ``key`` (default: the key).

        For equivalent keys (same ``result_key_for``) the first one requested
        decides what ``fetch`` sees.
        """
        return key

    # -- the public API -----------------------------------------------------

    def load(self, key: K) -> V:
        """Return the value for ``key``.

        Served from the cache when present.  Otherwise the key joins the next
        batch; may suspend the calling job until the batch is fetched.

        Raises:
            the key's error (a copy) if ``fetch`` failed it;
            KeyTypeError: the key is not hashable;
            NotRunningError: the key is not cached and no job is running.
        """
        rk = key if self._plain_result_keys else self.result_key_for(key)
        try:
            value = self._results.get(rk, _MISSING)  # no KeyError: raising one would give
        except TypeError:  # this frame a frame object that lives as long as the park
            raise self._unhashable("load", key) from None
        if value is not _MISSING:
            self._hits += 1
            return value  # type: ignore[no-any-return]
        self._misses += 1
        return self._load_missing(key, rk)  # type: ignore[no-any-return]

    def _load_missing(self, key: Any, rk: Hashable) -> Any:
        """``load`` of a key whose value is not cached (counted by the caller)."""
        error = self._errors.get(rk)
        if error is not None:
            raise copy_error(error)
        dataloader = self.dataloader
        if dataloader is None:
            raise self._detached("load", key)
        dataloader._wait(self, (key,), (rk,))
        return self._result(rk)

    def load_all(self, keys: Iterable[K], return_exceptions: bool = False) -> List[Any]:
        """Return the values for ``keys``, in order, duplicates included.

        All keys that are not cached go into one batch; may suspend the
        calling job until it is fetched.  If any key failed, raises that
        key's error (the first failing key in ``keys`` order); with
        ``return_exceptions=True``, puts each failed key's error (a copy)
        in its place instead.
        """
        keys = keys if isinstance(keys, list) else self._key_list("load_all", keys)
        rks = keys if self._plain_result_keys else [self.result_key_for(k) for k in keys]
        results = self._results
        try:
            values = [results[rk] for rk in rks]
        except KeyError:  # a key not cached, or failed
            pass
        except TypeError:
            raise self._unhashable("load_all", self._first_unhashable(keys, rks)) from None
        else:
            self._hits += len(rks)
            return values
        return self._load_all_missing(keys, rks, return_exceptions, counted=False)

    def _load_all_missing(self, keys: List[Any], rks: List[Hashable], return_exceptions: bool, counted: bool) -> List[Any]:
        """``load_all`` of keys of which some are not cached; counts them unless ``counted``."""
        results, errors = self._results, self._errors
        try:
            missing = [i for i, rk in enumerate(rks) if rk not in results and rk not in errors]
        except TypeError:
            raise self._unhashable("load_all", self._first_unhashable(keys, rks)) from None
        if not counted:
            failed = sum(1 for rk in rks if rk in errors) if errors else 0
            hits = len(rks) - len(missing) - failed  # values served from the cache
            self._hits += hits
            self._misses += len(rks) - hits
        while missing:
            dataloader = self._owner("load_all", keys[missing[0]])
            if len(missing) == len(rks):  # none cached: _wait sees every key resolved
                dataloader._wait(self, keys, rks)
                break
            dataloader._wait(self, [keys[i] for i in missing], [rks[i] for i in missing])
            # Another job may have cleared a key that was cached when this
            # one asked (clear_cache while it was parked): ask again.
            missing = [i for i, rk in enumerate(rks) if rk not in results and rk not in errors]
        if return_exceptions:
            return [self._result_or_error(rk) for rk in rks]
        return [self._result(rk) for rk in rks]

    def request(self, key: K) -> "Request[K, V]":
        """Register ``key`` for the next batch now and return a handle.

        Never suspends.  ``handle.load()`` later waits for (and returns) the
        value.  Lets one job queue keys of several sources before it waits.
        """
        rk = key if self._plain_result_keys else self.result_key_for(key)
        try:
            if rk in self._results:  # the GraphQL fast path: served from the cache
                self._hits += 1
                return Request(self, key, rk)
        except TypeError:
            raise self._unhashable("request", key) from None
        self._misses += 1
        if rk not in self._errors:
            self._owner("request", key)._request(self, key, rk)
        return Request(self, key, rk)

    def request_all(self, keys: Iterable[K]) -> "RequestAll[K, V]":
        """Register every key of ``keys`` now; ``handle.load()`` returns the list."""
        keys = self._key_list("request_all", keys)
        for key in keys:
            self.request(key)
        return RequestAll(self, keys)

    def merge(self, values: Mapping[K, V]) -> None:
        """Put ``{key: value}`` into the cache (prime it), replacing what is there.

        A merged key that was waiting for the next batch is served from the
        merge and left out of the batch.  An ``Exception`` value fails its
        key, as in ``fetch``.
        """
        if not callable(getattr(values, "items", None)):
            raise KeyTypeError(
                f"{self!r}.merge() takes a mapping {{key: value}}, but got {type(values).__name__} "
                f"{short_repr(values)}. Pass a dict (dict(pairs) for a list of (key, value) pairs).",
                data_source=self,
                key=values,
            )
        self._owner("merge", next(iter(values), None))
        results, errors = self._results, self._errors
        for key, value in values.items():  # a pending key merged here leaves its batch (_take_batches)
            rk = self._checked_key("merge", key)
            if isinstance(value, Exception):
                errors[rk] = value
                results.pop(rk, None)
            else:
                results[rk] = value
                errors.pop(rk, None)

    def clear_cache(self) -> None:
        """Forget every cached value and error of this source.

        Keys already waiting for a batch stay pending.
        """
        if self.dataloader is not None:
            self._results.clear()
            self._errors.clear()

    def clear(self, key: K) -> None:
        """Forget the cached value or error of one key."""
        if self.dataloader is not None:
            rk = self._checked_key("clear", key)
            self._results.pop(rk, None)
            self._errors.pop(rk, None)

    def cached(self, key: K, default: Any = None) -> Any:
        """The cached value of ``key``, or ``default`` if it is not cached (or failed).

        Never fetches and never suspends: for code that uses a value only
        when it is at hand (an ORM filling a relation from records loaded
        already).
        """
        if self.dataloader is None:
            return default
        return self._results.get(self._checked_key("cached", key), default)

    @property
    def pending_keys(self) -> List[Any]:
        """The fetch keys waiting for the next batch, in request order."""
        if self.dataloader is None:
            return []
        keys: List[Any] = self.dataloader._pending_keys(self)
        return keys

    def __repr__(self) -> str:
        return self._label or f"{class_name(type(self))}()"

    # -- called by the dataloader ------------------------------------------

    def _attach(self, dataloader: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        """Set up the cache after ``with_()`` constructed the instance."""
        size = self.max_batch_size  # also one set in __init__
        if size is not None and (type(size) is not int or size < 1):
            raise ConfigurationError(
                f"{class_name(type(self))}.max_batch_size must be None or a positive int, "
                f"but it is {short_repr(size)}."
            )
        timeout = self.fetch_timeout
        if timeout is not None and (type(timeout) not in (int, float) or not timeout > 0):
            raise ConfigurationError(
                f"{class_name(type(self))}.fetch_timeout must be None or a positive number of "
                f"seconds, but it is {short_repr(timeout)}."
            )
        self.dataloader = dataloader
        self._results = {}
        self._errors = {}
        self._fetching = set()
        self._hits = self._misses = self._fetches = self._keys_fetched = self._failed = 0
        # The hot paths read these through the instance: a copy in its own
        # dict is a specialized attribute load on CPython 3.11, a class
        # attribute is not.
        self._plain_result_keys = type(self)._plain_result_keys
        self._plain_fetch_keys = type(self)._plain_fetch_keys
        shown = [short_repr(a) for a in args] + [f"{k}={short_repr(v)}" for k, v in kwargs.items()]
        self._label = f"{class_name(type(self))}({', '.join(shown)})"

    def _take_batches(self, pending: Dict[Hashable, Any]) -> List[Batch]:
        """Move a run's pending keys in flight and return the batches to fetch.

        ``pending`` maps result key -> fetch key, in request order.  Keys
        resolved since they were asked for (a merge, another run's fetch) or
        in flight in another batch are left out.
        """
        results, errors, fetching = self._results, self._errors, self._fetching
        waiting = pending.keys()
        if (
            (results and not waiting.isdisjoint(results))
            or (errors and not waiting.isdisjoint(errors))
            or (fetching and not waiting.isdisjoint(fetching))
        ):
            items = [
                (rk, key) for rk, key in pending.items()
                if rk not in results and rk not in errors and rk not in fetching
            ]
            fetching.update(rk for rk, _ in items)
        else:  # the usual case, checked in C: every key still wants a fetch
            items = list(pending.items())
            fetching.update(waiting)
        if not items:
            return []
        size = self.max_batch_size
        if size is None or len(items) <= size:
            return [items]
        return [items[i : i + size] for i in range(0, len(items), size)]

    def _run_batch(self, batch: Batch) -> Optional[FetchTimeoutError]:
        """Call ``fetch`` for one batch and store what it gives back.

        Returns the error of a fetch that timed out: its keys fail now, for
        the loads waiting on them, and the scheduler forgets them after
        those loads have read it (they are not cached).  A fetch stopped by
        a ``BaseException`` (the scheduler cancelling an orphaned fetch, a
        ``KeyboardInterrupt``) stores nothing.
        """
        rks = [rk for rk, _ in batch]
        results, errors = self._results, self._errors
        if (results and not results.keys().isdisjoint(rks)) or (errors and not errors.keys().isdisjoint(rks)):
            # Resolved while the batch waited for a worker (a merge, say): a
            # merge wins, and those keys are not fetched.
            resolved = [item for item in batch if item[0] in results or item[0] in errors]
            self._abandon(resolved)
            batch = [item for item in batch if item[0] not in results and item[0] not in errors]
            if not batch:
                return None
            rks = [rk for rk, _ in batch]
        keys = [key for _, key in batch]
        self._fetches += 1
        self._keys_fetched += len(keys)
        try:
            try:
                result = self.dataloader._call_fetch(self, keys)  # type: ignore[union-attr]
            except Exception as error:
                self._fail(rks, error)
                if isinstance(error, FetchTimeoutError):
                    return error
            else:
                self._store(rks, keys, result)
        finally:
            self._fetching.difference_update(rks)
        return None

    def _abandon(self, batch: Batch) -> None:
        """A batch taken in flight that will not be fetched (its run failed): not in flight any more."""
        self._fetching.difference_update(rk for rk, _ in batch)

    def _timed_out(self, keys: List[Any], timeout: float, late: bool) -> FetchTimeoutError:
        how = "returned after" if late else "was stopped at"
        return FetchTimeoutError(
            f"{self!r}.fetch() of {len(keys)} keys {short_repr(keys)} {how} its fetch_timeout "
            f"of {timeout:g} s. The keys are not cached: a later load fetches them again. Make "
            f"the fetch faster, or raise {class_name(type(self))}.fetch_timeout.",
            data_source=self,
            keys=keys,
            timeout=timeout,
        )

    def _forget_failed(self, rks: List[Hashable], error: BaseException) -> None:
        """Forget the keys that ``error`` failed (a fetch timeout, once its waiters have read it)."""
        errors = self._errors
        for rk in rks:
            if errors.get(rk) is error:
                del errors[rk]

    def _store(self, rks: List[Hashable], keys: List[Any], result: Any) -> None:
        if isinstance(result, (list, tuple)) or (
            isinstance(result, Sequence) and not isinstance(result, (str, bytes, bytearray))
        ):
            if len(result) != len(rks):
                self._fail(rks, self._wrong_length(keys, result))
                return
            values: Sequence[Any] = result
        elif isinstance(result, Mapping):
            values = [result.get(key) for key in keys]
        else:
            self._fail(rks, self._not_a_sequence(keys, result))
            return
        results, errors = self._results, self._errors
        for rk, value in zip(rks, values):
            if isinstance(value, Exception):
                errors[rk] = value
                results.pop(rk, None)
                self._failed += 1
            else:
                results[rk] = value

    def _fail(self, rks: List[Hashable], error: BaseException) -> None:
        self._failed += len(rks)
        results, errors = self._results, self._errors
        for rk in rks:
            errors[rk] = error
            results.pop(rk, None)

    def _counts(self) -> SourceStats:
        return SourceStats(self._hits + self._misses, self._hits, self._fetches, self._keys_fetched, self._failed)

    def _result(self, rk: Hashable) -> Any:
        """The value of a resolved key, or raise a copy of its error."""
        try:
            return self._results[rk]
        except KeyError:
            pass
        error = self._errors.get(rk)
        if error is None:
            raise InvariantError(f"{self!r} resumed a load of {short_repr(rk)} that has no result")
        raise copy_error(error)

    def _result_or_error(self, rk: Hashable) -> Any:
        """The value of a resolved key, or a copy of its error."""
        try:
            return self._result(rk)
        except Exception as error:
            return error

    def _resolved(self, rk: Hashable) -> bool:
        return rk in self._results or rk in self._errors

    def _result_key(self, key: Any) -> Hashable:
        """``result_key_for(key)``, without the call when it is not overridden.

        ``load`` and ``load_all`` write this out: they are the hot paths.
        """
        return key if self._plain_result_keys else self.result_key_for(key)

    def _checked_key(self, method: str, key: Any) -> Hashable:
        """The result key of ``key``; a KeyTypeError naming ``method`` if unhashable."""
        rk = self._result_key(key)
        try:
            hash(rk)
        except TypeError:
            raise self._unhashable(method, key) from None
        return rk

    def _key_list(self, method: str, keys: Any) -> List[Any]:
        """``list(keys)``; a KeyTypeError if ``keys`` is a string or not iterable."""
        listed = None if isinstance(keys, (str, bytes)) else as_list(keys)
        if listed is not None:
            return listed
        what = "one key" if isinstance(keys, (str, bytes)) else "not an iterable"
        raise KeyTypeError(
            f"{self!r}.{method}() takes an iterable of keys, but got {type(keys).__name__} "
            f"{short_repr(keys)} ({what}). Pass a list of keys, or call "
            f"{'request' if method == 'request_all' else 'load'}(key) for one key.",
            data_source=self,
            key=keys,
        )

    def _owner(self, method: str, key: Any) -> Any:
        dataloader = self.dataloader
        if dataloader is None:
            raise self._detached(method, key)
        return dataloader

    def _detached(self, method: str, key: Any) -> NotRunningError:
        return NotRunningError(
            f"{class_name(type(self))}.{method}({short_repr(key)}) was called on an "
            "instance made directly. Get sources from a dataloader: "
            f"dataloader.with_({class_name(type(self))}, ...).{method}(...).",
            data_source=self,
            key=key,
        )

    # -- error messages -----------------------------------------------------

    def _unhashable(self, method: str, key: Any) -> KeyTypeError:
        rk = self._result_key(key)
        if rk is not key and _hashable(key):  # the key is fine: result_key_for() is not
            hook = f"{class_name(type(self))}.result_key_for"
            return KeyTypeError(
                f"{self!r}.{method}() needs hashable keys, but {hook}({short_repr(key)}) returned "
                f"{short_repr(rk)} ({type(rk).__name__} is unhashable). Make {hook}() return a "
                "hashable value (a tuple instead of a list).",
                data_source=self,
                key=key,
            )
        return KeyTypeError(
            f"{self!r}.{method}() needs hashable keys, but got {short_repr(key)} "
            f"({type(rk).__name__} is unhashable). Pass a hashable value (a tuple instead of "
            f"a list) or override {class_name(type(self))}.result_key_for() to return one.",
            data_source=self,
            key=key,
        )

    @staticmethod
    def _first_unhashable(keys: List[Any], rks: List[Any]) -> Any:
        for key, rk in zip(keys, rks):
            if not _hashable(rk):
                return key
        return None  # pragma: no cover - only called after a TypeError

    def _wrong_length(self, keys: List[Any], result: Sequence[Any]) -> FetchError:
        hint = ""
        if len(result) < len(keys):
            hint = f" The first key without a result is {short_repr(keys[len(result)])}."
        return FetchError(
            f"{self!r}.fetch() must return one result per key, in key order, but it returned "
            f"{len(result)} results for {len(keys)} keys {short_repr(keys)}.{hint} Return a "
            "list of len(keys) items (None where a key has no value), or a dict keyed by key.",
            data_source=self,
            keys=keys,
            result=result,
        )

    def _not_a_sequence(self, keys: List[Any], result: Any) -> FetchError:
        hint = ""
        if result is None:
            hint = " Does fetch() end without a return statement?"
        elif isinstance(result, (set, frozenset)):
            hint = " A set has no order."
        elif isinstance(result, Coroutine):
            result.close()  # never awaited: closing it spares a RuntimeWarning later
            hint = (
                " fetch() is an async def: fiberloader calls it as a plain function. Make it "
                "a def (under gevent, AsyncDataloader runs fetches concurrently)."
            )
        return FetchError(
            f"{self!r}.fetch() must return a list with one result per key, but it returned "
            f"{type(result).__name__} {short_repr(result)} for keys {short_repr(keys)}.{hint} "
            "Return a list (not a generator), or a dict keyed by key.",
            data_source=self,
            keys=keys,
            result=result,
        )


class Request(Generic[K, V]):
    """A key registered with :meth:`Source.request`; ``load()`` gets its value."""

    __slots__ = ("source", "key", "rk")

    def __init__(self, source: Source[K, V], key: K, rk: Hashable) -> None:
        self.source = source
        self.key = key
        self.rk = rk  # the key's result key

    def load(self) -> V:
        """The value.  May suspend the calling job until the batch is fetched."""
        source = self.source  # request() counted this load: not again here
        value = source._results.get(self.rk, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        return source._load_missing(self.key, self.rk)  # type: ignore[no-any-return]

    def ready(self) -> bool:
        """Whether ``load()`` would return (or raise) now, without waiting."""
        return self.source._resolved(self.rk)

    def __repr__(self) -> str:
        return f"<Request {self.source!r} {short_repr(self.key)}>"


class RequestAll(Generic[K, V]):
    """Keys registered with :meth:`Source.request_all`; ``load()`` gets the list."""

    __slots__ = ("source", "keys")

    def __init__(self, source: Source[K, V], keys: List[K]) -> None:
        self.source = source
        self.keys = keys

    def load(self, return_exceptions: bool = False) -> List[Any]:
        """The values in key order.  May suspend the calling job until fetched.

        ``return_exceptions`` as for :meth:`Source.load_all`.
        """
        source = self.source  # request_all() counted these loads: not again here
        rks = [source._result_key(key) for key in self.keys]
        return source._load_all_missing(self.keys, rks, return_exceptions, counted=True)

    def ready(self) -> bool:
        """Whether ``load()`` would return (or raise) now, without waiting."""
        source = self.source
        return all(source._resolved(source._result_key(key)) for key in self.keys)

    def __repr__(self) -> str:
        return f"<RequestAll {self.source!r} {short_repr(self.keys)}>"
