"""Concurrent `flask db upgrade`: any number of replicas may run it at once; one applies.

migrations/env.py serialises upgrades with a session advisory lock. The tests hold that lock
themselves first, so all eight processes are certainly waiting on it at the same moment before it
is released: without the lock they would race on the DDL and the alembic_version row.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import closing

import psycopg2
import pytest

from harness.processes import wait_for
from harness.service import PROJECT_ROOT, SERVICE_VARIABLES, DatabaseFactory, run_flask
from service.schema import schema_versions

MIGRATION_LOCK_KEY = 0x6D696772617465  # migrations/env.py
UPGRADERS = 8
WAITING_ON_THE_LOCK = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
SCHEMA_SHAPE = """
    SELECT 'column', table_name || '.' || column_name || ' ' || data_type || ' '
           || is_nullable || ' ' || coalesce(column_default, '')
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL
    SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL
    SELECT 'constraint', conrelid::regclass || ' ' || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    ORDER BY 1, 2
"""


def rows(url: str, statement: str) -> list[tuple]:
    with closing(psycopg2.connect(url, connect_timeout=5)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []


def hold_migration_lock(url: str) -> psycopg2.extensions.connection:
    """Take the migration lock from a session of our own (the caller closes it to release)."""
    connection = psycopg2.connect(url, connect_timeout=5)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    return connection


def start_upgrade(url: str, **env: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=PROJECT_ROOT,
        env={**base, "APP_ENV": "test", "DATABASE_URL": url, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_concurrent_upgrades_all_succeed_and_apply_once(
    databases: DatabaseFactory, database_url: str
) -> None:
    url = databases.create("svc_concurrent")
    holder = hold_migration_lock(url)
    processes = [start_upgrade(url) for _ in range(UPGRADERS)]
    try:
        # All eight are blocked on the lock at once: the race is certain, not left to timing.
        wait_for(
            lambda: rows(url, WAITING_ON_THE_LOCK)[0][0] == UPGRADERS,
            timeout=60,
            interval=0.1,
            description="all upgrades to wait on the migration lock",
        )
    finally:
        holder.close()
    results = [(p.wait(timeout=60), *p.communicate()) for p in processes]

    for code, out, err in results:
        assert code == 0, err
        assert "Traceback" not in out + err
    applied = [out + err for _, out, err in results if "Running upgrade" in out + err]
    assert len(applied) == 1, "exactly one process applies the migration"
    assert rows(url, "SELECT version_num FROM alembic_version") == [(schema_versions().head,)]
    # The schema is whole: exactly what a single, ordinary upgrade produces.
    assert rows(url, SCHEMA_SHAPE) == rows(database_url, SCHEMA_SHAPE)


def test_a_held_migration_lock_times_out_with_one_line(databases: DatabaseFactory) -> None:
    url = databases.create("svc_locked")
    holder = hold_migration_lock(url)
    try:
        started = time.monotonic()
        result = run_flask(
            ["db", "upgrade"], {"DATABASE_URL": url, "DB_MIGRATION_LOCK_TIMEOUT_S": "1"}
        )
        elapsed = time.monotonic() - started
    finally:
        holder.close()

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "migration lock" in lines[0] and "DB_MIGRATION_LOCK_TIMEOUT_S=1s" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    # The 1 s, not the 300 s default; the slack is a slow interpreter start on a busy machine.
    assert elapsed < 45
    assert rows(url, "SELECT to_regclass('public.alembic_version') IS NULL") == [(True,)]


@pytest.mark.parametrize("seconds", ["0", "0.0001"])
def test_a_zero_lock_timeout_never_means_wait_forever(
    databases: DatabaseFactory, seconds: str
) -> None:
    """PostgreSQL reads lock_timeout=0 as 'no limit'; env.py must not turn 0 s into that."""
    url = databases.create("svc_locked")
    holder = hold_migration_lock(url)
    try:
        result = run_flask(
            ["db", "upgrade"], {"DATABASE_URL": url, "DB_MIGRATION_LOCK_TIMEOUT_S": seconds}, 20
        )
    finally:
        holder.close()
    assert result.returncode != 0
    assert "migration lock" in result.stderr
