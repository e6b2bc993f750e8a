"""The end-to-end database verification behind GET /api/db/test.

It goes through the app's own Flask-SQLAlchemy session, so it proves what requests will use: the
pool, the timeouts, the schema and the write path. The write is rolled back; nothing is left.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.models import Verification
from service.schema import AUTH_TABLES, SchemaVersions

# Whether alembic_version exists is asked first: selecting from a missing table would fail the
# whole query, and an unmigrated database must answer schema_outdated, not a generic error.
POSTGRESQL_FACTS = text(
    "SELECT current_setting('server_version'), current_database(),"
    " to_regclass('public.alembic_version') IS NOT NULL,"
    " to_regclass('public.\"user\"') IS NOT NULL, to_regclass('public.session') IS NOT NULL,"
    " to_regclass('public.account') IS NOT NULL, to_regclass('public.verification') IS NOT NULL"
)
SQLITE_FACTS = text(
    "SELECT sqlite_version(), 'main', "
    + ", ".join(
        f"EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{table}')"
        for table in ("alembic_version", *AUTH_TABLES)
    )
)
REVISION = text("SELECT version_num FROM alembic_version")


class SchemaOutdated(Exception):
    """The database answers, but its schema is missing or behind this code's head.

    A schema ahead of the code (migrated by a newer release) passes: the tables this code uses
    are there, and the write check proves it.
    """

    def __init__(self, details: dict[str, Any]) -> None:
        super().__init__("the schema is not at the migrations' head")
        self.details = details


def verify_database(session: Session, schema: SchemaVersions) -> dict[str, Any]:
    """Run the verification; raise SchemaOutdated or a database error when something is wrong."""
    started = time.perf_counter()
    facts = POSTGRESQL_FACTS if session.get_bind().dialect.name == "postgresql" else SQLITE_FACTS
    row = session.execute(facts).one()
    round_trip_ms = _elapsed_ms(started)
    server_version, database, versioned, *present = row
    revision = session.scalar(REVISION) if versioned else None
    tables = dict(zip(AUTH_TABLES, (bool(flag) for flag in present), strict=True))
    migrations = {"current": revision, "head": schema.head}
    if schema.state(revision) not in ("current", "ahead") or not all(tables.values()):
        session.rollback()
        raise SchemaOutdated({"migrations": migrations, "tables": tables})
    write_check = _check_write_path(session)
    return {
        "status": "ok",
        "database": {"name": database, "serverVersion": server_version},
        "roundTripMs": round_trip_ms,
        "latencyMs": _elapsed_ms(started),
        "migrations": migrations,
        "tables": tables,
        "writeCheck": write_check,
    }


def _check_write_path(session: Session) -> dict[str, bool]:
    """Insert a row in a transaction, read it back, roll back, and prove it is gone."""
    marker = f"db-test:{secrets.token_hex(8)}"
    row = Verification(
        identifier=marker,
        value="verification round trip",
        expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )
    session.add(row)
    session.flush()
    read_back = session.scalar(select(Verification.id).where(Verification.identifier == marker))
    session.rollback()
    left_behind = session.scalar(select(Verification.id).where(Verification.identifier == marker))
    session.rollback()
    return {"inserted": True, "readBack": read_back == row.id, "rolledBack": left_behind is None}


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
