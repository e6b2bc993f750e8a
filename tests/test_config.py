"""Configuration: defaults, normalisation, and one clear line for every bad value."""

from __future__ import annotations

import re
import sys

import pytest
from sqlalchemy import create_engine

from harness.service import PROJECT_ROOT, run_command, run_flask
from service.config import ConfigError, Settings, load_settings, mask_url, variables

PASSWORD = "s3cret-Passw0rd"


def settings(tmp_path, **environ: str) -> Settings:
    return load_settings(environ=environ, instance_path=tmp_path)


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
    url = settings(tmp_path, DATABASE_URL="postgresql://app@db-a,[::1]:6543/app").database_url
    assert url.query["host"] == ("db-a", "[::1]:6543")
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
        ("postgresql://app@a:x,b/app", "DATABASE_URL: port 'x' of host 'a' is not 1-65535"),
        ("postgresql://app@/app?host=a:1&host=b:", "DATABASE_URL: port '' of host 'b'"),
        ("postgresql://app@a,,b/app", "DATABASE_URL: an empty host in the list of hosts"),
        ("postgresql://app@/app?host=[::1&host=b", "DATABASE_URL: host '[::1' is not host"),
        ("postgresql://app@c/app?host=a&host=b", "DATABASE_URL: give the hosts either before"),
        ("postgresql://app@a,b/app?target_session_attrs=standby", "DATABASE_URL: target_sess"),
        ("postgresql://app@a/app?target_session_attrs=read-only", "DATABASE_URL: target_sess"),
        ("postgresql://app@a,b/app?target_session_attrs=often", "DATABASE_URL: target_sess"),
        ("postgresql://app@a,b", "DATABASE_URL: the URL names no database"),
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


def test_every_setting_is_documented_with_its_declared_default() -> None:
    """README's table and .env.example follow the declarations in service/config.py."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    env_example = (PROJECT_ROOT / ".env.example").read_text()
    for name, declared in variables():
        default = declared.default
        shown = f"`{default:g}`" if isinstance(default, float) else f"`{default}`"
        shown = "unset" if default is None else shown
        assert f"| `{name}` | {shown} |" in readme, f"README.md: no row for {name} = {shown}"
        assert re.search(rf"^(# )?{name}=", env_example, re.MULTILINE), f".env.example: {name}"


def test_an_empty_value_means_the_default_for_every_setting(tmp_path) -> None:
    """Compose passes `${VAR:-}` as an empty string: it must never be read as a value."""
    empty = {name: "" for name, _ in variables()}
    defaults = settings(tmp_path, SECRET_KEY="k" * 32)
    with_empty = settings(tmp_path, **{**empty, "SECRET_KEY": "k" * 32})
    assert with_empty == defaults
