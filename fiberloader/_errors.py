"""The FiberloaderError family.

Every error fiberloader raises itself subclasses :class:`FiberloaderError`,
and also the nearest built-in kind where there is one, so ``except
TypeError`` keeps working for an unhashable key.  Each error keeps the data
it talks about as attributes (``.data_source``, ``.key``, ``.keys``) and
bounds every value it prints, so a huge key list never floods a log.

No attribute is called ``source``, ``positions``, ``nodes``, ``path``,
``locations`` or ``message``: graphql-core's ``located_error()`` reads those
from any exception a resolver raises, and a fiberloader ``Source`` where it
expects a GraphQL ``Source`` crashed the whole execution.
"""

from __future__ import annotations

import reprlib
from typing import Any, Iterable, Optional, Sequence, Tuple

__all__ = [
    "FiberloaderError",
    "ConfigurationError",
    "FiberloaderTypeError",
    "SourceTypeError",
    "KeyTypeError",
    "FetchError",
    "FetchTimeoutError",
    "NotRunningError",
    "DeadlockError",
    "InvariantError",
    "short_repr",
    "class_name",
    "not_running",
]

_repr = reprlib.Repr()
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 8
_repr.maxstring = _repr.maxother = 60
_repr.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a readable length, never raising."""
    try:
        return _repr.repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"<{type(value).__name__} object>"


def class_name(cls: type) -> str:
    """``cls.__qualname__`` without the ``<locals>`` of classes made in functions."""
    return cls.__qualname__.rsplit("<locals>.", 1)[-1]


class FiberloaderError(Exception):
    """Base class of every error fiberloader raises itself."""


class SourceKeyError(FiberloaderError):
    """An error about one key of one source: ``.data_source`` and ``.key`` say which."""

    def __init__(self, message: str, data_source: Any = None, key: Any = None) -> None:
        super().__init__(message)
        self.data_source = data_source
        self.key = key


class ConfigurationError(FiberloaderError, ValueError):
    """A bad setting: ``fiber_limit``, ``max_batch_size``, scheduler name."""


class FiberloaderTypeError(FiberloaderError, TypeError):
    """A value of the wrong type was passed to fiberloader (a job that is not callable)."""


class SourceTypeError(FiberloaderTypeError):
    """``with_()`` was given something that is not a :class:`Source` subclass."""


class KeyTypeError(SourceKeyError, FiberloaderTypeError):
    """A key (after ``result_key_for``) is not hashable, or keys are not a list of keys.

    Also raised when ``load_all``/``request_all`` get a string or a
    non-iterable, and ``merge`` a non-mapping: ``.key`` holds what was given.
    """


class FetchError(FiberloaderError, ValueError):
    """``fetch()`` broke its contract: a non-sequence, or the wrong length.

    Raised by every ``load`` that waited on a key of that batch.
    """

    def __init__(
        self, message: str, data_source: Any = None, keys: Sequence[Any] = (), result: Any = None
    ) -> None:
        super().__init__(message)
        self.data_source = data_source
        self.keys = list(keys)
        self.result = result


class FetchTimeoutError(FiberloaderError, TimeoutError):
    """A ``fetch()`` ran longer than its source's ``fetch_timeout``.

    Raised by every ``load`` that waited on a key of that batch.  The keys
    are not cached: a later load fetches them again.  ``.data_source``,
    ``.keys`` and ``.timeout`` say which fetch and what limit.
    """

    def __init__(self, message: str, data_source: Any = None, keys: Sequence[Any] = (), timeout: Any = None) -> None:
        super().__init__(message)
        self.data_source = data_source
        self.keys = list(keys)
        self.timeout = timeout


class NotRunningError(SourceKeyError, RuntimeError):
    """A call that needs a running job was made outside one."""


class DeadlockError(FiberloaderError, RuntimeError):
    """No job and no fetch can proceed: a circular dependency, or a limit.

    ``waits`` lists ``(source, keys)`` pairs: what each stuck job or fetch
    was waiting for (``source`` is ``None`` for a wait that is not on keys).
    """

    def __init__(self, message: str, waits: Iterable[Tuple[Any, Sequence[Any]]] = ()) -> None:
        super().__init__(message)
        self.waits = list(waits)


class InvariantError(FiberloaderError, RuntimeError):
    """fiberloader's own bookkeeping went wrong: a bug, please report it."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"Invariant violated: {what}. This is a bug in fiberloader; please report it "
            "with the code that triggered it."
        )


def describe_wait(source: Optional[Any], keys: Sequence[Any]) -> str:
    if source is None:
        return "a map() or yield_() that never completed"
    return f"{source!r} keys {short_repr(list(keys))}"


def not_running(
    dataloader: Any, what: str, source: Any, key: Any, running: Any, request_over: bool
) -> NotRunningError:
    """``what`` (a load, ``map``, ...) was called where no job of ``dataloader`` runs.

    ``running``: the dataloader of the calling code's context when
    ``dataloader`` is not running (``None`` when it is, or when none is).
    """
    name = type(dataloader).__name__
    if dataloader._run is not None:
        return NotRunningError(
            f"{what} was called from a greenlet that is not one of this dataloader's jobs "
            f"({name} is running, but this code runs outside it: in another "
            "dataloader's job, or in a thread or greenlet of your own). Call it from the job "
            "itself, or use that code's own dataloader (fiberloader.current_dataloader()).",
            data_source=source,
            key=key,
        )
    if source is not None and running is not None and running is not dataloader:
        fix = (
            "the source belongs to another dataloader than the one running this job. "
            "Get sources from the running one: "
            f"fiberloader.current_dataloader().with_({class_name(type(source))}, ...)."
        )
    elif request_over:
        fix = (
            "its request is over (the response was returned). Load in the view, or in "
            "the streamed body; a teardown handler or code after the response has no "
            "dataloader."
        )
    else:
        fix = (
            f"Call it from inside a job: {name}.with_dataloading(fn), or "
            "dataloader.append_job(fn) then dataloader.run(); in a web app, run each "
            "request's handler as a job of its own dataloader."
        )
    return NotRunningError(
        f"{what} needs a running dataloader, but {name} is not running"
        f"{': ' if fix[0].islower() else '. '}{fix}",
        data_source=source,
        key=key,
    )
