"""The one setting that picks the scheduler.

``dataloader_class(setting)`` resolves, first match wins: the explicit
argument; the web framework's setting (``app.config["FIBERLOADER_DATALOADER"]``
of the current Flask app, ``settings.FIBERLOADER_DATALOADER`` of configured
Django settings, or a provider registered with
``register_setting_provider``); the environment variable
``FIBERLOADER_DATALOADER``; ``"sync"``.  A value is a scheduler class, one of
the names in ``SCHEDULERS``, or a dotted path ``"package.module:Class"``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, List, Tuple, Type

from ._errors import ConfigurationError, short_repr

__all__ = [
    "dataloader_class", "SCHEDULERS", "ENVIRONMENT_VARIABLE", "register_setting_provider",
    "register_scheduler_adapter", "adapt_scheduler", "resolve_first",
]

ENVIRONMENT_VARIABLE = "FIBERLOADER_DATALOADER"

SCHEDULERS = {
    "sync": "fiberloader._dataloader:Dataloader",
    "async": "fiberloader._async:AsyncDataloader",
    "null": "fiberloader._null:NullDataloader",
}

SETTING_NAME = "FIBERLOADER_DATALOADER"  # the key in Flask's app.config and Django's settings


def _flask_setting() -> Any:
    """``current_app.config["FIBERLOADER_DATALOADER"]`` when a Flask app context is active."""
    flask = sys.modules.get("flask")
    if flask is None or not flask.has_app_context():
        return None
    return flask.current_app.config.get(SETTING_NAME)


def _django_setting() -> Any:
    """``settings.FIBERLOADER_DATALOADER`` when Django's settings are configured."""
    conf = sys.modules.get("django.conf")
    if conf is None or not conf.settings.configured:
        return None
    return getattr(conf.settings, SETTING_NAME, None)


_flask_setting.setting_name = f"app.config[{SETTING_NAME!r}]"  # type: ignore[attr-defined]
_django_setting.setting_name = f"settings.{SETTING_NAME}"  # type: ignore[attr-defined]

# Callables returning a framework's setting, or None when that framework has
# nothing to say (not imported, no app context, setting absent).  A framework
# that is not imported costs a dict lookup.
_providers: List[Callable[[], Any]] = [_flask_setting, _django_setting]


# Callables that adapt a scheduler class to a framework (fiberloader.django
# adds its database-connection handling), applied in order by
# adapt_scheduler(): the integrations that make a dataloader per request or
# per execution (wsgi, graphql) call it.
_adapters: List[Callable[[Type[Any]], Type[Any]]] = []


def register_scheduler_adapter(adapter: Callable[[Type[Any]], Type[Any]]) -> None:
    """Let a framework integration adapt the classes ``adapt_scheduler`` returns from now on."""
    if adapter not in _adapters:
        _adapters.append(adapter)


def adapt_scheduler(scheduler: Type[Any]) -> Type[Any]:
    """``scheduler`` as the registered framework adapters make it (unchanged if none)."""
    for adapt in _adapters:
        scheduler = adapt(scheduler)
    return scheduler


def register_setting_provider(provider: Callable[[], Any]) -> None:
    """Let a framework integration supply the setting (tried in order)."""
    if provider not in _providers:
        _providers.append(provider)


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
    candidates = [(setting, "dataloader_class() argument")]
    if setting is None:
        candidates += [(provider(), getattr(provider, "setting_name", "framework setting")) for provider in _providers]
    return resolve_first(*candidates)


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


def setting_name(provider: Callable[[], Any], name: str) -> Callable[[], Any]:
    """Label a provider for error messages (``app.config['FIBERLOADER_DATALOADER']``)."""
    provider.setting_name = name  # type: ignore[attr-defined]
    return provider


