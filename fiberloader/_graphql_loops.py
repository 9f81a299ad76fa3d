"""graphql-core integration: the executor's loops that other workers take over.

An object's fields and a list's items are loops its owner runs inline,
leaving a :class:`~fiberloader._loops.Mark`; when the owner parks (or,
under AsyncDataloader, blocks in I/O), the mark becomes one of these loops
(``from_mark``) and a helper goes on with the unstarted fields or items, so
that their loads join the same batch (and their I/O overlaps).
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

from graphql.pyutils import Path, Undefined
from greenlet import getcurrent

from ._fibers import Worker
from ._graphql_awaitables import PLAIN
from ._loops import SplitLoop
from ._source import Request, RequestAll

__all__ = ["ExecutionLoop", "FieldsLoop", "ListLoop", "field_path", "job_field_path"]


class ExecutionLoop(SplitLoop):
    """A split loop of the executor: stops at the first item that raises, like graphql-core.

    The owner runs the items in ``execute_fields`` / ``_items``:
    graphql-core's own loop, which keeps a *mark* on the worker's stack of
    loops (``fiberloader._loops.Mark``), the one object per object.  Only
    when the worker parks (or blocks in I/O under AsyncDataloader) does the
    scheduler turn a mark into one of these loop objects (``from_mark``,
    stored in ``mark.loop``), for a helper to take the unstarted items; the
    owner sees ``mark.loop`` set once its item returns and finishes in
    ``run_as_owner``.

    ``run_as_owner`` puts each result straight into the container while no
    helper has stored one (``results`` is None); after that by index, and the
    owner collects the rest once all are done.
    """

    __slots__ = ("context", "path", "extra", "results", "failure", "failed_at", "started", "prefix", "variables")

    def __init__(
        self, context: Any, run: Any, owner: Worker, path: Any, items: List[Any], extra: Tuple[Any, ...],
        variables: Any,
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
        # Helpers run in a copy of the owner's contextvars as they were when
        # the loop started (the mark took it): what a resolver of the owner
        # sets while it runs (a span it is inside when it parks) is not the
        # siblings' context.
        self.variables = variables

    def work(self) -> None:
        """A helper's part, in a copy of the owner's context."""
        worker = getcurrent()
        own = worker.gr_context
        worker.gr_context = self.variables.copy()
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
                    self.dataloader._may_block_in_loop(self.run)
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


class FieldsLoop(ExecutionLoop):
    """The fields of one object."""

    __slots__ = ("parent_type", "source")

    def __init__(
        self, context: Any, run: Any, owner: Worker, parent_type: Any, source: Any,
        path: Any, items: List[Any], extra: Tuple[Any, ...], variables: Any,
    ) -> None:
        super().__init__(context, run, owner, path, items, extra, variables)
        self.parent_type = parent_type
        self.source = source

    @classmethod
    def from_mark(
        cls, run: Any, worker: Worker, context: Any, parent_type: Any, source: Any, path: Any,
        unstarted: Any, extra: Tuple[Any, ...], variables: Any,
    ) -> "FieldsLoop":
        """The fields the owner has not started yet, taken from its iterator.

        ``variables``: the owner's context when its loop started.
        """
        return cls(context, run, worker, parent_type, source, path, list(unstarted), extra, variables)

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


class ListLoop(ExecutionLoop):
    """The items of one list value."""

    __slots__ = ("item_type", "field_nodes", "info", "offset")

    def __init__(
        self, context: Any, run: Any, owner: Worker, item_type: Any, field_nodes: Any,
        info: Any, path: Any, values: List[Any], extra: Tuple[Any, ...], variables: Any,
    ) -> None:
        super().__init__(context, run, owner, path, values, extra, variables)
        self.item_type = item_type
        self.field_nodes = field_nodes
        self.info = info
        self.offset = 0  # the index in the list value of items[0]

    @classmethod
    def from_mark(
        cls, run: Any, worker: Worker, context: Any, item_type: Any, field_nodes: Any, info: Any,
        path: Any, items: List[Any], extra: Tuple[Any, ...], values: List[Any], variables: Any,
    ) -> "ListLoop":
        """The items after the one the owner is running (the ``len(values)``-th)."""
        offset = len(values) + 1
        loop = cls(context, run, worker, item_type, field_nodes, info, path, items[offset:], extra, variables)
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
            if kind not in PLAIN and context._awaitable(item):
                raise context._not_synchronous(self.info, item, self.offset + index)
            if self.extra:
                return context.complete_value(self.item_type, self.field_nodes, self.info, item_path, item, *self.extra)  # type: ignore[attr-defined]
            return context.complete_value(self.item_type, self.field_nodes, self.info, item_path, item)  # type: ignore[attr-defined]
        except Exception as raw_error:
            context._failed(raw_error, self.item_type, self.field_nodes, item_path)  # raises if non-null
            return None


# -- for fiberloader.tracing only: which field a greenlet or a job resolves -----------

# Frames that hold the path of what they resolve: function name -> (local, attribute).
_PATH_FRAMES = {
    "execute_field": ("path", None),  # a resolver running (or parked) in this field
    "_complete_handle": ("path", None),  # a field or item whose resolver returned a handle
    "_complete_deferred": ("deferred", "path"),  # a deferred field, completed after its fetch
    "run_as_owner": ("self", "path"),  # a loop's owner, waiting for its helpers' items
}


def field_path() -> Optional[List[Any]]:
    """The GraphQL path the calling greenlet is resolving now, innermost first, or ``None``.

    For ``fiberloader.tracing`` (called when a job parks): walks the
    calling greenlet's frames up to the first that resolves a field (or
    waits for a loop's items).  Nothing in the scheduler calls it.
    """
    frame: Any = sys._getframe(1)
    while frame is not None:
        found = _PATH_FRAMES.get(frame.f_code.co_name)
        if found is not None:
            value = frame.f_locals.get(found[0])
            if found[1] is not None:
                value = getattr(value, found[1], None)
            if isinstance(value, Path):
                return value.as_list()
        frame = frame.f_back
    return None


def job_field_path(job: Any) -> Optional[List[Any]]:
    """The path of the first field or item a job about to start resolves, or ``None``.

    For ``fiberloader.tracing``: a helper of the executor's loops (its
    next unstarted item) or a deferred field; ``None`` for other jobs.
    """
    loop = getattr(job, "__self__", None)
    if isinstance(loop, ExecutionLoop):
        prefix = loop.path.as_list() if loop.path is not None else []
        index = loop.next
        if index >= len(loop.items):
            return prefix
        if isinstance(loop, ListLoop):
            return prefix + [loop.offset + index]
        return prefix + [loop.items[index][0]]
    path = getattr(job, "path", None)
    return path.as_list() if isinstance(path, Path) else None
