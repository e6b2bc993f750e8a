"""Client-side deadlines for every PostgreSQL round trip (a psycopg2 wait callback).

Why a client-side bound at all, and why a wait callback: docs/architecture.md, "Deadlines".
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import psycopg2
import psycopg2.extensions

# Per thread, and per greenlet under gevent, whenever this module was imported.
_deadline: ContextVar[float | None] = ContextVar("database_deadline", default=None)


class DeadlineExceeded(psycopg2.OperationalError):
    """The database did not answer before the caller's deadline."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound all database I/O inside the block to `seconds` in total; never extends an outer one."""
    outer = _deadline.get()
    inner = time.monotonic() + seconds
    token = _deadline.set(inner if outer is None else min(outer, inner))
    try:
        yield
    finally:
        _deadline.reset(token)


def time_left() -> float:
    """Seconds left before the current deadline (negative once past); infinite outside one."""
    limit = _deadline.get()
    return math.inf if limit is None else limit - time.monotonic()


def install() -> None:
    """Route all psycopg2 I/O of this process through `wait_with_deadline` (idempotent)."""
    psycopg2.extensions.set_wait_callback(wait_with_deadline)


def wait_with_deadline(connection: psycopg2.extensions.connection) -> None:
    """Poll the connection until it is done, or raise DeadlineExceeded once the deadline passes."""
    limit = _deadline.get()
    while True:
        state = connection.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        events = select.POLLIN if state == psycopg2.extensions.POLL_READ else select.POLLOUT
        timeout_ms: float | None = None
        if limit is not None:
            left = limit - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("the database did not answer in time")
            timeout_ms = left * 1000  # poll (and gevent's) take fractions of a millisecond
        poller = select.poll()  # gevent's cooperative poll once monkey-patched
        poller.register(connection.fileno(), events)
        poller.poll(timeout_ms)
