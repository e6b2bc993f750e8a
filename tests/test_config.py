"""Configuration: the documented defaults, each limit exactly, the rules between settings, and
one clear line for every bad value.

An operator reads the defaults in the README and sets values at the limits; a limit that moves by
one, or a default that drifts from what the README promises, changes what a deployment does.
"""

from __future__ import annotations

import dataclasses
import re
import sys

import pytest
from sqlalchemy import create_engine

from harness.readme import README, readme_table, settings_table
from harness.service import PROJECT_ROOT, run_command, run_flask
from service.config import (
    ConfigError,
    Settings,
    load_settings,
    mask_url,
    process_settings,
    variables,
)

PASSWORD = "s3cret-Passw0rd"
PG = "postgresql://app@db.internal:5432/app"


def settings(tmp_path, **environ: str) -> Settings:
    return load_settings(environ=environ, instance_path=tmp_path)


def load(**environ: str) -> Settings:
    return load_settings(environ=environ, instance_path="/nonexistent")


def test_defaults_give_a_zero_setup_development_service(tmp_path):
    loaded = settings(tmp_path)
    assert loaded.app_env == "development"
    assert loaded.database_is_default
    assert loaded.database_url.drivername == "sqlite"
    assert loaded.database_url.database == str(tmp_path / "service.sqlite3")
    assert (loaded.db_pool, loaded.db_connect_timeout_s) == ("queue", 2.0)
    assert (loaded.db_statement_timeout_ms, loaded.db_lock_timeout_ms) == (2000, 1000)
    assert (loaded.health_check_interval_s, loaded.health_stale_after_s) == (1.0, 3.0)
    assert len(loaded.secret_key) == 64
    assert settings(tmp_path).secret_key != loaded.secret_key  # random per process start


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg2"])
def test_postgresql_urls_are_pinned_to_psycopg2(tmp_path, scheme):
    loaded = settings(tmp_path, DATABASE_URL=f"{scheme}://app:{PASSWORD}@db.internal:6543/app")
    assert loaded.database_url.drivername == "postgresql+psycopg2"
    assert (loaded.database_url.host, loaded.database_url.port) == ("db.internal", 6543)
    assert loaded.database_url.password == PASSWORD
    assert PASSWORD not in loaded.masked_database_url
    assert PASSWORD not in repr(loaded)
    assert loaded.migration_database_url == loaded.database_url


def test_production_needs_its_secrets_and_postgresql(tmp_path):
    url = "postgresql://app@db/app"
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: required in production"):
        settings(tmp_path, APP_ENV="production", SECRET_KEY="x" * 32)
    with pytest.raises(ConfigError, match=r"^SECRET_KEY: required in production"):
        settings(tmp_path, APP_ENV="production", DATABASE_URL=url)
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: production needs PostgreSQL"):
        settings(tmp_path, APP_ENV="production", SECRET_KEY="k", DATABASE_URL="sqlite:///x.db")
    loaded = settings(tmp_path, APP_ENV="production", SECRET_KEY="k", DATABASE_URL=url)
    assert loaded.is_production and loaded.log_format == "json"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("APP_ENV", "staging", "APP_ENV: 'staging' is not one of development, test, production"),
        ("DB_POOL", "fancy", "DB_POOL: 'fancy' is not one of queue, null"),
        ("DB_POOL_SIZE", "ten", "DB_POOL_SIZE: 'ten' is not a whole number"),
        ("DB_POOL_SIZE", "0", "DB_POOL_SIZE: 0 is below the minimum 1"),
        ("DB_MAX_OVERFLOW", "-1", "DB_MAX_OVERFLOW: -1 is below the minimum 0"),
        ("DB_POOL_TIMEOUT_S", "soon", "DB_POOL_TIMEOUT_S: 'soon' is not a number"),
        ("DB_CONNECT_TIMEOUT_S", "-2", "DB_CONNECT_TIMEOUT_S: -2 is below the minimum 0.1"),
        (
            "DB_HOST_CONNECT_TIMEOUT_S",
            "0.01",
            "DB_HOST_CONNECT_TIMEOUT_S: 0.01 is below the minimum 0.05",
        ),
        ("DB_STATEMENT_TIMEOUT_MS", "2.5", "DB_STATEMENT_TIMEOUT_MS: '2.5' is not a whole number"),
        ("DB_LOCK_TIMEOUT_MS", "-5", "DB_LOCK_TIMEOUT_MS: -5 is below the minimum 0"),
        ("DB_DEADLINE_S", "nan", "DB_DEADLINE_S: 'nan' is not a finite number"),
        ("HEALTH_WARN_POOL_RATIO", "1.5", "HEALTH_WARN_POOL_RATIO: 1.5 is above the maximum 1"),
        ("HEALTH_STALE_AFTER_S", "0.5", "HEALTH_STALE_AFTER_S: must be greater than"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL: 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR"),
        ("OPS_TOKEN", "short", "OPS_TOKEN: too short"),
        ("DATABASE_URL", "mysql://u:p@h/db", "DATABASE_URL: scheme 'mysql' is not supported"),
        ("DATABASE_URL", "postgresql+asyncpg://h/db", "DATABASE_URL: driver 'asyncpg'"),
        ("DATABASE_URL", "postgresql://h:5432", "DATABASE_URL: the URL names no database"),
        ("MIGRATION_DATABASE_URL", "::nonsense::", "MIGRATION_DATABASE_URL: not a valid"),
    ],
)
def test_each_bad_value_names_its_variable(tmp_path, variable, value, message):
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, **{variable: value})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@db:port/app",  # a non-numeric port
        f"postgresql://app:{PASSWORD}@db:99999999/app",
        f"http://app:{PASSWORD}@db/app",
    ],
)
def test_a_malformed_url_never_echoes_its_password(tmp_path, url):
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, DATABASE_URL=url)
    assert caught.value.args[0].startswith("DATABASE_URL: ")
    assert PASSWORD not in str(caught.value)


MULTI_HOST = {
    "libpq": f"postgresql://app:{PASSWORD}@db-a:5432,db-b:6543/app?target_session_attrs=primary",
    "sqlalchemy": (
        f"postgresql://app:{PASSWORD}@/app?host=db-a:5432&host=db-b:6543&target_session_attrs=primary"
    ),
}


@pytest.mark.parametrize("form", MULTI_HOST)
def test_both_multi_host_forms_reach_libpq_alike_and_are_shown_masked(tmp_path, form):
    url = settings(tmp_path, DATABASE_URL=MULTI_HOST[form]).database_url
    assert create_engine(url).dialect.create_connect_args(url)[1] == {
        "dbname": "app",
        "user": "app",
        "password": PASSWORD,
        "host": "db-a,db-b",
        "port": "5432,6543",
        "target_session_attrs": "primary",
    }
    shown = mask_url(url)
    assert PASSWORD not in shown
    assert shown.startswith("postgresql+psycopg2://app:***@/app?")
    assert "host=db-a:5432&host=db-b:6543" in shown


def test_hosts_without_ports_and_ipv6_hosts_are_accepted(tmp_path):
    url = settings(tmp_path, DATABASE_URL="postgresql://app@db-a,[::1]:65535/app").database_url
    assert url.query["host"] == ("db-a", "[::1]:65535")  # the highest port there is
    assert url.host is None and url.database == "app"


def test_a_password_given_as_a_query_parameter_is_masked_and_redacted(tmp_path):
    loaded = settings(tmp_path, DATABASE_URL=f"postgresql://app@db/app?password={PASSWORD}")
    assert PASSWORD not in loaded.masked_database_url
    assert PASSWORD in loaded.secrets


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://app@a:5432,b:0/app", "DATABASE_URL: port '0' of host 'b' is not 1-65535"),
        ("postgresql://app@a:5432,b:65536/app", "DATABASE_URL: port '65536' of host 'b'"),
        ("postgresql://app@a:5432,b:99999/app", "DATABASE_URL: port '99999' of host 'b'"),
        ("postgresql://app@a:x,b/app", "DATABASE_URL: port 'x' of host 'a' is not 1-65535"),
        ("postgresql://app@/app?host=a:1&host=b:", "DATABASE_URL: port '' of host 'b'"),
        ("postgresql://app@a,,b/app", "DATABASE_URL: an empty host in the list of hosts"),
        ("postgresql://app@/app?host=[::1&host=b", "DATABASE_URL: host '[::1' is not host"),
        ("postgresql://app@c/app?host=a&host=b", "DATABASE_URL: give the hosts either before"),
        ("postgresql://app@a,b/app?target_session_attrs=standby", "DATABASE_URL: target_sess"),
        ("postgresql://app@a/app?target_session_attrs=read-only", "DATABASE_URL: target_sess"),
        ("postgresql://app@a,b/app?target_session_attrs=often", "DATABASE_URL: target_sess"),
        ("postgresql://app@a,b", "DATABASE_URL: the URL names no database"),
        ("postgresql://app@a,b/app?load_balance_hosts=random", "DATABASE_URL: load_balance_hosts"),
    ],
)
def test_a_bad_multi_host_url_is_one_line_naming_what_is_wrong(tmp_path, url, message):
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, DATABASE_URL=url.replace("app@", f"app:{PASSWORD}@"))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value) and PASSWORD not in str(caught.value)


@pytest.mark.parametrize("attrs", ["read-write", "primary", "any"])
def test_the_writable_target_session_attrs_are_accepted(tmp_path, attrs):
    url = f"postgresql://app@a,b/app?target_session_attrs={attrs}"
    assert settings(tmp_path, DATABASE_URL=url).database_url.query["target_session_attrs"] == attrs


def test_load_balance_hosts_disable_is_libpqs_default_and_accepted(tmp_path):
    url = "postgresql://app@a,b/app?load_balance_hosts=disable"
    assert (
        settings(tmp_path, DATABASE_URL=url).database_url.query["load_balance_hosts"] == "disable"
    )


def test_a_read_only_target_is_refused_with_what_to_use_instead(tmp_path):
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, DATABASE_URL="postgresql://app@a/app?target_session_attrs=standby")
    assert str(caught.value) == (
        "DATABASE_URL: target_session_attrs=standby leads to a read-only server and the service "
        "writes; use read-write, primary, any (default read-write)"
    )


BAD_START = [
    ({"APP_ENV": "staging"}, "APP_ENV: 'staging' is not one of"),
    ({"DATABASE_URL": f"postgresql://app:{PASSWORD}@a:5432,b:0/app"}, "DATABASE_URL: port '0'"),
    ({"DATABASE_URL": f"postgresql://app:{PASSWORD}@db:port/app"}, "DATABASE_URL: not a valid"),
    ({"DB_POOL_SIZE": "-3"}, "DB_POOL_SIZE: -3 is below the minimum 1"),
    ({"APP_ENV": "production"}, "DATABASE_URL: required in production"),
]


@pytest.mark.parametrize(("environ", "message"), BAD_START)
@pytest.mark.parametrize("entry", ["flask", "gunicorn"])
def test_bad_configuration_stops_the_process_with_one_line(environ, message, entry):
    if entry == "flask":
        result = run_flask(["db", "upgrade"], environ)
    else:
        gunicorn = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--check-config"]
        result = run_command(gunicorn, environ)
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"configuration error: {message}")
    assert PASSWORD not in result.stdout + result.stderr


def test_an_unreachable_database_gives_one_line_without_the_password():
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:1/app"
    result = run_flask(["db", "upgrade"], {"DATABASE_URL": url, "DB_CONNECT_TIMEOUT_S": "1"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("flask db: cannot migrate postgresql+psycopg2://app:***@127.0.0.1:1/app")
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout


def test_the_real_environment_wins_over_dotenv(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("DB_POOL_SIZE=7\nDB_MAX_OVERFLOW=9\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    import dotenv

    monkeypatch.setattr(
        "service.config.load_dotenv",
        lambda override=False: dotenv.load_dotenv(tmp_path / ".env", override=override),
    )
    loaded = load_settings(instance_path=tmp_path)
    assert (loaded.db_pool_size, loaded.db_max_overflow) == (3, 9)


def test_the_readme_table_is_generated_from_the_declarations() -> None:
    """Name, default and help of every setting, exactly: `python -m harness.readme --write`."""
    assert readme_table(README.read_text()) == settings_table(), (
        "README.md's settings table differs from service/config.py: "
        "run `python -m harness.readme --write`"
    )
    rows = settings_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [name for name, _ in variables()]
    assert "| `DB_POOL_TIMEOUT_S` | `1` | longest wait for a pooled connection |" in rows
    assert "| `DATABASE_URL` | unset | unset: SQLite in instance/ (not in production) |" in rows


def test_every_setting_has_a_line_in_env_example() -> None:
    env_example = (PROJECT_ROOT / ".env.example").read_text()
    for name, _ in variables():
        assert re.search(rf"^(# )?{name}=", env_example, re.MULTILINE), f".env.example: {name}"


def test_a_process_loads_its_settings_once(monkeypatch) -> None:
    """gunicorn's master, its logger and each worker's app share one object (service/server.py)."""
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    process_settings.cache_clear()
    try:
        first = process_settings()
        monkeypatch.setenv("DB_POOL_SIZE", "8")
        assert process_settings() is first
        assert first.db_pool_size == 7
        assert first.database_url.database.endswith("/instance/service.sqlite3")
    finally:
        process_settings.cache_clear()


def test_an_empty_value_means_the_default_for_every_setting(tmp_path) -> None:
    """Compose passes `${VAR:-}` as an empty string: it must never be read as a value."""
    empty = {name: "" for name, _ in variables()}
    defaults = settings(tmp_path, SECRET_KEY="k" * 32)
    with_empty = settings(tmp_path, **{**empty, "SECRET_KEY": "k" * 32})
    assert with_empty == defaults


# ------------------------------------------------------------------ limits and rules

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
