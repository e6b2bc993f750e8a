"""The background health checker: probes never wait on the database.

One daemon thread per worker process observes the database every HEALTH_CHECK_INTERVAL_S with a
single query under a hard deadline; the health endpoints only read its latest observation. So a
storm of probes costs at most one query per interval per worker, and a frozen database cannot make
a probe wait. The thread is started lazily in the process that serves (after gunicorn's fork) and
restarted if the process finds it was forked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine

from service.config import Settings
from service.database import PoolGauge, engine_options
from service.deadlines import deadline
from service.errors import database_error_code
from service.logs import Redactor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One look at the database. `failure` is a safe code; `detail` is for ops callers only."""

    answered: bool
    observed_at: float  # wall clock, for the report
    monotonic_at: float  # for staleness arithmetic
    latency_ms: float | None
    revision: str | None
    failure: str | None
    detail: str | None
    pool_in_use: int
    pool_capacity: int | None


class DatabaseProbe:
    """Observes the database with one query, the current migration revision, on a connection
    of its own.

    A plain DBAPI connection rather than an engine: it neither competes with requests for the
    app's pool nor runs out when they exhaust it, and it costs the database exactly one query
    per check. (A SQLAlchemy engine runs several set-up queries on its first connection, which
    each recycled gunicorn worker paid again.) The URL and connect arguments still go through
    SQLAlchemy's dialect, so they are the app engine's: timeouts, keepalives, a name. With
    DB_POOL=null (PgBouncer, serverless) the connection is closed after each check.
    """

    def __init__(self, settings: Settings, pool_gauge: PoolGauge) -> None:
        self._settings = settings
        self._pool_gauge = pool_gauge
        self._redact = Redactor(settings.secrets)
        self._keep_connection = settings.db_pool != "null"
        self._connection: Any = None
        options = engine_options(settings, application_name=f"{settings.service_id}-health")
        self._dialect = create_engine(settings.database_url).dialect  # never connects itself
        connect_args, connect_kwargs = self._dialect.create_connect_args(settings.database_url)
        self._connect_args = connect_args
        self._connect_kwargs = {**connect_kwargs, **options.get("connect_args", {})}

    def __call__(self) -> Observation:
        started = time.monotonic()
        answered, revision, failure, detail = False, None, None, None
        try:
            with deadline(self._settings.health_check_timeout_s):
                revision = self._query_revision()
            answered = True
        except (self._dialect.loaded_dbapi.Error, OSError) as error:
            self.close()  # never reuse a connection that failed
            detail = self._describe(error)
            if _is_missing_table(error):  # it answered: not migrated yet
                answered, failure = True, "schema_missing"
            else:  # unreachable, too slow, or unusable (a permission denied, say)
                failure = database_error_code(error) or "database_error"
        finally:
            if not self._keep_connection:
                self.close()
        finished = time.monotonic()
        return Observation(
            answered=answered,
            observed_at=time.time(),
            monotonic_at=finished,
            latency_ms=round((finished - started) * 1000, 3) if answered else None,
            revision=revision,
            failure=failure,
            detail=detail,
            pool_in_use=self._pool_gauge.in_use,
            pool_capacity=self._pool_gauge.capacity,
        )

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _query_revision(self) -> str | None:
        if self._connection is None:
            self._connection = self._dialect.connect(*self._connect_args, **self._connect_kwargs)
            if hasattr(self._connection, "autocommit"):
                self._connection.autocommit = True  # psycopg2: no BEGIN, one round trip
        cursor = self._connection.cursor()
        try:
            cursor.execute("SELECT version_num FROM alembic_version")
            row = cursor.fetchone()
        finally:
            cursor.close()
        return row[0] if row else None

    def _describe(self, error: BaseException) -> str:
        original = getattr(error, "orig", None) or error
        first_line = (str(original).strip().splitlines() or [type(original).__name__])[0]
        return self._redact(first_line)


def _is_missing_table(error: BaseException) -> bool:
    original = getattr(error, "orig", None) or error
    if getattr(original, "pgcode", None) == "42P01":  # PostgreSQL: undefined_table
        return True
    return isinstance(original, sqlite3.OperationalError) and "no such table" in str(original)


@dataclass(frozen=True)
class Snapshot:
    """What the checker knows, replaced as a whole so readers never see half an update."""

    latest: Observation
    last_answer: Observation | None  # the latest observation in which the database answered
    generation: int


class HealthChecker:
    """Runs a probe periodically in a daemon thread and keeps the latest observation."""

    def __init__(
        self,
        probe: Callable[[], Observation],
        interval_s: float,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._on_snapshot = on_snapshot
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.snapshot: Snapshot | None = None

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running here (cheap when it is)."""
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            if self._pid != os.getpid():  # forked: what the parent saw is not ours
                self.snapshot = None
                self._first.clear()
            self._stop.clear()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="health-checker", daemon=True)
            self._thread.start()

    def wait_for_first(self, timeout_s: float) -> bool:
        return self._first.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait for it; safe to call more than once."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout_s)
        closer = getattr(self._probe, "close", None)
        if closer is not None:
            closer()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                observation = self._probe()
            except Exception:
                log.exception("health probe crashed")
            else:
                previous = self.snapshot
                self.snapshot = Snapshot(
                    latest=observation,
                    last_answer=observation
                    if observation.answered
                    else (previous.last_answer if previous else None),
                    generation=previous.generation + 1 if previous else 1,
                )
                self._first.set()
                if self._on_snapshot is not None:
                    self._on_snapshot(self.snapshot)
            self._stop.wait(max(0.0, self._interval_s - (time.monotonic() - started)))
