"""Client-side deadlines for every PostgreSQL round trip.

`statement_timeout` is enforced by the server, so it cannot fire when the server is frozen or the
network silently drops packets, and libpq's own `connect_timeout` only covers connecting. To bound
*everything* we install a psycopg2 wait callback: libpq then runs non-blocking and this module waits
on the socket with a timeout. When the deadline passes, the callback raises `DeadlineExceeded`;
psycopg2 closes the connection, and SQLAlchemy sees a disconnect and drops it from the pool.

Deadlines are per thread (`with deadline(2.0): ...`). Outside one, only connecting is bounded (by
`DB_CONNECT_TIMEOUT_S`), so long migrations are not cut short.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions

_local = threading.local()
_connect_timeout_s: float = 2.0


class DeadlineExceeded(psycopg2.OperationalError):
    """The database did not answer before the caller's deadline."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound all database I/O of this thread inside the block to `seconds` in total.

    Nested deadlines never extend an outer one.
    """
    outer = getattr(_local, "deadline", None)
    inner = time.monotonic() + seconds
    _local.deadline = inner if outer is None else min(outer, inner)
    try:
        yield
    finally:
        _local.deadline = outer


def begin(seconds: float) -> None:
    """Start a deadline for this thread that lasts until `clear()` (one per request)."""
    _local.deadline = time.monotonic() + seconds


def clear() -> None:
    _local.deadline = None


def remaining() -> float | None:
    """Seconds left before this thread's deadline, or None when there is none."""
    current = getattr(_local, "deadline", None)
    return None if current is None else current - time.monotonic()


def install(connect_timeout_s: float) -> None:
    """Route all psycopg2 I/O of this process through `wait_with_deadline` (idempotent)."""
    global _connect_timeout_s
    _connect_timeout_s = connect_timeout_s
    psycopg2.extensions.set_wait_callback(wait_with_deadline)


def wait_with_deadline(connection: psycopg2.extensions.connection) -> None:
    """psycopg2 wait callback: poll the connection until done or until the deadline passes."""
    limit = getattr(_local, "deadline", None)
    if connection.status == psycopg2.extensions.STATUS_SETUP:
        connect_limit = time.monotonic() + _connect_timeout_s
        limit = connect_limit if limit is None else min(limit, connect_limit)
    while True:
        state = connection.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            events = select.POLLIN
        elif state == psycopg2.extensions.POLL_WRITE:
            events = select.POLLOUT
        else:  # pragma: no cover - psycopg2 documents no other state
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        timeout_ms = None
        if limit is not None:
            left = limit - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("the database did not answer in time")
            timeout_ms = max(1, int(left * 1000))
        poller = select.poll()  # cheap, no system call; the socket may change while connecting
        poller.register(connection.fileno(), events)
        poller.poll(timeout_ms)
