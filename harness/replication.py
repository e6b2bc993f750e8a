"""A primary and a streaming standby on 127.0.0.1, for failover tests and the benchmark.

The standby is made as operators make one (`pg_basebackup -R`), promoted with `pg_ctl promote`,
and after a failover the old primary is made a standby of the new one with a fresh base backup,
so one pair serves failover after failover. Both are `TemporaryCluster`s on ports of their own,
never the shared server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Self

from .pgcluster import HOST, SUPERUSER, TemporaryCluster
from .processes import StartedResource, run_as_kwargs, wait_for

# What replication and a base backup need; the rest stays TemporaryCluster's fast settings.
REPLICATION_SETTINGS = {"wal_level": "replica", "max_wal_senders": "10", "hot_standby": "on"}


class ReplicationPair(StartedResource):
    """Two clusters, `primary` and `standby`; they swap roles at each `promote`.

    `clusters` keeps their first order (the first started as the primary), so a URL that lists
    them stays valid whichever is the primary now.
    """

    def __init__(self) -> None:
        first = TemporaryCluster(settings=REPLICATION_SETTINGS)
        second = TemporaryCluster(settings=REPLICATION_SETTINGS)
        self.clusters = (first, second)
        self.primary, self.standby = first, second

    def start(self) -> Self:
        self.primary.start()
        self.reseed(self.standby)
        return self

    def reseed(self, cluster: TemporaryCluster) -> None:
        """Make `cluster` (stopped, crashed, frozen or running) a fresh standby of the primary."""
        if cluster.is_frozen:
            cluster.thaw()
        cluster.stop("immediate")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
        self._run(
            "pg_basebackup",
            *("-h", HOST, "-p", str(self.primary.port), "-U", SUPERUSER),
            *("-D", str(cluster.data_dir), "-X", "stream", "-c", "fast", "-R", "--no-sync"),
        )
        cluster.start()
        self.standby = cluster
        self.wait_streaming()

    def wait_streaming(self, timeout: float = 15.0) -> None:
        """Wait until the primary sees its standby streaming."""
        streaming = "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'"
        wait_for(
            lambda: self.primary.psql(streaming),
            timeout,
            description="the standby to stream from the primary",
        )

    def promote(self) -> float:
        """`pg_ctl promote` the standby and wait until it accepts writes; returns when (monotonic).

        The old primary keeps whatever state the fault left it in; it is `standby` from now on.
        """
        new_primary = self.standby
        self._run("pg_ctl", "-D", str(new_primary.data_dir), "-w", "-t", "30", "promote")
        wait_for(
            lambda: new_primary.psql("SELECT NOT pg_is_in_recovery()") == [(True,)],
            15,
            description="the promoted standby to leave recovery",
        )
        promoted_at = time.monotonic()
        self.primary, self.standby = new_primary, self.primary
        return promoted_at

    def cleanup(self) -> None:
        for cluster in self.clusters:
            cluster.cleanup()

    def _run(self, tool: str, *args: str) -> None:
        binary = self.primary.bindir / tool
        result = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **run_as_kwargs(self.primary.user),
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")
