"""The bench's own PostgreSQL: a throwaway cluster (tests.support) with one migrated database.

Faults (freeze, stop) are injected into this cluster only, never into a shared server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.pgcluster import TemporaryCluster
from tests.support.processes import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATABASE_NAME = "bench_service"


def start_cluster() -> TemporaryCluster:
    """Start a cluster on a fixed free port, so a restart comes back where the service looks."""
    return TemporaryCluster(port=free_port()).start()


def create_database(cluster: TemporaryCluster) -> str:
    """Create the (empty) service database; return its URL."""
    return cluster.create_database(DATABASE_NAME)


def migrate(env: dict[str, str]) -> None:
    """Migrate DATABASE_URL of `env` as operators do: `flask db upgrade`, in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed:\n{result.stdout}\n{result.stderr}")


def transactions(cluster: TemporaryCluster) -> int:
    """Committed plus rolled-back transactions of the service database so far.

    Asked from the `postgres` database, so the question itself is not counted.
    """
    rows = cluster.psql(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
        [DATABASE_NAME],
    )
    if not rows:
        raise RuntimeError(f"database {DATABASE_NAME} has no row in pg_stat_database")
    return int(rows[0][0])


def server_version(cluster: TemporaryCluster) -> str:
    rows = cluster.psql("SHOW server_version")
    return str(rows[0][0]) if rows else "unknown"


def clean_environment() -> dict[str, str]:
    """This process's environment without libpq variables that could redirect a connection."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
