"""graphql-core integration: synchronous resolvers that batch across the whole query.

Use it with any graphql-core 3 server (plain graphql-core, Graphene 3,
Strawberry sync, Ariadne sync)::

    from fiberloader.graphql import DataloaderExecutionContext, graphql_sync

    result = graphql_sync(schema, "{ posts { title author { name } } }")
    # or: graphql.execute(..., execution_context_class=DataloaderExecutionContext)

    def resolve_author(post, info):
        return current_dataloader().with_(UserSource).load(post["author_id"])

Where things live: this module (the execution context for each
graphql-core version, the executor's loops over fields and items, errors);
``fiberloader._graphql_loops`` (the loops other workers take over);
``fiberloader._graphql_handles`` (fields whose resolver returned a request
handle); ``fiberloader._graphql_awaitables`` (a synchronous execution
refuses awaitables).

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
from typing import Any, Dict, List, Optional, Set, Tuple

from graphql import GraphQLError, located_error
from graphql import graphql_sync as _graphql_sync
from graphql.pyutils import Path, Undefined, is_iterable
from graphql.pyutils import is_awaitable as _is_awaitable
from greenlet import getcurrent

from ._fibers import Worker, current_dataloader
from ._graphql_awaitables import (
    ASSUME_NOT_AWAITABLE,
    PLAIN,
    NotSynchronous,
    check_sync_asked,
    not_synchronous,
    refuse_async_iterable,
    refusing,
)
from ._graphql_handles import Deferred, Handles
from ._graphql_loops import FieldsLoop, ListLoop
from ._loops import NO_MARK, Mark, Waitable
from ._settings import dataloader_class, framework_extensions
from ._source import Request, RequestAll

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
# What graphql-core's loops ask is_awaitable about without a look: plain values and
# placeholders (a list of N objects with one deferred field asks N times).
_SYNC_RESULTS = PLAIN | {Deferred}
# graphql-core 3.2.14 added the path argument.
_ERROR_HANDLER_TAKES_PATH = "path" in inspect.signature(_Base.handle_field_error).parameters

class _Batching(Handles):
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
        given = self.is_awaitable
        given_async_iterable = getattr(self, "is_async_iterable", None)  # graphql-core 3.3
        self._awaitable = _is_awaitable if given in ASSUME_NOT_AWAITABLE else given
        self.is_awaitable = refusing(self._awaitable, _SYNC_RESULTS)
        if given_async_iterable is not None:
            self.is_async_iterable = refuse_async_iterable
        caller = sys._getframe(1)
        try:
            dataloader = current_dataloader()
            if dataloader is not None and dataloader._in_job():
                data = execute()  # already in a job: batch with it
            else:
                own = dataloader_class(self.dataloader_setting)()
                extra = framework_extensions()  # Django's connections, in a Django process
                if extra:
                    own._add_extensions(*extra)
                data = own._call_as_job(execute)
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
            if isinstance(error.original_error, NotSynchronous):
                if check_sync_asked(caller):
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

        ``extra`` is graphql-core 3.3's ``position_context``.  The loop runs
        inline and leaves a mark on the worker's stack of loops, which the
        scheduler turns into a ``FieldsLoop`` only if the worker parks, or
        blocks in I/O under AsyncDataloader (see ``ExecutionLoop``).
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
        else:
            results = {}
            unstarted = iter(fields.items())
            # The context as the loop starts: helpers run the unstarted fields in
            # it, not in what a parked resolver has set since (its span, say).
            variables = worker.gr_context.copy()
            mark = Mark(FieldsLoop.from_mark, (self, parent_type, source, path, unstarted, extra, variables))
            groups = worker.groups
            groups.append(mark)
            if run.concurrent:
                run.dataloader._may_block_in_loop(run)
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
                        if mark.loop is None:
                            raise
                        mark.loop.failed(-1, error)
                        break
                    if value is not Undefined:
                        results[name] = value
                    if mark.loop is not None:  # the worker parked in this field: others took the rest
                        break
            finally:
                groups.pop()
            if mark.loop is not None:
                results = mark.loop.run_as_owner(results)
        if self._deferrals != deferrals:
            self._link_fields(results, parent_type, path, fields)
        return results

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

        Items may be request handles.  The loop leaves a mark on the worker's
        stack of loops (as ``execute_fields``); the item running is the
        ``len(values)``-th.
        """
        worker: Worker = getcurrent()  # type: ignore[assignment]
        run: Any = getattr(worker, "owner", None)
        deferrals = self._deferrals
        splittable = run is not None and len(items) > 1  # a worker's loop of two or more items
        values: List[Any] = []
        if splittable:
            variables = worker.gr_context.copy()  # as the loop starts (see execute_fields)
            mark = Mark(ListLoop.from_mark, (self, item_type, field_nodes, info, path, items, extra, values, variables))
            groups = worker.groups
            groups.append(mark)
            if run.concurrent:
                run.dataloader._may_block_in_loop(run)
        else:  # nothing can take it over: no mark to make
            mark, groups = NO_MARK, None
        complete_value = self.complete_value  # type: ignore[attr-defined]
        awaitable = self._awaitable
        try:
            for index, item in enumerate(items):
                item_path = path.add_key(index, None)
                try:
                    kind = type(item)
                    if kind is Request or kind is RequestAll:
                        value = self._complete_handle(item_type, field_nodes, info, item_path, item, extra)
                    elif kind not in PLAIN and awaitable(item):
                        raise self._not_synchronous(info, item, index)
                    elif extra:
                        value = complete_value(item_type, field_nodes, info, item_path, item, *extra)
                    else:
                        value = complete_value(item_type, field_nodes, info, item_path, item)
                except Exception as raw_error:
                    try:
                        self._failed(raw_error, item_type, field_nodes, item_path)  # raises if non-null
                    except Exception as error:  # a non-null item failed: the list fails
                        if mark.loop is None:
                            raise
                        mark.loop.failed(-1, error)
                        break
                    value = None
                values.append(value)
                if mark.loop is not None:  # the worker parked in this item: others took the rest
                    break
        finally:
            if groups is not None:
                groups.pop()
        if mark.loop is not None:
            values = mark.loop.run_as_owner(values)
        if self._deferrals != deferrals:
            self._link_items(values, item_type, path)
        return values  # type: ignore[no-any-return]

    def _not_synchronous(
        self, info: Any, awaitable: Any, item: Optional[int] = None, handle: bool = False
    ) -> NotSynchronous:
        """A resolver gave an awaitable (or a list item, or a handle's value): say what to do."""
        returned = f"The resolver of {info.parent_type.name}.{info.field_name} returned"
        if item is not None:
            return not_synchronous(f"{returned} a list whose item {item} is an awaitable", awaitable)
        if handle:
            return not_synchronous(f"{returned} a request handle whose value (from fetch) is an awaitable", awaitable)
        return not_synchronous(f"{returned} an awaitable", awaitable)

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
                if kind not in PLAIN and self._awaitable(result):
                    raise self._not_synchronous(info, result)
                # Never an awaitable: graphql-core's is_awaitable raises for this execution.
                return self.complete_value(return_type, field_nodes, info, path, result)
            except Exception as raw_error:
                self._failed(raw_error, return_type, field_nodes, path)
                return None

        def complete_list_value(self, return_type: Any, field_nodes: Any, info: Any, path: Any, result: Any) -> Any:
            if not is_iterable(result):
                if hasattr(result, "__aiter__"):  # graphql-core would return a coroutine
                    raise not_synchronous(
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
                if kind not in PLAIN and self._awaitable(result):
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
