"""A soak: 20 s of mixed load on the real gunicorn, with a database restart in the middle.

Every response must be a 200 or a JSON 503 (never a 500, never a dropped connection), no worker
may be killed or replaced, and the workers' memory (RSS, from /proc) must level off rather than
grow with the number of requests served. Worker recycling (max_requests) is off here, so it
cannot hide a leak. Longer runs, and the memory each design holds, are the benchmark's
(`python -m bench`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from harness.pgcluster import TemporaryCluster
from harness.processes import children_of, wait_for
from harness.service import ServerFactory

pytestmark = pytest.mark.serial

DURATION_S = 14.0
WARM_UP_S = 3.0  # imports, caches and pools fill up; not part of the memory comparison
RESTART_AT_S = 4.0
RECOVERED_BY_S = DURATION_S - 6  # every /api/db/test sent after this must succeed
LOAD_THREADS = 4


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)  # (path, status) -> count
    errors: Counter = field(default_factory=Counter)  # (path, error type) -> count
    late_db_statuses: Counter = field(default_factory=Counter)  # db test, after RECOVERED_BY_S
    lock: threading.Lock = field(default_factory=threading.Lock)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def average(values: list[int]) -> float:
    return sum(values) / len(values)


def test_sustained_load_across_a_database_restart(
    serve: ServerFactory, faulty_cluster: TemporaryCluster, cluster_database_url: str
) -> None:
    process, base = serve(
        {
            "DATABASE_URL": cluster_database_url,
            "HEALTH_CHECK_INTERVAL_S": "0.25",
            "HEALTH_STALE_AFTER_S": "1.0",
            "HEALTH_CHECK_TIMEOUT_S": "0.5",
            "DB_CONNECT_TIMEOUT_S": "1",
            "DB_DEADLINE_S": "2",
            "GUNICORN_MAX_REQUESTS": "0",
        }
    )
    workers = wait_for(lambda: len(kids := children_of(process.pid)) == 2 and kids, 10)
    tally = Tally()
    started = time.monotonic()
    stop = threading.Event()

    def load(index: int) -> None:
        session = requests.Session()
        paths = ["/api/health", "/api/db/test"] if index % 2 else ["/api/db/test", "/api/health"]
        n = 0
        while not stop.is_set():
            path = paths[n % 2]
            n += 1
            try:
                status = session.get(f"{base}{path}", timeout=10).status_code
            except requests.RequestException as error:
                with tally.lock:
                    tally.errors[(path, type(error).__name__)] += 1
                continue
            with tally.lock:
                tally.statuses[(path, status)] += 1
                if path == "/api/db/test" and time.monotonic() - started > RECOVERED_BY_S:
                    tally.late_db_statuses[status] += 1

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()

    samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in workers}
    restarted = False
    while (elapsed := time.monotonic() - started) < DURATION_S:
        if not restarted and elapsed >= RESTART_AT_S:
            faulty_cluster.restart()
            restarted = True
        for pid in workers:
            kib = rss_kib(pid)
            if kib is not None:
                samples[pid].append((elapsed, kib))
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(15)

    assert not tally.errors, tally.errors
    assert {status for _, status in tally.statuses} <= {200, 503}, tally.statuses
    assert tally.statuses[("/api/db/test", 503)] > 0, "the restart was not seen by the load"
    assert tally.statuses[("/api/db/test", 200)] > 0 and tally.statuses[("/api/health", 200)] > 0
    assert set(tally.late_db_statuses) == {200}, "the service did not recover after the restart"

    assert sorted(children_of(process.pid)) == sorted(workers), "a worker was replaced"
    log = process.log_text()
    assert log.count("Booting worker") == 2
    for sign in ("WORKER TIMEOUT", "SIGKILL", "was sent", "Traceback", "unhandled error"):
        assert sign not in log, sign

    measured = DURATION_S - WARM_UP_S
    for pid, points in samples.items():
        first = [kib for t, kib in points if WARM_UP_S <= t < WARM_UP_S + measured / 3]
        last = [kib for t, kib in points if t >= DURATION_S - measured / 3]
        growth = average(last) / average(first) - 1
        print(
            f"worker {pid}: RSS {average(first) / 1024:.1f} MiB -> "
            f"{average(last) / 1024:.1f} MiB ({100 * growth:+.1f}%)"
        )
        assert growth < 0.20, f"worker {pid} grew {100 * growth:.0f}% in {measured:.0f}s"
