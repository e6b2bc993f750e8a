"""How the service talks to its database: connection options built once, errors classified once.

Nothing connects at import. Every engine connects lazily, so no connection exists before gunicorn
forks its workers; every connect goes through `connect` (one host at a time, each bounded: see
docs/architecture.md, "Failover").
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.errors
import sqlalchemy
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool, QueuePool

from service import deadlines
from service.config import Settings

# Find a peer that vanished in about a minute instead of the kernel's two hours.
KEEPALIVE_ARGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

# What an outage is called in a 503, and what the caller is told.
OUTAGE_MESSAGES = {
    "overloaded": "too many requests wait for the database; retry shortly",
    "timeout": "the database did not answer in time",
    "database_unavailable": "the database is unavailable",
    "database_read_only": "the database reached is read-only, not the primary; retry shortly",
}
# libpq's refusals of a server that target_session_attrs rules out (read-write; primary).
READ_ONLY_REFUSALS = ("session is read-only", "server is in hot standby mode")
READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction: a write on a standby

# host -> when a connect to it last failed (monotonic), for this process: see `connect`.
_failed_at: dict[tuple[str, str], float] = {}


class ReadOnlyServer(psycopg2.OperationalError):
    """No host took a writable session; at least one answered, read-only."""


def connect_args(
    settings: Settings, url: URL, purpose: str = "", *, statement_timeout_ms: int | None = None
) -> dict[str, Any]:
    """The libpq parameters of every connection the service opens (none for SQLite)."""
    if url.get_backend_name() != "postgresql":
        return {}
    args: dict[str, Any] = {
        **KEEPALIVE_ARGS,
        "connect_timeout": math.ceil(settings.db_connect_timeout_s),  # whole seconds, >= 1
        "application_name": f"{settings.service_id}-{purpose}" if purpose else settings.service_id,
    }
    if "target_session_attrs" not in url.query:  # never mistake a standby for the primary
        args["target_session_attrs"] = "read-write"
    if settings.db_pool == "queue" or statement_timeout_ms is not None:
        # PgBouncer refuses the `options` start-up parameter: with DB_POOL=null the timeouts are
        # set per transaction instead (see `prepare_engine`). Migrations connect directly.
        statement = statement_timeout_ms
        if statement is None:
            statement = settings.db_statement_timeout_ms
        args["options"] = (
            f"-c statement_timeout={statement} -c lock_timeout={settings.db_lock_timeout_ms}"
        )
    return args


def engine_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for the app's engine (Flask-SQLAlchemy's SQLALCHEMY_ENGINE_OPTIONS)."""
    if not settings.is_postgresql:
        return {}
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "connect_args": connect_args(settings, settings.database_url),
    }
    if settings.db_pool == "null":
        return {**options, "poolclass": NullPool}
    return {
        **options,
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout_s,
        "pool_recycle": settings.db_pool_recycle_s,
    }


def create_engine(settings: Settings, url: URL, purpose: str, **args: Any) -> Engine:
    """An unpooled engine for one job (`flask db wait`, migrations), prepared like the app's."""
    engine = sqlalchemy.create_engine(
        url, poolclass=NullPool, connect_args=connect_args(settings, url, purpose, **args)
    )
    return prepare_engine(engine, settings)


def prepare_engine(engine: Engine, settings: Settings) -> Engine:
    """Bound every connect of `engine`; with DB_POOL=null also set the timeouts per transaction."""
    if engine.dialect.name != "postgresql":
        return engine
    deadlines.install()

    @event.listens_for(engine, "do_connect")
    def _bounded_connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return connect(dialect.connect, settings, cargs, cparams)

    @event.listens_for(engine, "handle_error")
    def _read_only_is_a_disconnect(context: Any) -> None:
        # A write refused as read-only: this connection, and the pool's, lead to a standby.
        if getattr(context.original_exception, "pgcode", None) == READ_ONLY_SQLSTATE:
            context.is_disconnect = True

    if settings.db_pool == "null":
        statement = (
            f"SET LOCAL statement_timeout = {settings.db_statement_timeout_ms};"
            f" SET LOCAL lock_timeout = {settings.db_lock_timeout_ms}"
        )

        @event.listens_for(engine, "begin")
        def _set_local_timeouts(connection: Any) -> None:
            dbapi_connection = connection.connection.dbapi_connection
            if dbapi_connection.autocommit:  # psycopg2's: this engine is PostgreSQL
                return  # SET LOCAL means nothing outside a transaction block
            with dbapi_connection.cursor() as cursor:
                cursor.execute(statement)

    return engine


def connect(
    open_connection: Callable[..., Any], settings: Settings, cargs: Any, cparams: dict[str, Any]
) -> Any:
    """Open a DBAPI connection: one host at a time, the freshest failure last, each bounded.

    The whole connect stays within DB_CONNECT_TIMEOUT_S and the caller's deadline; with several
    hosts each attempt also within DB_HOST_CONNECT_TIMEOUT_S, so a hung host cannot use up the
    time of the next. Raises ReadOnlyServer when only read-only servers answered.
    """
    hosts = split_hosts(cparams)
    per_host = settings.db_host_connect_timeout_s if len(hosts) > 1 else math.inf
    errors: list[psycopg2.OperationalError] = []
    with deadlines.deadline(settings.db_connect_timeout_s):
        for host in sorted(hosts, key=lambda host: _failed_at.get(host, 0.0)):
            if deadlines.time_left() <= 0:
                break
            try:
                with deadlines.deadline(per_host):
                    connection = open_connection(*cargs, **_only(host, cparams, len(hosts)))
            except psycopg2.OperationalError as error:
                _failed_at[host] = time.monotonic()
                errors.append(error)
                continue
            _failed_at.pop(host, None)
            return connection
    if any(_is_read_only_refusal(error) for error in errors):
        raise ReadOnlyServer("; ".join(first_line(error) for error in errors))
    raise errors[-1] if errors else deadlines.DeadlineExceeded("no time left to connect")


def split_hosts(cparams: dict[str, Any]) -> list[tuple[str, str]]:
    """The (host, port) pairs of libpq's comma-separated `host` and `port` parameters."""
    hosts = str(cparams.get("host") or "").split(",")
    ports = str(cparams.get("port") or "").split(",")
    if len(ports) == 1:  # libpq: one port for every host
        ports *= len(hosts)
    return list(zip(hosts, ports, strict=True))


def _only(host: tuple[str, str], cparams: dict[str, Any], hosts: int) -> dict[str, Any]:
    """`cparams` naming only this host (an empty port: libpq's default); as they are for one."""
    if hosts == 1:
        return cparams
    params = {key: value for key, value in cparams.items() if key not in ("host", "port")}
    name, port = host
    return {**params, "host": name, "port": port} if port else {**params, "host": name}


def _is_read_only_refusal(error: BaseException) -> bool:
    return any(refusal in str(error) for refusal in READ_ONLY_REFUSALS)


def pool_in_use(engine: Engine) -> int:
    """Connections checked out of the engine's pool now (0 when it does not pool)."""
    return engine.pool.checkedout() if isinstance(engine.pool, QueuePool) else 0


def pool_capacity(settings: Settings) -> int | None:
    """How many connections one worker may hold, or None when the app does not pool."""
    if not settings.is_postgresql or settings.db_pool == "null":
        return None
    return settings.db_pool_size + settings.db_max_overflow


def classify(error: BaseException) -> str | None:
    """Name a database outage (a key of OUTAGE_MESSAGES), else None."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection within DB_POOL_TIMEOUT_S
        return "overloaded"
    original = getattr(error, "orig", None) or error
    if isinstance(original, ReadOnlyServer) or (
        getattr(original, "pgcode", None) == READ_ONLY_SQLSTATE
    ):
        return "database_read_only"
    timeouts = (
        deadlines.DeadlineExceeded,
        psycopg2.errors.QueryCanceled,
        psycopg2.errors.LockNotAvailable,
    )
    if isinstance(original, timeouts):
        return "timeout"
    unavailable = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)
    if isinstance(error, unavailable) or isinstance(
        original, psycopg2.OperationalError | psycopg2.InterfaceError
    ):
        return "database_unavailable"
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return "database_unavailable"
    return None


def is_missing_table(error: BaseException) -> bool:
    """The database answered that a table does not exist (not migrated yet)."""
    original = getattr(error, "orig", None) or error
    if getattr(original, "pgcode", None) == "42P01":  # PostgreSQL: undefined_table
        return True
    return isinstance(original, sqlite3.OperationalError) and "no such table" in str(original)


def first_line(error: BaseException) -> str:
    """The first line of the underlying driver's message (may name hosts: for ops eyes only)."""
    original = getattr(error, "orig", None) or error
    return (str(original).strip().splitlines() or [type(original).__name__])[0]
