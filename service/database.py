"""How the service talks to its database: engine options, timeouts and pool accounting.

Nothing here connects. Engines are created by Flask-SQLAlchemy at start-up and connect lazily, so
no connection ever exists before gunicorn forks its workers.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from service.config import Settings

# TCP keepalives find a peer that vanished (a dead network, a failed-over host) in about a minute
# instead of the kernel's two hours; tcp_user_timeout bounds unacknowledged writes likewise.
KEEPALIVE_ARGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def engine_options(settings: Settings, *, application_name: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `create_engine` (Flask-SQLAlchemy's SQLALCHEMY_ENGINE_OPTIONS)."""
    if not settings.is_postgresql:
        return {}
    connect_args: dict[str, Any] = {
        **KEEPALIVE_ARGS,
        # libpq counts whole seconds; the wait callback (service.deadlines) bounds it exactly.
        "connect_timeout": max(1, math.ceil(settings.db_connect_timeout_s)),
        "application_name": application_name or settings.service_id,
    }
    options: dict[str, Any] = {"pool_pre_ping": True, "connect_args": connect_args}
    if settings.db_pool == "null":
        # Behind PgBouncer (transaction pooling) or in a serverless function: the app pools
        # nothing, and the `options` start-up parameter would be refused by PgBouncer, so the
        # timeouts are set per transaction instead (see `enforce_timeouts_per_transaction`).
        options["poolclass"] = NullPool
        return options
    connect_args["options"] = (
        f"-c statement_timeout={settings.db_statement_timeout_ms}"
        f" -c lock_timeout={settings.db_lock_timeout_ms}"
    )
    options.update(
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=settings.db_pool_recycle_s,
    )
    return options


def enforce_timeouts_per_transaction(engine: Engine, settings: Settings) -> None:
    """Issue `SET LOCAL` timeouts at the start of every transaction (PgBouncer-safe).

    Used with DB_POOL=null, where the timeouts cannot travel as start-up parameters. The raw DBAPI
    cursor is used on purpose: it opens the transaction the statement then belongs to, without
    re-entering SQLAlchemy's own begin.
    """
    statement = (
        f"SET LOCAL statement_timeout = {settings.db_statement_timeout_ms};"
        f" SET LOCAL lock_timeout = {settings.db_lock_timeout_ms}"
    )

    @event.listens_for(engine, "begin")
    def _set_local_timeouts(connection: Any) -> None:
        dbapi_connection = connection.connection.dbapi_connection
        if getattr(dbapi_connection, "autocommit", False):
            return  # SET LOCAL means nothing outside a transaction block
        with dbapi_connection.cursor() as cursor:
            cursor.execute(statement)


class PoolGauge:
    """Counts the connections checked out of an engine's pool, for any pool class."""

    def __init__(self, engine: Engine, capacity: int | None) -> None:
        self.capacity = capacity
        self._in_use = 0
        self._lock = threading.Lock()
        event.listen(engine, "checkout", self._checked_out)
        event.listen(engine, "checkin", self._checked_in)

    @property
    def in_use(self) -> int:
        return self._in_use

    def _checked_out(self, *_: Any) -> None:
        with self._lock:
            self._in_use += 1

    def _checked_in(self, *_: Any) -> None:
        with self._lock:
            self._in_use = max(0, self._in_use - 1)


def pool_capacity(settings: Settings) -> int | None:
    """How many connections one process may hold, or None when the app does not pool."""
    if not settings.is_postgresql or settings.db_pool == "null":
        return None
    return settings.db_pool_size + settings.db_max_overflow
