"""fiberloader: graphql-ruby's Fiber-based Dataloader for Python, on greenlets.

Plain synchronous code batches its data loading: each job runs in a
greenlet that pauses when it asks for a key that is not cached; when no job
can go on, every source's ``fetch(keys)`` is called once with all pending
keys and the jobs resume.
"""

from ._dataloader import Dataloader, DataloaderStats
from ._errors import (
    ConfigurationError,
    DeadlockError,
    FetchError,
    FetchTimeoutError,
    FiberloaderError,
    FiberloaderTypeError,
    InvariantError,
    KeyTypeError,
    NotRunningError,
    SourceTypeError,
)
from ._extensions import Extension
from ._fibers import current_dataloader
from ._null import NullDataloader
from ._settings import dataloader_class
from ._source import Request, RequestAll, Source
from ._stats import SourceStats
from ._worker import release_idle_greenlets

__version__ = "0.1.0"

__all__ = (
    "AsyncDataloader",
    "ConfigurationError",
    "Dataloader",
    "DataloaderStats",
    "DeadlockError",
    "Extension",
    "FetchError",
    "FetchTimeoutError",
    "FiberloaderError",
    "FiberloaderTypeError",
    "InvariantError",
    "KeyTypeError",
    "NotRunningError",
    "NullDataloader",
    "Request",
    "RequestAll",
    "Source",
    "SourceStats",
    "SourceTypeError",
    "current_dataloader",
    "dataloader_class",
    "release_idle_greenlets",
)



def __getattr__(name: str) -> object:
    # AsyncDataloader needs gevent: import it (and gevent) only when asked for,
    # so `import fiberloader` stays cheap and works without gevent.
    if name == "AsyncDataloader":
        from ._async import AsyncDataloader

        return AsyncDataloader
    raise AttributeError(f"module 'fiberloader' has no attribute {name!r}")
