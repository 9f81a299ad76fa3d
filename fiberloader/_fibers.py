"""Greenlet plumbing shared by the schedulers.

* :func:`current_dataloader` -- the dataloader running the current job,
  found through a ``ContextVar`` so it follows contexts into greenlets.
* :class:`Worker` -- the greenlet class the schedulers run jobs and fetches
  in.  A worker carries two attributes: ``owner`` (the run it belongs to;
  the scheduler checks it before parking) and ``waiting`` (what it is parked
  on, for deadlock reports).
* :func:`copy_error` -- the shallow per-raise copy of a cached error.

Nothing here imports a scheduler, so both schedulers and the Source can use
it without import cycles.
"""

from __future__ import annotations

import copy
from contextvars import ContextVar
from typing import Any, List

from greenlet import greenlet

__all__ = ["current_dataloader", "CURRENT", "Worker", "Cancelled", "copy_error"]

# The running dataloader (typed Any: this module sits below the schedulers).
CURRENT: "ContextVar[Any]" = ContextVar(
    "fiberloader.current_dataloader", default=None
)


def current_dataloader() -> Any:
    """Return the dataloader running the current job or fetch, or ``None``.

    It is set inside every job and fetch of a running dataloader (also in
    greenlets they start, as long as they copy the context), and nowhere
    else.
    """
    return CURRENT.get()


class Worker(greenlet):
    """A greenlet that runs jobs and fetches for one run of a dataloader.

    Slots rather than instance attributes: no dict per greenlet, one
    allocation less for the garbage collector to count and walk.
    """

    __slots__ = ("owner", "waiting", "batch", "groups")

    # No __init__ of its own: greenlet's runs in C (a Python one, with its
    # super() call, cost ~0.4 us per worker), and the one place that makes
    # workers (Run.hand) sets every slot:
    owner: Any  # the run this worker belongs to
    waiting: Any  # what it is parked on: (source, keys) or a loop; else None
    batch: Any  # (source, batch) while it runs a fetch; else None
    groups: List[Any]  # the split loops (and marks) on its stack, outermost first


class Cancelled(BaseException):
    """Raised by the scheduler in a job or fetch whose outcome nobody waits for any more.

    A ``BaseException``, like ``GreenletExit``, so that ``except Exception``
    in user code does not swallow it.  ``loop`` is the ``map()`` loop whose
    items are stopped (its caller timed out), ``None`` for a fetch; ``batch``
    the fetch's batch.  The scheduler throws it only while the worker is
    still doing that, and it ends that item or fetch quietly.
    """

    def __init__(self, loop: Any = None, batch: Any = None) -> None:
        super().__init__()
        self.loop = loop
        self.batch = batch

    def applies_to(self, worker: Worker) -> bool:
        """Whether ``worker`` is still running what this cancels."""
        if worker.dead:
            return False
        if self.loop is None:
            return worker.batch is self.batch
        return self.loop in worker.groups


def copy_error(error: BaseException) -> BaseException:
    """A fresh shallow copy of ``error``: same class, same args.

    A cached error is raised by every ``load`` of its key.  Raising the one
    object everywhere would pile tracebacks, ``__notes__`` and GraphQL paths
    onto it (graphql-ruby #5020), so each raise gets its own copy, which
    keeps the original's traceback, cause and context for the reader.  An
    exception class that cannot be copied is raised as it is.
    """
    try:
        clone = copy.copy(error)
    except Exception:
        return error
    if type(clone) is not type(error):  # a __reduce__ that returns something else
        return error
    notes = getattr(error, "__notes__", None)
    if notes is not None:
        clone.__notes__ = list(notes)
    clone.__cause__ = error.__cause__
    clone.__context__ = error.__context__
    clone.__suppress_context__ = error.__suppress_context__
    clone.__traceback__ = error.__traceback__
    return clone
