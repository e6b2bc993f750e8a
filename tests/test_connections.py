"""What PostgreSQL and the kernel see of each connection the service opens.

The app's pool, the health checker, `flask db wait` and migrations each name themselves
(application_name), carry the server-side limits they need, and ask the kernel to notice a
vanished peer within about a minute (docs/architecture.md, "Connection lifecycle").
"""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy import text

from service.config import load_settings
from service.database import create_engine
from service.extensions import db

# Keepalive after 30 s idle, then a probe every 10 s, 3 lost probes: a dead peer in 60 s; data
# unacknowledged for 30 s abandons the connection (docs/architecture.md, "Connection lifecycle").
KEEPALIVE = {
    socket.SO_KEEPALIVE: 1,
    socket.TCP_KEEPIDLE: 30,
    socket.TCP_KEEPINTVL: 10,
    socket.TCP_KEEPCNT: 3,
    socket.TCP_USER_TIMEOUT: 30_000,
}


def socket_options(dbapi_connection) -> dict[int, int]:
    sock = socket.socket(fileno=dbapi_connection.fileno())
    try:
        return {
            option: sock.getsockopt(
                socket.SOL_SOCKET if option == socket.SO_KEEPALIVE else socket.IPPROTO_TCP, option
            )
            for option in KEEPALIVE
        }
    finally:
        sock.detach()  # the descriptor stays psycopg2's


def test_pooled_connections_find_a_vanished_peer_within_a_minute(make_app) -> None:
    app = make_app()
    with app.app_context(), db.engine.connect() as connection:
        assert socket_options(connection.connection.dbapi_connection) == KEEPALIVE


def test_the_pool_has_the_configured_size_and_recycles_old_connections(make_app) -> None:
    app = make_app(DB_POOL_SIZE="2", DB_MAX_OVERFLOW="1", DB_POOL_RECYCLE_S="1")
    with app.app_context():
        with db.engine.connect() as connection:
            first = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() == first
        time.sleep(1.1)
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != first
        capacity = app.test_client().get("/api/health").get_json()["checks"]
        assert capacity["postgresql:connections"][0]["poolSize"] == 3


@pytest.mark.parametrize(
    ("purpose", "timeout_ms", "statement", "expected"),
    [
        ("wait", None, "2s", "db-svc-wait"),
        ("migrate", 0, "0", "db-svc-migrate"),  # migrations are never cut by a statement limit
    ],
)
def test_one_off_engines_name_their_purpose_and_keep_the_lock_limit(
    database_url, purpose, timeout_ms, statement, expected
) -> None:
    settings = load_settings(
        {"DATABASE_URL": database_url, "SERVICE_ID": "db-svc", "DB_LOCK_TIMEOUT_MS": "1500"},
        instance_path="/nonexistent",
        environ={},
    )
    extra = {} if timeout_ms is None else {"statement_timeout_ms": timeout_ms}
    engine = create_engine(settings, settings.database_url, purpose, **extra)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT current_setting('application_name'),"
                    " current_setting('statement_timeout'), current_setting('lock_timeout')"
                )
            ).one()
            assert tuple(row) == (expected, statement, "1500ms")
            assert socket_options(connection.connection.dbapi_connection) == KEEPALIVE
    finally:
        engine.dispose()


def test_behind_a_transaction_pooler_autocommit_work_gets_no_set_local(make_app, caplog) -> None:
    """SET LOCAL outside a transaction block only earns a server warning: it is not sent."""
    app = make_app(DB_POOL="null", DB_STATEMENT_TIMEOUT_MS="1500")
    with app.app_context():
        with db.engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
        autocommit = db.engine.execution_options(isolation_level="AUTOCOMMIT")
        with autocommit.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "0"
            notices = connection.connection.dbapi_connection.notices
            assert not [n for n in notices if "SET LOCAL" in n]


def test_an_app_without_a_pool_reports_no_pool(make_app) -> None:
    app = make_app(DB_POOL="null")
    with app.app_context(), db.engine.connect():
        response = app.test_client().get("/api/health")
    (connections,) = response.get_json()["checks"]["postgresql:connections"]
    assert (connections["observedValue"], connections["poolSize"]) == (0, None)
    assert connections["status"] == "pass"
