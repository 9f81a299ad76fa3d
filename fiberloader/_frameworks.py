"""The names of fiberloader's settings, and where a web framework keeps them.

A leaf module (it imports nothing of fiberloader): the scheduler core
(``fiberloader._extensions``) and the integrations (``fiberloader._settings``)
both read settings through it.
"""

from __future__ import annotations

import sys
from typing import Any, Tuple

__all__ = [
    "SETTING_NAME", "EXTENSIONS_SETTING", "TRACE_VARIABLE", "LAZY_LOADS_SETTING", "KEEP_GREENLETS_SETTING",
    "framework_setting", "django_setting",
]

SETTING_NAME = "FIBERLOADER_DATALOADER"  # the key in Flask's app.config and Django's settings
EXTENSIONS_SETTING = "FIBERLOADER_EXTENSIONS"  # "package.module:Factory" paths
TRACE_VARIABLE = "FIBERLOADER_TRACE"  # a path: every dataloader writes a Perfetto trace there
LAZY_LOADS_SETTING = "FIBERLOADER_BATCH_LAZY_LOADS"  # Django: batch the ORM's lazy loads in jobs
KEEP_GREENLETS_SETTING = "FIBERLOADER_KEEP_GREENLETS"  # the bound of each thread's pool of idle workers


def framework_setting(name: str) -> Tuple[Any, str]:
    """``(value, where it comes from)`` of a setting of the running web framework.

    ``current_app.config[name]`` when a Flask app context is active, else
    ``settings.<name>`` when Django's settings are configured; ``(None,
    "")`` when neither has it.  A framework that is not imported costs a
    dict lookup: nothing here imports one.
    """
    flask = sys.modules.get("flask")
    if flask is not None and flask.has_app_context():
        value = flask.current_app.config.get(name)
        if value is not None:
            return value, f"app.config[{name!r}]"
    value = django_setting(name)
    if value is not None:
        return value, f"settings.{name}"
    return None, ""


def django_setting(name: str) -> Any:
    """``settings.<name>`` of configured Django settings, else ``None``."""
    conf = sys.modules.get("django.conf")
    if conf is not None and conf.settings.configured:
        return getattr(conf.settings, name, None)
    return None
