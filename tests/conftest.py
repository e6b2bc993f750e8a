"""Fixtures only (helpers live in harness). Every database is real; none is mocked.

- `app`, `client` and `runner` follow Flask's tutorial; `make_app` builds one with settings.
- `databases`/`database_url` need the test server (TEST_DATABASE_URL, else 127.0.0.1:5432): without
  one the run stops at the first test that needs it, with one line saying how to start it.
- Tests that stop, freeze or restart a database use `cluster`, a throwaway cluster of their own.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from harness.pgcluster import TemporaryCluster
from harness.processes import ServerProcess, free_port, wait_for
from harness.service import (
    ADMIN_URL,
    AUTH_TABLES,
    FAST_HEALTH,
    PROJECT_ROOT,
    SERVICE_VARIABLES,
    AppFactory,
    DatabaseFactory,
    ServerFactory,
    migrate,
    require_postgresql,
)
from service import create_app
from service.extensions import db
from tests.openapi import ConformingClient


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def databases() -> Iterator[DatabaseFactory]:
    try:
        require_postgresql(ADMIN_URL)
    except RuntimeError as error:
        pytest.exit(str(error), returncode=3)
    factory = DatabaseFactory(ADMIN_URL)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def database_url(databases: DatabaseFactory) -> str:
    """This run's main database, migrated to head by `flask db upgrade`."""
    url = databases.create()
    migrate(url)
    return url


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
        # Not bound by the test's own timeouts (a test may set a 100 ms statement timeout).
        connection.exec_driver_sql("SET LOCAL statement_timeout = '30s'")
        connection.exec_driver_sql("SET LOCAL lock_timeout = '30s'")
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


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start the real gunicorn with the project's gunicorn.conf.py; returns (process, base URL)."""
    servers: list[ServerProcess] = []

    def start(
        env: dict[str, str], workers: int = 2, timeout: float = 30
    ) -> tuple[ServerProcess, str]:
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
        process.wait_http_ok(f"{base_url}/api/health/live", timeout=timeout)
        # Each worker builds its app after the fork: wait until every one has.
        wait_for(lambda: process.log_text().count("service ready") >= workers, timeout)
        return process, base_url

    yield start
    for process in servers:  # a quick stop: tests of the drain send SIGTERM themselves
        process.terminate(signal.SIGINT, timeout=30)
