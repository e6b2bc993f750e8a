"""Facts about the expected schema: the migrations' revisions and the auth tables."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
AUTH_TABLES = ("user", "session", "account", "verification")


@dataclass(frozen=True)
class SchemaVersions:
    """The revisions this code ships: its head and every revision before it."""

    head: str | None
    known: frozenset[str]

    def state(self, revision: str | None) -> str:
        """Where a database's revision stands against this code.

        missing: never migrated. current: at head. behind: an older revision of ours, so
        `flask db upgrade` is due. ahead: a revision this code does not know, written by a newer
        release; with expand/contract migrations an older release still works on it, which is
        the normal state of old replicas during a rolling deploy.
        """
        if revision is None:
            return "missing"
        if revision == self.head:
            return "current"
        return "behind" if revision in self.known else "ahead"


@lru_cache(maxsize=1)
def schema_versions() -> SchemaVersions:
    """Read once from the migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    scripts = ScriptDirectory.from_config(config)
    known = frozenset(script.revision for script in scripts.walk_revisions())
    return SchemaVersions(head=scripts.get_current_head(), known=known)
