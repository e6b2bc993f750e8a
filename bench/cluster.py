"""The bench's own PostgreSQL: a throwaway cluster (harness), a migrated database per design.

Faults (freeze, stop) are injected into this cluster only, never into a shared server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.pgcluster import TemporaryCluster
from harness.processes import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATABASE_PREFIX = "bench_"


def start_cluster() -> TemporaryCluster:
    """Start a cluster on a fixed free port, so a restart comes back where the service looks."""
    return TemporaryCluster(port=free_port()).start()


def create_database(cluster: TemporaryCluster, design: str) -> str:
    """Create the (empty) database of one design's service; return its URL."""
    return cluster.create_database(DATABASE_PREFIX + design)


def migrate(env: dict[str, str], root: Path = PROJECT_ROOT) -> None:
    """Migrate DATABASE_URL of `env` as operators do: `flask db upgrade` of the tree at `root`."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed:\n{result.stdout}\n{result.stderr}")


def transactions(cluster: TemporaryCluster, design: str) -> int:
    """Committed plus rolled-back transactions of one design's database so far.

    Asked from the `postgres` database, so the question itself is not counted.
    """
    name = DATABASE_PREFIX + design
    rows = cluster.psql(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", [name]
    )
    if not rows:
        raise RuntimeError(f"database {name} has no row in pg_stat_database")
    return int(rows[0][0])


def server_version(cluster: TemporaryCluster) -> str:
    rows = cluster.psql("SHOW server_version")
    return str(rows[0][0]) if rows else "unknown"


def clean_environment() -> dict[str, str]:
    """This process's environment without libpq variables that could redirect a connection."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
