"""Several hosts in DATABASE_URL, and servers that are not the primary (issue 17).

A silent host (accepts TCP, never answers: a frozen server or a partition) costs one attempt of
DB_HOST_CONNECT_TIMEOUT_S, then the next host is tried, and a host that failed is tried last next
time. A read-only server (here a database whose sessions default to read-only, which libpq and
PostgreSQL treat as they treat a standby) is refused at connect; met anyway
(target_session_attrs=any), it costs a 503 `database_read_only` and every pooled connection.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import make_url

from harness.pgbouncer import PgBouncer
from harness.processes import free_port
from harness.service import (
    ADMIN_URL,
    AppFactory,
    DatabaseFactory,
    ServerFactory,
    admin_execute,
    migrate,
)
from service import database, deadlines
from service.config import load_settings
from service.extensions import db
from tests.test_health_endpoints import body_json

READ_ONLY = {
    "status": 503,
    "body": {
        "error": {
            "code": "database_read_only",
            "message": "the database reached is read-only, not the primary; retry shortly",
        }
    },
}


class SilentHost:
    """A port on 127.0.0.1 that accepts connections, never answers, and counts them."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                self.accepted.append(self.listener.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [*self.accepted, self.listener]:
            sock.close()


@pytest.fixture
def silent() -> Iterator[SilentHost]:
    host = SilentHost()
    yield host
    host.close()


@pytest.fixture(autouse=True)
def _no_remembered_failures() -> Iterator[None]:
    """Which host failed last is remembered per process: each test starts without memories."""
    database._failed_at.clear()
    yield
    database._failed_at.clear()


@pytest.fixture(scope="module")
def read_only_url(databases: DatabaseFactory) -> str:
    """A migrated database whose sessions are read-only, as on a standby."""
    url = databases.create("svc_read_only")
    migrate(url)
    admin_execute(f"ALTER DATABASE {make_url(url).database} SET default_transaction_read_only = on")
    return url


def silent_first(url: str, silent: SilentHost) -> str:
    """`url`'s server listed after the silent host, in libpq's multi-host form."""
    parsed = make_url(url)
    return (
        f"postgresql://{parsed.username}@127.0.0.1:{silent.port},"
        f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"
    )


def timed_get(client, path: str) -> tuple[float, int]:
    started = time.monotonic()
    response = client.get(path)
    return time.monotonic() - started, response.status_code


# ------------------------------------------------------------------------------ one host at a time


def test_a_silent_host_costs_one_attempt_then_the_next_host_serves(
    make_app: AppFactory, database_url: str, silent: SilentHost
) -> None:
    app = make_app(
        DATABASE_URL=silent_first(database_url, silent),
        DB_POOL="null",  # a connect per request
        DB_HOST_CONNECT_TIMEOUT_S="0.3",
        DB_CONNECT_TIMEOUT_S="5",
        DB_DEADLINE_S="5",
    )
    client = app.test_client()
    first_s, status = timed_get(client, "/api/db/test")
    assert status == 200
    assert 0.28 <= first_s < 1.5  # one attempt on the silent host, not DB_CONNECT_TIMEOUT_S
    later = [timed_get(client, "/api/db/test") for _ in range(3)]
    assert [status for _, status in later] == [200] * 3
    assert max(seconds for seconds, _ in later) < 0.28  # the failed host is tried last now
    assert len(silent.accepted) == 1


def test_hosts_are_tried_in_the_urls_order_until_one_fails(
    make_app: AppFactory, database_url: str, silent: SilentHost
) -> None:
    parsed = make_url(database_url)
    url = (
        f"postgresql://{parsed.username}@/{parsed.database}"
        f"?host={parsed.host}:{parsed.port or 5432}&host=127.0.0.1:{silent.port}"
    )
    app = make_app(DATABASE_URL=url, DB_POOL="null", DB_HOST_CONNECT_TIMEOUT_S="0.3")
    client = app.test_client()
    assert [timed_get(client, "/api/db/test")[1] for _ in range(3)] == [200] * 3
    assert silent.accepted == []  # the first host answered: the second was never tried


def test_the_whole_connect_stays_within_db_connect_timeout(
    make_app: AppFactory, silent: SilentHost
) -> None:
    """Two silent hosts of 0.4 s each, DB_CONNECT_TIMEOUT_S 0.6: the second gets what is left."""
    url = f"postgresql://app@127.0.0.1:{silent.port},localhost:{silent.port}/app"
    app = make_app(
        DATABASE_URL=url,
        DB_HOST_CONNECT_TIMEOUT_S="0.4",
        DB_CONNECT_TIMEOUT_S="0.6",
        DB_DEADLINE_S="10",
    )
    seconds, status = timed_get(app.test_client(), "/api/db/test")
    assert status == 503
    assert 0.55 <= seconds < 2.5  # within DB_CONNECT_TIMEOUT_S, and never a hang
    assert len(silent.accepted) == 2  # both hosts had their attempt


def test_the_whole_connect_stays_within_the_request_deadline(
    make_app: AppFactory, silent: SilentHost
) -> None:
    url = f"postgresql://app@127.0.0.1:{silent.port},localhost:{silent.port}/app"
    app = make_app(
        DATABASE_URL=url,
        DB_HOST_CONNECT_TIMEOUT_S="0.4",
        DB_CONNECT_TIMEOUT_S="5",
        DB_DEADLINE_S="0.5",
        DB_POOL_TIMEOUT_S="0.5",
    )
    response = app.test_client().get("/api/db/test")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "timeout"
    seconds, _ = timed_get(app.test_client(), "/api/db/test")
    assert 0.45 <= seconds < 2.5  # cut at the deadline, and never a hang


def test_every_host_failing_answers_with_the_last_hosts_error(
    make_app: AppFactory, silent: SilentHost
) -> None:
    """A silent host, then one that refuses: the refusal is the answer, as libpq's last word."""
    refusing = free_port()
    url = f"postgresql://app@127.0.0.1:{silent.port},127.0.0.1:{refusing}/app"
    app = make_app(DATABASE_URL=url, DB_HOST_CONNECT_TIMEOUT_S="0.2", DB_POOL="null")
    response = app.test_client().get("/api/db/test")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert len(silent.accepted) == 1


def test_one_host_keeps_the_whole_connect_timeout(make_app: AppFactory, silent: SilentHost) -> None:
    """Without a next host, DB_HOST_CONNECT_TIMEOUT_S would only cut a slow connect short."""
    app = make_app(
        DATABASE_URL=f"postgresql://app@127.0.0.1:{silent.port}/app",
        DB_HOST_CONNECT_TIMEOUT_S="0.1",
        DB_CONNECT_TIMEOUT_S="0.5",
        DB_DEADLINE_S="10",
    )
    seconds, status = timed_get(app.test_client(), "/api/db/test")
    assert status == 503
    assert 0.45 <= seconds < 2.5  # never a hang


def test_no_time_left_means_no_host_is_tried(silent: SilentHost, tmp_path) -> None:
    """A caller whose deadline has passed gets a timeout, and no host is marked as failed."""
    url = f"postgresql://app@127.0.0.1:{silent.port},localhost:{silent.port}/app"
    settings = load_settings({"DATABASE_URL": url}, instance_path=tmp_path, environ={})
    dialect = sqlalchemy.create_engine(settings.database_url).dialect
    _, params = dialect.create_connect_args(settings.database_url)
    with deadlines.deadline(0), pytest.raises(deadlines.DeadlineExceeded):
        database.connect(dialect.connect, settings, [], params)
    assert silent.accepted == []
    assert database._failed_at == {}


def test_split_hosts_pairs_each_host_with_its_port() -> None:
    assert database.split_hosts({"host": "a,b", "port": "1,2"}) == [("a", "1"), ("b", "2")]
    assert database.split_hosts({"host": "a,b", "port": "7"}) == [("a", "7"), ("b", "7")]
    assert database.split_hosts({"host": "a,b", "port": ",2"}) == [("a", ""), ("b", "2")]
    assert database.split_hosts({"host": "a"}) == [("a", "")]
    assert database.split_hosts({}) == [("", "")]


@pytest.mark.serial
def test_under_gevent_through_pgbouncer_a_silent_host_is_skipped(
    serve: ServerFactory, database_url: str, silent: SilentHost
) -> None:
    """The real gevent worker, DB_POOL=null behind PgBouncer listed after a silent host."""
    server = make_url(ADMIN_URL)
    with PgBouncer(server.port or 5432, target_host=server.host or "127.0.0.1") as bouncer:
        through = make_url(bouncer.url(make_url(database_url).database or "postgres"))
        url = (
            f"postgresql://{through.username}@127.0.0.1:{silent.port},"
            f"{through.host}:{through.port}/{through.database}"
        )
        _, base_url = serve(
            {
                "DATABASE_URL": url,
                "DB_POOL": "null",
                "DB_HOST_CONNECT_TIMEOUT_S": "0.3",
                "SHUTDOWN_DRAIN_S": "0",
            },
            workers=1,
        )
        assert requests.get(f"{base_url}/api/health/ready", timeout=5).status_code == 200

        def get(_: int) -> tuple[float, int]:
            started = time.monotonic()
            status = requests.get(f"{base_url}/api/db/test", timeout=5).status_code
            return time.monotonic() - started, status

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(get, range(16)))
    assert [status for _, status in answers] == [200] * 16
    assert max(seconds for seconds, _ in answers) < 2.0
    assert 1 <= len(silent.accepted) <= 2  # the checker's first connect (and maybe one request)


# ------------------------------------------------------------------------------ read-only servers


def test_a_read_only_server_is_refused_at_connect_with_its_own_503(
    make_app: AppFactory, read_only_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(DATABASE_URL=read_only_url)
    response = app.test_client().get("/api/db/test")
    assert {"status": response.status_code, "body": response.get_json()} == READ_ONLY
    assert response.headers["Retry-After"] == "1"
    assert "database outage: database_read_only" in caplog.text


def test_a_read_only_server_fails_readiness_at_once_with_a_reason(
    make_app: AppFactory, read_only_url: str
) -> None:
    app = make_app(DATABASE_URL=read_only_url, OPS_TOKEN="t" * 16)
    ready = app.test_client().get("/api/health/ready")
    assert (ready.status_code, body_json(ready)) == (
        503,
        {"status": "fail", "notes": ["database_read_only"]},
    )
    health = app.test_client().get("/api/health", headers={"Authorization": f"Bearer {'t' * 16}"})
    check = body_json(health)["checks"]["postgresql:responseTime"][0]
    assert health.status_code == 503
    assert "session is read-only" in check["output"]


def test_a_session_that_turns_out_read_only_fails_the_check_and_is_dropped(
    make_app: AppFactory, read_only_url: str
) -> None:
    """target_session_attrs=any lets the probe in: its query sees the read-only session."""
    app = make_app(DATABASE_URL=f"{read_only_url}?target_session_attrs=any", OPS_TOKEN="t" * 16)
    health = app.test_client().get("/api/health", headers={"Authorization": f"Bearer {'t' * 16}"})
    assert body_json(health)["notes"] == ["database_read_only"]
    check = body_json(health)["checks"]["postgresql:responseTime"][0]
    assert check["output"] == "the server's sessions are read-only, not writable"
    probe = app.extensions["health"].checker._probe
    assert probe._connection is None  # dropped: the next check connects through the address


def test_a_write_refused_as_read_only_is_503_and_empties_the_pool(
    make_app: AppFactory, read_only_url: str
) -> None:
    """SQLSTATE 25006 counts as a disconnect: no pooled connection to that server is used again."""
    app = make_app(DATABASE_URL=f"{read_only_url}?target_session_attrs=any", DB_POOL_SIZE="3")
    with app.app_context():
        held = [db.engine.connect() for _ in range(3)]
        pids = {connection.scalar(text("SELECT pg_backend_pid()")) for connection in held}
        for connection in held:
            connection.close()  # back to the pool: three idle connections
        response = app.test_client().get("/api/db/test")
        assert {"status": response.status_code, "body": response.get_json()} == READ_ONLY
        assert response.headers["Retry-After"] == "1"
        again = [db.engine.connect() for _ in range(3)]
        fresh = {connection.scalar(text("SELECT pg_backend_pid()")) for connection in again}
        for connection in again:
            connection.close()
    assert not pids & fresh, "a connection to the read-only server was used again"


def test_a_statement_error_is_not_a_disconnect_the_pool_is_kept(make_app: AppFactory) -> None:
    """Only 25006 is added to the disconnects: a failing query must not empty the pool."""
    app = make_app(DB_POOL_SIZE="3")
    with app.app_context():
        held = [db.engine.connect() for _ in range(3)]
        pids = {connection.scalar(text("SELECT pg_backend_pid()")) for connection in held}
        with pytest.raises(sqlalchemy.exc.DataError):
            held[0].execute(text("SELECT 1 / 0"))
        for connection in held:
            connection.close()
        again = [db.engine.connect() for _ in range(3)]
        reused = {connection.scalar(text("SELECT pg_backend_pid()")) for connection in again}
        for connection in again:
            connection.close()
    assert reused == pids


def test_classify_names_a_read_only_server_apart_from_other_outages() -> None:
    refused = database.ReadOnlyServer("session is read-only")
    assert database.classify(refused) == "database_read_only"
    assert database.classify(deadlines.DeadlineExceeded()) == "timeout"


def test_the_default_asks_libpq_for_a_writable_session(make_app: AppFactory) -> None:
    args = make_app().config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"]
    assert args["target_session_attrs"] == "read-write"
    chosen = make_app(DATABASE_URL=f"{ADMIN_URL}?target_session_attrs=primary")
    assert "target_session_attrs" not in chosen.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"]
