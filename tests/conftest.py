"""Shared fixtures. Every test runs against a real PostgreSQL; none is mocked.

- The server: TEST_DATABASE_URL if set, else the local one at 127.0.0.1:5432. Without one, the
  run stops at once with one line saying how to get one.
- Each run creates its own databases and drops them at the end; tests that write clean up.
- `app`, `client` and `runner` follow Flask's tutorial; `make_app` builds one with settings.
- Tests that stop, freeze or restart a database use `cluster`, a throwaway cluster of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from psycopg2 import sql
from sqlalchemy.engine import make_url

from service import create_app
from service.config import variables
from service.extensions import db
from tests.openapi import ConformingClient
from tests.support.pgcluster import TemporaryCluster
from tests.support.processes import ServerProcess, free_port, wait_for

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
AUTH_TABLES = ('"user"', "session", "account", "verification")

# Fast health timings for tests: a check every 0.1 s, stale after 0.6 s.
FAST_HEALTH = {
    "HEALTH_CHECK_INTERVAL_S": "0.1",
    "HEALTH_STALE_AFTER_S": "0.6",
    "HEALTH_CHECK_TIMEOUT_S": "0.3",
}

# Variables of the service that a developer's shell may hold; tests set what they need.
SERVICE_VARIABLES = tuple(name for name, _ in variables())


def pytest_sessionstart(session: pytest.Session) -> None:
    """No server, no run: stop with one line instead of hundreds of errors or silent skips."""
    try:
        psycopg2.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg2.Error as error:
        reason = (str(error).strip().splitlines() or ["no answer"])[0]
        where = make_url(ADMIN_URL).render_as_string(hide_password=True)
        pytest.exit(
            f"PostgreSQL is not reachable at {where} ({reason}). Start the local server with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, "
            "or point TEST_DATABASE_URL at one.",
            returncode=3,
        )


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class DatabaseFactory:
    """Creates uniquely named databases on a server and drops them all at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._created: list[str] = []

    def create(self, prefix: str = "svc_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for name in self._created:
            self._execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        self._created.clear()

    def _execute(self, statement: sql.Composed) -> None:
        admin_execute(statement, self.admin_url)


def admin_execute(statement: sql.Composable | str, admin_url: str = ADMIN_URL) -> None:
    """Run one statement outside a transaction (CREATE DATABASE, roles) on the test server."""
    connection = psycopg2.connect(admin_url, connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def migrate(database_url: str) -> None:
    """Bring a database to head exactly as operators do: `flask db upgrade`."""
    result = run_flask(["db", "upgrade"], {"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr


def run_flask(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the `flask` command of this project in a subprocess, as an operator would."""
    return run_command([sys.executable, "-m", "flask", "--app", "wsgi", *args], env, timeout)


def run_command(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    return subprocess.run(
        args,
        cwd=PROJECT_ROOT,
        env={**base, "APP_ENV": "test", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def databases() -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(ADMIN_URL)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def database_url(databases: DatabaseFactory) -> str:
    """This run's main database, migrated to head by `flask db upgrade`."""
    url = databases.create()
    migrate(url)
    return url


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(database_url: str) -> Iterator[AppFactory]:
    """Build apps with settings given as environment variable names; cleans up after."""
    apps: list[tuple[Flask, bool]] = []

    def build(**settings: str) -> Flask:
        config = {"APP_ENV": "test", "DATABASE_URL": database_url, **FAST_HEALTH, **settings}
        app = create_app(config)
        app.test_client_class = ConformingClient
        apps.append((app, config["DATABASE_URL"] == database_url))
        return app

    yield build
    for app, on_main_database in apps:
        app.extensions["health"].stop()
        with app.app_context():
            if on_main_database:
                _truncate_auth_tables()
            db.engine.dispose()


def _truncate_auth_tables() -> None:
    with db.engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {', '.join(AUTH_TABLES)} CASCADE")


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture(scope="session")
def cluster() -> Iterator[TemporaryCluster]:
    """A PostgreSQL cluster of this run's own, for tests that stop, freeze or restart it."""
    with TemporaryCluster() as temporary:
        yield temporary


@pytest.fixture
def faulty_cluster(cluster: TemporaryCluster) -> Iterator[TemporaryCluster]:
    """The throwaway cluster, guaranteed thawed and running again after the test."""
    yield cluster
    if cluster.is_frozen:
        cluster.thaw()
    if not cluster.is_running:
        cluster.start()


@pytest.fixture(scope="session")
def cluster_database_url(cluster: TemporaryCluster) -> str:
    """A migrated database on the throwaway cluster."""
    url = cluster.create_database(f"svc_{uuid.uuid4().hex[:8]}")
    migrate(url)
    return url


ServerFactory = Callable[..., tuple[ServerProcess, str]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start the real gunicorn with the project's gunicorn.conf.py; returns (process, base URL)."""
    servers: list[ServerProcess] = []

    def start(env: dict[str, str], workers: int = 2) -> tuple[ServerProcess, str]:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
        full_env = {
            **base,
            "APP_ENV": "test",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": str(workers),
            **env,
        }
        process = ServerProcess(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
            env=full_env,
            cwd=PROJECT_ROOT,
            log_path=tmp_path / f"gunicorn-{port}.log",
        ).start()
        servers.append(process)
        base_url = f"http://127.0.0.1:{port}"
        process.wait_http_ok(f"{base_url}/api/health/live", timeout=30)
        # Each worker builds its app after the fork: wait until every one has.
        wait_for(lambda: process.log_text().count("service ready") >= workers, 30)
        return process, base_url

    yield start
    for process in servers:
        process.terminate(timeout=30)
