"""The service through PgBouncer in transaction pooling mode, PgBouncer's defaults untouched.

With DB_POOL=null the app pools nothing, sends no `options` start-up parameter (PgBouncer refuses
it by default) and sets its statement and lock timeouts with SET LOCAL in every transaction, which
is the only kind of setting that survives transaction pooling. The health checker goes through
PgBouncer too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import psycopg2
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from harness.pgbouncer import PgBouncer
from harness.service import ADMIN_URL, FAST_HEALTH, AppFactory, ServerFactory
from service.extensions import db
from service.schema import schema_versions

AUTH_TABLES = '"user", session, account, verification'


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    server = make_url(ADMIN_URL)
    with PgBouncer(server.port or 5432, target_host=server.host or "127.0.0.1") as running:
        yield running


@pytest.fixture
def bouncer_url(bouncer: PgBouncer, database_url: str) -> str:
    """This run's migrated database, reached through PgBouncer."""
    return bouncer.url(make_url(database_url).database or "postgres")


def test_pgbouncer_refuses_the_options_startup_parameter(bouncer: PgBouncer) -> None:
    """Why DB_POOL=queue (timeouts as start-up options) cannot work behind it."""
    with pytest.raises(psycopg2.OperationalError, match="unsupported startup parameter"):
        bouncer.connect(options="-c statement_timeout=1000").close()


def test_timeouts_are_set_per_transaction_through_pgbouncer(
    make_app: AppFactory, bouncer_url: str, bouncer: PgBouncer
) -> None:
    app = make_app(
        DATABASE_URL=bouncer_url,
        DB_POOL="null",
        DB_STATEMENT_TIMEOUT_MS="300",
        DB_LOCK_TIMEOUT_MS="200",
    )
    with app.app_context():
        row = db.session.execute(
            text("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
        ).one()
        assert tuple(row) == ("300ms", "200ms")
        db.session.rollback()

        started = time.monotonic()
        with pytest.raises(OperationalError, match="statement timeout"):
            db.session.execute(text("SELECT pg_sleep(3)"))
        assert time.monotonic() - started < 2
        db.session.rollback()

    # SET LOCAL ends with its transaction: nothing leaks to the next client of that server
    # connection (PgBouncer runs every client on a handful of shared server connections).
    with closing(bouncer.connect(make_url(bouncer_url).database)) as other:
        other.autocommit = True
        with other.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone() == ("0",)


@pytest.mark.serial  # bounds the lock timeout's answer in time
def test_every_endpoint_works_through_pgbouncer_and_its_timeouts_hold(
    serve: ServerFactory, bouncer_url: str, database_url: str
) -> None:
    process, base = serve(
        {
            "DATABASE_URL": bouncer_url,
            "DB_POOL": "null",
            "DB_LOCK_TIMEOUT_MS": "300",
            "DB_DEADLINE_S": "2",
            "SERVICE_ID": f"bouncer-{uuid.uuid4().hex[:8]}",
            **FAST_HEALTH,
        }
    )
    session = requests.Session()

    def check(path: str) -> str:
        response = session.get(f"{base}{path}", timeout=10)
        assert response.status_code == 200, (path, response.text)
        if path == "/api/health":
            body = response.json()
            assert body["status"] == "pass", body  # the checker answers through PgBouncer
            assert (
                body["checks"]["migrations:revision"][0]["observedValue"] == schema_versions().head
            )
        elif path == "/api/db/test":
            body = response.json()
            assert body["status"] == "ok"
            assert body["writeCheck"] == {"inserted": True, "readBack": True, "rolledBack": True}
        elif path == "/metrics":
            families = {f.name for f in text_string_to_metric_families(response.text)}
            assert "service_http_requests" in families
        return path

    paths = ["/api/health", "/api/health/live", "/api/health/ready", "/api/db/test", "/metrics"]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(check, paths * 60))
    assert len(done) == 300

    # An ACCESS EXCLUSIVE lock on the auth tables: the write path waits for it, and the
    # lock_timeout set with SET LOCAL through PgBouncer ends the wait, far inside the deadline.
    locker = psycopg2.connect(database_url, connect_timeout=5)  # directly, not via PgBouncer
    try:
        with locker.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {AUTH_TABLES} IN ACCESS EXCLUSIVE MODE")
        for _ in range(3):
            started = time.monotonic()
            response = session.get(f"{base}/api/db/test", timeout=10)
            elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "timeout"
            assert elapsed < 1.5, f"{elapsed:.2f}s: the server's lock_timeout (0.3 s) did not fire"
            health = session.get(f"{base}/api/health", timeout=10)
            assert health.status_code == 200 and health.json()["status"] == "pass"
    finally:
        locker.rollback()
        locker.close()
    assert session.get(f"{base}/api/db/test", timeout=10).status_code == 200
    assert "Traceback" not in process.log_text()
