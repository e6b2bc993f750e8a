"""Settings at their edges: the documented defaults, each limit exactly, the rules between settings.

An operator reads the defaults in the README and sets values at the limits; a limit that moves by
one, or a default that drifts from what the README promises, changes what a deployment does.
"""

from __future__ import annotations

import dataclasses

import pytest

from service.config import ConfigError, Settings, load_settings

PG = "postgresql://app@db.internal:5432/app"


def load(**environ: str) -> Settings:
    return load_settings(environ=environ, instance_path="/nonexistent")


# What README.md's configuration table promises when a variable is unset.
DOCUMENTED_DEFAULTS = {
    "app_env": "development",
    "ops_token": None,
    "service_id": "db-service",
    "release_id": None,
    "log_level": "INFO",
    "log_format": "text",
    "db_pool": "queue",
    "db_pool_size": 5,
    "db_max_overflow": 5,
    "db_pool_timeout_s": 1.0,
    "db_pool_recycle_s": 1800,
    "db_connect_timeout_s": 2.0,
    "db_statement_timeout_ms": 2000,
    "db_lock_timeout_ms": 1000,
    "db_deadline_s": 2.0,
    "db_migration_lock_timeout_s": 300.0,
    "db_wait_timeout_s": 60.0,
    "health_check_interval_s": 1.0,
    "health_stale_after_s": 3.0,
    "health_check_timeout_s": 1.0,
    "health_warn_latency_ms": 250.0,
    "health_warn_pool_ratio": 0.9,
    "host": "0.0.0.0",  # noqa: S104 - the documented container default
    "port": 8000,
    "web_concurrency": None,
    "gunicorn_timeout": 30,
    "gunicorn_graceful_timeout": 20,
    "gunicorn_keepalive": 75,
    "gunicorn_max_requests": 100000,
    "gunicorn_max_requests_jitter": 10000,
    "gunicorn_worker_tmp_dir": "/dev/shm",  # noqa: S108 - the documented default
    "gunicorn_access_log": "-",
    "gunicorn_error_log": "-",
    "gunicorn_log_level": "info",
    "forwarded_allow_ips": "127.0.0.1,::1",
    # Documented in .env.example and docs/architecture.md ("Serving", "Shutdown").
    "gunicorn_worker_connections": 1000,
    "shutdown_drain_s": 5.0,
    "request_head_timeout_s": 10.0,
    "better_auth_url": None,
    "better_auth_secret": None,
    "better_auth_secrets": None,
    "better_auth_cookie_prefix": "better-auth",
    "better_auth_trusted_origins": None,
    "better_auth_allow_unsigned_bearer": False,
    "better_auth_jwks_refetch_s": 5.0,
}


def test_unset_variables_take_the_defaults_the_readme_documents() -> None:
    loaded = load()
    assert {name: getattr(loaded, name) for name in DOCUMENTED_DEFAULTS} == DOCUMENTED_DEFAULTS


def test_production_logs_json_unless_told_otherwise() -> None:
    production = {"APP_ENV": "production", "DATABASE_URL": PG, "SECRET_KEY": "k" * 32}
    assert load(**production).log_format == "json"
    assert load(**production, LOG_FORMAT="text").log_format == "text"
    assert load(LOG_FORMAT="JSON").log_format == "json"  # choices are case-insensitive
    assert load(LOG_LEVEL="debug").log_level == "DEBUG"


def test_an_ops_token_of_exactly_16_characters_is_accepted() -> None:
    assert load(OPS_TOKEN="a" * 16).ops_token == "a" * 16
    with pytest.raises(ConfigError, match=r"^OPS_TOKEN: too short, use at least 16 characters$"):
        load(OPS_TOKEN="a" * 15)


@pytest.mark.parametrize(("port", "accepted"), [("0", False), ("1", True), ("65535", True)])
def test_port_limits(port: str, accepted: bool) -> None:
    if accepted:
        assert load(PORT=port).port == int(port)
    else:
        with pytest.raises(ConfigError, match=rf"^PORT: {port} is below the minimum 1$"):
            load(PORT=port)


def test_port_above_65535_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^PORT: 65536 is above the maximum 65535$"):
        load(PORT="65536")


@pytest.mark.parametrize(
    ("variable", "minimum", "below"),
    [
        ("DB_POOL_SIZE", "1", "0"),
        ("DB_CONNECT_TIMEOUT_S", "0.1", "0.09"),
        ("DB_DEADLINE_S", "0.1", "0.09"),
        ("HEALTH_CHECK_INTERVAL_S", "0.05", "0.04"),
        ("HEALTH_CHECK_TIMEOUT_S", "0.05", "0.04"),
        ("REQUEST_HEAD_TIMEOUT_S", "0.1", "0.09"),
        ("WEB_CONCURRENCY", "1", "0"),
        ("GUNICORN_WORKER_CONNECTIONS", "1", "0"),
        ("GUNICORN_TIMEOUT", "1", "0"),
        ("DB_MAX_OVERFLOW", "0", "-1"),
        ("DB_STATEMENT_TIMEOUT_MS", "0", "-1"),
        ("GUNICORN_MAX_REQUESTS", "0", "-1"),
    ],
)
def test_each_minimum_is_inclusive(variable: str, minimum: str, below: str) -> None:
    extra = {"DB_POOL_TIMEOUT_S": "0.1"} if variable == "DB_DEADLINE_S" else {}
    loaded = load(**{variable: minimum}, **extra)
    assert getattr(loaded, variable.lower()) == float(minimum)
    with pytest.raises(ConfigError, match=rf"^{variable}: {below} is below the minimum "):
        load(**{variable: below}, **extra)


def test_stale_after_has_a_minimum_of_its_own() -> None:
    fast = {"HEALTH_CHECK_INTERVAL_S": "0.05"}
    assert load(HEALTH_STALE_AFTER_S="0.1", **fast).health_stale_after_s == 0.1
    with pytest.raises(ConfigError, match=r"^HEALTH_STALE_AFTER_S: 0.09 is below the minimum 0.1$"):
        load(HEALTH_STALE_AFTER_S="0.09", **fast)


def test_derived_values_cannot_be_set_from_the_environment() -> None:
    assert not load(DATABASE_URL=PG, DATABASE_IS_DEFAULT="true").database_is_default
    assert load(DATABASE_IS_DEFAULT="false").database_is_default


def test_settings_cannot_change_once_loaded() -> None:
    loaded = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.port = 1  # type: ignore[misc]


def test_gunicorn_graceful_timeout_minimum() -> None:
    loaded = load(GUNICORN_GRACEFUL_TIMEOUT="1", SHUTDOWN_DRAIN_S="0")
    assert loaded.gunicorn_graceful_timeout == 1
    with pytest.raises(ConfigError, match=r"^GUNICORN_GRACEFUL_TIMEOUT: 0 is below the minimum 1$"):
        load(GUNICORN_GRACEFUL_TIMEOUT="0", SHUTDOWN_DRAIN_S="0")


def test_health_warn_pool_ratio_may_be_exactly_one() -> None:
    assert load(HEALTH_WARN_POOL_RATIO="1").health_warn_pool_ratio == 1.0
    with pytest.raises(ConfigError, match=r"^HEALTH_WARN_POOL_RATIO: 1.01 is above the maximum 1$"):
        load(HEALTH_WARN_POOL_RATIO="1.01")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_numbers_must_be_finite(value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^DB_DEADLINE_S: '{value}' is not a finite number$"):
        load(DB_DEADLINE_S=value)


def test_a_fraction_is_not_a_whole_number() -> None:
    with pytest.raises(ConfigError, match=r"^DB_POOL_SIZE: '2.5' is not a whole number$"):
        load(DB_POOL_SIZE="2.5")
    with pytest.raises(ConfigError, match=r"^DB_DEADLINE_S: 'soon' is not a number$"):
        load(DB_DEADLINE_S="soon")


def test_blank_values_mean_unset() -> None:
    assert load(DB_POOL_SIZE="  ", APP_ENV="").db_pool_size == 5


def test_stale_after_must_exceed_the_interval() -> None:
    assert load(HEALTH_CHECK_INTERVAL_S="1", HEALTH_STALE_AFTER_S="1.01").health_stale_after_s
    with pytest.raises(
        ConfigError,
        match=r"^HEALTH_STALE_AFTER_S: must be greater than HEALTH_CHECK_INTERVAL_S \(2 <= 2\)$",
    ):
        load(HEALTH_CHECK_INTERVAL_S="2", HEALTH_STALE_AFTER_S="2")


def test_pool_wait_may_equal_but_not_exceed_the_deadline() -> None:
    assert load(DB_POOL_TIMEOUT_S="2", DB_DEADLINE_S="2").db_pool_timeout_s == 2.0
    with pytest.raises(
        ConfigError, match=r"^DB_POOL_TIMEOUT_S: must not exceed DB_DEADLINE_S \(2.5 > 2\)$"
    ):
        load(DB_POOL_TIMEOUT_S="2.5", DB_DEADLINE_S="2")


def test_the_drain_must_end_before_the_graceful_timeout() -> None:
    assert load(SHUTDOWN_DRAIN_S="19.5", GUNICORN_GRACEFUL_TIMEOUT="20").shutdown_drain_s == 19.5
    with pytest.raises(
        ConfigError,
        match=r"^SHUTDOWN_DRAIN_S: must be less than GUNICORN_GRACEFUL_TIMEOUT \(20 >= 20\)$",
    ):
        load(SHUTDOWN_DRAIN_S="20", GUNICORN_GRACEFUL_TIMEOUT="20")
    with pytest.raises(ConfigError, match=r"^SHUTDOWN_DRAIN_S: .* \(25 >= 20\)$"):
        load(SHUTDOWN_DRAIN_S="25")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://app@db:0/app", "port 0 is out of range"),
        ("postgresql://app@db:-1/app", "port -1 is out of range"),
        ("postgresql://app@db:65536/app", "port 65536 is out of range"),
        ("postgresql+asyncpg://app@db/app", "driver 'asyncpg' is not supported"),
        ("postgresql://app@db", "the URL names no database"),
        ("mysql://app@db/app", "scheme 'mysql' is not supported"),
        ("sqlite+aiosqlite:///x.db", "scheme 'sqlite' is not supported"),
        ("trino://app@db/app", "scheme 'trino' is not supported"),
    ],
)
def test_database_url_limits(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^DATABASE_URL: {message}"):
        load(DATABASE_URL=url)


@pytest.mark.parametrize("port", ["1", "65535"])
def test_database_url_ports_at_the_limits_are_valid(port: str) -> None:
    assert load(DATABASE_URL=f"postgresql://app@db:{port}/app").database_url.port == int(port)


def test_sqlite_urls_are_kept_as_given() -> None:
    url = load(DATABASE_URL="sqlite+pysqlite:///x.db").database_url
    assert url.drivername == "sqlite+pysqlite"


def test_the_migration_url_defaults_to_the_database_url_and_may_differ() -> None:
    loaded = load(DATABASE_URL=PG, MIGRATION_DATABASE_URL="postgresql://owner@db.internal/app")
    assert loaded.migration_database_url.username == "owner"
    assert loaded.database_url.username == "app"
    assert not loaded.database_is_default


def test_secrets_lists_every_password_and_token_once() -> None:
    loaded = load(
        DATABASE_URL="postgresql://app:pw-one@db/app",
        MIGRATION_DATABASE_URL="postgresql://owner:pw-two@db/app",
        OPS_TOKEN="t" * 20,
        SECRET_KEY="secret-key-value",
    )
    assert loaded.secrets == tuple(sorted({"pw-one", "pw-two", "t" * 20, "secret-key-value"}))
    assert load().masked_database_url.startswith("sqlite:///")
    assert "pw-one" not in loaded.masked_database_url
    assert "pw-one" not in repr(loaded) and "secret-key-value" not in repr(loaded)


def test_the_backend_is_known_from_the_url() -> None:
    assert load(DATABASE_URL=PG).is_postgresql
    assert not load().is_postgresql  # the SQLite default


def test_the_repr_of_settings_names_no_database_and_no_secret() -> None:
    """Settings end up in tracebacks and debug logs: the URLs are secrets, like the token."""
    loaded = load(
        DATABASE_URL="postgresql://app-user@db.internal/appdb",
        MIGRATION_DATABASE_URL="postgresql://owner-user@db.internal/appdb",
        OPS_TOKEN="t" * 20,
    )
    shown = repr(loaded)
    for hidden in ("app-user", "owner-user", "db.internal", "appdb", "t" * 20):
        assert hidden not in shown
    assert "service_id='db-service'" in shown
