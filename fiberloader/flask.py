"""Flask extension: one dataloader per request, the request runs as a job of it.

::

    from flask import Flask
    from fiberloader.flask import Fiberloader

    app = Flask(__name__)
    app.config["FIBERLOADER_DATALOADER"] = "async"   # optional; before init_app
    Fiberloader(app)                                  # or: ext = Fiberloader(); ext.init_app(app)

For each request the extension makes a fresh dataloader and runs Flask's
``full_dispatch_request`` -- ``before_request`` handlers, the view, error
handlers for what the view raises, ``after_request`` handlers -- as a job of
it.  The run happens inside Flask's request context, so ``request``, ``g``,
``current_app`` and ``session`` work in the view, in every job it starts
(``current_dataloader().map(...)``) and in every ``fetch``.
``fiberloader.current_dataloader()`` gives the dataloader inside jobs, and
``request.environ["fiberloader.dataloader"]`` during the request.

The scheduler is resolved once, in ``init_app``, first match wins: the
``dataloader_class`` argument; ``app.config["FIBERLOADER_DATALOADER"]``
(so set it before ``init_app``); ``$FIBERLOADER_DATALOADER``; ``"sync"``.
A bad value is a ``ConfigurationError`` from ``init_app``, not from the
first request.

A streamed response (a generator) may still ``load`` while the server
iterates it: each step runs as a job of the request's dataloader, with
Flask's request context visible, and ``stream_with_context`` keeps working.
The dataloader's cache and sources are dropped when the server closes the
body -- for any other response, right after the dispatch.  Nothing of the
request outlives a dispatch or a body step (idle workers wait in the
thread's pool, holding nothing of it).

An exception that Flask's own error handling lets escape
``full_dispatch_request`` (no handler for it) propagates unchanged; Flask's
``handle_exception`` then makes the 500 response outside the job, as it
always does.
"""

from __future__ import annotations

import functools
import weakref
from contextvars import copy_context
from typing import Any, Callable, Optional, Type

from flask import Flask, Response, request

from ._dataloader import Dataloader
from ._errors import FiberloaderError
from ._frameworks import SETTING_NAME
from ._settings import resolve_first
from ._web import expose, finish, wrap_body

__all__ = ["Fiberloader", "EXTENSION_NAME", "SETTING_NAME"]

EXTENSION_NAME = "fiberloader"  # the key in app.extensions


class Fiberloader:
    """Flask extension: each request runs in a fresh dataloader.

    Args:
        app: the Flask application; or call :meth:`init_app` later (one
            extension object may serve several applications).
        dataloader_class: a scheduler class or name (``"sync"``,
            ``"async"``, ``"null"``, ``"package.module:Class"``); wins over
            ``app.config["FIBERLOADER_DATALOADER"]``, which wins over
            ``$FIBERLOADER_DATALOADER``; the default is ``"sync"``.
    """

    def __init__(self, app: Optional[Flask] = None, dataloader_class: Any = None) -> None:
        self.dataloader_setting = dataloader_class
        self._classes: "weakref.WeakKeyDictionary[Flask, Type[Dataloader]]" = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Resolve the scheduler for ``app`` and run its requests in dataloaders.

        Reads ``app.config["FIBERLOADER_DATALOADER"]`` now: set it before
        calling this.

        Raises:
            ConfigurationError: the setting names no scheduler (the message
                says which setting).
            FiberloaderError: ``app`` already has a fiberloader extension.
        """
        if EXTENSION_NAME in app.extensions:
            raise FiberloaderError(
                f"A fiberloader extension is already registered on the Flask app {app.name!r}: "
                "call init_app() once per app (each request gets one dataloader)."
            )
        cls = self._resolve(app)
        self._classes[app] = cls
        app.extensions[EXTENSION_NAME] = self
        dispatch = app.full_dispatch_request  # bound now: a subclass's override, or another wrapper

        @functools.wraps(dispatch)
        def full_dispatch_request() -> Response:
            return _dispatch_in_dataloader(cls, dispatch)

        app.full_dispatch_request = full_dispatch_request  # type: ignore[method-assign]

    def dataloader_class_for(self, app: Flask) -> Type[Dataloader]:
        """The scheduler class ``init_app`` resolved for ``app``.

        Raises:
            KeyError: ``init_app(app)`` was not called on this extension.
        """
        return self._classes[app]

    def _resolve(self, app: Flask) -> Type[Dataloader]:
        return resolve_first(
            (self.dataloader_setting, "Fiberloader(dataloader_class=...)"),
            (app.config.get(SETTING_NAME), f"app.config[{SETTING_NAME!r}]"),
        )


def _dispatch_in_dataloader(cls: Type[Dataloader], dispatch: Callable[[], Response]) -> Response:
    """Flask's dispatch as a job of a new dataloader; a streamed body steps in its jobs."""
    dataloader = cls()
    forget = expose(request.environ, dataloader)
    try:
        response = dataloader._call_as_job(dispatch)
    except BaseException:
        finish(dataloader, forget)
        raise
    if not response.is_streamed or response.direct_passthrough:
        # A complete body, or one handed to the server untouched (send_file's
        # file wrapper): nothing of it can load.
        finish(dataloader, forget)
        return response
    # The server iterates the body after Flask has popped the request
    # context: each step runs in a copy of the dispatch's context, so jobs and
    # fetches see the request (see fiberloader._web.JobBody).
    response.response = wrap_body(dataloader, response.response, forget, copy_context())
    return response
