"""Settings: the environment read once, at start, into one frozen object.

No other module reads the environment. A bad value fails the start with a message that names
the variable, instead of surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = "shop"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: str = "text"  # or "json": one object per line (app/plumbing/logs.py)
    # on when any OTEL_* variable is set (app/plumbing/tracing.py), unless TRACING says
    tracing: bool = False

    # PostgreSQL pool and command handling
    db_pool_min: int = 2
    db_pool_max: int = 16
    command_timeout_s: float = 10.0
    idempotency_ttl_s: int = 86_400

    # Broker topology (names are settings so tests and tenants can use their own)
    exchange: str = "shop.events"
    projector_queue: str = "shop.projector"
    parked_queue: str = "shop.projector.parked"

    # Relay
    relay_enabled: bool = True
    relay_poll_interval_s: float = 0.2
    relay_batch_size: int = 1000
    relay_confirm_window: int = 256
    relay_name: str = "main"

    # Projector and queries
    projector_enabled: bool = True
    projector_prefetch: int = 512
    projector_batch_size: int = 256
    projector_idle_check_s: float = 1.0
    projector_poison_attempts: int = 3
    read_wait_max_s: float = 5.0
    read_poll_interval_s: float = 0.05
    ready_max_lag: int = 10_000
    # how long `rebuild` keeps the generation it switched away from, for `rebuild --rollback`
    read_model_keep_previous_s: int = 86_400

    # Server-sent event streams (app/queries/streams.py, app/operations/dashboard.py)
    stream_heartbeat_s: float = 15.0
    stream_max_open: int = 1000  # per replica, every stream counted; beyond it 503
    dashboard_interval_s: float = 1.0  # how often /ops/stream sends the pipeline's state

    # Read cache (README "The read cache", app/queries/cache.py): off unless REDIS_URL is set
    redis_url: str = dataclasses.field(default="", repr=False)  # may carry a password
    cache_key_prefix: str = "shop"  # every key starts with `<prefix>:<read-model database>:`
    cache_ttl_s: float = 60.0  # an entry's life: the bound on staleness if invalidations fail
    cache_timeout_s: float = 0.25  # longest wait for Redis before a read goes to MongoDB
    cache_retry_after_s: float = 1.0  # after a Redis failure, MongoDB only for this long

    # Access control (README "Access control"). app/plumbing/access.py checks these when the
    # app is built (the key must be parsed), naming the variable, so a bad one fails the start.
    auth_mode: str = "off"  # off | jwt
    auth_jwt_secret: str = dataclasses.field(default="", repr=False)  # HS256
    auth_jwt_public_key: str = ""  # RS256 or ES256, PEM
    auth_jwt_issuer: str = ""
    auth_jwt_audience: str = ""
    metrics_token: str = dataclasses.field(default="", repr=False)  # then GET /metrics wants it

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: os.environ), upper-case field names."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(field.name.upper())
            if raw is None:
                continue
            values[field.name] = _parse(field.name.upper(), raw, _PARSERS[str(field.type)])
        values.setdefault("tracing", any(name.startswith("OTEL_") for name in env))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if not 1 <= self.port <= 65_535:
            raise SettingsError(f"PORT must be 1..65535, got {self.port}")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT must be text or json, got {self.log_format!r}")
        if not 1 <= self.db_pool_min <= self.db_pool_max:
            raise SettingsError("DB_POOL_MIN must be >= 1 and <= DB_POOL_MAX")
        for name in (
            "relay_confirm_window",
            "relay_batch_size",
            "projector_prefetch",
            "projector_batch_size",
            "projector_poison_attempts",
            "idempotency_ttl_s",
            "ready_max_lag",
            "read_model_keep_previous_s",
            "stream_max_open",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()} must be >= 1")
        for name in (
            "relay_poll_interval_s",
            "projector_idle_check_s",
            "read_wait_max_s",
            "read_poll_interval_s",
            "command_timeout_s",
            "stream_heartbeat_s",
            "dashboard_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be > 0")
        _check_cache(self)


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _check_cache(settings: Settings) -> None:
    if settings.redis_url and urlsplit(settings.redis_url).scheme not in _REDIS_SCHEMES:
        raise SettingsError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
    prefix = settings.cache_key_prefix
    if not prefix or not prefix.isprintable() or " " in prefix:
        raise SettingsError("CACHE_KEY_PREFIX must be printable text without spaces, not empty")
    for name in ("cache_ttl_s", "cache_timeout_s", "cache_retry_after_s"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{name.upper()} must be > 0")


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": _parse_bool,
}


def _parse(name: str, raw: str, parser: Callable[[str], Any]) -> Any:
    try:
        return parser(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not valid: {exc}") from None
