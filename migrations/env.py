"""Alembic environment, run by `flask db ...` (Flask-Migrate) inside the app's context.

- The URL is MIGRATION_DATABASE_URL (default DATABASE_URL): migrations connect to PostgreSQL
  directly, not through PgBouncer, because they hold a session-level advisory lock.
- Any number of replicas may run `flask db upgrade` at once: each takes the advisory lock first,
  waits at most DB_MIGRATION_LOCK_TIMEOUT_S for it, and then finds nothing left to do.
- No statement timeout (a migration may be long); the lock timeout still applies, so a migration
  never queues live traffic behind it for long.
- Failures end with one line on stderr and a non-zero exit, never a traceback or a password.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from alembic import context
from flask import current_app
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from service.config import Settings, mask_url
from service.database import create_engine, first_line
from service.extensions import db

# Any constant works: advisory locks are scoped to the database. This one spells "migrate".
MIGRATION_LOCK_KEY = 0x6D696772617465

log = logging.getLogger("alembic.env")
settings: Settings = current_app.config["SETTINGS"]
migrate_args: dict[str, Any] = current_app.extensions["migrate"].configure_args


def run_migrations_offline() -> None:
    """`flask db upgrade --sql`: print the SQL instead of running it."""
    context.configure(
        url=settings.migration_database_url,
        target_metadata=db.metadata,
        literal_binds=True,
        **migrate_args,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = settings.migration_database_url
    engine = create_engine(settings, url, "migrate", statement_timeout_ms=0)  # no statement limit
    try:
        with engine.connect() as connection:
            locked = _take_migration_lock(connection)
            try:
                context.configure(
                    connection=connection,
                    target_metadata=db.metadata,
                    process_revision_directives=_skip_empty_autogenerate,
                    compare_server_default=True,
                    **migrate_args,
                )
                with context.begin_transaction():
                    context.run_migrations()
            finally:
                if locked:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), _lock_key())
                    connection.commit()
    except DBAPIError as error:
        _fail(f"cannot migrate {mask_url(url)}: {first_line(error)}")
    finally:
        engine.dispose()


def _take_migration_lock(connection: Connection) -> bool:
    """Serialise concurrent upgrades with a session advisory lock (PostgreSQL only).

    The lock query opens a transaction; it is committed at once, before `context.configure`,
    because Alembic treats an open transaction as the caller's and would never commit the
    migration in it.
    """
    if connection.dialect.name != "postgresql":
        return False
    # At least 1 ms: PostgreSQL reads lock_timeout = 0 as "wait forever", the opposite of 0 s.
    timeout_ms = max(1, round(settings.db_migration_lock_timeout_s * 1000))
    connection.execute(text(f"SET lock_timeout = {timeout_ms}"))
    try:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), _lock_key())
    except DBAPIError as error:
        if getattr(error.orig, "pgcode", None) == "55P03":  # lock_not_available
            _fail(
                "migration lock: another migration held it for longer than "
                f"DB_MIGRATION_LOCK_TIMEOUT_S={settings.db_migration_lock_timeout_s:g}s; "
                "is one stuck? (see pg_locks where locktype = 'advisory')"
            )
        raise
    connection.execute(text(f"SET lock_timeout = {settings.db_lock_timeout_ms}"))
    connection.commit()
    return True


def _lock_key() -> dict[str, int]:
    return {"key": MIGRATION_LOCK_KEY}


def _skip_empty_autogenerate(migration_context: Any, revision: Any, directives: list) -> None:
    """`flask db migrate` with no model change writes no empty revision file."""
    if (
        getattr(context.config.cmd_opts, "autogenerate", False)
        and directives[0].upgrade_ops.is_empty()
    ):
        directives[:] = []
        log.info("No changes in schema detected.")


def _fail(message: str) -> None:
    sys.exit(f"flask db: {message}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
