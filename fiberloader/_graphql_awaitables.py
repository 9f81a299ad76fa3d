"""graphql-core integration: a synchronous execution refuses awaitables.

An awaitable anywhere in an execution under fiberloader's execution context
(a resolver's result, a list item, what ``is_type_of`` or ``resolve_type``
return, an async iterable for a list) is closed and becomes a located
field error that says what to do; under graphql-core's ``check_sync=True``
the execution raises as graphql-core does (``fiberloader.graphql``
decides).  Checking a plain value costs one set lookup (``PLAIN``).
"""

from __future__ import annotations

import importlib
import sys
from types import CoroutineType, GeneratorType
from typing import Any, FrozenSet

from graphql import graphql_sync as _graphql_sync

from ._errors import FiberloaderTypeError, short_repr

__all__ = ["PLAIN", "NotSynchronous", "not_synchronous", "refusing", "refuse_async_iterable",
           "check_sync_asked", "ASSUME_NOT_AWAITABLE"]

_execute = importlib.import_module("graphql.execution.execute")

# Values of exactly these types are never awaitable: checking one is a set lookup.
PLAIN = frozenset({str, int, float, bool, type(None), dict, list, tuple})
# graphql_sync()'s and execute_sync()'s default, "assume nothing is awaitable" (a
# function of each module in 3.2): we look anyway.
ASSUME_NOT_AWAITABLE = frozenset(
    getattr(module, "assume_not_awaitable", None) for module in (_execute, importlib.import_module("graphql.graphql"))
)
# graphql-core's entry points that take check_sync (3.2 and 3.3 alike).
_CHECK_SYNC_ENTRIES = frozenset({_execute.execute_sync.__code__, _graphql_sync.__code__})
_ADVICE = (
    "fiberloader's execution context runs resolvers synchronously and never awaits: make it a "
    "plain function (a resolver may call load() or return source.request(key)), or run this "
    "schema with graphql-core's own async execution, without DataloaderExecutionContext."
)


class NotSynchronous(FiberloaderTypeError):
    """An awaitable (or async iterable) reached a synchronous execution; it was closed."""


def not_synchronous(what: str, value: Any) -> NotSynchronous:
    """The error for an awaitable ``value``; closes it first (never awaited, it would warn)."""
    if isinstance(value, (CoroutineType, GeneratorType)):
        value.close()
    return NotSynchronous(f"{what} ({short_repr(value)}). {_ADVICE}")


def refusing(is_awaitable: Any, unasked: FrozenSet[Any]) -> Any:
    """graphql-core's ``is_awaitable`` hook for one execution: an awaitable raises.

    graphql-core asks it about what ``is_type_of`` and ``resolve_type``
    return (and passes it on as ``info.is_awaitable``); the error raised
    here becomes the located error of the field being completed.
    """

    def refuse_awaitable(value: Any) -> bool:
        if type(value) in unasked or not is_awaitable(value):
            return False
        raise not_synchronous(f"{_asker(sys._getframe(1))} returned an awaitable", value)

    return refuse_awaitable


def refuse_async_iterable(value: Any) -> bool:
    """graphql-core 3.3's ``is_async_iterable`` hook for one execution: one raises."""
    if type(value) is list or not hasattr(value, "__aiter__"):
        return False
    raise not_synchronous(f"{_asker(sys._getframe(1))} returned an async iterable for a list", value)


def _asker(frame: Any) -> str:
    """Who gave the value that graphql-core's code in ``frame`` asks about (for a message)."""
    try:
        values, name = frame.f_locals, frame.f_code.co_name
        if name == "complete_object_value":
            return f"{values['return_type'].name}.is_type_of"
        if name == "complete_abstract_value":
            return f"{values['return_type'].name}.resolve_type"
        if name == "default_type_resolver":
            return f"{values['type_'].name}.is_type_of"
        info = values["info"]
        return f"The resolver of {info.parent_type.name}.{info.field_name}"
    except Exception:  # a caller we do not know (a resolver asking info.is_awaitable)
        return f"A value that {frame.f_code.co_name}() was given"


def check_sync_asked(frame: Any) -> bool:
    """Whether graphql-core's ``execute_sync``/``graphql_sync`` up the stack got ``check_sync``.

    Only graphql-core's own frames right above ``frame`` are looked at (a
    nested execution must not see an outer one's argument).
    """
    entered = False
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("graphql."):
            if frame.f_code in _CHECK_SYNC_ENTRIES:
                return bool(frame.f_locals.get("check_sync"))
            entered = True
        elif entered:
            return False
        frame = frame.f_back
    return False


