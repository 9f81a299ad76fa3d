"""WSGI middleware: one dataloader per request, the application runs as a job of it.

::

    from fiberloader.wsgi import DataloaderMiddleware

    application = DataloaderMiddleware(application)            # the setting chain
    application = DataloaderMiddleware(application, "async")   # or explicit

Inside the application (and every job and fetch it starts)
``fiberloader.current_dataloader()`` and ``environ["fiberloader.dataloader"]``
give the request's dataloader.  A body that is a generator may still
``load`` while the server iterates it; the dataloader is finished in the
body's ``close()``, as the WSGI contract has it, and its cache and sources
are dropped there.  Nothing of the request outlives a call into the
application or a step of its body (idle workers wait in the thread's pool,
holding nothing of it).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ._settings import dataloader_class as _dataloader_class
from ._settings import framework_extensions
from ._web import ENVIRON_KEY, expose, finish, wrap_body

__all__ = ["DataloaderMiddleware", "ENVIRON_KEY"]


class DataloaderMiddleware:
    """Wrap a WSGI application so that each request runs in a fresh dataloader.

    Args:
        app: the WSGI application.
        dataloader_class: a scheduler class or name (``"sync"``, ``"async"``,
            ``"null"``, ``"package.module:Class"``); ``None`` follows
            ``fiberloader.dataloader_class()``: the framework's setting, then
            ``$FIBERLOADER_DATALOADER``, then ``"sync"``.  It is resolved
            here, once: a bad value fails at start-up, not at the first
            request.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], dataloader_class: Any = None) -> None:
        self.app = app
        self.dataloader_class = _dataloader_class(dataloader_class)

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:  # type: ignore[type-arg]
        dataloader = self.dataloader_class()
        extra = framework_extensions()  # Django's connections, in a Django process
        if extra:
            dataloader._add_extensions(*extra)
        forget = expose(environ, dataloader)
        try:
            body = dataloader._call_as_job(lambda: self.app(environ, start_response))
        except BaseException:
            finish(dataloader, forget)  # as after a body: the cache and the sources go too
            raise
        return wrap_body(dataloader, body, forget)
