"""dataloader_class(): the one setting that picks the scheduler."""

from __future__ import annotations

from typing import Any

import pytest

from fiberloader import ConfigurationError, Dataloader, NullDataloader, dataloader_class


class Custom(Dataloader):
    pass


def test_default_is_the_synchronous_dataloader(monkeypatch: Any) -> None:
    monkeypatch.delenv("FIBERLOADER_DATALOADER", raising=False)
    assert dataloader_class() is Dataloader


@pytest.mark.parametrize("value, expected", [("sync", Dataloader), ("null", NullDataloader),
                                             (" NULL ", NullDataloader), (Custom, Custom),
                                             ("tests.test_settings:Custom", Custom)])
def test_explicit_setting_wins(monkeypatch: Any, value: Any, expected: type) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "sync")
    assert dataloader_class(value) is expected


def test_environment_variable_is_used_when_nothing_explicit(monkeypatch: Any) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "null")
    assert dataloader_class() is NullDataloader
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "")
    assert dataloader_class() is Dataloader


def test_framework_setting_comes_before_the_environment(monkeypatch: Any) -> None:
    from flask import Flask

    monkeypatch.setenv("FIBERLOADER_DATALOADER", "sync")
    app = Flask(__name__)
    with app.app_context():
        app.config["FIBERLOADER_DATALOADER"] = "null"
        assert dataloader_class() is NullDataloader
        app.config["FIBERLOADER_DATALOADER"] = None  # the framework has nothing to say: fall through
        assert dataloader_class() is Dataloader
        app.config["FIBERLOADER_DATALOADER"] = "nope"
        with pytest.raises(ConfigurationError, match=r"app.config\['FIBERLOADER_DATALOADER'\] is 'nope'"):
            dataloader_class()
    assert dataloader_class() is Dataloader  # outside the app context: the environment


@pytest.mark.parametrize("value, why", [
    ("fast", "not a scheduler name"),
    ("no.such.module:Thing", "importing it failed"),
    ("tests.test_settings:Missing", "importing it failed"),
    ("tests.test_settings:pytest", "is not a fiberloader.Dataloader subclass"),
    (dict, "not a fiberloader.Dataloader subclass"),
    (42, "it is a int"),
])
def test_bad_settings_are_clear_errors(value: Any, why: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        dataloader_class(value)
    assert why in str(info.value)
    assert "'sync', 'async', 'null'" in str(info.value)


def test_bad_environment_variable_names_the_variable(monkeypatch: Any) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "turbo")
    with pytest.raises(ConfigurationError, match=r"\$FIBERLOADER_DATALOADER is 'turbo'"):
        dataloader_class()
