"""The background checker and the monitor, as the database, the probes and the log see them.

One plain connection per worker, reused between checks (and idle, not idle in a transaction);
a failed check drops it and the next one reconnects; each verdict change is one log line; the very
first probe of a process waits briefly for the first look instead of answering `starting`.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
import uuid

import pytest
from flask import Flask

import service
from harness.processes import wait_for
from harness.service import run_command
from tests.test_deadlines import silent_server  # noqa: F401 - a fixture
from tests.test_health_endpoints import body_json, query, wait_for_response


def checker_sessions(url: str, service_id: str) -> list[tuple[int, str]]:
    """(backend pid, state) of the checker's sessions, by its application_name."""
    return query(
        url,
        "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s",
        (f"{service_id}-health",),
    )


def health_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.getMessage().startswith("health status")
    ]


def ready(app: Flask) -> tuple[int, dict]:
    response = app.test_client().get("/api/health/ready")
    return response.status_code, body_json(response)


def test_the_first_probe_waits_for_the_first_look(make_app) -> None:
    app = make_app(HEALTH_CHECK_TIMEOUT_S="1")
    assert ready(app) == (200, {"status": "pass"})  # not 503 "starting"


def test_one_idle_connection_reused_between_checks(make_app, database_url) -> None:
    service_id = f"checker-{uuid.uuid4().hex[:8]}"
    app = make_app(SERVICE_ID=service_id)
    ready(app)
    first = wait_for(lambda: checker_sessions(database_url, service_id), 5)
    time.sleep(0.5)  # several checks later
    assert checker_sessions(database_url, service_id) == [(first[0][0], "idle")]
    app.extensions["health"].stop()
    wait_for(lambda: not checker_sessions(database_url, service_id), 5)  # stop closes it


@pytest.mark.serial  # sessions sampled for a second: one check's, never two
def test_without_app_pooling_the_checker_keeps_no_connection(make_app, database_url) -> None:
    service_id = f"checker-{uuid.uuid4().hex[:8]}"
    app = make_app(SERVICE_ID=service_id, DB_POOL="null", HEALTH_CHECK_INTERVAL_S="0.3")
    assert ready(app)[0] == 200
    seen: dict[int, list[float]] = {}  # backend pid -> when its session was seen
    started = time.monotonic()
    while time.monotonic() - started < 2.0:  # several checks, 0.3 s apart
        sessions = checker_sessions(database_url, service_id)
        assert len(sessions) <= 1, sessions  # at most one check in flight
        for pid, _ in sessions:
            seen.setdefault(pid, []).append(time.monotonic())
        time.sleep(0.05)
    # Never one kept open: a session lives for one check, bounded by its 0.3 s timeout (and
    # the time to connect), not across the checks of two seconds.
    lived = {pid: times[-1] - times[0] for pid, times in seen.items()}
    assert all(span < 1.0 for span in lived.values()), lived


def test_a_dropped_connection_warns_once_then_recovers_with_a_new_one(
    make_app, database_url, caplog
) -> None:
    service_id = f"checker-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.INFO, logger="service.health.monitor"):
        app = make_app(
            SERVICE_ID=service_id, HEALTH_CHECK_INTERVAL_S="0.2", HEALTH_CHECK_TIMEOUT_S="1"
        )
        assert ready(app)[0] == 200
        ((old_pid, _),) = wait_for(lambda: checker_sessions(database_url, service_id), 5)
        query(database_url, "SELECT pg_terminate_backend(%s)", (old_pid,))
        warned = wait_for_response(
            app.test_client(), "/api/health", lambda r: body_json(r)["status"] == "warn"
        )
        assert warned.status_code == 200
        assert body_json(warned)["notes"] == ["database_unavailable"]
        (check,) = body_json(warned)["checks"]["postgresql:responseTime"]
        assert check["status"] == "warn" and check["observedValue"] is None
        # The driver's message is several lines; ops callers get its first.
        assert check["output"] == "FATAL:  terminating connection due to administrator command"
        wait_for(lambda: ready(app) == (200, {"status": "pass"}), 5)
        ((new_pid, _),) = checker_sessions(database_url, service_id)
    assert new_pid != old_pid
    assert health_lines(caplog) == [
        ("INFO", "health status unknown -> pass (all checks pass)"),
        ("WARNING", "health status pass -> warn (database_unavailable)"),
        ("INFO", "health status warn -> pass (all checks pass)"),
    ]


def test_a_check_blocked_past_its_timeout_is_a_timeout_then_stale(make_app, database_url) -> None:
    app = make_app()
    assert ready(app)[0] == 200
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        import psycopg2

        connection = psycopg2.connect(database_url)
        try:
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
                locked.set()
                release.wait(10)
            connection.rollback()
        finally:
            connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(5)
        client = app.test_client()
        seen = []  # a tolerated failure (warn) turns into a fail once the last answer is stale
        failed = wait_for_response(
            client, "/api/health/ready", lambda r: seen.append(body_json(r)) or r.status_code == 503
        )
        assert body_json(failed) == {"status": "fail", "notes": ["timeout"]}
        order = ["pass", "warn", "fail"]
        statuses = [body["status"] for body in seen]
        assert statuses == sorted(statuses, key=order.index), statuses  # never back to pass
        assert all(body["notes"] == ["timeout"] for body in seen if body["status"] == "warn")
    finally:
        release.set()
        holder.join(10)
    wait_for(lambda: ready(app)[0] == 200, 5)


def test_latency_is_reported_in_milliseconds(make_app) -> None:
    app = make_app()
    response = wait_for_response(app.test_client(), "/api/health", lambda r: r.status_code == 200)
    (check,) = body_json(response)["checks"]["postgresql:responseTime"]
    assert 0 < check["observedValue"] < 300  # a local query: well under the check timeout
    assert round(check["observedValue"], 3) == check["observedValue"]


def test_the_pool_in_use_is_reported_per_worker(make_app) -> None:
    from service.extensions import db

    app = make_app(DB_POOL_SIZE="2", DB_MAX_OVERFLOW="1")
    client = app.test_client()
    with app.app_context(), db.engine.connect(), db.engine.connect():
        response = wait_for_response(
            client,
            "/api/health",
            lambda r: body_json(r)["checks"]["postgresql:connections"][0]["observedValue"] == 2,
        )
    (connections,) = body_json(response)["checks"]["postgresql:connections"]
    assert (connections["observedValue"], connections["poolSize"]) == (2, 3)
    assert connections["status"] == "pass"  # 2/3 is below 90 %


def test_a_missing_schema_is_an_answer_not_an_outage(make_app, databases) -> None:
    app = make_app(DATABASE_URL=databases.create())
    response = wait_for_response(app.test_client(), "/api/health", lambda r: r.status_code == 503)
    body = body_json(response)
    assert body["notes"] == ["schema_missing"]
    (check,) = body["checks"]["postgresql:responseTime"]
    assert check["status"] == "pass" and check["observedValue"] > 0


@pytest.mark.serial  # a bound of 0.5 s, timed
def test_the_first_probe_waits_half_a_second_at_most(make_app, silent_server) -> None:  # noqa: F811
    """A database that never answers: the first probe says `starting` after 0.5 s."""
    app = make_app(
        DATABASE_URL=f"postgresql://app@127.0.0.1:{silent_server}/app",
        HEALTH_CHECK_TIMEOUT_S="3",
        HEALTH_CHECK_INTERVAL_S="1",
        HEALTH_STALE_AFTER_S="5",
    )
    started = time.monotonic()
    assert ready(app) == (503, {"status": "fail", "notes": ["starting"]})
    assert 0.4 <= time.monotonic() - started < 1.2  # not the check's 3 s


@pytest.mark.parametrize(
    ("interval", "cache_control"),
    [("0.5", "no-cache"), ("1", "max-age=1"), ("2.5", "max-age=2")],
)
def test_probes_may_be_cached_for_whole_check_intervals(make_app, interval, cache_control) -> None:
    app = make_app(HEALTH_CHECK_INTERVAL_S=interval, HEALTH_STALE_AFTER_S="5")
    client = app.test_client()
    for path in ("/api/health", "/api/health/ready"):
        assert client.get(path).headers["Cache-Control"] == cache_control, path
    assert client.get("/api/health/live").headers["Cache-Control"] == "no-store"


def test_draining_fails_readiness_and_health_but_not_liveness(make_app, caplog) -> None:
    app = make_app()
    client = app.test_client()
    assert client.get("/api/health/ready").status_code == 200
    with caplog.at_level(logging.INFO, logger="service.health.monitor"):
        service.drain(app)
    assert "draining: readiness fails from now on" in caplog.text
    ready_response = client.get("/api/health/ready")
    assert (ready_response.status_code, body_json(ready_response)) == (
        503,
        {"status": "fail", "notes": ["draining"]},
    )
    health = client.get("/api/health")
    assert health.status_code == 503 and body_json(health)["notes"] == ["draining"]
    assert "checks" in body_json(health)  # the document still reports what the checker saw
    assert client.get("/api/health/live").status_code == 200


def test_a_crashing_probe_is_logged_and_the_checker_keeps_going(caplog) -> None:
    from service.health.checker import HealthChecker
    from tests.test_health_verdict import observation

    calls = []

    def probe():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("a bug in a probe")
        return observation()

    checker = HealthChecker(probe, interval_s=0.05)
    with caplog.at_level(logging.ERROR, logger="service.health.checker"):
        checker.ensure_running()
        assert checker.wait_for_first(2)
        checker.stop(timeout_s=1)
    assert "health probe crashed" in caplog.text
    assert len(calls) >= 2 and checker.snapshot is not None


class RecordingProbe:
    """A probe that takes `duration_s` per check and records when checks and its close happen."""

    def __init__(self, duration_s: float, release: threading.Event | None = None) -> None:
        from tests.test_health_verdict import observation

        self.duration_s, self.release = duration_s, release
        self.events: list[tuple[str, float]] = []
        self._observation = observation()

    def __call__(self):
        self.events.append(("check", time.monotonic()))
        if self.release is not None:
            self.release.wait(10)
        time.sleep(self.duration_s)
        self.events.append(("checked", time.monotonic()))
        return self._observation

    def close(self) -> None:
        self.events.append(("close", time.monotonic()))

    def starts(self) -> list[float]:
        return [at for name, at in self.events if name == "check"]

    def median_period(self) -> float:
        gaps = sorted(later - earlier for earlier, later in itertools.pairwise(self.starts()))
        return gaps[len(gaps) // 2]


def running_checker(probe: RecordingProbe, interval_s: float):
    """A checker of `probe` whose first check has begun."""
    from service.health.checker import HealthChecker

    checker = HealthChecker(probe, interval_s=interval_s)
    checker.ensure_running()
    wait_for(lambda: probe.starts(), 5)
    return checker


@pytest.mark.serial  # periods of 0.1 to 0.5 s, timed
@pytest.mark.parametrize(
    ("interval_s", "period_s"),
    [
        (0.5, (0.45, 0.65)),  # one interval apart, not interval + check (0.8 s)
        (0.1, (0.28, 0.45)),  # a check slower than the interval is followed at once
    ],
)
def test_checks_start_one_interval_apart_even_when_each_takes_time(interval_s, period_s) -> None:
    """Each check takes 0.3 s; the period is the interval, or the check when it is longer."""
    probe = RecordingProbe(duration_s=0.3)
    checker = running_checker(probe, interval_s)
    wait_for(lambda: len(probe.starts()) >= 5, 10)
    checker.stop(timeout_s=2)
    low, high = period_s
    assert low <= probe.median_period() <= high, probe.starts()


def test_stop_lets_the_check_in_flight_finish_before_closing_its_connection() -> None:
    """No check runs on, or after, a closed connection: none is left on the server."""
    release = threading.Event()
    probe = RecordingProbe(duration_s=0.3, release=release)
    checker = running_checker(probe, interval_s=0.05)
    release.set()  # the check in flight now takes 0.3 s more
    checker.stop(timeout_s=2)
    names = [name for name, _ in probe.events]
    assert names[-2:] == ["checked", "close"], names
    time.sleep(0.2)
    assert [name for name, _ in probe.events] == names  # nothing ran after stop() returned


@pytest.mark.serial  # a stop bounded by its 0.3 s timeout, timed
def test_stop_gives_up_on_a_stuck_check_after_its_timeout() -> None:
    """A check that outlives its own deadline cannot hold up a worker's shutdown."""
    release = threading.Event()
    probe = RecordingProbe(duration_s=0, release=release)
    checker = running_checker(probe, interval_s=0.05)
    started = time.monotonic()
    try:
        checker.stop(timeout_s=0.3)
        assert 0.25 <= time.monotonic() - started < 2.5
        assert [name for name, _ in probe.events] == ["check", "close"]
    finally:
        release.set()


def test_latency_has_microsecond_resolution(make_app) -> None:
    app = make_app()
    client = app.test_client()
    seen = set()
    for _ in range(6):
        response = wait_for_response(client, "/api/health", lambda r: r.status_code == 200)
        seen.add(body_json(response)["checks"]["postgresql:responseTime"][0]["observedValue"])
        time.sleep(0.12)  # a check every 0.1 s
    assert any(round(value * 1000) % 10 for value in seen), seen  # not all whole 10 µs


def test_an_unusable_sqlite_file_is_a_database_error_not_a_missing_schema(make_app, tmp_path):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path}/no/such/folder/db.sqlite3")
    assert ready(app) == (503, {"status": "fail", "notes": ["database_error"]})


def test_a_process_that_served_probes_can_exit_without_stopping_its_checker(database_url) -> None:
    """The checker never keeps a process alive (a one-off script, a crashed worker's exit)."""
    script = (
        "from service import create_app\n"
        f"app = create_app({{'APP_ENV': 'test', 'DATABASE_URL': {database_url!r}}})\n"
        "assert app.test_client().get('/api/health/ready').status_code == 200\n"
    )
    result = run_command([sys.executable, "-c", script], {}, timeout=20)
    assert result.returncode == 0, result.stderr


@pytest.mark.serial  # looks counted over a second
def test_the_database_is_checked_once_per_interval_not_more(make_app) -> None:
    """Probes never cause checks: 20 probes in a second see about five looks at 0.2 s apart."""
    app = make_app(HEALTH_CHECK_INTERVAL_S="0.2", HEALTH_STALE_AFTER_S="1")
    client = app.test_client()
    looks = set()
    for _ in range(20):
        response = wait_for_response(client, "/api/health", lambda r: r.status_code == 200)
        looks.add(body_json(response)["checks"]["postgresql:responseTime"][0]["time"])
        time.sleep(0.05)
    assert 3 <= len(looks) <= 8, sorted(looks)
