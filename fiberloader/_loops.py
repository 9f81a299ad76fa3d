"""Split loops: loops over items that other workers take over when the runner waits.

A job that loops over items -- ``Dataloader.map``, or the GraphQL executor
going over the fields of an object and the items of a list -- runs the items
itself, one after another, at no extra cost.  When the worker running a
loop parks (an item waits for a key), the items nobody has started must not
stall behind it, or their loads would miss the batch.  So on every park the
scheduler queues one *helper* job per loop on the parking worker's stack
that still has unstarted items (innermost first, the order plain code would
take).  The worker that takes the helper goes on with the remaining items,
and if it parks too, queues the next helper.  Each loop therefore uses one
greenlet per item that actually waits, and none when nothing waits.

The loop's owner (the job that started it), once no item is left to start,
waits for the items other workers are still running; the worker that
finishes the last one puts the owner back on the scheduler's ready queue.

Under AsyncDataloader an item may also block in I/O.  The hub learns it
when its switch to the runner returns early (the guard of ``_async``), or,
for a runner already detached from the hub, because the runner noted
itself before the item (``_may_block_in_loop``); either way the hub then
splits the loops on the runner's stack as a park does.
"""

from __future__ import annotations

from contextvars import copy_context
from typing import Any, Callable, Dict, List, Tuple

from greenlet import getcurrent

from ._fibers import Cancelled, Worker


__all__ = ["Waitable", "SplitLoop", "MapLoop", "Mark", "NO_MARK"]


class Mark:
    """A loop its owner runs inline, that becomes a :class:`SplitLoop` only if the owner parks.

    The GraphQL executor goes over an object's fields and a list's items
    itself, at the cost of one ``Mark`` on its worker's stack of loops
    (``Worker.groups``).  When the worker parks, the scheduler calls
    :meth:`take_over` on each mark of its stack: ``make(run, worker,
    *args)`` builds the loop over the items not started yet, which helpers
    then run.  The owner sees ``loop`` set when its item returns, and from
    then on runs the loop as its owner.
    """

    __slots__ = ("loop", "make", "args")

    def __init__(self, make: Callable[..., "SplitLoop"], args: Tuple[Any, ...]) -> None:
        self.loop: Any = None  # the SplitLoop, made when the owner first parks
        self.make = make
        self.args = args

    def take_over(self, run: Any, worker: Worker) -> Any:
        """The split loop of the unstarted items (made on the first call)."""
        loop = self.loop
        if loop is None:
            loop = self.loop = self.make(run, worker, *self.args)
        return loop


NO_MARK = Mark(None, ())  # type: ignore[arg-type]  # the mark of a loop nobody can take over (never set)


class Waitable:
    """A count of unfinished work that one worker, the owner, can wait for."""

    __slots__ = ("dataloader", "run", "remaining", "owner", "waiting")

    def __init__(self, dataloader: Any, run: Any, remaining: int, owner: Worker) -> None:
        self.dataloader = dataloader
        self.run = run
        self.remaining = remaining
        self.owner = owner
        self.waiting = False  # the owner is parked until remaining == 0

    def wait(self) -> None:
        """The owner: park until nothing remains."""
        if not self.remaining:
            return
        owner = self.owner
        owner.waiting = self
        self.waiting = True
        try:
            while self.waiting:
                self.dataloader._park(self.run, owner, None)
        finally:
            self.waiting = False  # also when a timeout ended the wait: no resume later
            owner.waiting = None

    def _finished(self, count: int) -> None:
        self.remaining -= count
        if not self.remaining and self.waiting:
            self.waiting = False
            self.dataloader._make_ready(self.run, self.owner)


class SplitLoop(Waitable):
    """A loop over ``items`` that workers can share; subclasses say what an item does."""

    __slots__ = ("items", "next", "helper_queued")

    def __init__(self, dataloader: Any, run: Any, items: List[Any], owner: Worker) -> None:
        super().__init__(dataloader, run, len(items), owner)
        self.items = items
        self.next = 0  # index of the first item nobody has started
        self.helper_queued = False

    def run_item(self, index: int) -> None:
        """Run item ``index`` and keep its outcome; an exception it lets out ends the runner."""
        raise NotImplementedError

    def work(self) -> None:
        """Run unstarted items until none is left: the owner's loop, and each helper's."""
        self.helper_queued = False
        worker: Worker = getcurrent()  # type: ignore[assignment]
        groups = worker.groups
        groups.append(self)
        items = self.items
        concurrent = self.run.concurrent
        try:
            while self.next < len(items):
                index = self.next
                self.next = index + 1
                if concurrent and self.next < len(items):
                    self.dataloader._may_block_in_loop(self.run)
                try:
                    self.run_item(index)
                finally:
                    self._finished(1)
        finally:
            groups.pop()

    def stop(self) -> None:
        """Start no more items; those not started count as finished."""
        unstarted = len(self.items) - self.next
        if unstarted > 0:
            self.next = len(self.items)
            self._finished(unstarted)


class MapLoop(SplitLoop):
    """``Dataloader.map``: each item is a job of its own, in a copy of the caller's context.

    Every item runs, even after one failed; ``outcome`` raises the first
    failing item's exception (in item order).
    """

    __slots__ = ("fn", "results", "errors", "context")

    def __init__(
        self, dataloader: Any, run: Any, fn: Callable[[Any], Any], items: List[Any], owner: Worker
    ) -> None:
        super().__init__(dataloader, run, items, owner)
        self.fn = fn
        self.results: List[Any] = [None] * len(items)
        self.errors: Dict[int, BaseException] = {}
        self.context = copy_context()

    def work(self) -> None:
        worker = getcurrent()
        own_context = worker.gr_context
        try:
            super().work()
        finally:
            worker.gr_context = own_context

    def run_item(self, index: int) -> None:
        getcurrent().gr_context = self.context.copy()
        try:
            self.results[index] = self.fn(self.items[index])
        except Exception as error:
            self.errors[index] = error
        except Cancelled as cancelled:  # the caller of map() stopped waiting
            if cancelled.loop is not self:
                raise

    def outcome(self) -> List[Any]:
        if self.errors:
            raise self.errors[min(self.errors)]
        return self.results
