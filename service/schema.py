"""Facts about the expected schema: the migrations' head revision and the auth tables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
AUTH_TABLES = ("user", "session", "account", "verification")


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The revision `flask db upgrade` leads to, read once from the migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()
