"""Settings: every environment variable, declared once below, read once and validated at start-up.

A bad value stops the process with one line naming the variable (`ConfigError`); the rest of the
code receives a frozen, typed `Settings` and never reads `os.environ` again.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dotenv import load_dotenv
from sqlalchemy.engine import URL, make_url

DEFAULT_SQLITE_NAME = "service.sqlite3"
INSTANCE_PATH = Path(__file__).resolve().parent.parent / "instance"  # the SQLite default's home
# Better Auth's own fallback when no secret is set: public, so refused in production.
BETTER_AUTH_DEVELOPMENT_SECRET = "better-auth-secret-12345678901234567890"  # noqa: S105
MIN_BETTER_AUTH_SECRET_LENGTH = 32
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$&'*+.^_`|~-]+$")  # an RFC 6265 cookie-name token
_VERSION = re.compile(r"[0-9]+")  # a secret's version in BETTER_AUTH_SECRETS
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line and never holds a secret."""


def setting(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    secret: bool = False,
) -> Any:
    """Declare one environment variable: the field's name in capitals, its type and default."""
    limits = {"doc": doc, "minimum": minimum, "maximum": maximum, "choices": choices}
    return field(default=default, repr=not secret, metadata={**limits, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process. `repr` never shows a secret."""

    # The service
    app_env: str = setting(
        "development",
        "development, test or production",
        choices=("development", "test", "production"),
    )
    database_url: URL | None = setting(
        None, "unset: SQLite in instance/ (not in production)", secret=True
    )
    migration_database_url: URL | None = setting(None, "for `flask db upgrade`", secret=True)
    secret_key: str | None = setting(None, "required in production", secret=True)
    ops_token: str | None = setting(None, "bearer token for ops endpoints", secret=True)
    service_id: str = setting("db-service", "in /api/health and application_name")
    release_id: str | None = setting(None, "in /api/health; unset: the package version")
    log_level: str = setting(
        "INFO", "DEBUG, INFO, WARNING or ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    log_format: str | None = setting(
        None, "text or json; unset: json in production, else text", choices=("text", "json")
    )
    # The database
    db_pool: str = setting(
        "queue",
        "queue: a pool per worker; null: none (PgBouncer, serverless)",
        choices=("queue", "null"),
    )
    db_pool_size: int = setting(5, "pooled connections per worker", minimum=1)
    db_max_overflow: int = setting(5, "connections per worker above the pool size in a burst")
    db_pool_timeout_s: float = setting(1.0, "longest wait for a pooled connection")
    db_pool_recycle_s: int = setting(1800, "replace connections older than this")
    db_connect_timeout_s: float = setting(2.0, "connecting, enforced client-side", minimum=0.1)
    db_host_connect_timeout_s: float = setting(
        1.0, "with several hosts in DATABASE_URL: longest attempt on one", minimum=0.05
    )
    db_statement_timeout_ms: int = setting(2000, "server-side limit of a statement")
    db_lock_timeout_ms: int = setting(1000, "server-side limit of a lock wait")
    db_deadline_s: float = setting(2.0, "client-side bound of /api/db/test", minimum=0.1)
    db_migration_lock_timeout_s: float = setting(300.0, "wait for another migration's lock")
    db_wait_timeout_s: float = setting(60.0, "how long `flask db wait` retries")
    # Health
    health_check_interval_s: float = setting(1.0, "between two checks", minimum=0.05)
    health_stale_after_s: float = setting(3.0, "an older answer fails readiness", minimum=0.1)
    health_check_timeout_s: float = setting(1.0, "deadline of one check", minimum=0.05)
    health_warn_latency_ms: float = setting(250.0, "a slower check is warn")
    health_warn_pool_ratio: float = setting(0.9, "a fuller pool is warn", maximum=1.0)
    # The server (gunicorn.conf.py)
    host: str = setting("0.0.0.0", "address gunicorn binds")  # noqa: S104 - a container serves all
    port: int = setting(8000, "port gunicorn binds", minimum=1, maximum=65535)
    web_concurrency: int | None = setting(None, "workers; unset: cores, at least 2", minimum=1)
    gunicorn_worker_connections: int = setting(1000, "connections per worker", minimum=1)
    gunicorn_timeout: int = setting(30, "a worker silent this long is killed", minimum=1)
    gunicorn_graceful_timeout: int = setting(20, "bound of a shutdown, drain included", minimum=1)
    gunicorn_keepalive: int = setting(75, "idle keep-alive; above a load balancer's idle timeout")
    gunicorn_max_requests: int = setting(100000, "recycle a worker after so many (0: never)")
    gunicorn_max_requests_jitter: int = setting(10000, "spread of the recycling")
    gunicorn_worker_tmp_dir: str = setting("/dev/shm", "heartbeat files, on tmpfs")  # noqa: S108
    gunicorn_access_log: str = setting("-", "'-' stdout, a file, or 'off'; probes are never logged")
    gunicorn_error_log: str = setting("-", "'-' stderr, or a file")
    gunicorn_log_level: str = setting(
        "info", "gunicorn's own level", choices=("debug", "info", "warning", "error", "critical")
    )
    forwarded_allow_ips: str = setting("127.0.0.1,::1", "proxies whose X-Forwarded-* are trusted")
    shutdown_drain_s: float = setting(5.0, "after SIGTERM, readiness fails this long while serving")
    request_head_timeout_s: float = setting(10.0, "for a request's head", minimum=0.1)
    # Better Auth (docs/auth.md)
    better_auth_url: str | None = setting(None, "Better Auth's origin; unset: no caller is known")
    better_auth_secret: str | None = setting(
        None, "shared with Better Auth; outside production unset is its public default", secret=True
    )
    better_auth_secrets: str | None = setting(
        None, "version:secret,... (the first is current); wins over BETTER_AUTH_SECRET", secret=True
    )
    better_auth_cookie_prefix: str = setting("better-auth", "Better Auth's cookiePrefix")
    better_auth_trusted_origins: str | None = setting(
        None, "comma-separated origins trusted besides BETTER_AUTH_URL's, as trustedOrigins"
    )
    better_auth_allow_unsigned_bearer: bool = setting(False, "accept a bearer without signature")
    better_auth_jwks_refetch_s: float = setting(
        5.0, "least time between two reads of jwks for an unknown kid"
    )
    # After loading, database_url and migration_database_url are never None.
    # Derived at load time, not read from the environment
    database_is_default: bool = field(default=False, metadata={"derived": True})

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def is_postgresql(self) -> bool:
        return (
            self.database_url is not None and self.database_url.get_backend_name() == "postgresql"
        )

    @property
    def masked_database_url(self) -> str:
        return mask_url(self.database_url) if self.database_url else "(none)"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line or a response (for the log redactor)."""
        urls = (self.database_url, self.migration_database_url)
        passwords = {url.password for url in urls if url}
        passwords |= {url.query.get("password") for url in urls if url}
        values = passwords | {self.ops_token, self.secret_key}
        values |= {self.better_auth_secret, self.better_auth_secrets}
        values |= set(parse_better_auth_secrets(self.better_auth_secrets))
        return tuple(sorted(str(v) for v in values if v))

    @cached_property
    def better_auth_signing_secret(self) -> str:
        """The secret signed cookies and bearer tokens are checked with: the current one only."""
        rotated = parse_better_auth_secrets(self.better_auth_secrets)
        return rotated[0] if rotated else self.better_auth_secret or BETTER_AUTH_DEVELOPMENT_SECRET

    @cached_property
    def better_auth_cookie_name(self) -> str:
        """The session cookie's name, `__Secure-` prefixed when Better Auth is served over https."""
        secure = (self.better_auth_url or "").startswith("https://")
        return f"{'__Secure-' if secure else ''}{self.better_auth_cookie_prefix}.session_token"

    @cached_property
    def better_auth_trusted(self) -> frozenset[str]:
        """Origins trusted for cookie-authenticated writes: BETTER_AUTH_URL's and those listed."""
        listed = [self.better_auth_url or "", *(self.better_auth_trusted_origins or "").split(",")]
        return frozenset(filter(None, (normal_origin(o, allow_path=False) for o in listed)))


def variables() -> Iterator[tuple[str, Field[Any]]]:
    """Every environment variable the service reads, with its declaration."""
    for declared in fields(Settings):
        if not declared.metadata.get("derived"):
            yield declared.name.upper(), declared


@functools.cache
def process_settings() -> Settings:
    """This process's settings, loaded from its environment once, on first use.

    Under gunicorn the master loads them (gunicorn.conf.py) and its logger reads them; each worker
    inherits them by fork and builds its app from them (wsgi.py). Raises `ConfigError`.
    """
    return load_settings(instance_path=INSTANCE_PATH)


def mask_url(url: URL) -> str:
    """The URL as text with its password replaced by `***`: the only way a URL is shown.

    A `password` query parameter is masked too; `host=` entries are shown as typed (`h1:5432`).
    """
    if "password" in url.query:
        url = url.update_query_dict({"password": "***"})
    return unquote(url.render_as_string(hide_password=True))


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
    raw = {**environ, **{name: str(value) for name, value in (overrides or {}).items()}}
    hints = typing.get_type_hints(Settings)
    values = {}
    for name, declared in variables():
        text = str(raw.get(name, "")).strip()
        if text:
            values[declared.name] = _parse(name, text, _base_type(hints[declared.name]), declared)
    settings = Settings(**values)
    return _resolve(settings, Path(instance_path))


def _resolve(settings: Settings, instance_path: Path) -> Settings:
    """Apply the defaults that depend on other settings, then the rules between settings."""
    production = settings.is_production
    if settings.database_url is None:
        if production:
            raise ConfigError("DATABASE_URL: required in production (a postgresql:// URL)")
        sqlite_url = make_url(f"sqlite:///{instance_path / DEFAULT_SQLITE_NAME}")
        settings = replace(settings, database_url=sqlite_url, database_is_default=True)
    elif production and settings.database_url.get_backend_name() != "postgresql":
        raise ConfigError("DATABASE_URL: production needs PostgreSQL, not SQLite")
    if settings.migration_database_url is None:
        settings = replace(settings, migration_database_url=settings.database_url)
    if settings.secret_key is None:
        if production:
            raise ConfigError(
                "SECRET_KEY: required in production (for example: openssl rand -hex 32)"
            )
        settings = replace(settings, secret_key=secrets.token_hex(32))
    if settings.ops_token is not None and len(settings.ops_token) < 16:
        raise ConfigError("OPS_TOKEN: too short, use at least 16 characters")
    if settings.log_format is None:
        settings = replace(settings, log_format="json" if production else "text")
    interval, stale = settings.health_check_interval_s, settings.health_stale_after_s
    if stale <= interval:
        raise ConfigError(
            "HEALTH_STALE_AFTER_S: must be greater than HEALTH_CHECK_INTERVAL_S "
            f"({stale:g} <= {interval:g})"
        )
    pool_wait, deadline = settings.db_pool_timeout_s, settings.db_deadline_s
    if pool_wait > deadline:
        raise ConfigError(
            f"DB_POOL_TIMEOUT_S: must not exceed DB_DEADLINE_S ({pool_wait:g} > {deadline:g})"
        )
    drain, grace = settings.shutdown_drain_s, settings.gunicorn_graceful_timeout
    if drain >= grace:
        raise ConfigError(
            "SHUTDOWN_DRAIN_S: must be less than GUNICORN_GRACEFUL_TIMEOUT "
            f"({drain:g} >= {grace:g})"
        )
    return _resolve_better_auth(settings)


def _resolve_better_auth(settings: Settings) -> Settings:
    """Better Auth's settings: origins, the secrets in its own format and strength in production."""
    url = settings.better_auth_url
    if url is not None:
        settings = replace(settings, better_auth_url=parse_origin("BETTER_AUTH_URL", url))
    origins = (settings.better_auth_trusted_origins or "").split(",")
    for origin in filter(None, (o.strip() for o in origins)):
        parse_origin("BETTER_AUTH_TRUSTED_ORIGINS", origin)
    if not _COOKIE_NAME.match(settings.better_auth_cookie_prefix):
        raise ConfigError("BETTER_AUTH_COOKIE_PREFIX: not a valid cookie name")
    rotated = parse_better_auth_secrets(settings.better_auth_secrets)
    configured = [("BETTER_AUTH_SECRETS", secret) for secret in rotated]
    if settings.better_auth_secret is not None:
        configured.append(("BETTER_AUTH_SECRET", settings.better_auth_secret))
    if url is None:
        if configured:
            raise ConfigError(f"BETTER_AUTH_URL: required with {configured[0][0]}")
        return settings
    if settings.is_production:
        if not configured:
            raise ConfigError(
                "BETTER_AUTH_SECRET: required in production with BETTER_AUTH_URL "
                "(the secret Better Auth signs with)"
            )
        for name, secret in configured:
            if secret == BETTER_AUTH_DEVELOPMENT_SECRET:
                raise ConfigError(f"{name}: Better Auth's public default secret, not in production")
            if len(secret) < MIN_BETTER_AUTH_SECRET_LENGTH:
                raise ConfigError(
                    f"{name}: too short for production, use at least "
                    f"{MIN_BETTER_AUTH_SECRET_LENGTH} characters (openssl rand -base64 32)"
                )
    return settings


def parse_better_auth_secrets(raw: str | None) -> list[str]:
    """`2:new,1:old` as Better Auth reads BETTER_AUTH_SECRETS: ["new", "old"], the current first.

    Raises ConfigError naming a malformed entry's position, never its value.
    """
    found: list[str] = []
    versions: set[int] = set()
    for position, entry in enumerate(raw.split(",") if raw else [], start=1):
        version, colon, secret = (part.strip() for part in entry.partition(":"))
        where = f"BETTER_AUTH_SECRETS: entry {position}"
        if not colon:
            raise ConfigError(f"{where} is not <version>:<secret>")
        if not _VERSION.fullmatch(version):
            raise ConfigError(f"{where}: the version must be a non-negative whole number")
        if not secret:
            raise ConfigError(f"{where}: the secret is empty")
        if int(version) in versions:
            raise ConfigError(f"{where}: version {int(version)} appears twice")
        versions.add(int(version))
        found.append(secret)
    return found


def parse_origin(name: str, raw: str) -> str:
    """An origin setting in its normal form (see `normal_origin`), or ConfigError."""
    origin = normal_origin(raw, allow_path=False)
    if origin is None:
        raise ConfigError(f"{name}: not an http(s) origin (scheme://host[:port], no path)")
    return origin


def normal_origin(raw: str, *, allow_path: bool) -> str | None:
    """`https://Example.com:443/` -> `https://example.com`; None for anything but an http(s) URL.

    With `allow_path` a path, query and fragment are dropped (a Referer's), else refused.
    """
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError:
        return None
    bare = parts.path in ("", "/") and not parts.query and not parts.fragment
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        return None
    if not (bare or allow_path):
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    shown = "" if port in (None, {"http": 80, "https": 443}[parts.scheme]) else f":{port}"
    return f"{parts.scheme}://{host}{shown}"


def _base_type(hint: Any) -> Any:
    """`int` for `int | None`, and so on."""
    if isinstance(hint, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _parse(name: str, text: str, kind: Any, declared: Field[Any]) -> Any:
    meta = declared.metadata
    if kind is URL:
        return parse_database_url(name, text)
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ConfigError(f"{name}: '{text}' is not true or false")
        return text.lower() in _TRUE
    if kind is str:
        choices = meta["choices"]
        if not choices:
            return text
        value = text.upper() if choices[0].isupper() else text.lower()
        if value not in choices:
            raise ConfigError(f"{name}: '{text}' is not one of {', '.join(choices)}")
        return value
    try:
        number = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name}: '{text}' is not {what}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}: '{text}' is not a finite number")
    minimum = meta["minimum"] if meta["minimum"] is not None else 0
    if number < minimum:
        raise ConfigError(f"{name}: {text} is below the minimum {minimum:g}")
    if meta["maximum"] is not None and number > meta["maximum"]:
        raise ConfigError(f"{name}: {text} is above the maximum {meta['maximum']:g}")
    return number


# libpq's multi-host address: scheme://[user[:password]@]host1[:port1],host2[:port2]/...
_MULTI_HOST = re.compile(r"(?P<scheme>[^:/?#]+)://(?P<netloc>[^/?#]*,[^/?#]*)(?P<rest>[/?].*)?")
# One `host=` entry: a name or an IPv4 address, or an IPv6 one in brackets; then maybe a port.
_HOST_ENTRY = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:/,]+)(?::(?P<port>[^:]*))?")
# target_session_attrs: those that lead to a server the service can write to, and those that don't.
WRITABLE_SESSION_ATTRS = ("read-write", "primary", "any")
READ_ONLY_SESSION_ATTRS = ("read-only", "standby", "prefer-standby")


def parse_database_url(name: str, raw: str) -> URL:
    """Parse a database URL and pin PostgreSQL to the psycopg2 driver.

    libpq's multi-host form (`postgresql://u@h1:5432,h2:5432/db`) becomes SQLAlchemy's
    (`postgresql://u@/db?host=h1:5432&host=h2:5432`). The raw value is never echoed in an error:
    it may hold a password.
    """
    raw = _hosts_to_query(name, raw)
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
        _check_hosts(name, url)
        _check_session_attrs(name, url)
        if url.query.get("load_balance_hosts", "disable") != "disable":
            raise ConfigError(
                f"{name}: load_balance_hosts is not supported: the service tries the hosts in "
                "order, one bounded attempt each"
            )
        return url.set(drivername="postgresql+psycopg2")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return url
    raise ConfigError(f"{name}: scheme '{backend}' is not supported, use postgresql://")


def _hosts_to_query(name: str, raw: str) -> str:
    """libpq's `h1:p1,h2:p2` address as SQLAlchemy's `?host=h1:p1&host=h2:p2`; else unchanged."""
    match = _MULTI_HOST.fullmatch(raw)
    if match is None:
        return raw
    userinfo, at, hosts = match["netloc"].rpartition("@")
    if "" in hosts.split(","):
        raise ConfigError(f"{name}: an empty host in the list of hosts")
    path, _, query = (match["rest"] or "").partition("?")
    entries = "&".join(f"host={entry}" for entry in hosts.split(","))
    query = f"{query}&{entries}" if query else entries
    return f"{match['scheme']}://{userinfo}{at}{path or '/'}?{query}"


def _check_hosts(name: str, url: URL) -> None:
    """Every `host=` entry names a host and, if any, a port in range; hosts given once."""
    entries = url.query.get("host", ())
    if isinstance(entries, str):
        entries = (entries,)
    if entries and (url.host or url.port):
        raise ConfigError(f"{name}: give the hosts either before the database or as ?host=")
    for entry in entries:
        match = _HOST_ENTRY.fullmatch(entry)
        if match is None:
            raise ConfigError(f"{name}: host '{entry}' is not host or host:port")
        port = match["port"]
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"{name}: port '{port}' of host '{match['host']}' is not 1-65535")


def _check_session_attrs(name: str, url: URL) -> None:
    """target_session_attrs, if given, must lead to a server the service can write to."""
    attrs = url.query.get("target_session_attrs")
    if attrs is None or attrs in WRITABLE_SESSION_ATTRS:
        return
    if attrs in READ_ONLY_SESSION_ATTRS:
        raise ConfigError(
            f"{name}: target_session_attrs={attrs} leads to a read-only server and the service "
            f"writes; use {', '.join(WRITABLE_SESSION_ATTRS)} (default read-write)"
        )
    raise ConfigError(
        f"{name}: target_session_attrs '{attrs}' is not one of {', '.join(WRITABLE_SESSION_ATTRS)}"
    )
