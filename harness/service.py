"""What the tests and the benchmark share: the test server, databases, commands, app settings."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg2
from flask import Flask
from psycopg2 import sql
from sqlalchemy.engine import make_url

from harness.processes import ServerProcess
from service.config import variables

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
AUTH_TABLES = ('"user"', "session", "account", "verification", "jwks")

# Fast health timings for tests: a check every 0.1 s, stale after 0.6 s.
FAST_HEALTH = {
    "HEALTH_CHECK_INTERVAL_S": "0.1",
    "HEALTH_STALE_AFTER_S": "0.6",
    "HEALTH_CHECK_TIMEOUT_S": "0.3",
}

# Variables of the service that a developer's shell may hold; tests set what they need.
SERVICE_VARIABLES = tuple(name for name, _ in variables())


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


AppFactory = Callable[..., Flask]


ServerFactory = Callable[..., tuple[ServerProcess, str]]


def require_postgresql(admin_url: str = ADMIN_URL) -> None:
    """Raise RuntimeError with one line saying how to start a server when none answers."""
    try:
        psycopg2.connect(admin_url, connect_timeout=3).close()
    except psycopg2.Error as error:
        reason = (str(error).strip().splitlines() or ["no answer"])[0]
        where = make_url(admin_url).render_as_string(hide_password=True)
        raise RuntimeError(
            f"PostgreSQL is not reachable at {where} ({reason}). Start the local server with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, "
            "or point TEST_DATABASE_URL at one."
        ) from None
