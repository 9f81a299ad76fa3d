"""Extensions: lifecycle and instrumentation attached to a dataloader as objects.

An extension is an object whose methods the scheduler calls at fixed points
of a run (:class:`Extension` lists them).  A dataloader gets its extensions
when it is made, from three places, in this order:

1. the class attribute ``extensions`` of its class (a subclass may set it);
2. the ``extensions=`` argument of the constructor, or, when it is not
   given, the ``FIBERLOADER_EXTENSIONS`` setting: the web framework's
   (``app.config`` of the current Flask app, configured Django settings),
   else the environment variable (paths separated by commas); each entry a
   ``"package.module:Factory"`` path (or, in a framework's setting, the
   factory itself) called with no argument for every new dataloader;
3. ``$FIBERLOADER_TRACE``: a :class:`fiberloader.tracing.PerfettoTrace` of
   that path, one per process, shared by every dataloader.

The integrations add their own afterwards (Django's per-greenlet
connections, in a configured Django process).

With no extension that overrides a hook, the scheduler's hot paths test one
attribute for ``None`` and call nothing (:func:`hooks_of`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

from greenlet import getcurrent

from ._errors import ConfigurationError, short_repr
from ._frameworks import (
    EXTENSIONS_SETTING, KEEP_GREENLETS_SETTING, LAZY_LOADS_SETTING, TRACE_VARIABLE, django_setting, framework_setting,
)
from ._source import _hashable

__all__ = ["Extension", "Hooks", "HOOKS", "around", "fetch_result_keys", "hooks_of", "resolve_extensions"]


class Extension:
    """Base class of extensions: every hook is an optional no-op.

    Override the hooks you need.  Each gets the dataloader first; hooks run
    in the greenlet named below, so ``contextvars`` set in ``fiber_started``
    are seen by every job and fetch of that greenlet.  An exception raised
    by a hook propagates like one raised by the code it wraps: from
    ``job_started``, the job fails; from ``fetch_started``, the fetch does
    (its keys get the error); from ``run_started``, ``run()`` raises.

    Extensions may be shared by several dataloaders, also running at once
    (gevent): keep per-run state keyed by the dataloader, or in
    ``contextvars``.
    """

    def run_started(self, dataloader: Any) -> None:
        """``run()`` (or a nested ``run_isolated``) starts, in the calling greenlet."""

    def run_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        """That run ended (``error``: what it raises, or ``None``), in the calling greenlet."""

    def fiber_started(self, dataloader: Any) -> None:
        """First thing in every worker greenlet of a run, after ``set_fiber_variables``."""

    def fiber_finished(self, dataloader: Any) -> None:
        """Last thing in every worker greenlet of a run (also when it failed), before ``cleanup_fiber``."""

    def job_started(self, dataloader: Any) -> None:
        """A job starts, in its greenlet, in the job's own copy of the context."""

    def job_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        """A job ended (``error``: what it raised, or ``None``), in its greenlet."""

    def job_suspended(self, dataloader: Any, source: Any, keys: Sequence[Any]) -> None:
        """A job or fetch parks on ``keys`` of ``source`` (``source`` is ``None`` for
        ``yield_()`` and for a ``map`` waiting on its items), before it parks."""

    def job_resumed(self, dataloader: Any) -> None:
        """The parked job or fetch goes on, in its greenlet."""

    def fetch_started(self, dataloader: Any, source: Any, keys: List[Any]) -> None:
        """``source.fetch(keys)`` is about to be called, where it runs (its greenlet,
        or a thread of gevent's pool for a ``blocking`` source under AsyncDataloader)."""

    def fetch_finished(self, dataloader: Any, source: Any, keys: List[Any], error: Optional[BaseException]) -> None:
        """That fetch returned (``error`` is ``None``) or raised ``error`` (a
        ``FetchTimeoutError`` when it ran out of time)."""


HOOKS = (
    "run_started", "run_finished", "fiber_started", "fiber_finished", "job_started", "job_finished",
    "job_suspended", "job_resumed", "fetch_started", "fetch_finished",
)


class Hooks:
    """What the scheduler calls, worked out once per dataloader from its extensions.

    Hooks the scheduler calls one by one (``fiber_*``, ``job_suspended``,
    ``job_resumed``): the bound methods of the extensions that override them,
    in order.  Hooks that wrap code (``run_*``, ``job_*``, ``fetch_*``): per
    extension that overrides either of the pair, its ``(started, finished)``
    (``None`` for a no-op), for :func:`around`.
    """

    __slots__ = ("fiber_started", "fiber_finished", "job_suspended", "job_resumed", "parks", "runs", "jobs", "fetches")

    def __init__(self, extensions: Sequence[Any]) -> None:
        def each(name: str) -> Tuple[Any, ...]:
            return tuple(hook for hook in (_overridden(e, name) for e in extensions) if hook is not None)

        self.fiber_started = each("fiber_started")
        self.fiber_finished = each("fiber_finished")
        self.job_suspended = each("job_suspended")
        self.job_resumed = each("job_resumed")
        self.parks = bool(self.job_suspended or self.job_resumed)
        self.runs = _pairs(extensions, "run")
        self.jobs = _pairs(extensions, "job")
        self.fetches = _pairs(extensions, "fetch")

    def any(self) -> bool:
        return bool(self.fiber_started or self.fiber_finished or self.parks or self.runs or self.jobs or self.fetches)


def _overridden(extension: Any, name: str) -> Any:
    """The extension's bound hook ``name``, or None when it is the base class's no-op."""
    base = getattr(Extension, name)
    return getattr(extension, name) if getattr(type(extension), name, base) is not base else None


def _pairs(extensions: Sequence[Any], what: str) -> Tuple[Tuple[Any, Any], ...]:
    pairs = ((_overridden(e, f"{what}_started"), _overridden(e, f"{what}_finished")) for e in extensions)
    return tuple(pair for pair in pairs if pair != (None, None))


def around(pairs: Sequence[Tuple[Any, Any]], head: Tuple[Any, ...], fn: Any, *args: Any) -> Any:
    """``fn(*args)`` between the ``*_started(*head)`` and ``*_finished(*head, error)`` of ``pairs``.

    An extension whose ``started`` ran gets its ``finished``, also when a
    later extension's ``started`` or ``fn`` raised (with that error); every
    ``finished`` runs even if an earlier one raised, and the first error
    raised by a hook then propagates (after ``fn``'s own, if it raised).
    """
    entered = 0
    try:
        for started, _ in pairs:
            if started is not None:
                started(*head)
            entered += 1
        result = fn(*args)
    except BaseException as error:
        _finish(pairs[:entered], head, error)
        raise
    _finish(pairs, head, None)
    return result


def _finish(pairs: Sequence[Tuple[Any, Any]], head: Tuple[Any, ...], error: Optional[BaseException]) -> None:
    failure: Optional[BaseException] = None
    for _, finished in pairs:
        if finished is not None:
            try:
                finished(*head, error)
            except BaseException as raised:
                failure = failure or raised
    if failure is not None:
        raise failure


def fetch_result_keys(source: Any, keys: List[Any]) -> List[Hashable]:
    """In ``fetch_started`` / ``fetch_finished``: the result keys of the fetch's ``keys``.

    ``job_suspended`` gets result keys, the fetch hooks get fetch keys
    (``normalize_fetch_key``); extensions that match a park to the fetch of
    its keys need the former.  Read from the fetching worker's batch when
    the hook runs in it; else (a ``blocking`` fetch's pool thread,
    ``NullDataloader``) rebuilt with ``result_key_for``, a key it fails on
    standing for itself (left out if unhashable).
    """
    batch = getattr(getcurrent(), "batch", None)
    if batch is not None and batch[0] is source and len(batch[1]) == len(keys):
        return [rk for rk, _ in batch[1]]
    if source._plain_result_keys:
        return list(keys)
    rks: List[Hashable] = []
    for key in keys:
        try:
            rks.append(source.result_key_for(key))
        except Exception:
            if _hashable(key):
                rks.append(key)
    return rks


def hooks_of(extensions: Sequence[Any]) -> Optional[Hooks]:
    """The hooks to call, or ``None`` when no extension overrides any."""
    if not extensions:
        return None
    hooks = Hooks(extensions)
    return hooks if hooks.any() else None


def resolve_extensions(cls: type, given: Optional[Iterable[Any]]) -> Tuple[Any, ...]:
    """The extensions of a new ``cls`` dataloader (see the module docstring).

    Runs for every dataloader made (one per request): with nothing
    configured it costs a few dict lookups.
    """
    own = getattr(cls, "extensions", ())
    found: List[Any] = _checked(own, f"{cls.__name__}.extensions") if own else []
    if given is not None:
        found += _checked(given, "the extensions argument")
    else:
        value, where = framework_setting(EXTENSIONS_SETTING)
        if value is None:
            value, where = _environment(_EXTENSIONS_KEY) or None, f"${EXTENSIONS_SETTING}"
        if value is not None:
            found += [_made(factory, where) for factory in _factories(value, where)]
    trace = _environment(_TRACE_KEY)
    if trace:
        found.append(_shared("fiberloader.tracing:PerfettoTrace", f"${TRACE_VARIABLE}", trace))
    if django_setting(LAZY_LOADS_SETTING):
        found.append(_shared("fiberloader.django:BatchLazyLoads", f"settings.{LAZY_LOADS_SETTING}"))
    return tuple(found) if found else ()


# os.environ.get() encodes the name and catches a KeyError on every call
# (~0.4 us); the encoded names are looked up in its mapping directly.
_raw = getattr(os.environ, "_data", None)
_decode = getattr(os.environ, "decodevalue", None)
if isinstance(_raw, dict) and _decode is not None:
    _EXTENSIONS_KEY: Any = os.environ.encodekey(EXTENSIONS_SETTING)  # type: ignore[attr-defined]
    _TRACE_KEY: Any = os.environ.encodekey(TRACE_VARIABLE)  # type: ignore[attr-defined]
    KEEP_GREENLETS_KEY: Any = os.environ.encodekey(KEEP_GREENLETS_SETTING)  # type: ignore[attr-defined]

    def _environment(key: Any) -> Optional[str]:
        value = _raw.get(key)  # type: ignore[union-attr]
        return None if value is None else _decode(value)  # type: ignore[misc]

else:  # pragma: no cover - another os.environ
    _EXTENSIONS_KEY, _TRACE_KEY, KEEP_GREENLETS_KEY = EXTENSIONS_SETTING, TRACE_VARIABLE, KEEP_GREENLETS_SETTING

    def _environment(key: Any) -> Optional[str]:
        return os.environ.get(key)


def _checked(extensions: Any, where: str) -> List[Any]:
    if isinstance(extensions, (str, bytes)) or not hasattr(extensions, "__iter__"):
        raise ConfigurationError(
            f"{where} is {short_repr(extensions)}: it takes a list of extensions, "
            "such as [fiberloader.tracing.PerfettoTrace('trace.json')]."
        )
    checked = list(extensions)
    for extension in checked:
        _check_one(extension, where)
    return checked


def _check_one(extension: Any, where: str) -> None:
    if isinstance(extension, type):
        raise ConfigurationError(
            f"{where} holds the class {extension.__name__}, not an instance of it: pass "
            f"{extension.__name__}() (an extension is an object whose hook methods are called)."
        )
    if not isinstance(extension, Extension) and not any(callable(getattr(extension, name, None)) for name in HOOKS):
        raise ConfigurationError(
            f"{where} holds {short_repr(extension)}, which has none of the hooks of "
            "fiberloader.Extension. Subclass fiberloader.Extension and override the hooks you need."
        )


_resolved: Dict[Tuple[str, str], List[Any]] = {}  # (setting value, where) -> its factories


def _factories(value: Any, where: str) -> List[Any]:
    key = (value, where) if isinstance(value, str) else None
    if key is not None and key in _resolved:
        return _resolved[key]
    entries = [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
    if not isinstance(entries, Iterable):
        raise ConfigurationError(
            f"{where} is {short_repr(value)}: it takes a list of 'package.module:Factory' paths."
        )
    factories = [_imported(entry, where) if isinstance(entry, str) else entry for entry in entries]
    if key is not None:
        _resolved[key] = factories
    return factories


def _imported(path: str, where: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"{where} holds {path!r}, which is not a 'package.module:Factory' path. Name the "
            "extension's class (or a function that returns one) with a colon before it."
        )
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigurationError(f"{where} holds {path!r}, and importing it failed: {error}") from error


def _made(factory: Any, where: str) -> Any:
    extension = factory() if isinstance(factory, type) or (callable(factory) and not isinstance(factory, Extension)) else factory
    _check_one(extension, where)
    return extension


# (factory path, its arguments) -> the one instance the process shares: the
# trace of a $FIBERLOADER_TRACE path, the BatchLazyLoads of Django's setting.
_shared_instances: Dict[Tuple[str, Tuple[Any, ...]], Any] = {}


def _shared(path: str, where: str, *args: Any) -> Any:
    """The process's one instance of the extension at ``path`` (looked up by name: the core imports no framework)."""
    instance = _shared_instances.get((path, args))
    if instance is None:
        instance = _shared_instances[path, args] = _imported(path, where)(*args)
    return instance
