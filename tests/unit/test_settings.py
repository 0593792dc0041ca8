"""Settings are read once from the environment and refuse bad values by name."""

from __future__ import annotations

from dataclasses import Field, fields

import pytest

from app.plumbing.settings import Settings, SettingsError


def test_defaults_match_the_design() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.mongo_url == "mongodb://127.0.0.1:27017"
    assert settings.port == 8000
    assert settings.exchange == "shop.events"


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {"PORT": "9000", "RELAY_ENABLED": "off", "RELAY_POLL_INTERVAL_S": "0.5", "MONGO_DB": "x"}
    )
    assert (settings.port, settings.relay_enabled, settings.relay_poll_interval_s) == (
        9000,
        False,
        0.5,
    )
    assert settings.mongo_db == "x"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "0"),
        ("RELAY_ENABLED", "maybe"),
        ("RELAY_CONFIRM_WINDOW", "0"),
        ("READ_WAIT_MAX_S", "-1"),
        ("DB_POOL_MIN", "50"),
        ("STREAM_MAX_OPEN", "0"),
        ("STREAM_HEARTBEAT_S", "0"),
        ("DASHBOARD_INTERVAL_S", "-1"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


# settings that take one of a few words: another valid word
_CHOICES = {"log_format": "json", "redis_url": "redis://127.0.0.1:6379/1"}


def _other_value(default: object) -> tuple[str, object]:
    """A valid value other than `default`: as the environment spells it, and as parsed."""
    if isinstance(default, bool):
        return ("no" if default else "yes"), not default
    if isinstance(default, int | float):
        return str(default + 1), default + 1
    return f"{default}-other", f"{default}-other"


@pytest.mark.parametrize("field", fields(Settings), ids=lambda f: f.name.upper())
def test_every_field_is_read_from_its_upper_case_name(field: Field[object]) -> None:
    raw, expected = (
        (_CHOICES[field.name],) * 2 if field.name in _CHOICES else _other_value(field.default)
    )
    settings = Settings.from_env({field.name.upper(): raw})
    assert getattr(settings, field.name) == expected
    assert getattr(Settings.from_env({field.name: raw}), field.name) == field.default
