"""The read cache's settings, and that without REDIS_URL the cache costs nothing: no redis
import, no connection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.plumbing.settings import Settings, SettingsError


def test_the_cache_is_off_by_default() -> None:
    assert Settings.from_env({}).redis_url == ""


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380/2", "unix:///run/redis.sock"]
)
def test_redis_urls_are_accepted(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


def test_the_url_is_not_shown_in_the_settings_repr() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://:s3cret@127.0.0.1:6379/0"})
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("CACHE_KEY_PREFIX", ""),
        ("CACHE_KEY_PREFIX", "a b"),
        ("CACHE_KEY_PREFIX", "a\nb"),
        ("CACHE_TTL_S", "0"),
        ("CACHE_TIMEOUT_S", "-1"),
        ("CACHE_RETRY_AFTER_S", "0"),
        ("CACHE_TIMEOUT_S", "soon"),
    ],
)
def test_a_bad_cache_setting_fails_the_start_naming_it(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", name: value})


_SCRIPT = """
import asyncio, sys
from app.main import create_app
from app.plumbing.settings import Settings
from app.queries.cache import open_read_cache

async def main(url):
    settings = Settings(redis_url=url)
    create_app(settings)
    async with open_read_cache(settings) as cache:
        assert (cache is None) == (url == ""), cache
    print("redis" in sys.modules)

asyncio.run(main(sys.argv[1]))
"""


def _imports_redis(url: str) -> bool:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() == "True"


def test_without_redis_url_redis_is_not_even_imported() -> None:
    assert not _imports_redis("")
    assert _imports_redis("redis://127.0.0.1:1/0")  # the check sees an import when there is one
