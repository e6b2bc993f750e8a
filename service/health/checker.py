"""The background health checker: one query per interval per worker, so probes never wait."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy

from service.config import Settings
from service.database import (
    ReadOnlyServer,
    classify,
    connect,
    connect_args,
    first_line,
    is_missing_table,
)
from service.deadlines import deadline
from service.logs import Redactor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One look at the database. `failure` is a safe code; `detail` is for ops callers only."""

    answered: bool
    observed_at: float  # wall clock, for the report
    monotonic_at: float  # for staleness arithmetic
    latency_s: float | None  # the check's round trips, when it got an answer
    revision: str | None
    failure: str | None
    detail: str | None
    pool_in_use: int
    pool_capacity: int | None


@dataclass(frozen=True)
class Snapshot:
    """What the checker knows, replaced as a whole so readers never see half an update."""

    latest: Observation
    last_answer: Observation | None  # the latest observation in which the database answered


# One round trip: the revision, and whether this server can take writes (a standby cannot).
POSTGRESQL_QUERY = (
    "SELECT (SELECT version_num FROM alembic_version), pg_is_in_recovery(),"
    " current_setting('transaction_read_only') = 'on'"
)
SQLITE_QUERY = "SELECT (SELECT version_num FROM alembic_version), 0, 0"


class DatabaseProbe:
    """Reads the migration revision, on a writable server, on a DBAPI connection of its own."""

    def __init__(self, settings: Settings, pool_in_use: Callable[[], int], capacity: int | None):
        self._settings = settings
        self._pool_in_use = pool_in_use
        self._capacity = capacity
        self._redact = Redactor(settings.secrets)
        self._connection: Any = None
        url = settings.database_url
        self._dialect = sqlalchemy.create_engine(url).dialect  # never connects itself
        args, kwargs = self._dialect.create_connect_args(url)
        self._args = args
        self._kwargs = {**kwargs, **connect_args(settings, url, "health")}
        self._query = POSTGRESQL_QUERY if settings.is_postgresql else SQLITE_QUERY

    def __call__(self) -> Observation:
        started = time.monotonic()
        answered, revision, failure, detail = False, None, None, None
        try:
            with deadline(self._settings.health_check_timeout_s):
                revision = self._query_revision()
            answered = True
        except (self._dialect.loaded_dbapi.Error, OSError) as error:
            self.close()  # never reuse a connection that failed
            detail = self._redact(first_line(error))
            if is_missing_table(error):  # it answered: not migrated yet
                answered, failure = True, "schema_missing"
            else:
                failure = classify(error) or "database_error"
        finally:
            if self._settings.db_pool == "null":
                self.close()
        finished = time.monotonic()
        return Observation(
            answered=answered,
            observed_at=time.time(),
            monotonic_at=finished,
            latency_s=finished - started if answered else None,
            revision=revision,
            failure=failure,
            detail=detail,
            pool_in_use=self._pool_in_use(),
            pool_capacity=self._capacity,
        )

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _query_revision(self) -> str | None:
        """The revision; ReadOnlyServer when the server cannot take writes (then reconnect)."""
        if self._connection is None:
            self._connection = self._connect()
        cursor = self._connection.cursor()
        try:
            cursor.execute(self._query)
            revision, in_recovery, read_only = cursor.fetchone()
        finally:
            cursor.close()
        if in_recovery:
            raise ReadOnlyServer("the server is a standby (in recovery), not the primary")
        if read_only:
            raise ReadOnlyServer("the server's sessions are read-only, not writable")
        return revision

    def _connect(self) -> Any:
        if not self._settings.is_postgresql:
            return self._dialect.connect(*self._args, **self._kwargs)
        connection = connect(self._dialect.connect, self._settings, self._args, self._kwargs)
        connection.autocommit = True  # no BEGIN: one round trip per check
        return connection


class HealthChecker:
    """Runs a probe every interval in a daemon thread and keeps the latest snapshot."""

    def __init__(
        self,
        probe: Callable[[], Observation],
        interval_s: float,
        on_snapshot: Callable[[Snapshot], None] = lambda _: None,
    ) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._on_snapshot = on_snapshot
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self.snapshot: Snapshot | None = None

    def ensure_running(self) -> None:
        """Start the thread unless it runs already (cheap when it does).

        Each gunicorn worker builds its own app after the fork (preload_app is off), so a checker
        never runs in a process that forks later.
        """
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="health-checker", daemon=True)
            self._thread.start()

    def wait_for_first(self, timeout_s: float) -> bool:
        return self._first.wait(timeout_s)

    def stop(self, timeout_s: float) -> None:
        """Stop the thread, wait up to `timeout_s` for a check in flight, then close its connection.

        Safe to repeat. A check bounded by a deadline of `timeout_s` has ended when the wait does.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
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
                previous = self.snapshot.last_answer if self.snapshot else None
                self.snapshot = Snapshot(
                    latest=observation,
                    last_answer=observation if observation.answered else previous,
                )
                self._first.set()
                self._on_snapshot(self.snapshot)
            self._stop.wait(max(0.0, self._interval_s - (time.monotonic() - started)))
