"""The one setting that picks the scheduler.

``dataloader_class(setting)`` resolves, first match wins: the explicit
argument; the web framework's setting (``app.config["FIBERLOADER_DATALOADER"]``
of the current Flask app, ``settings.FIBERLOADER_DATALOADER`` of configured
Django settings); the environment variable
``FIBERLOADER_DATALOADER``; ``"sync"``.  A value is a scheduler class, one of
the names in ``SCHEDULERS``, or a dotted path ``"package.module:Class"``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Tuple, Type

from ._errors import ConfigurationError, short_repr

# The setting names, and the lookup of a web framework's setting, live in a leaf
# module: the scheduler core reads FIBERLOADER_EXTENSIONS through it without
# importing this one (which imports the scheduler).
from ._frameworks import SETTING_NAME, framework_setting

__all__ = [
    "dataloader_class", "SCHEDULERS", "ENVIRONMENT_VARIABLE", "resolve_first", "framework_extensions",
]

ENVIRONMENT_VARIABLE = "FIBERLOADER_DATALOADER"

SCHEDULERS = {
    "sync": "fiberloader._dataloader:Dataloader",
    "async": "fiberloader._async:AsyncDataloader",
    "null": "fiberloader._null:NullDataloader",
}

_django_connections: Any = None  # the DjangoConnections the integrations share


def framework_extensions() -> Tuple[Any, ...]:
    """What the integrations (WSGI, GraphQL) attach to the dataloaders they make.

    In a configured Django process: :class:`fiberloader.django.DjangoConnections`,
    whatever was imported first.  Else nothing.
    """
    global _django_connections
    conf = sys.modules.get("django.conf")
    if conf is None or not conf.settings.configured:
        return ()
    if _django_connections is None:
        from .django import DjangoConnections

        _django_connections = DjangoConnections()
    return (_django_connections,)


def dataloader_class(setting: Any = None) -> "Type[Any]":
    """The scheduler class the integrations instantiate.

    Args:
        setting: a ``Dataloader`` subclass, ``"sync"``, ``"async"``,
            ``"null"``, or ``"package.module:Class"``; ``None`` looks at the
            framework's setting, then ``$FIBERLOADER_DATALOADER``, then
            uses ``"sync"``.

    Raises:
        ConfigurationError: the value names no scheduler.
    """
    if setting is not None:
        return resolve_first((setting, "dataloader_class() argument"))
    return resolve_first(framework_setting(SETTING_NAME))


def resolve_first(*candidates: Tuple[Any, str]) -> "Type[Any]":
    """The scheduler of the first ``(setting, where it comes from)`` that is not ``None``.

    After the candidates: ``$FIBERLOADER_DATALOADER``, then ``"sync"``.  The
    integrations call it with their own settings first, so that an error
    names the setting it came from.

    Raises:
        ConfigurationError: that setting names no scheduler.
    """
    environment = (os.environ.get(ENVIRONMENT_VARIABLE) or None, f"${ENVIRONMENT_VARIABLE}")
    for setting, source in (*candidates, environment):
        if setting is not None:
            return _resolve(setting, source)
    return _resolve("sync", "the default")


def _resolve(setting: Any, source: str) -> "Type[Any]":
    from ._dataloader import Dataloader

    if isinstance(setting, type):
        if issubclass(setting, Dataloader):
            return setting
        raise _bad(setting, source, "it is a class, but not a fiberloader.Dataloader subclass")
    if not isinstance(setting, str):
        raise _bad(setting, source, f"it is a {type(setting).__name__}")
    name = setting.strip()
    path = SCHEDULERS.get(name.lower(), name)
    if ":" not in path:
        raise _bad(setting, source, "it is not a scheduler name")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise _bad(setting, source, f"importing it failed: {error}") from error
    if not (isinstance(found, type) and issubclass(found, Dataloader)):
        raise _bad(setting, source, f"{path} is not a fiberloader.Dataloader subclass")
    return found


def _bad(setting: Any, source: str, why: str) -> ConfigurationError:
    names = ", ".join(repr(name) for name in SCHEDULERS)
    return ConfigurationError(
        f"{source} is {short_repr(setting)}, which names no fiberloader scheduler ({why}). "
        f"Use one of {names}, a Dataloader subclass, or 'package.module:Class'."
    )
