"""What the web integrations share: run a call as a job, stream a body in jobs.

A request gets one dataloader.  ``Dataloader._call_as_job`` runs the
application (or the view) as a job of it, to the end of ``run()``: no
greenlet it started is running or holds anything of the request when it
returns (idle ones may wait in the thread's pool).  A response body that is iterated later (a
generator) is wrapped by ``JobBody``: each ``next()`` is one more run of the
same dataloader, so the body may still ``load`` and still sees the
request's cache; ``close()`` closes the body in a job, then empties the
cache.  Nothing of the request outlives ``close()``.
"""

from __future__ import annotations

from contextvars import Context, copy_context
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, TypeVar

from ._dataloader import Dataloader

__all__ = ["ENVIRON_KEY", "expose", "finish", "JobBody", "wrap_body"]

T = TypeVar("T")

_DONE: Any = object()  # the body's iterator is exhausted

ENVIRON_KEY = "fiberloader.dataloader"  # where the WSGI environ holds the request's dataloader


def expose(environ: Dict[str, Any], dataloader: Dataloader) -> Callable[[], None]:
    """Put ``dataloader`` in ``environ[ENVIRON_KEY]``; return what takes it out again."""
    environ[ENVIRON_KEY] = dataloader

    def forget() -> None:
        if environ.get(ENVIRON_KEY) is dataloader:
            del environ[ENVIRON_KEY]

    return forget


class JobBody:
    """A WSGI response body whose iteration and ``close()`` run as jobs of the request's dataloader.

    Two contexts (``contextvars``) are involved.  Each step is a run of the
    dataloader made in ``context`` (default: the caller's), so the workers of
    that run -- jobs and fetches -- see what ``context`` holds: Flask passes
    the context of its dispatch, so they see the request.  The body itself
    steps in one context of its own, kept from its first step to its
    ``close()``, so that what it sets is still there at the next step (Flask's
    ``stream_with_context`` pushes the request context at its first step and
    pops it at its end).
    """

    def __init__(
        self, dataloader: Dataloader, body: Iterable[Any], on_close: Optional[Callable[[], None]] = None,
        context: Optional[Context] = None,
    ) -> None:
        self._dataloader: Optional[Dataloader] = dataloader
        self._body: Optional[Iterable[Any]] = body
        self._iterator: Optional[Iterator[Any]] = None
        self._on_close = on_close
        self._context = context
        self._body_context: Optional[Context] = None

    def __iter__(self) -> "JobBody":
        return self

    def __next__(self) -> Any:
        if self._dataloader is None:  # closed
            raise StopIteration
        chunk = self._in_job(self._step)
        if chunk is _DONE:
            raise StopIteration
        return chunk

    def _in_job(self, fn: Callable[[], T]) -> T:
        """``fn()`` as a job, in the body's own context, in a run made in ``context``."""

        def job() -> T:
            if self._body_context is None:
                self._body_context = copy_context()
            return self._body_context.run(fn)

        dataloader: Dataloader = self._dataloader  # type: ignore[assignment]
        if self._context is None:
            return dataloader._call_as_job(job)
        return self._context.run(dataloader._call_as_job, job)

    def _step(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self._body)  # type: ignore[arg-type]
        try:
            return next(self._iterator)
        except StopIteration:  # not out of the job: run() would raise it
            return _DONE

    def close(self) -> None:
        """Close the body (in a job: its cleanup may load), then drop the request's cache."""
        dataloader, body, on_close = self._dataloader, self._body, self._on_close
        if dataloader is None:
            return
        try:
            close = getattr(body, "close", None)
            if close is not None:
                self._in_job(close)
        finally:
            self._dataloader = self._body = self._iterator = self._on_close = None
            self._context = self._body_context = None
            finish(dataloader, on_close)


def finish(dataloader: Dataloader, on_close: Optional[Callable[[], None]] = None) -> None:
    """The request is over: forget its cache and its sources (and what they hold)."""
    try:
        dataloader._end_request()
    finally:
        if on_close is not None:
            on_close()


def wrap_body(
    dataloader: Dataloader, body: Iterable[Any], on_close: Optional[Callable[[], None]] = None,
    context: Optional[Context] = None,
) -> Iterable[Any]:
    """``body`` as it may be returned to the server: a ``JobBody`` unless it cannot load.

    A list or tuple of chunks is already complete: it is returned as it is,
    after the cache is dropped.  ``context``: see ``JobBody``.
    """
    if isinstance(body, (list, tuple)):
        finish(dataloader, on_close)
        return body
    return JobBody(dataloader, body, on_close, context)
