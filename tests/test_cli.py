"""`flask db wait`: returns as soon as the database answers, gives up with one line otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flask.testing import FlaskCliRunner

from harness.pgcluster import TemporaryCluster
from harness.processes import free_port, wait_for
from harness.service import PROJECT_ROOT, SERVICE_VARIABLES, AppFactory, run_flask
from service.cli import DatabaseNotReady, wait_for_database

PASSWORD = "wait-pw-51c0ffee"


def unreachable_url() -> str:
    return f"postgresql://svc:{PASSWORD}@127.0.0.1:{free_port()}/svc"


def test_wait_returns_at_once_when_the_database_answers(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["db", "wait", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    assert "database ready" in result.output and "after 1 attempt," in result.output


def test_wait_gives_up_with_one_line_without_password_or_traceback() -> None:
    started = time.monotonic()
    result = run_flask(
        ["db", "wait"],
        {"DATABASE_URL": unreachable_url(), "DB_WAIT_TIMEOUT_S": "1.5"},  # the env var works
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flask db wait: postgresql+psycopg2://svc:***@127.0.0.1:")
    assert "did not answer within 1.5s" in lines[0]
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    # The 1.5 s, not the 60 s default; the slack is a slow interpreter start on a busy machine.
    assert elapsed < 45


def test_wait_waits_for_the_migration_url_when_asked(
    make_app: AppFactory, database_url: str
) -> None:
    app = make_app(DATABASE_URL=unreachable_url(), MIGRATION_DATABASE_URL=database_url)
    result = app.test_cli_runner().invoke(args=["db", "wait", "--migration", "--timeout", "5"])
    assert result.exit_code == 0, result.output


def test_backoff_grows_exponentially_and_is_capped(make_app: AppFactory) -> None:
    app = make_app(DATABASE_URL=unreachable_url())
    delays: list[float] = []

    class Enough(Exception):
        pass

    def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 7:
            raise Enough

    settings = app.config["SETTINGS"]
    with pytest.raises(Enough):
        wait_for_database(settings.database_url, settings, 60, sleep=fake_sleep)
    for delay, nominal in zip(delays, [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0], strict=True):
        assert nominal * 0.8 <= delay <= nominal * 1.2  # jittered by +-20 %


@pytest.mark.serial  # a 0.6 s timeout, timed
def test_the_last_attempt_never_sleeps_past_the_timeout(make_app: AppFactory) -> None:
    app = make_app(DATABASE_URL=unreachable_url())
    settings = app.config["SETTINGS"]
    started = time.monotonic()
    with pytest.raises(DatabaseNotReady) as caught:
        wait_for_database(settings.database_url, settings, 0.6)
    assert time.monotonic() - started < 1.5
    assert PASSWORD not in str(caught.value) and "svc:***@" in str(caught.value)


@pytest.mark.serial  # a stopped, then started, throwaway cluster
def test_wait_returns_once_a_stopped_database_starts(
    faulty_cluster: TemporaryCluster, cluster_database_url: str, tmp_path: Path
) -> None:
    faulty_cluster.stop()
    base = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    output = tmp_path / "wait.out"
    with output.open("w") as sink:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "db", "wait", "--timeout", "30"],
            cwd=PROJECT_ROOT,
            env={**base, "APP_ENV": "test", "DATABASE_URL": cluster_database_url,
                 "LOG_LEVEL": "DEBUG"},
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
    try:
        # Started only once it has tried and failed twice, however long it took to start.
        wait_for(
            lambda: "database not ready (attempt 2)" in output.read_text(),
            20,
            description="two failed attempts while the database is down",
        )
        assert waiting.poll() is None, "it gave up while the database was down"
        faulty_cluster.start()
        started = time.monotonic()
        waiting.wait(timeout=20)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    out = output.read_text()
    assert waiting.returncode == 0, out
    assert "database ready" in out and "after 1 attempt," not in out
    assert time.monotonic() - started < 8  # backoff caps the delay at a few seconds


@pytest.mark.serial  # a frozen throwaway cluster
def test_a_frozen_database_cannot_stretch_the_wait(
    faulty_cluster: TemporaryCluster, cluster_database_url: str
) -> None:
    """The server accepts TCP but never answers: each attempt is bounded by the time left."""
    faulty_cluster.freeze()
    started = time.monotonic()
    result = run_flask(
        ["db", "wait", "--timeout", "1.5"],
        {"DATABASE_URL": cluster_database_url, "DB_CONNECT_TIMEOUT_S": "10"},
    )
    elapsed = time.monotonic() - started
    faulty_cluster.thaw()
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # The bound: the 1.5 s asked for plus starting `flask`, not DB_CONNECT_TIMEOUT_S (10 s) per try.
    assert elapsed < 10, f"took {elapsed:.1f}s"
