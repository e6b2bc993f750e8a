"""Settings: read once from the environment (and `.env`), validated at start-up.

Every variable the service understands is read here and nowhere else. A bad value stops the
process with one line naming the variable (`ConfigError`); the rest of the code receives a
frozen, typed `Settings` and never looks at `os.environ` again.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv
from sqlalchemy.engine import URL, make_url

APP_ENVS = ("development", "test", "production")
DB_POOLS = ("queue", "null")
LOG_FORMATS = ("text", "json")
DEFAULT_SQLITE_NAME = "service.sqlite3"


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line and never holds a secret."""


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process. `repr` never shows a secret."""

    app_env: str
    secret_key: str = field(repr=False)
    database_url: URL = field(repr=False)
    database_is_default: bool
    migration_database_url: URL = field(repr=False)
    db_pool: str
    db_pool_size: int
    db_max_overflow: int
    db_pool_timeout_s: float
    db_pool_recycle_s: int
    db_connect_timeout_s: float
    db_statement_timeout_ms: int
    db_lock_timeout_ms: int
    db_deadline_s: float
    db_migration_lock_timeout_s: float
    health_check_interval_s: float
    health_stale_after_s: float
    health_check_timeout_s: float
    health_warn_latency_ms: float
    health_warn_pool_ratio: float
    ops_token: str | None = field(repr=False)
    service_id: str
    release_id: str | None  # None: the package version
    log_level: str
    log_format: str

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def is_postgresql(self) -> bool:
        return self.database_url.get_backend_name() == "postgresql"

    @property
    def masked_database_url(self) -> str:
        return mask_url(self.database_url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line or a response (for the log redactor)."""
        values = {self.database_url.password, self.migration_database_url.password}
        values |= {self.ops_token, self.secret_key}
        return tuple(sorted(v for v in values if v))


def mask_url(url: URL) -> str:
    """The URL as text with its password replaced by `***`: the only way a URL is shown."""
    return url.render_as_string(hide_password=True)


def load_settings(
    overrides: Mapping[str, object] | None = None,
    *,
    instance_path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build `Settings` from `overrides`, then the environment, then `.env` (first one wins).

    `overrides` uses the environment variables' names, so tests configure the app exactly as an
    operator would. Raises `ConfigError` for the first problem found.
    """
    if environ is None:
        load_dotenv(override=False)  # the real environment wins over .env
        environ = os.environ
    source = _Source({**environ, **{k: str(v) for k, v in (overrides or {}).items()}})

    app_env = source.choice("APP_ENV", APP_ENVS, "development")
    production = app_env == "production"

    raw_url = source.text("DATABASE_URL")
    if raw_url is None:
        if production:
            raise ConfigError("DATABASE_URL: required in production (a postgresql:// URL)")
        sqlite_path = Path(instance_path) / DEFAULT_SQLITE_NAME
        database_url = make_url(f"sqlite:///{sqlite_path}")
    else:
        database_url = parse_database_url("DATABASE_URL", raw_url)
        if production and database_url.get_backend_name() != "postgresql":
            raise ConfigError("DATABASE_URL: production needs PostgreSQL, not SQLite")
    raw_migration_url = source.text("MIGRATION_DATABASE_URL")
    migration_url = (
        parse_database_url("MIGRATION_DATABASE_URL", raw_migration_url)
        if raw_migration_url is not None
        else database_url
    )

    secret_key = source.text("SECRET_KEY")
    if secret_key is None:
        if production:
            raise ConfigError(
                "SECRET_KEY: required in production (for example: openssl rand -hex 32)"
            )
        secret_key = secrets.token_hex(32)

    ops_token = source.text("OPS_TOKEN")
    if ops_token is not None and len(ops_token) < 16:
        raise ConfigError("OPS_TOKEN: too short, use at least 16 characters")

    interval = source.number("HEALTH_CHECK_INTERVAL_S", 1.0, minimum=0.05)
    stale_after = source.number("HEALTH_STALE_AFTER_S", 3.0, minimum=0.1)
    if stale_after <= interval:
        raise ConfigError(
            "HEALTH_STALE_AFTER_S: must be greater than HEALTH_CHECK_INTERVAL_S "
            f"({stale_after:g} <= {interval:g})"
        )
    default_log_format = "json" if production else "text"

    return Settings(
        app_env=app_env,
        secret_key=secret_key,
        database_url=database_url,
        database_is_default=raw_url is None,
        migration_database_url=migration_url,
        db_pool=source.choice("DB_POOL", DB_POOLS, "queue"),
        db_pool_size=source.integer("DB_POOL_SIZE", 5, minimum=1),
        db_max_overflow=source.integer("DB_MAX_OVERFLOW", 5),
        db_pool_timeout_s=source.number("DB_POOL_TIMEOUT_S", 1.0),
        db_pool_recycle_s=source.integer("DB_POOL_RECYCLE_S", 1800),
        db_connect_timeout_s=source.number("DB_CONNECT_TIMEOUT_S", 2.0, minimum=0.1),
        db_statement_timeout_ms=source.integer("DB_STATEMENT_TIMEOUT_MS", 2000),
        db_lock_timeout_ms=source.integer("DB_LOCK_TIMEOUT_MS", 1000),
        db_deadline_s=source.number("DB_DEADLINE_S", 2.0, minimum=0.1),
        db_migration_lock_timeout_s=source.number("DB_MIGRATION_LOCK_TIMEOUT_S", 300.0),
        health_check_interval_s=interval,
        health_stale_after_s=stale_after,
        health_check_timeout_s=source.number("HEALTH_CHECK_TIMEOUT_S", 1.0, minimum=0.05),
        health_warn_latency_ms=source.number("HEALTH_WARN_LATENCY_MS", 250.0),
        health_warn_pool_ratio=source.number("HEALTH_WARN_POOL_RATIO", 0.9, maximum=1.0),
        ops_token=ops_token,
        service_id=source.text("SERVICE_ID") or "db-service",
        release_id=source.text("RELEASE_ID"),
        log_level=source.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        log_format=source.choice("LOG_FORMAT", LOG_FORMATS, default_log_format),
    )


def parse_database_url(name: str, raw: str) -> URL:
    """Parse a database URL and pin PostgreSQL to the psycopg2 driver.

    The raw value is never echoed in an error: it may hold a password.
    """
    try:
        url = make_url(raw)
        port = url.port  # a non-numeric port only fails when read
    except Exception:  # noqa: BLE001 - any parse failure is the same user error
        raise ConfigError(f"{name}: not a valid database URL") from None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{name}: port {port} is out of range")
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        if driver not in ("", "psycopg2"):
            raise ConfigError(f"{name}: driver '{driver}' is not supported, use postgresql://")
        if not url.database:
            raise ConfigError(f"{name}: the URL names no database")
        return url.set(drivername="postgresql+psycopg2")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return url
    raise ConfigError(f"{name}: scheme '{backend}' is not supported, use postgresql://")


class _Source:
    """Typed reads of raw string settings; each failure names its variable."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def text(self, name: str) -> str | None:
        value = self._values.get(name, "").strip()
        return value or None

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        normalised = value.upper() if allowed[0].isupper() else value.lower()
        if normalised not in allowed:
            raise ConfigError(f"{name}: '{value}' is not one of {', '.join(allowed)}")
        return normalised

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: '{value}' is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}: '{value}' is not a finite number")
        if number < minimum:
            raise ConfigError(f"{name}: {value} is below the minimum {minimum:g}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name}: {value} is above the maximum {maximum:g}")
        return number

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}: '{value}' is not a whole number") from None
        if number < minimum:
            raise ConfigError(f"{name}: {value} is below the minimum {minimum}")
        return number
