"""The real gunicorn with gunicorn.conf.py: its hooks, its access log and a graceful SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import requests

from harness.processes import children_of, wait_for
from harness.service import ADMIN_URL, FAST_HEALTH, ServerFactory


def server_connections(application_prefix: str) -> list[tuple[str, str]]:
    """(application_name, state) of the server's sessions whose name starts with the prefix."""
    with closing(psycopg2.connect(ADMIN_URL, connect_timeout=5)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT application_name, state FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (application_prefix + "%",),
            )
            return cursor.fetchall()


def mapped_metric_dirs(pid: int) -> set[Path]:
    """Folders of the multiprocess metric files a process has mapped (from /proc/PID/maps)."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if path.endswith(".db") and "prometheus-multiproc-" in path:
            found.add(Path(path).parent)
    return found


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_hooks_start_each_workers_checker_and_make_the_metrics_folder(
    serve: ServerFactory, database_url: str
) -> None:
    service_id = f"gunicorn-hooks-{uuid.uuid4().hex[:8]}"
    process, _ = serve({"DATABASE_URL": database_url, "SERVICE_ID": service_id, **FAST_HEALTH})
    # post_worker_init started both checkers: nothing has asked for /api/health yet.
    wait_for(
        lambda: process.log_text().count("health status unknown -> pass") == 2,
        timeout=10,
        description="both workers' checkers to report",
    )
    checkers = wait_for(
        lambda: len(found := server_connections(f"{service_id}-health")) == 2 and found, 10
    )
    assert len(checkers) == 2
    workers = wait_for(lambda: len(kids := children_of(process.pid)) == 2 and kids, 10)

    # Each worker has its samples in one folder, made by the master (PROMETHEUS_MULTIPROC_DIR).
    folders = set().union(*(mapped_metric_dirs(pid) for pid in workers))
    assert len(folders) == 1
    (folder,) = folders

    assert process.terminate(signal.SIGINT, timeout=15) == 0
    assert "Shutting down: Master" in process.log_text()
    wait_for(lambda: not server_connections(service_id), 5, description="connections to close")
    assert not folder.exists(), "the master removes the metrics folder it made"


def test_access_log_is_json_with_request_ids_and_without_probes(
    serve: ServerFactory, database_url: str
) -> None:
    process, base = serve({"DATABASE_URL": database_url, "LOG_FORMAT": "json", **FAST_HEALTH})
    for path in ("/api/health", "/api/health/live", "/api/health/ready", "/metrics"):
        assert requests.get(f"{base}{path}", timeout=5).status_code == 200
    traced = requests.get(
        f"{base}/api/db/test?token=secret-query", headers={"X-Request-ID": "trace-42"}, timeout=5
    )
    assert traced.status_code == 200 and traced.headers["X-Request-ID"] == "trace-42"
    missing = requests.get(f"{base}/no/such/page", timeout=5)
    assert missing.status_code == 404
    wait_for(lambda: "/no/such/page" in process.log_text(), 5)
    process.terminate(signal.SIGINT, timeout=15)

    records = json_lines(process.log_text())  # every line is JSON, gunicorn's own included
    assert {"time", "level", "name", "request_id", "message"} <= records[0].keys()
    assert any(r["name"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records)
    access = [r for r in records if r["name"] == "gunicorn.access"]
    assert [r["path"] for r in access] == ["/api/db/test", "/no/such/page"]  # no probes
    db_test, not_found = access
    assert db_test["request_id"] == "trace-42"
    assert db_test["status"] == 200 and db_test["http_method"] == "GET"
    assert db_test["duration_ms"] > 0 and db_test["bytes_sent"] > 0
    assert "secret-query" not in process.log_text()  # query strings are not logged
    assert not_found["status"] == 404
    assert not_found["request_id"] == missing.headers["X-Request-ID"]


@dataclass
class Outcome:
    started: float
    status: int | None  # None: no HTTP answer
    error: str = ""


@pytest.mark.serial  # load across a SIGTERM, within the graceful timeout
def test_sigterm_under_load_finishes_every_request_in_flight(
    serve: ServerFactory, database_url: str
) -> None:
    """Requests blocked in the database when SIGTERM arrives still get their 200."""
    graceful_timeout = 10
    service_id = f"gunicorn-term-{uuid.uuid4().hex[:8]}"
    process, base = serve(
        {
            "DATABASE_URL": database_url,
            "SERVICE_ID": service_id,
            "GUNICORN_GRACEFUL_TIMEOUT": str(graceful_timeout),
            "DB_LOCK_TIMEOUT_MS": "8000",
            "DB_STATEMENT_TIMEOUT_MS": "8000",
            "DB_DEADLINE_S": "8",
            **FAST_HEALTH,
        }
    )
    locker = psycopg2.connect(database_url, connect_timeout=5)
    locker.autocommit = False
    with locker.cursor() as cursor:
        cursor.execute("LOCK TABLE verification IN ACCESS EXCLUSIVE MODE")

    blocked: list[Outcome] = []
    load: list[Outcome] = []
    stop_load = threading.Event()

    def get(path: str, into: list[Outcome]) -> None:
        started = time.monotonic()
        try:
            # A new connection each time: a refused connect is not a dropped request.
            response = requests.get(f"{base}{path}", headers={"Connection": "close"}, timeout=20)
            into.append(Outcome(started, response.status_code))
        except requests.RequestException as error:
            into.append(Outcome(started, None, type(error).__name__))

    def keep_loading() -> None:
        while not stop_load.is_set():
            get("/api/health/live", load)
            if load[-1].status is None:
                time.sleep(0.02)  # refused: do not spin (and starve the shutting-down server)

    in_flight = [threading.Thread(target=get, args=("/api/db/test", blocked)) for _ in range(4)]
    loaders = [threading.Thread(target=keep_loading) for _ in range(2)]
    for thread in in_flight + loaders:
        thread.start()
    wait_for(
        lambda: (
            any(state == "active" for _, state in server_connections(service_id))
            and _lock_waiters(database_url) >= 4
        ),
        timeout=10,
        description="the four database tests to wait on the lock",
    )
    time.sleep(0.3)

    terminated = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    locker.rollback()  # the blocked requests may finish now
    locker.close()
    released = time.monotonic()
    code = process.wait_exit(graceful_timeout + 5)
    exited = time.monotonic()
    stop_load.set()
    for thread in in_flight + loaders:
        thread.join(30)

    assert code == 0, process.log_tail()
    assert exited - terminated < graceful_timeout
    print(
        f"\nSIGTERM: exit 0 {exited - terminated:.2f}s after the signal, "
        f"{exited - released:.2f}s after the blocked requests could finish"
    )
    assert [o.status for o in blocked] == [200] * 4, blocked
    before = [o for o in load if o.started < terminated - 0.05]
    assert before and all(o.status == 200 for o in before)
    after = [o for o in load if o.started >= terminated - 0.05]
    assert all(o.status in (200, None) for o in after)

    log = process.log_text()
    assert log.count("Worker exiting") == 2
    for sign_of_a_kill in ("WORKER TIMEOUT", "SIGKILL", "Traceback"):
        assert sign_of_a_kill not in log
    wait_for(lambda: not server_connections(service_id), 5, description="no connection left")


def _lock_waiters(url: str) -> int:
    with closing(psycopg2.connect(url, connect_timeout=5)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks"
                " WHERE relation = 'verification'::regclass AND NOT granted"
            )
            return int(cursor.fetchone()[0])
