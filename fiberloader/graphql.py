"""graphql-core integration: synchronous resolvers that batch across the whole query.

Use it with any graphql-core 3 server (plain graphql-core, Graphene 3,
Strawberry sync, Ariadne sync)::

    from fiberloader.graphql import DataloaderExecutionContext, graphql_sync

    result = graphql_sync(schema, "{ posts { title author { name } } }")
    # or: graphql.execute(..., execution_context_class=DataloaderExecutionContext)

    def resolve_author(post, info):
        return current_dataloader().with_(UserSource).load(post["author_id"])

Theory of operation
===================

1. The operation runs as a job of a dataloader: the one already running
   the calling code (a WSGI/Flask/Django request, your own
   ``with_dataloading``), else a new one from ``dataloader_class()`` -- so
   the one setting picks sync, async or null scheduling here too.
2. graphql-core's executor runs in that job, unchanged, except for three
   places: ``execute_field`` (written out per graphql-core version, so
   that a resolver's returned request handle is seen where it is
   returned), and two loops, the fields of an object and the items of a
   list.  The job runs those loops as graphql-core does, one field or item
   after another, and leaves a *mark* (one small list) on its worker's
   stack of loops -- nothing else.
3. A resolver that loads a key that is not cached parks the greenlet
   running it.  The scheduler then turns each mark on that greenlet's stack
   into a *split loop* (``fiberloader._loops``) and hands its unstarted
   fields and items to another worker, which goes on
   with them -- and their loads join the same batch.  When nothing more can
   run, each source is fetched once, the parked resolvers resume, and each
   loop's owner collects its results in order once all of its items are
   done.  One fetch per source per level of dependency, as in graphql-ruby.
4. Errors behave as in graphql-core's synchronous execution: a field's
   error is located and recorded, a non-null error propagates to the
   nearest nullable ancestor.  Where a split let later siblings run before
   an earlier one failed, the errors those later siblings recorded are
   dropped at the end, because graphql-core would never have run them.
5. Nothing is awaited.  An awaitable where a value belongs (a resolver's
   result, a list item, a handle's value, what ``is_type_of`` or
   ``resolve_type`` returned) is closed and becomes a located error of its
   field that says what to do, also under ``graphql_sync``, which tells
   graphql-core to assume there are none.  graphql-core's own checks go
   through its ``is_awaitable`` hook, swapped for the execution for one
   that raises; ``execute_field`` and the two loops look at values
   themselves, by exact type first, and the fields loop no longer asks
   about each result: less work per field than graphql-core's two calls.
   Under ``check_sync=True`` (graphql-core's ``execute_sync`` or
   ``graphql_sync``, found on the stack only once an awaitable was met)
   such an execution raises graphql-core's ``RuntimeError`` at its end.

A resolver that never waits costs what it costs in graphql-core plus the
mark of its object (one small list per object with two or more fields and
per list with two or more items); no greenlet is started.  Fields without
arguments skip graphql-core's argument coercion and its ``**`` call, which
more than pays for the marks (W1 in ``benchmarks/README.rst``).
Top-level mutation fields run one after another, each to its end, with the
cache cleared before each (as graphql-ruby does).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from contextvars import copy_context
from types import CoroutineType, GeneratorType
from typing import Any, Dict, List, Optional, Set, Tuple

from graphql import GraphQLError, located_error
from graphql import graphql_sync as _graphql_sync
from graphql.pyutils import Path, Undefined, is_iterable
from graphql.pyutils import is_awaitable as _is_awaitable
from greenlet import getcurrent

from ._errors import FiberloaderTypeError, short_repr
from ._fibers import Worker, current_dataloader
from ._loops import SplitLoop, Waitable
from ._settings import adapt_scheduler, dataloader_class
from ._source import _MISSING, Request, RequestAll

__all__ = ["DataloaderExecutionContext", "DataloaderExecutor", "graphql_sync"]

# `import graphql.execution.execute` gives the function the package re-exports.
_execute = importlib.import_module("graphql.execution.execute")
_Base: Any = getattr(_execute, "ExecutionContext", None)
GRAPHQL_CORE_3_3 = _Base is None  # 3.3 renamed it Executor, with other signatures
if GRAPHQL_CORE_3_3:
    _Base = importlib.import_module("graphql.execution.executor").Executor
    from graphql.execution.executor import to_nodes as _to_nodes  # type: ignore[import-not-found]
    from graphql.execution.values import get_argument_values as _get_argument_values
else:
    from graphql.execution.execute import get_field_def as _get_field_def
    from graphql.execution.values import get_argument_values as _get_argument_values
# graphql-core 3.2.14 added the path argument.
_ERROR_HANDLER_TAKES_PATH = "path" in inspect.signature(_Base.handle_field_error).parameters
_NO_MARK: List[Any] = [None]  # the mark of a loop nobody can take over (never set)

# -- awaitables: a synchronous execution refuses them ----------------------------------

# Values of exactly these types are never awaitable: checking one is a set lookup.
_PLAIN = frozenset({str, int, float, bool, type(None), dict, list, tuple})
# graphql_sync()'s and execute_sync()'s default, "assume nothing is awaitable" (a
# function of each module in 3.2): we look anyway.
_ASSUME_NOT_AWAITABLE = frozenset(
    getattr(module, "assume_not_awaitable", None) for module in (_execute, importlib.import_module("graphql.graphql"))
)
# graphql-core's entry points that take check_sync (3.2 and 3.3 alike).
_CHECK_SYNC_ENTRIES = frozenset({_execute.execute_sync.__code__, _graphql_sync.__code__})
_ADVICE = (
    "fiberloader's execution context runs resolvers synchronously and never awaits: make it a "
    "plain function (a resolver may call load() or return source.request(key)), or run this "
    "schema with graphql-core's own async execution, without DataloaderExecutionContext."
)


class _NotSynchronous(FiberloaderTypeError):
    """An awaitable (or async iterable) reached a synchronous execution; it was closed."""


def _not_synchronous(what: str, value: Any) -> _NotSynchronous:
    """The error for an awaitable ``value``; closes it first (never awaited, it would warn)."""
    if isinstance(value, (CoroutineType, GeneratorType)):
        value.close()
    return _NotSynchronous(f"{what} ({short_repr(value)}). {_ADVICE}")


def _refusing(is_awaitable: Any) -> Any:
    """graphql-core's ``is_awaitable`` hook for one execution: an awaitable raises.

    graphql-core asks it about what ``is_type_of`` and ``resolve_type``
    return (and passes it on as ``info.is_awaitable``); the error raised
    here becomes the located error of the field being completed.
    """

    def refuse_awaitable(value: Any) -> bool:
        if type(value) in _SYNC_RESULTS or not is_awaitable(value):
            return False
        raise _not_synchronous(f"{_asker(sys._getframe(1))} returned an awaitable", value)

    return refuse_awaitable


def _refuse_async_iterable(value: Any) -> bool:
    """graphql-core 3.3's ``is_async_iterable`` hook for one execution: one raises."""
    if type(value) is list or not hasattr(value, "__aiter__"):
        return False
    raise _not_synchronous(f"{_asker(sys._getframe(1))} returned an async iterable for a list", value)


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


def _check_sync_asked(frame: Any) -> bool:
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


class _Batching:
    """What both graphql-core versions share: split loops, deferred handles, errors.

    The version classes below adapt graphql-core's method signatures to it:
    ``extra`` is the tail of arguments 3.3 added (``position_context``).
    """

    dataloader_setting: Any = None
    _awaitable: Any = staticmethod(_is_awaitable)  # the test for awaitables, set per execution
    is_awaitable: Any  # graphql-core's hooks (annotations only: the values are graphql-core's)
    is_async_iterable: Any

    def _in_dataloader(self, execute: Any) -> Any:
        """Run ``execute()`` as a job: of the running dataloader, else of a new one.

        For the execution, graphql-core's awaitable hooks refuse awaitables
        (theory of operation, 5); under ``check_sync`` an execution that met
        one raises graphql-core's ``RuntimeError`` here, at its end.
        """
        self._aborted: List[Tuple[List[Any], Set[Any]]] = []
        self._deferrals = 0  # fields deferred so far (request handles)
        self._pending: Optional[Waitable] = None  # deferred completions not done yet
        # id(container) -> (container, parent container, key, field type, path),
        # only for containers whose subtree had deferred fields.
        self._parents: Dict[int, Tuple[Any, Any, Any, Any, Any]] = {}
        # id(container) -> (container, error, key): a deferred failure that
        # reached a container whose own parent link is not known yet.
        self._held_failures: Dict[int, Tuple[Any, Any, Any]] = {}
        # id(fields dict) -> (the dict, its items): graphql-core caches the
        # dicts for the execution; the dict is kept so its id stays its own.
        self._field_items: Dict[int, Tuple[Any, List[Any]]] = {}
        given = self.is_awaitable
        given_async_iterable = getattr(self, "is_async_iterable", None)  # graphql-core 3.3
        self._awaitable = _is_awaitable if given in _ASSUME_NOT_AWAITABLE else given
        self.is_awaitable = _refusing(self._awaitable)
        if given_async_iterable is not None:
            self.is_async_iterable = _refuse_async_iterable
        caller = sys._getframe(1)
        try:
            dataloader = current_dataloader()
            if dataloader is not None and dataloader._in_job():
                data = execute()  # already in a job: batch with it
            else:
                scheduler = adapt_scheduler(dataloader_class(self.dataloader_setting))
                data = scheduler.with_dataloading(lambda _: execute())
        except GraphQLError as error:  # graphql-core 3.2: a non-null error reached the root
            self._raise_if_check_sync(caller, [error, *self._errors_list()])
            raise
        finally:
            self.is_awaitable = given
            if given_async_iterable is not None:
                self.is_async_iterable = given_async_iterable
        self._raise_if_check_sync(caller, self._errors_list())
        return data

    def _raise_if_check_sync(self, caller: Any, errors: List[GraphQLError]) -> None:
        """Under ``check_sync``, an execution that met an awaitable raises as graphql-core's does."""
        for error in errors:
            if isinstance(error.original_error, _NotSynchronous):
                if _check_sync_asked(caller):
                    raise RuntimeError("GraphQL execution failed to complete synchronously.") from error
                return

    def _execute_root(self, execute: Any) -> Any:
        """Execute the root fields; wait for deferred ones; apply their failures."""
        self._operation_worker = getcurrent()
        try:
            data = execute()
            self._wait_for_deferred()
            held = self._held_failures.pop(id(data), None)
            if held is not None:  # a deferred non-null failure reached the root
                raise held[1]
            return data
        finally:
            self._drop_errors_of_aborted_siblings()

    def execute_fields(self, parent_type: Any, source: Any, path: Any, fields: Any, *extra: Any) -> Any:
        """The fields of one object: graphql-core's loop, plus a mark to split it at.

        ``extra`` is graphql-core 3.3's ``position_context``.  Under
        ``Dataloader`` the loop runs inline and leaves a mark on the worker's
        stack of loops, which the scheduler turns into a ``_FieldsLoop`` only
        if the worker parks (see ``_ExecutionLoop``).
        """
        deferrals = self._deferrals
        worker: Worker = getcurrent() if len(fields) > 1 else None  # type: ignore[assignment]
        run = getattr(worker, "owner", None)
        if run is None:  # one field (nothing to split), or no worker (NullDataloader)
            # graphql-core's loop without its is_awaitable per field: execute_field never returns one.
            results = {}
            type_name = parent_type.name
            execute_field = self.execute_field  # type: ignore[attr-defined]
            for name, field_nodes in fields.items():
                if extra:
                    value = execute_field(parent_type, source, field_nodes, Path(path, name, type_name), *extra)
                else:
                    value = execute_field(parent_type, source, field_nodes, Path(path, name, type_name))
                if value is not Undefined:
                    results[name] = value
        elif run.concurrent:  # a concurrent scheduler: a loop others can take over from the start
            loop = _FieldsLoop(self, run, worker, parent_type, source, path, self._items_of(fields), extra)
            results = loop.run_as_owner({})
        else:
            results = {}
            unstarted = iter(fields.items())
            mark = [None, _FieldsLoop.from_mark, self, parent_type, source, path, unstarted, extra]
            groups = worker.groups
            groups.append(mark)
            type_name = parent_type.name
            execute_field = self.execute_field  # type: ignore[attr-defined]
            try:
                for name, field_nodes in unstarted:
                    try:
                        if extra:
                            value = execute_field(parent_type, source, field_nodes, Path(path, name, type_name), *extra)
                        else:
                            value = execute_field(parent_type, source, field_nodes, Path(path, name, type_name))
                    except Exception as error:  # a non-null field failed: its parent fails too
                        if mark[0] is None:
                            raise
                        mark[0].failed(-1, error)
                        break
                    if value is not Undefined:
                        results[name] = value
                    if mark[0] is not None:  # the worker parked in this field: others took the rest
                        break
            finally:
                groups.pop()
            if mark[0] is not None:
                results = mark[0].run_as_owner(results)
        if self._deferrals != deferrals:
            self._link_fields(results, parent_type, path, fields)
        return results

    def _items_of(self, fields: Dict[str, Any]) -> List[Any]:
        """The fields as a list: graphql-core reuses one dict for every object of a list."""
        items = self._field_items.get(id(fields))
        if items is None:  # the dict is kept with its list so that its id stays its own
            items = self._field_items[id(fields)] = (fields, list(fields.items()))
        return items[1]

    def execute_fields_serially(self, parent_type: Any, source_value: Any, path: Any, fields: Any, *extra: Any) -> Any:
        """Top-level mutation fields, one after another."""
        dataloader = current_dataloader()
        results = {}
        for response_name, field_nodes in fields.items():
            if dataloader is not None:
                dataloader.clear_cache()  # each mutation sees what the previous ones wrote
            deferrals = self._deferrals
            result = self.execute_field(  # type: ignore[attr-defined]
                parent_type, source_value, field_nodes, Path(path, response_name, parent_type.name), *extra
            )
            if result is not Undefined:
                results[response_name] = result
                if self._deferrals != deferrals:
                    self._link_fields(results, parent_type, path, fields, [response_name])
                    self._wait_for_deferred()  # this mutation is done before the next starts
        return results

    def _items(
        self, item_type: Any, field_nodes: Any, info: Any, path: Any, items: List[Any], extra: Tuple[Any, ...]
    ) -> List[Any]:
        """The items of one list value: graphql-core's loop, plus a mark to split it at.

        Items may be request handles.  Under ``Dataloader`` the loop leaves a
        mark on the worker's stack of loops (as ``execute_fields``); the item
        running is the ``len(values)``-th.
        """
        worker: Worker = getcurrent()  # type: ignore[assignment]
        run: Any = getattr(worker, "owner", None)
        deferrals = self._deferrals
        splittable = run is not None and len(items) > 1  # a worker's loop of two or more items
        if splittable and run.concurrent:  # a concurrent scheduler
            values = _ListLoop(self, run, worker, item_type, field_nodes, info, path, items, extra).run_as_owner([])
        else:
            values = []
            if splittable:
                mark = [None, _ListLoop.from_mark, self, item_type, field_nodes, info, path, items, extra, values]
                groups = worker.groups
                groups.append(mark)
            else:  # nothing can take it over: no mark to make
                mark, groups = _NO_MARK, None
            complete_value = self.complete_value  # type: ignore[attr-defined]
            awaitable = self._awaitable
            try:
                for index, item in enumerate(items):
                    item_path = path.add_key(index, None)
                    try:
                        kind = type(item)
                        if kind is Request or kind is RequestAll:
                            value = self._complete_handle(item_type, field_nodes, info, item_path, item, extra)
                        elif kind not in _PLAIN and awaitable(item):
                            raise self._not_synchronous(info, item, index)
                        elif extra:
                            value = complete_value(item_type, field_nodes, info, item_path, item, *extra)
                        else:
                            value = complete_value(item_type, field_nodes, info, item_path, item)
                    except Exception as raw_error:
                        try:
                            self._failed(raw_error, item_type, field_nodes, item_path)  # raises if non-null
                        except Exception as error:  # a non-null item failed: the list fails
                            if mark[0] is None:
                                raise
                            mark[0].failed(-1, error)
                            break
                        value = None
                    values.append(value)
                    if mark[0] is not None:  # the worker parked in this item: others took the rest
                        break
            finally:
                if groups is not None:
                    groups.pop()
            if mark[0] is not None:
                values = mark[0].run_as_owner(values)
        if self._deferrals != deferrals:
            self._link_items(values, item_type, path)
        return values  # type: ignore[no-any-return]

    # -- request handles: fields completed after their batch, without a greenlet ------
    #
    # A resolver may return ``source.request(key)`` (or ``request_all``).  If
    # the keys are cached the field completes at once.  Otherwise it is
    # *deferred*: a ``_Deferred`` placeholder stands in its place and is
    # queued to run after the next fetch.  The loop that collects the
    # placeholder gives it its slot (container, key) and links each child
    # container to its parent slot, so that a deferred non-null failure can
    # null the nearest nullable ancestor, as graphql-core's exceptions would.
    # A deferred field that finishes before its slot is known keeps its
    # outcome until the loop links it; a failure that reaches a container
    # whose link is not known yet is held until it is.

    def _not_synchronous(
        self, info: Any, awaitable: Any, item: Optional[int] = None, handle: bool = False
    ) -> _NotSynchronous:
        """A resolver gave an awaitable (or a list item, or a handle's value): say what to do."""
        returned = f"The resolver of {info.parent_type.name}.{info.field_name} returned"
        if item is not None:
            return _not_synchronous(f"{returned} a list whose item {item} is an awaitable", awaitable)
        if handle:
            return _not_synchronous(f"{returned} a request handle whose value (from fetch) is an awaitable", awaitable)
        return _not_synchronous(f"{returned} an awaitable", awaitable)

    def _complete_handle(
        self, return_type: Any, field_nodes: Any, info: Any, path: Any, handle: Any, extra: Tuple[Any, ...]
    ) -> Any:
        """A resolver returned a request handle: complete now if its keys are in, else later."""
        if type(handle) is Request:  # served from the cache: complete it now
            value = handle.source._results.get(handle.rk, _MISSING)
        else:
            value = _MISSING
        if value is _MISSING:
            run = getattr(getcurrent(), "owner", None)
            if run is not None and not handle.ready() and run.dataloader is handle.source.dataloader:
                return self._defer(run, return_type, field_nodes, info, path, handle, extra)
            value = handle.load()  # ready, or no batching here (NullDataloader, another dataloader's)
        kind = type(value)
        if kind is Request or kind is RequestAll:  # a handle to a handle
            return self._complete_handle(return_type, field_nodes, info, path, value, extra)
        if kind not in _PLAIN and self._awaitable(value):
            raise self._not_synchronous(info, value, handle=True)
        if extra:
            return self.complete_value(return_type, field_nodes, info, path, value, *extra)  # type: ignore[attr-defined]
        return self.complete_value(return_type, field_nodes, info, path, value)  # type: ignore[attr-defined]

    def _defer(
        self, run: Any, return_type: Any, field_nodes: Any, info: Any, path: Any, handle: Any, extra: Tuple[Any, ...]
    ) -> "_Deferred":
        """Complete the field after the next fetch; a placeholder stands in for it meanwhile."""
        deferred = _Deferred(self, return_type, field_nodes, info, path, handle, extra)
        self._deferrals += 1
        pending = self._pending
        if pending is None:
            pending = self._pending = Waitable(run.dataloader, run, 0, self._operation_worker)  # type: ignore[arg-type]
        pending.remaining += 1
        run.dataloader._after_fetch(run, deferred)
        return deferred

    def _complete_deferred(self, deferred: "_Deferred") -> None:
        """After the fetch: complete a deferred field and put it in its place."""
        try:
            deferrals = self._deferrals
            value = deferred.handle.load()  # in the cache by now (else this job waits)
            while type(value) is Request or type(value) is RequestAll:  # a handle to a handle
                value = value.load()
            if type(value) not in _PLAIN and self._awaitable(value):
                raise self._not_synchronous(deferred.info, value, handle=True)
            completed = self.complete_value(  # type: ignore[attr-defined]
                deferred.return_type, deferred.field_nodes, deferred.info, deferred.path, value, *deferred.extra
            )
            if self._deferrals != deferrals and isinstance(completed, (dict, list)):
                deferred.subtree = completed  # it holds deferred fields of its own
            deferred.settle(completed, None)
        except Exception as raw_error:
            deferred.settle(None, self._locate(raw_error, deferred.field_nodes, deferred.path))
        finally:
            self._pending._finished(1)  # type: ignore[union-attr]

    def _wait_for_deferred(self) -> None:
        pending = self._pending
        if pending is not None:
            pending.wait()

    def _link_fields(
        self, results: Dict[str, Any], parent_type: Any, path: Any, fields: Dict[str, Any],
        names: Optional[List[str]] = None,
    ) -> None:
        """Give this object's deferred fields their slots; link its child containers to it."""
        for name in list(results) if names is None else names:
            value = results[name]
            if type(value) is _Deferred or isinstance(value, (dict, list)):
                field_type = self._field_type(parent_type, fields[name])
                self._link(results, name, value, field_type, Path(path, name, parent_type.name))

    def _link_items(self, values: List[Any], item_type: Any, path: Any) -> None:
        for index, value in enumerate(values):
            if type(value) is _Deferred or isinstance(value, (dict, list)):
                self._link(values, index, value, item_type, path.add_key(index, None))

    def _link(self, container: Any, key: Any, value: Any, field_type: Any, path: Any) -> None:
        if type(value) is _Deferred:
            if not value.done:
                value.container, value.key = container, key
                return
            if value.error is not None:  # it failed before its slot was known
                container[key] = None
                self._field_error(value.error, field_type, path)  # raises if non-null
                return
            container[key] = value = value.value if value.subtree is None else value.subtree
            if not isinstance(value, (dict, list)):
                return
        self._parents[id(value)] = (value, container, key, field_type, path)
        held = self._held_failures.pop(id(value), None)
        if held is not None:  # a deferred failure below reached this child before its link
            container[key] = None
            self._field_error(held[1], field_type, path)  # raises if non-null

    def _fail_deferred(self, deferred: "_Deferred", error: GraphQLError) -> None:
        """A deferred field failed after its slot was known: null it, or propagate."""
        container, key = deferred.container, deferred.key
        try:
            self._field_error(error, deferred.return_type, deferred.path)
        except Exception as propagated:  # non-null: its container fails
            self._propagate(propagated, container, key)
        else:
            container[key] = None

    def _propagate(self, error: Any, container: Any, failed_key: Any) -> None:
        """Null the nearest nullable ancestor of ``container``, as graphql-core would."""
        while True:
            link = self._parents.get(id(container))
            self._abort_after(container, failed_key, link)
            if link is None:  # its loop has not linked it yet, or it is the root
                # The first failure wins: deferred fields complete in the order
                # they were deferred, so it is the one graphql-core would raise.
                self._held_failures.setdefault(id(container), (container, error, failed_key))
                return
            _, parent, key, field_type, path = link
            try:
                self._field_error(error, field_type, path)
            except Exception as propagated:
                error, container, failed_key = propagated, parent, key
            else:
                parent[key] = None
                return

    def _abort_after(self, container: Any, failed_key: Any, link: Any) -> None:
        """graphql-core would not have run the siblings after the failed one: note them."""
        if isinstance(container, dict):
            keys = list(container)
            later = keys[keys.index(failed_key) + 1 :]
        else:
            later = list(range(failed_key + 1, len(container)))
        if later:
            prefix = link[4].as_list() if link is not None else []
            self._aborted.append((prefix, set(later)))

    # -- errors ---------------------------------------------------------------------

    # -- what differs between graphql-core versions ------------------------------------

    def _field_error(self, error: GraphQLError, return_type: Any, path: Any) -> None:
        """Record a located error, or raise it for a non-null type (handle_field_error)."""
        raise NotImplementedError

    def _failed(self, raw_error: Exception, return_type: Any, field_nodes: Any, path: Any) -> None:
        """A field or list item raised: locate it, then as ``_field_error``."""
        self._field_error(self._locate(raw_error, field_nodes, path), return_type, path)

    def _locate(self, raw_error: Exception, field_nodes: Any, path: Any) -> GraphQLError:
        return located_error(raw_error, field_nodes, path.as_list())

    def _field_type(self, parent_type: Any, field_nodes: Any) -> Any:
        return _execute.get_field_def(self.schema, parent_type, field_nodes[0]).type  # type: ignore[attr-defined]

    def _errors_list(self) -> List[GraphQLError]:
        collected = getattr(self, "collected_errors", None)
        return collected.errors if collected is not None else self.errors  # type: ignore[attr-defined, no-any-return]

    def _drop_errors_of_aborted_siblings(self) -> None:
        """Remove errors recorded by siblings that ran only because a loop was split.

        graphql-core runs the fields of an object (the items of a list) in
        order and stops at the first that raises; a split loop may have run
        later ones already.  ``_aborted`` holds, per failed loop, its path and
        the keys of the items after the failure that had started.
        """
        if not self._aborted:
            return
        errors = self._errors_list()
        kept = [error for error in errors if not self._in_aborted_region(error.path)]
        errors[:] = kept

    def _in_aborted_region(self, error_path: Optional[List[Any]]) -> bool:
        if not error_path:
            return False
        for prefix, keys in self._aborted:
            depth = len(prefix)
            if len(error_path) > depth and error_path[:depth] == prefix and error_path[depth] in keys:
                return True
        return False


class _Deferred:
    """A field whose resolver returned a handle not fetched yet: placeholder and job."""

    __slots__ = ("context", "return_type", "field_nodes", "info", "path", "handle", "extra",
                 "container", "key", "done", "value", "error", "subtree")

    def __init__(
        self, context: _Batching, return_type: Any, field_nodes: Any, info: Any, path: Any, handle: Any,
        extra: Tuple[Any, ...],
    ) -> None:
        self.context = context
        self.extra = extra
        self.return_type = return_type
        self.field_nodes = field_nodes
        self.info = info
        self.path = path
        self.handle = handle
        self.container: Any = None  # the slot, once the enclosing loop has linked it
        self.key: Any = None
        self.done = False
        self.value: Any = None
        self.error: Optional[GraphQLError] = None
        self.subtree: Any = None  # the completed value, if it holds deferred fields itself

    def __call__(self) -> None:  # the job run after the fetch
        self.context._complete_deferred(self)

    def settle(self, value: Any, error: Optional[GraphQLError]) -> None:
        if self.container is None:  # not linked yet: the loop will pick it up
            self.done, self.value, self.error = True, value, error
            return
        if error is not None:
            self.context._fail_deferred(self, error)
            return
        self.container[self.key] = value
        if self.subtree is not None:
            context = self.context
            context._parents[id(value)] = (value, self.container, self.key, self.return_type, self.path)


# What graphql-core's loops ask is_awaitable about without a look: plain values and
# placeholders (a list of N objects with one deferred field asks N times).
_SYNC_RESULTS = _PLAIN | {_Deferred}


class _ExecutionLoop(SplitLoop):
    """A split loop of the executor: stops at the first item that raises, like graphql-core.

    Under ``Dataloader`` the owner runs the items in ``execute_fields`` /
    ``_items``: graphql-core's own loop, which keeps a *mark* on the
    worker's stack of loops -- ``[loop, from_mark, context, ...]``, a list,
    the one allocation per object.  Only when the worker parks does the
    scheduler turn a mark into one of these loop objects (``from_mark``,
    stored in ``mark[0]``), for a helper to take the unstarted items; the
    owner sees ``mark[0]`` set once its item returns and finishes in
    ``run_as_owner``.  Under a concurrent scheduler the loop object exists
    from the start.

    ``run_as_owner`` puts each result straight into the container while no
    helper has stored one (``results`` is None); after that by index, and the
    owner collects the rest once all are done.
    """

    __slots__ = ("context", "path", "extra", "results", "failure", "failed_at", "started", "prefix", "variables")

    def __init__(
        self, context: _Batching, run: Any, owner: Worker, path: Any, items: List[Any], extra: Tuple[Any, ...]
    ) -> None:
        # Written out rather than through super(): one of these per object.
        self.dataloader = run.dataloader
        self.run = run
        self.remaining = len(items)
        self.owner = owner
        self.waiting = False
        self.items = items
        self.next = 0
        self.helper_queued = False
        self.context = context
        self.extra = extra
        self.path = path
        self.results: Optional[List[Any]] = None  # by index, once a helper has started
        self.failure: Optional[BaseException] = None
        self.failed_at = len(items)
        self.started = 0
        self.prefix = 0  # items the owner put straight into the container
        # Helpers run in a copy of the owner's contextvars as they are when the
        # helper starts (a request's state set before the query ran, say).
        self.variables = owner.gr_context

    def work(self) -> None:
        """A helper's part, in a copy of the owner's context."""
        worker = getcurrent()
        own = worker.gr_context
        worker.gr_context = self.variables.copy() if self.variables is not None else copy_context()
        try:
            super().work()
        finally:
            worker.gr_context = own

    def key_of(self, index: int) -> Any:
        raise NotImplementedError

    def put(self, container: Any, index: int, value: Any) -> None:
        """Put the owner's result straight into the container (no helper result before it)."""
        raise NotImplementedError

    def collect(self, container: Any) -> None:
        """The owner, all done: append the results stored by index, in order."""
        raise NotImplementedError

    def store(self, index: int, value: Any) -> None:
        """A helper's result (or the owner's, once a helper has started)."""
        results = self.results
        if results is None:
            results = self.results = [Undefined] * len(self.items)
        results[index] = value

    def failed(self, index: int, error: BaseException) -> None:
        if index < self.failed_at:
            self.failure, self.failed_at = error, index
        if self.started == 0:
            self.started = self.next  # items at or after `next` will never start
        self.stop()

    def run_as_owner(self, container: Any) -> Any:
        """The owner: run the unstarted items, wait for the helpers', collect or raise."""
        n = len(self.items)
        concurrent = self.run.concurrent
        groups = self.owner.groups
        groups.append(self)
        try:
            while self.next < n:
                index = self.next
                self.next = index + 1
                if concurrent and self.next < n:
                    self.dataloader._split(self.run, self)
                try:
                    value = self.run_owned(index)
                except Exception as error:  # a non-null item failed: the container fails
                    self.failed(index, error)
                else:
                    if self.results is None:  # no helper result yet: straight into the container
                        self.put(container, index, value)
                        self.prefix = index + 1
                    else:
                        self.store(index, value)
                finally:
                    self.remaining -= 1  # _finished, inlined: the owner is not waiting now
        finally:
            groups.pop()
        self.wait()
        if self.failure is not None:
            self.raise_failure()
        if self.results is not None:
            self.collect(container)
        return container

    def run_owned(self, index: int) -> Any:
        """Run item ``index``; return its value, or raise to fail the container."""
        raise NotImplementedError

    def run_item(self, index: int) -> None:
        """A helper runs item ``index``."""
        try:
            value = self.run_owned(index)
        except Exception as error:  # a non-null item failed: the container fails
            self.failed(index, error)
        else:
            self.store(index, value)

    def raise_failure(self) -> None:
        """Raise the first failure; remember the later siblings that ran anyway."""
        later = [self.key_of(index) for index in range(self.failed_at + 1, self.started)]
        if later:
            prefix = self.path.as_list() if self.path is not None else []
            self.context._aborted.append((prefix, set(later)))
        raise self.failure  # type: ignore[misc]


class _FieldsLoop(_ExecutionLoop):
    """The fields of one object."""

    __slots__ = ("parent_type", "source")

    def __init__(
        self, context: _Batching, run: Any, owner: Worker, parent_type: Any, source: Any,
        path: Any, items: List[Any], extra: Tuple[Any, ...],
    ) -> None:
        super().__init__(context, run, owner, path, items, extra)
        self.parent_type = parent_type
        self.source = source

    @classmethod
    def from_mark(cls, run: Any, worker: Worker, mark: List[Any]) -> "_FieldsLoop":
        """The fields the owner has not started yet, taken from its iterator."""
        _, _, context, parent_type, source, path, unstarted, extra = mark
        return cls(context, run, worker, parent_type, source, path, list(unstarted), extra)

    def key_of(self, index: int) -> Any:
        return self.items[index][0]

    def put(self, container: Dict[str, Any], index: int, value: Any) -> None:
        if value is not Undefined:
            container[self.items[index][0]] = value

    def collect(self, container: Dict[str, Any]) -> None:
        items, results = self.items, self.results
        for index in range(self.prefix, len(items)):
            value = results[index]  # type: ignore[index]
            if value is not Undefined:
                container[items[index][0]] = value

    def run_owned(self, index: int) -> Any:
        response_name, field_nodes = self.items[index]
        parent_type = self.parent_type
        path = Path(self.path, response_name, parent_type.name)
        if self.extra:  # a * call only when needed: each adds a C frame under a parked resolver
            return self.context.execute_field(parent_type, self.source, field_nodes, path, *self.extra)  # type: ignore[attr-defined]
        return self.context.execute_field(parent_type, self.source, field_nodes, path)  # type: ignore[attr-defined]


class _ListLoop(_ExecutionLoop):
    """The items of one list value."""

    __slots__ = ("item_type", "field_nodes", "info", "offset")

    def __init__(
        self, context: _Batching, run: Any, owner: Worker, item_type: Any, field_nodes: Any,
        info: Any, path: Any, values: List[Any], extra: Tuple[Any, ...],
    ) -> None:
        super().__init__(context, run, owner, path, values, extra)
        self.item_type = item_type
        self.field_nodes = field_nodes
        self.info = info
        self.offset = 0  # the index in the list value of items[0]

    @classmethod
    def from_mark(cls, run: Any, worker: Worker, mark: List[Any]) -> "_ListLoop":
        """The items after the one the owner is running (the ``len(values)``-th)."""
        _, _, context, item_type, field_nodes, info, path, items, extra, values = mark
        offset = len(values) + 1
        loop = cls(context, run, worker, item_type, field_nodes, info, path, items[offset:], extra)
        loop.offset = offset
        return loop

    def key_of(self, index: int) -> Any:
        return self.offset + index

    def put(self, container: List[Any], index: int, value: Any) -> None:
        container.append(value)

    def collect(self, container: List[Any]) -> None:
        container.extend(self.results[self.prefix :])  # type: ignore[index]

    def run_owned(self, index: int) -> Any:
        context = self.context
        item_path = self.path.add_key(self.offset + index, None)
        item = self.items[index]
        try:
            kind = type(item)
            if kind is Request or kind is RequestAll:
                return context._complete_handle(self.item_type, self.field_nodes, self.info, item_path, item, self.extra)
            if kind not in _PLAIN and context._awaitable(item):
                raise context._not_synchronous(self.info, item, self.offset + index)
            if self.extra:
                return context.complete_value(self.item_type, self.field_nodes, self.info, item_path, item, *self.extra)  # type: ignore[attr-defined]
            return context.complete_value(self.item_type, self.field_nodes, self.info, item_path, item)  # type: ignore[attr-defined]
        except Exception as raw_error:
            context._failed(raw_error, self.item_type, self.field_nodes, item_path)  # raises if non-null
            return None


if not GRAPHQL_CORE_3_3:

    class DataloaderExecutionContext(_Batching, _Base):  # type: ignore[misc]
        """An ``ExecutionContext`` whose resolvers may ``load`` with plain calls.

        Pass it as ``execution_context_class=`` to graphql-core's ``execute``,
        ``execute_sync``, ``graphql_sync``, or a server that accepts one.  Set
        ``dataloader_setting`` on a subclass to pick a scheduler for executions
        that start their own dataloader (default: the setting chain of
        ``fiberloader.dataloader_class()``).
        """

        def execute_operation(self, operation: Any, root_value: Any) -> Any:
            parent: Any = super()
            return self._in_dataloader(
                lambda: self._execute_root(lambda: parent.execute_operation(operation, root_value))
            )

        def execute_field(self, parent_type: Any, source: Any, field_nodes: Any, path: Any) -> Any:
            """graphql-core's ``execute_field``, written out so that a returned handle is seen."""
            field_def = _get_field_def(self.schema, parent_type, field_nodes[0])
            if not field_def:
                return Undefined
            return_type = field_def.type
            resolve_fn = field_def.resolve or self.field_resolver
            if self.middleware_manager:
                resolve_fn = self.middleware_manager.get_field_resolver(resolve_fn)
            info = self.build_resolve_info(field_def, field_nodes, parent_type, path)
            try:
                if field_def.args:
                    result = resolve_fn(source, info, **_get_argument_values(field_def, field_nodes[0], self.variable_values))
                else:  # no ** call: one C stack frame less under a parked resolver
                    result = resolve_fn(source, info)
                kind = type(result)
                if kind is Request or kind is RequestAll:
                    return self._complete_handle(return_type, field_nodes, info, path, result, ())
                if kind not in _PLAIN and self._awaitable(result):
                    raise self._not_synchronous(info, result)
                # Never an awaitable: graphql-core's is_awaitable raises for this execution.
                return self.complete_value(return_type, field_nodes, info, path, result)
            except Exception as raw_error:
                self._failed(raw_error, return_type, field_nodes, path)
                return None

        def complete_list_value(self, return_type: Any, field_nodes: Any, info: Any, path: Any, result: Any) -> Any:
            if not is_iterable(result):
                if hasattr(result, "__aiter__"):  # graphql-core would return a coroutine
                    raise _not_synchronous(
                        f"The resolver of {info.parent_type.name}.{info.field_name} returned an async "
                        "iterable for a list", result
                    )
                return super().complete_list_value(return_type, field_nodes, info, path, result)  # its error
            items = result if type(result) is list else list(result)
            return self._items(return_type.of_type, field_nodes, info, path, items, ())

        def _field_error(self, error: GraphQLError, return_type: Any, path: Any) -> None:
            if _ERROR_HANDLER_TAKES_PATH:
                self.handle_field_error(error, return_type, path)
            else:
                self.handle_field_error(error, return_type)

    DataloaderExecutor = DataloaderExecutionContext

else:

    class DataloaderExecutor(_Batching, _Base):  # type: ignore[no-redef, misc]
        """graphql-core 3.3's ``Executor`` whose resolvers may ``load`` with plain calls.

        Pass it as ``executor_class=``.  Incremental delivery (``@defer``,
        ``@stream``) runs as graphql-core does it, without batching across
        deferred parts.
        """

        def execute_operation(self, serially: Any = None) -> Any:
            parent: Any = super()
            return self._in_dataloader(lambda: parent.execute_operation(serially))

        def execute_collected_root_fields(self, *args: Any) -> Any:
            parent: Any = super()
            return self._execute_root(lambda: parent.execute_collected_root_fields(*args))

        def execute_field(
            self, parent_type: Any, source: Any, field_details_list: Any, path: Any, position_context: Any
        ) -> Any:
            """graphql-core's ``execute_field``, written out so that a returned handle is seen."""
            first = field_details_list[0]
            node = first.node
            field_def = self.schema.get_field(parent_type, node.name.value)
            if not field_def:
                return Undefined
            return_type = field_def.type
            resolve_fn = field_def.resolve or self.field_resolver
            if self.middleware_manager:
                resolve_fn = self.middleware_manager.get_field_resolver(resolve_fn)
            info = self.build_resolve_info(field_def, _to_nodes(field_details_list), parent_type, path)
            extra = (position_context,)
            try:
                if field_def.args or node.arguments:
                    args = _get_argument_values(  # type: ignore[call-arg]
                        field_def, node, self.variable_values, first.fragment_variable_values, self.hide_suggestions
                    )
                    result = resolve_fn(source, info, **args)
                else:  # no ** call: one C stack frame less under a parked resolver
                    result = resolve_fn(source, info)
                kind = type(result)
                if kind is Request or kind is RequestAll:
                    return self._complete_handle(return_type, field_details_list, info, path, result, extra)
                if kind not in _PLAIN and self._awaitable(result):
                    raise self._not_synchronous(info, result)
                # Never an awaitable: graphql-core's is_awaitable raises for this execution.
                return self.complete_value(return_type, field_details_list, info, path, result, position_context)
            except Exception as raw_error:
                self._failed(raw_error, return_type, field_details_list, path)
                return None

        def complete_iterable_value(
            self, item_type: Any, field_nodes: Any, info: Any, path: Any, items: Any, position_context: Any
        ) -> Any:
            if self.get_stream_usage(field_nodes, path) is not None:  # @stream: graphql-core's own way
                return super().complete_iterable_value(item_type, field_nodes, info, path, items, position_context)
            values = items if type(items) is list else list(items)
            return self._items(item_type, field_nodes, info, path, values, (position_context,))

        def _field_error(self, error: GraphQLError, return_type: Any, path: Any) -> None:
            self.handle_field_error(error, return_type, (), path)

        def _failed(self, raw_error: Exception, return_type: Any, field_nodes: Any, path: Any) -> None:
            self.handle_field_error(raw_error, return_type, field_nodes, path)

        def _locate(self, raw_error: Exception, field_nodes: Any, path: Any) -> GraphQLError:
            return located_error(raw_error, _to_nodes(field_nodes), path.as_list())

        def _field_type(self, parent_type: Any, field_nodes: Any) -> Any:
            return self.schema.get_field(parent_type, field_nodes[0].node.name.value).type

    DataloaderExecutionContext = DataloaderExecutor  # type: ignore[misc]


def graphql_sync(schema: Any, source: Any, **kwargs: Any) -> Any:
    """graphql-core's ``graphql_sync`` with fiberloader's execution context.

    Takes the same arguments; works with graphql-core 3.2
    (``execution_context_class``) and 3.3 (``executor_class``).
    """
    if GRAPHQL_CORE_3_3:
        kwargs.setdefault("executor_class", DataloaderExecutor)
    else:
        kwargs.setdefault("execution_context_class", DataloaderExecutionContext)
    return _graphql_sync(schema, source, **kwargs)
