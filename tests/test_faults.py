"""Real gunicorn against a database that fails for real: stopped, frozen, restarted, locked.

Probes must answer within Kubernetes' 1 s probe timeout whatever the database does, /api/db/test
must answer a JSON 503 within its deadline (never a hang until gunicorn kills the worker, never a
500 or an empty reply), and once the database is back the very next requests must succeed.
Every fault is induced on the throwaway cluster, never on the shared server.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.engine import make_url

from harness.pgcluster import TemporaryCluster
from harness.processes import ServerProcess, children_of, wait_for
from harness.service import ServerFactory
from tests.openapi import assert_conforms

pytestmark = pytest.mark.serial

WORKERS = 2
FAST = {
    "HEALTH_CHECK_INTERVAL_S": "0.5",
    "HEALTH_STALE_AFTER_S": "1.5",
    "HEALTH_CHECK_TIMEOUT_S": "0.5",
    "DB_DEADLINE_S": "2",
}
DEFAULTS: dict[str, str] = {}  # the shipped defaults: interval 1 s, stale after 3 s, deadline 2 s
PROBE_LIMIT_S = 1.0  # Kubernetes' default probe timeout
DB_TEST_LIMIT_S = 3.5  # DB_DEADLINE_S, plus what a machine with one CPU taken needs to answer
RECOVERY_S = 3.0  # every worker healthy again this long after the database is (checks: 0.5-1 s)
HTTP_TIMEOUT_S = 5.0  # a hang fails the test instead of hanging it
AUTH_TABLES = '"user", session, account, verification'
JSON_TYPES = ("application/json", "application/health+json")


@dataclass(frozen=True)
class Sample:
    """One answered request: when it started (monotonic), how long it took, what it said."""

    started: float
    seconds: float
    status: int
    body: dict[str, Any]

    @property
    def code(self) -> str | None:
        return self.body.get("error", {}).get("code")


def fetch(base_url: str, path: str) -> Sample:
    """GET on a new connection (so requests spread over the workers); must answer in JSON."""
    started = time.monotonic()
    response = requests.get(f"{base_url}{path}", timeout=HTTP_TIMEOUT_S)
    seconds = time.monotonic() - started
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    assert media_type in JSON_TYPES, f"{path} {response.status_code}: {response.text[:200]}"
    assert_conforms(
        "GET", path, response.status_code, response.headers["Content-Type"], response.content
    )
    return Sample(started, seconds, response.status_code, response.json())


@dataclass
class Watch:
    """Requests `path` over and over in a thread and keeps every sample (or failure)."""

    base_url: str
    path: str
    pause_s: float = 0.05
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {self.path}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(fetch(self.base_url, self.path))
            except Exception as error:  # a reset, a timeout, HTML: all are failures
                self.failures.append(f"{time.monotonic():.3f} {error!r}")
            self._stop.wait(self.pause_s)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop asking, after the request in flight (if any) has answered; idempotent."""
        self._stop.set()
        self._thread.join(HTTP_TIMEOUT_S + 1)

    def between(self, start: float, end: float = float("inf")) -> list[Sample]:
        return [s for s in self.samples if start <= s.started and s.started + s.seconds <= end]

    def assert_healthy_run(self, limit_s: float) -> None:
        assert not self.failures, f"{self.path}: {self.failures[:3]}"
        slowest = max(self.samples, key=lambda s: s.seconds)
        assert slowest.seconds < limit_s, f"{self.path} took {slowest.seconds:.3f}s: {slowest}"


@dataclass
class Service:
    """A gunicorn under test with its database, warmed so every worker holds pooled connections."""

    process: ServerProcess
    base_url: str
    cluster: TemporaryCluster
    database: str
    stale_after_s: float

    def get(self, path: str) -> Sample:
        return fetch(self.base_url, path)

    def burst(self, path: str, count: int = 16) -> list[Sample]:
        """Concurrent requests on new connections, so that both workers get some."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda _: self.get(path), range(count)))

    def wait_for(self, path: str, status: int, within_s: float) -> Sample:
        deadline = time.monotonic() + within_s
        while True:
            sample = self.get(path)
            if sample.status == status:
                return sample
            assert time.monotonic() < deadline, f"{path} still {sample.status}: {sample.body}"
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid)

    def pooled_connections_per_worker(self) -> dict[int, int]:
        """Idle app connections on the server, attributed to workers by their client port."""
        rows = self.cluster.psql(
            "SELECT client_port FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'db-service' AND state = 'idle'",
            (self.database,),
        )
        ports = {row[0] for row in rows or []}
        return {pid: len(ports & local_tcp_ports(pid)) for pid in self.worker_pids()}

    def warm_up(self) -> None:
        """Give every worker pooled connections: they are what goes stale in a fault."""
        for _ in range(10):
            assert all(sample.status == 200 for sample in self.burst("/api/db/test"))
            if all(self.pooled_connections_per_worker().values()):
                break
        per_worker = self.pooled_connections_per_worker()
        assert len(per_worker) == WORKERS and all(per_worker.values()), per_worker
        self.wait_for("/api/health", 200, within_s=5)

    def assert_recovered(self, recovered_at: float) -> None:
        """The very first requests after recovery succeed, and within RECOVERY_S every worker's
        health says 200 (a burst on new connections reaches both workers)."""
        first = self.get("/api/db/test")
        assert first.status == 200, f"first /api/db/test after recovery: {first.body}"
        while not all(s.status == 200 for s in self.burst("/api/health")):
            assert time.monotonic() - recovered_at < RECOVERY_S, "health did not follow in time"
            time.sleep(0.05)
        assert time.monotonic() - recovered_at < RECOVERY_S
        burst = self.burst("/api/db/test")
        assert [s.status for s in burst] == [200] * len(burst), [s.body for s in burst]

    def assert_clean_log(self) -> None:
        """No worker was killed or restarted, and nothing crashed."""
        log = self.process.log_text()
        assert "WORKER TIMEOUT" not in log
        assert log.count("Booting worker") == WORKERS, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert sorted(self.worker_pids()) == sorted(self._booted_pids(log))

    @staticmethod
    def _booted_pids(log: str) -> list[int]:
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", log)]


def local_tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process `pid` holds (from /proc: no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def start_service(
    serve: ServerFactory, faulty_cluster: TemporaryCluster, cluster_database_url: str
) -> Callable[[dict[str, str]], Service]:
    def start(env: dict[str, str]) -> Service:
        process, base_url = serve({"DATABASE_URL": cluster_database_url, **env}, workers=WORKERS)
        stale_after_s = float(env.get("HEALTH_STALE_AFTER_S", 3.0))  # 3 s: the default
        database = make_url(cluster_database_url).database
        assert database
        service = Service(process, base_url, faulty_cluster, database, stale_after_s)
        service.warm_up()
        return service

    return start


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def assert_outage_seen(
    service: Service,
    health: Watch,
    db_test: Watch,
    fault_at: float,
    effective_at: float,
    ended_at: float,
    codes: set[str],
) -> None:
    """Probes fast and failing once stale, db/test a JSON 503 with `codes` within its deadline."""
    health.assert_healthy_run(PROBE_LIMIT_S)
    db_test.assert_healthy_run(DB_TEST_LIMIT_S)
    failing_from = fault_at + service.stale_after_s + 1.0
    late = health.between(failing_from, ended_at)
    assert len(late) >= 3, late
    assert {s.status for s in late} == {503}, [s.body for s in late if s.status != 503]
    during = db_test.between(effective_at, ended_at)
    assert during, "no /api/db/test answered during the fault"
    assert {(s.status, s.code) for s in during} <= {(503, code) for code in codes}, [
        s.body for s in during
    ]


@contextmanager
def outage(service: Service) -> Iterator[tuple[Watch, Watch]]:
    """Watch /api/health and /api/db/test; the db/test watcher stops before the block ends."""
    with (
        Watch(service.base_url, "/api/health") as health,
        Watch(service.base_url, "/api/db/test") as db_test,
    ):
        yield health, db_test


def hold_outage(service: Service, db_test: Watch, fault_at: float) -> None:
    """Keep the fault until readiness must have failed and /api/db/test has answered during it
    (within its bound), then stop asking /api/db/test."""
    sleep_until(fault_at + service.stale_after_s + 1.5)
    wait_for(
        lambda: db_test.between(fault_at),
        DB_TEST_LIMIT_S,
        description="an /api/db/test answer during the fault",
    )
    db_test.stop()


# -------------------------------------------------------------------------------- the faults


def test_database_stopped_then_started(
    start_service: Callable[[dict[str, str]], Service], faulty_cluster: TemporaryCluster
) -> None:
    service = start_service(FAST)
    with outage(service) as (health, db_test):
        fault_at = time.monotonic()
        faulty_cluster.stop()
        effective_at = time.monotonic()
        hold_outage(service, db_test, fault_at)
        ended_at = time.monotonic()
        faulty_cluster.start()
        recovered_at = time.monotonic()
        service.assert_recovered(recovered_at)
    assert_outage_seen(
        service, health, db_test, fault_at, effective_at, ended_at, {"database_unavailable"}
    )
    service.assert_clean_log()


def test_database_frozen_then_thawed(
    start_service: Callable[[dict[str, str]], Service], faulty_cluster: TemporaryCluster
) -> None:
    """Every PostgreSQL process SIGSTOPped, on the production defaults (fast checks: the outage
    test of test_worst_day.py): TCP still connects, nothing ever answers."""
    service = start_service(DEFAULTS)
    with outage(service) as (health, db_test):
        fault_at = time.monotonic()
        faulty_cluster.freeze()
        effective_at = time.monotonic()
        hold_outage(service, db_test, fault_at)
        ended_at = time.monotonic()
        faulty_cluster.thaw()
        recovered_at = time.monotonic()
        service.assert_recovered(recovered_at)
    assert_outage_seen(service, health, db_test, fault_at, effective_at, ended_at, {"timeout"})
    service.assert_clean_log()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_database_restarted(
    start_service: Callable[[dict[str, str]], Service],
    faulty_cluster: TemporaryCluster,
    mode: str,
) -> None:
    """Every pooled connection dies with the server; none may cost a request an error."""
    service = start_service(FAST)
    with outage(service) as (health, db_test):
        fault_at = time.monotonic()
        faulty_cluster.restart(mode)
        recovered_at = time.monotonic()
        db_test.stop()
        service.assert_recovered(recovered_at)
    health.assert_healthy_run(PROBE_LIMIT_S)
    db_test.assert_healthy_run(DB_TEST_LIMIT_S)
    during = db_test.between(fault_at, recovered_at)
    assert {(s.status, s.code) for s in during} <= {
        (200, None),
        (503, "database_unavailable"),
        (503, "timeout"),
    }
    service.assert_clean_log()


@pytest.mark.parametrize(
    "env",
    [
        FAST,  # the server's lock_timeout (DB_LOCK_TIMEOUT_MS, 1 s) ends the wait
        {**FAST, "DB_LOCK_TIMEOUT_MS": "60000", "DB_STATEMENT_TIMEOUT_MS": "60000"},  # deadline
    ],
    ids=["lock-timeout", "client-deadline"],
)
def test_auth_tables_locked(
    start_service: Callable[[dict[str, str]], Service],
    faulty_cluster: TemporaryCluster,
    env: dict[str, str],
) -> None:
    """A migration holding ACCESS EXCLUSIVE: the write check times out, readiness stays up."""
    service = start_service(env)
    locker = faulty_cluster.connect(service.database)
    try:
        with outage(service) as (health, db_test):
            with locker.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {AUTH_TABLES} IN ACCESS EXCLUSIVE MODE")
            locked_at = time.monotonic()
            hold_outage(service, db_test, locked_at)
            locker.rollback()
            released_at = time.monotonic()
            service.assert_recovered(released_at)
    finally:
        locker.close()
    health.assert_healthy_run(PROBE_LIMIT_S)
    db_test.assert_healthy_run(DB_TEST_LIMIT_S)
    assert {s.status for s in health.between(locked_at, released_at)} == {200}
    during = db_test.between(locked_at)
    assert during, "no /api/db/test answered under the lock"
    assert {(s.status, s.code) for s in during} == {(503, "timeout")}, [s.body for s in during]
    service.assert_clean_log()
