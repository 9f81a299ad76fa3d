"""graphql-core integration: fields whose resolver returned a request handle.

graphql-ruby's lazy resolution: a resolver may return ``source.request(key)``
(or ``request_all``) instead of loading.  If the keys are cached the field
completes at once.  Otherwise it is *deferred*: a :class:`Deferred`
placeholder stands in its place and is queued to run after the next fetch,
without a greenlet of its own.  The loop that collects the placeholder
gives it its slot (container, key) and links each child container to its
parent slot, so that a deferred non-null failure can null the nearest
nullable ancestor, as graphql-core's exceptions would.  A deferred field
that finishes before its slot is known keeps its outcome until the loop
links it; a failure that reaches a container whose link is not known yet
is held until it is.

:class:`Handles` is the part of the execution context that does this
(``fiberloader.graphql._Batching`` mixes it in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from graphql import GraphQLError
from graphql.pyutils import Path
from greenlet import getcurrent

from ._graphql_awaitables import PLAIN
from ._loops import Waitable
from ._source import _MISSING, Request, RequestAll

__all__ = ["Handles", "Deferred"]


class Handles:
    """Request handles returned by resolvers: completed after their batch (see the module docstring)."""

    # Set by the execution context for each execution (_Batching._in_dataloader).
    _deferrals: int  # fields deferred so far
    _pending: Optional[Waitable]  # deferred completions not done yet
    _parents: Dict[int, Tuple[Any, Any, Any, Any, Any]]
    _held_failures: Dict[int, Tuple[Any, Any, Any]]
    _aborted: List[Tuple[List[Any], Any]]
    _operation_worker: Any
    _awaitable: Any

    if TYPE_CHECKING:  # what the execution context provides
        def _not_synchronous(self, info: Any, value: Any, item: Any = None, handle: bool = False) -> Exception: ...
        def _locate(self, raw_error: Exception, field_nodes: Any, path: Any) -> GraphQLError: ...
        def _field_type(self, parent_type: Any, field_nodes: Any) -> Any: ...
        def _field_error(self, error: GraphQLError, return_type: Any, path: Any) -> None: ...

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
        if kind not in PLAIN and self._awaitable(value):
            raise self._not_synchronous(info, value, handle=True)
        if extra:
            return self.complete_value(return_type, field_nodes, info, path, value, *extra)  # type: ignore[attr-defined]
        return self.complete_value(return_type, field_nodes, info, path, value)  # type: ignore[attr-defined]

    def _defer(
        self, run: Any, return_type: Any, field_nodes: Any, info: Any, path: Any, handle: Any, extra: Tuple[Any, ...]
    ) -> "Deferred":
        """Complete the field after the next fetch; a placeholder stands in for it meanwhile."""
        deferred = Deferred(self, return_type, field_nodes, info, path, handle, extra)
        self._deferrals += 1
        pending = self._pending
        if pending is None:
            pending = self._pending = Waitable(run.dataloader, run, 0, self._operation_worker)  # type: ignore[arg-type]
        pending.remaining += 1
        run.dataloader._after_fetch(run, deferred)
        return deferred

    def _complete_deferred(self, deferred: "Deferred") -> None:
        """After the fetch: complete a deferred field and put it in its place."""
        try:
            deferrals = self._deferrals
            value = deferred.handle.load()  # in the cache by now (else this job waits)
            while type(value) is Request or type(value) is RequestAll:  # a handle to a handle
                value = value.load()
            if type(value) not in PLAIN and self._awaitable(value):
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
            if type(value) is Deferred or isinstance(value, (dict, list)):
                field_type = self._field_type(parent_type, fields[name])
                self._link(results, name, value, field_type, Path(path, name, parent_type.name))

    def _link_items(self, values: List[Any], item_type: Any, path: Any) -> None:
        for index, value in enumerate(values):
            if type(value) is Deferred or isinstance(value, (dict, list)):
                self._link(values, index, value, item_type, path.add_key(index, None))

    def _link(self, container: Any, key: Any, value: Any, field_type: Any, path: Any) -> None:
        if type(value) is Deferred:
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

    def _fail_deferred(self, deferred: "Deferred", error: GraphQLError) -> None:
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



class Deferred:
    """A field whose resolver returned a handle not fetched yet: placeholder and job."""

    __slots__ = ("context", "return_type", "field_nodes", "info", "path", "handle", "extra",
                 "container", "key", "done", "value", "error", "subtree")

    def __init__(
        self, context: Any, return_type: Any, field_nodes: Any, info: Any, path: Any, handle: Any,
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
