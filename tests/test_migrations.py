"""Migrations: reversible, drift-free, and exactly the schema Better Auth's own migrator creates."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from harness.service import PROJECT_ROOT, migrate, run_flask

REFERENCE_SCHEMA = PROJECT_ROOT / "tests" / "better_auth" / "reference-schema.sql"

# The reference (shared/reference/better-auth-schema.md), column by column:
# (name, type, nullable, default)
TS, TEXT, BOOL, NOW = "timestamp with time zone", "text", "boolean", "CURRENT_TIMESTAMP"
EXPECTED_COLUMNS = {
    "user": [
        ("id", TEXT, False, None), ("name", TEXT, False, None), ("email", TEXT, False, None),
        ("emailVerified", BOOL, False, None), ("image", TEXT, True, None),
        ("createdAt", TS, False, NOW), ("updatedAt", TS, False, NOW),
    ],
    "session": [
        ("id", TEXT, False, None), ("expiresAt", TS, False, None), ("token", TEXT, False, None),
        ("createdAt", TS, False, NOW), ("updatedAt", TS, False, None),
        ("ipAddress", TEXT, True, None), ("userAgent", TEXT, True, None),
        ("userId", TEXT, False, None),
    ],
    "account": [
        ("id", TEXT, False, None), ("accountId", TEXT, False, None),
        ("providerId", TEXT, False, None), ("userId", TEXT, False, None),
        ("accessToken", TEXT, True, None), ("refreshToken", TEXT, True, None),
        ("idToken", TEXT, True, None), ("accessTokenExpiresAt", TS, True, None),
        ("refreshTokenExpiresAt", TS, True, None), ("scope", TEXT, True, None),
        ("password", TEXT, True, None), ("createdAt", TS, False, NOW),
        ("updatedAt", TS, False, None),
    ],
    "verification": [
        ("id", TEXT, False, None), ("identifier", TEXT, False, None), ("value", TEXT, False, None),
        ("expiresAt", TS, False, None), ("createdAt", TS, False, NOW),
        ("updatedAt", TS, False, NOW),
    ],
    "jwks": [
        ("id", TEXT, False, None), ("publicKey", TEXT, False, None),
        ("privateKey", TEXT, False, None), ("createdAt", TS, False, None),
        ("expiresAt", TS, True, None), ("alg", TEXT, True, None), ("crv", TEXT, True, None),
    ],
}  # fmt: skip
EXPECTED_CONSTRAINTS = {
    ("user", "user_pkey", "PRIMARY KEY (id)"),
    ("user", "user_email_key", "UNIQUE (email)"),
    ("session", "session_pkey", "PRIMARY KEY (id)"),
    ("session", "session_token_key", "UNIQUE (token)"),
    ("session", "session_userId_fkey",
     'FOREIGN KEY ("userId") REFERENCES "user"(id) ON DELETE CASCADE'),
    ("account", "account_pkey", "PRIMARY KEY (id)"),
    ("account", "account_userId_fkey",
     'FOREIGN KEY ("userId") REFERENCES "user"(id) ON DELETE CASCADE'),
    ("verification", "verification_pkey", "PRIMARY KEY (id)"),
    ("jwks", "jwks_pkey", "PRIMARY KEY (id)"),
}  # fmt: skip
EXPECTED_INDEXES = {
    ("session", "session_userId_idx", '("userId")'),
    ("account", "account_userId_idx", '("userId")'),
    ("verification", "verification_identifier_idx", "(identifier)"),
}


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg2.connect(url, connect_timeout=5) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def public_tables(url: str) -> set[str]:
    rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {name for (name,) in rows}


@pytest.fixture
def fresh_url(databases) -> str:
    return databases.create("svc_migrate")


def test_upgrade_downgrade_upgrade_on_a_fresh_database(fresh_url):
    migrate(fresh_url)
    assert public_tables(fresh_url) == {"alembic_version", *EXPECTED_COLUMNS}
    assert query(fresh_url, "SELECT version_num FROM alembic_version") == [("0002",)]

    result = run_flask(["db", "downgrade", "0001"], {"DATABASE_URL": fresh_url})
    assert result.returncode == 0, result.stderr
    assert public_tables(fresh_url) == {"alembic_version", *EXPECTED_COLUMNS} - {"jwks"}
    assert query(fresh_url, "SELECT version_num FROM alembic_version") == [("0001",)]

    result = run_flask(["db", "downgrade", "base"], {"DATABASE_URL": fresh_url})
    assert result.returncode == 0, result.stderr
    assert public_tables(fresh_url) == {"alembic_version"}  # Alembic's own bookkeeping only
    assert query(fresh_url, "SELECT count(*) FROM alembic_version") == [(0,)]
    assert query(fresh_url, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' "
                            "AND tablename <> 'alembic_version'") == [(0,)]  # fmt: skip

    migrate(fresh_url)
    assert public_tables(fresh_url) == {"alembic_version", *EXPECTED_COLUMNS}


def test_models_and_migrations_do_not_drift(database_url):
    result = run_flask(["db", "check"], {"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_columns_match_the_reference(database_url):
    for table, expected in EXPECTED_COLUMNS.items():
        rows = query(
            database_url,
            "SELECT column_name, data_type, is_nullable = 'YES', column_default"
            " FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s"
            " ORDER BY ordinal_position",
            (table,),
        )
        assert [tuple(row) for row in rows] == expected, table


def test_constraints_and_indexes_match_the_reference(database_url):
    constraints = query(
        database_url,
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = 'public'::regnamespace AND conrelid <> 'alembic_version'::regclass",
    )
    assert {(table.strip('"'), name, ddl) for table, name, ddl in constraints} == (
        EXPECTED_CONSTRAINTS
    )
    indexes = query(
        database_url,
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " AND indexname NOT LIKE '%%_pkey' AND indexname NOT LIKE '%%_key'"
        " AND tablename <> 'alembic_version'",
    )
    found = {(t, n, re.sub(r"^.* USING btree ", "", d)) for t, n, d in indexes}
    assert found == EXPECTED_INDEXES


def test_schema_dump_equals_what_better_auth_creates(database_url):
    """pg_dump of our database equals that of one Better Auth's migrator made, bar Alembic's."""
    ours = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", database_url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def normalise(dump: str) -> list[str]:
        statements = "\n".join(
            line for line in dump.splitlines()
            if line and not line.startswith(("--", "\\", "SET ", "SELECT pg_catalog"))
        ).split(";")  # fmt: skip
        return sorted(s.strip() for s in statements if s.strip() and "alembic_version" not in s)

    assert normalise(ours) == normalise(REFERENCE_SCHEMA.read_text())


def test_the_constraints_work(database_url):
    now = datetime.now(UTC)
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        user = 'INSERT INTO "user" (id, name, email, "emailVerified") VALUES (%s, \'A\', %s, false)'
        cursor.execute(user, ("u1", "a@example.com"))
        cursor.execute(
            'INSERT INTO session (id, "expiresAt", token, "updatedAt", "userId")'
            " VALUES ('s1', %s, 't1', %s, 'u1')",
            (now + timedelta(days=1), now),
        )
        cursor.execute(
            'INSERT INTO account (id, "accountId", "providerId", "userId", "updatedAt")'
            " VALUES ('a1', 'u1', 'credential', 'u1', %s)",
            (now,),
        )
        cursor.execute('SELECT "createdAt" FROM "user" WHERE id = %s', ("u1",))
        assert abs(cursor.fetchone()[0] - now) < timedelta(minutes=1)  # server default
        with pytest.raises(psycopg2.errors.UniqueViolation, match="user_email_key"):
            cursor.execute("SAVEPOINT duplicate")
            cursor.execute(user, ("u2", "a@example.com"))
        cursor.execute("ROLLBACK TO SAVEPOINT duplicate")
        with pytest.raises(psycopg2.errors.ForeignKeyViolation, match="session_userId_fkey"):
            cursor.execute(
                'INSERT INTO session (id, "expiresAt", token, "updatedAt", "userId")'
                " VALUES ('s2', %s, 't2', %s, 'nobody')",
                (now, now),
            )
        connection.rollback()

        cursor.execute(user, ("u1", "a@example.com"))
        cursor.execute(
            'INSERT INTO session (id, "expiresAt", token, "updatedAt", "userId")'
            " VALUES ('s1', %s, 't1', %s, 'u1')",
            (now, now),
        )
        cursor.execute(
            'INSERT INTO account (id, "accountId", "providerId", "userId", "updatedAt")'
            " VALUES ('a1', 'u1', 'credential', 'u1', %s)",
            (now,),
        )
        cursor.execute("DELETE FROM \"user\" WHERE id = 'u1'")
        cursor.execute("SELECT (SELECT count(*) FROM session), (SELECT count(*) FROM account)")
        assert cursor.fetchone() == (0, 0)
        connection.rollback()


def test_the_embedded_sqlite_default_works_with_zero_setup(tmp_path):
    """A copy of the project with no DATABASE_URL: flask db upgrade, then a real request."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("service", "migrations", "docs"):
        shutil.copytree(PROJECT_ROOT / name, project / name)
    for name in ("wsgi.py", ".flaskenv"):
        shutil.copy(PROJECT_ROOT / name, project / name)

    env_free = {"APP_ENV": "development"}
    upgrade = subprocess.run(
        [sys.executable, "-m", "flask", "db", "upgrade"], cwd=project, capture_output=True,
        text=True, env=_env_without_service(env_free), timeout=60, check=False,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    database = project / "instance" / "service.sqlite3"
    assert database.exists()
    assert "using the embedded SQLite database" in upgrade.stdout + upgrade.stderr

    probe = (
        "from wsgi import app\n"
        "client = app.test_client()\n"
        "codes = client.get('/api/db/test').status_code, client.get('/api/health').status_code\n"
        "print('STATUS %s %s' % codes)\n"
    )
    request = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, capture_output=True, text=True,
        env=_env_without_service(env_free), timeout=60, check=False,
    )  # fmt: skip
    assert request.returncode == 0, request.stderr
    assert "STATUS 200 200" in request.stdout  # a checker log line may follow on the line

    check = subprocess.run(
        [sys.executable, "-m", "flask", "db", "check"], cwd=project, capture_output=True,
        text=True, env=_env_without_service(env_free), timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    downgrade = subprocess.run(
        [sys.executable, "-m", "flask", "db", "downgrade", "base"], cwd=project,
        capture_output=True, text=True, env=_env_without_service(env_free), timeout=60,
        check=False,
    )  # fmt: skip
    assert downgrade.returncode == 0, downgrade.stderr


def _env_without_service(extra: dict[str, str]) -> dict[str, str]:
    import os

    from harness.service import SERVICE_VARIABLES

    return {**{k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}, **extra}


def test_migration_scripts_exist_once():
    versions = sorted(Path(PROJECT_ROOT / "migrations" / "versions").glob("*.py"))
    assert [v.name for v in versions] == [
        "0001_better_auth_core_tables.py",
        "0002_better_auth_jwks.py",
    ]
