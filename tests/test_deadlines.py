"""Client-side deadlines: a database that does not answer costs a caller its deadline, no more.

The silent server accepts TCP connections and never says a word, like a frozen host or a network
that drops packets: only the client can bound that wait. DB_CONNECT_TIMEOUT_S is fractional so
libpq's own whole-second connect_timeout cannot be what answers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from service.deadlines import deadline
from service.extensions import db

pytestmark = pytest.mark.serial  # each deadline is measured in time


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for sock in [*accepted, listener]:
        sock.close()


def test_connecting_to_a_silent_server_is_cut_at_the_fractional_connect_timeout(
    make_app, silent_server
) -> None:
    app = make_app(
        DATABASE_URL=f"postgresql://app@127.0.0.1:{silent_server}/app",
        DB_CONNECT_TIMEOUT_S="0.3",
        DB_DEADLINE_S="10",
    )
    client = app.test_client()
    started = time.monotonic()
    response = client.get("/api/db/test")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "timeout"
    assert 0.25 <= elapsed < 2  # unbounded, it would wait for the request's 10 s


def test_the_request_deadline_bounds_a_connect_that_has_more_time(make_app, silent_server):
    """DB_DEADLINE_S shorter than DB_CONNECT_TIMEOUT_S: the nearer of the two wins."""
    app = make_app(
        DATABASE_URL=f"postgresql://app@127.0.0.1:{silent_server}/app",
        DB_CONNECT_TIMEOUT_S="5",
        DB_DEADLINE_S="0.3",
        DB_POOL_TIMEOUT_S="0.3",
    )
    started = time.monotonic()
    response = app.test_client().get("/api/db/test")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "timeout"
    assert time.monotonic() - started < 0.9


def test_a_query_past_its_deadline_is_cut_and_the_next_request_is_served(make_app) -> None:
    app = make_app(DB_STATEMENT_TIMEOUT_MS="10000")

    @app.get("/sleep/<float:seconds>")
    def sleep(seconds: float):
        with deadline(0.3):
            return {"slept": db.session.scalar(text("SELECT pg_sleep(:s)"), {"s": seconds})}

    client = app.test_client()
    started = time.monotonic()
    response = client.get("/sleep/3.0")
    assert time.monotonic() - started < 1.5
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "timeout"
    assert client.get("/sleep/0.0").status_code == 200


def test_a_nested_deadline_never_extends_the_outer_one(make_app) -> None:
    app = make_app(DB_STATEMENT_TIMEOUT_MS="10000")

    @app.get("/nested")
    def nested():
        with deadline(0.3), deadline(5):
            db.session.execute(text("SELECT pg_sleep(3)"))
        return {}

    @app.get("/inner-shorter")
    def inner_shorter():
        with deadline(5), deadline(0.3):
            db.session.execute(text("SELECT pg_sleep(3)"))
        return {}

    client = app.test_client()
    for path in ("/nested", "/inner-shorter"):
        started = time.monotonic()
        response = client.get(path)
        assert response.status_code == 503, path
        assert time.monotonic() - started < 1.5, path


def test_the_outer_deadline_applies_again_after_an_inner_one(make_app) -> None:
    app = make_app(DB_STATEMENT_TIMEOUT_MS="10000")

    @app.get("/after-inner")
    def after_inner():
        with deadline(5):
            with deadline(0.2):
                db.session.scalar(text("SELECT 1"))
            return {"slept": db.session.scalar(text("SELECT pg_sleep(0.5)::text"))}

    assert app.test_client().get("/after-inner").status_code == 200


def test_outside_a_deadline_only_connecting_is_bounded(make_app) -> None:
    """Long work without a deadline (a migration) is not cut by DB_CONNECT_TIMEOUT_S."""
    app = make_app(DB_CONNECT_TIMEOUT_S="0.2", DB_STATEMENT_TIMEOUT_MS="10000")

    @app.get("/long")
    def long():
        return {"slept": db.session.scalar(text("SELECT pg_sleep(0.6)::text"))}

    assert app.test_client().get("/long").status_code == 200


def test_waiting_on_the_database_does_not_burn_cpu(make_app) -> None:
    """A blocked wait costs well under a millisecond of CPU; polling every millisecond, ~20 ms."""
    quiet = {"HEALTH_CHECK_INTERVAL_S": "5", "HEALTH_STALE_AFTER_S": "10"}  # no checks meanwhile
    app = make_app(DB_STATEMENT_TIMEOUT_MS="10000", **quiet)
    with app.app_context():
        db.session.scalar(text("SELECT 1"))  # connected: only the wait is measured
        cpu, wall = time.process_time(), time.monotonic()
        with deadline(5):
            db.session.execute(text("SELECT pg_sleep(0.8)"))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        db.session.rollback()
    assert wall >= 0.8
    assert cpu < 0.005, f"{cpu * 1000:.1f} ms of CPU for a {wall:.2f} s wait"
