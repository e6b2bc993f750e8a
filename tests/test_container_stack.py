"""The containers for real: build the image, run the compose stack, break it.

Needs a Docker engine and Debian's `docker-compose` (v1): `make test-containers` on a machine
with Docker; CI starts one with ../shared/containers/engine.sh (see .ci/run). Marked
`containers`, so `make test` leaves these out.

One compose project per run (a unique name, free host ports: 5432 and 8000 may be taken), brought
up once for the module and always removed with its volumes at the end. The tests run in file
order, each leaving the stack as it found it or saying what it changed: the image, the start-up,
the migration, the process, the endpoints, bad configuration, then the faults (pause, restart),
PgBouncer, and last the api's own stop under load.

What they measure (build time, image layers, time to healthy, the fault timings) is kept in
pytest's cache: `.venv/bin/pytest --cache-show 'containers/*'` prints the last run's.
CONTAINERS_NO_CACHE=1 builds with --no-cache, for the cold build time.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.images import base_images
from harness.processes import port_is_free, wait_for
from tests.test_containers import COMPOSE_FILE, COMPOSE_INSTALL, tool, tool_environment

pytestmark = [pytest.mark.containers, pytest.mark.timeout(600)]

PROJECT_ROOT = COMPOSE_FILE.parent
DOCKER_INSTALL = "run ../shared/containers/engine.sh up, or install Docker"
# One tag for every run: the layer cache makes a rebuild take seconds.
IMAGE = "db-service:container-tests"


@dataclass
class Stack:
    """A compose project of this run, and what was measured on it."""

    project: str
    env_file: Path
    settings: dict[str, str] = field(repr=False)  # throwaway secrets, still kept out of reports
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.settings['API_PUBLISH_PORT']}"

    def compose(
        self, *args: str, timeout: float = 180, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`docker-compose` on this project, with this run's settings as its .env file."""
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))
        command = [tool("docker-compose", COMPOSE_INSTALL), "-p", self.project]
        command += ["--env-file", str(self.env_file), "-f", str(COMPOSE_FILE), *args]
        return run(command, timeout, check)

    def container(self, service: str) -> str:
        """The id of the service's container (running or exited)."""
        found = self.compose("ps", "-a", "-q", service).stdout.split()
        assert len(found) == 1, f"{service}: containers {found}"
        return found[0]

    def inspect(self, service: str) -> dict[str, Any]:
        return json.loads(docker("inspect", self.container(service)).stdout)[0]

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, *command, check=False)

    def get(self, path: str, ops: bool = False, timeout: float = 10) -> requests.Response:
        token = {"Authorization": f"Bearer {self.settings['OPS_TOKEN']}"} if ops else {}
        return requests.get(self.base + path, headers=token, timeout=timeout)

    def wait_healthy(self, service: str, timeout: float) -> None:
        def healthy() -> bool:
            state = self.inspect(service)["State"]
            assert state["Status"] != "exited", f"{service} exited:\n{self.logs(service)}"
            return state["Health"]["Status"] == "healthy"

        try:
            wait_for(healthy, timeout, interval=0.2, description=f"{service} to be healthy")
        except TimeoutError as error:
            raise AssertionError(f"{error}; logs:\n{self.logs(service)}") from error

    def logs(self, service: str) -> str:
        result = self.compose("logs", "--no-color", "--tail", "40", service, check=False)
        return result.stdout + result.stderr


def run(command: list[str], timeout: float, check: bool) -> subprocess.CompletedProcess[str]:
    """Run docker or docker-compose with the legacy builder and no variable of ours."""
    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env={**tool_environment(), "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"{' '.join(command[:4])}...: {result.stderr[-3000:]}"
    return result


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run([tool("docker", DOCKER_INSTALL), *args], timeout, check)


def docker_time(value: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; Python reads microseconds."""
    value = re.sub(r"\.(\d+)", lambda m: "." + m[1][:6].ljust(6, "0"), value)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def seconds_until(request: Callable[[], requests.Response], status: int, within: float) -> float:
    """Seconds until `request` answers `status` (a connection error counts as not yet)."""
    started = time.monotonic()
    wait_for(
        lambda: request().status_code == status,
        within,
        interval=0.05,
        description=f"HTTP {status}",
        retry_on=(requests.RequestException,),
    )
    return round(time.monotonic() - started, 2)


def host_port() -> int:
    """A free port below Linux's ephemeral range (32768+), which the test's own client
    connections use as source ports, so none of them can take it before Docker binds it."""
    for _ in range(100):
        port = random.randrange(20000, 32000)
        if port_is_free(port):
            return port
    raise AssertionError("no free port between 20000 and 32000")


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    if docker("info", "--format", "{{.ServerVersion}}", check=False).returncode != 0:
        pytest.fail(f"no Docker engine answers ({DOCKER_INSTALL})")
    settings = {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "SECRET_KEY": secrets.token_hex(32),
        "OPS_TOKEN": secrets.token_hex(16),
        "POSTGRES_PUBLISH_PORT": str(host_port()),
        "API_PUBLISH_PORT": str(host_port()),
        "APP_IMAGE": IMAGE,
    }
    env_file = tmp_path_factory.mktemp("stack") / "stack.env"
    stack = Stack(f"dbsvctest{uuid.uuid4().hex[:8]}", env_file, settings)
    try:
        started = time.monotonic()
        no_cache = ["--no-cache"] if os.environ.get("CONTAINERS_NO_CACHE") else []
        stack.compose("build", *no_cache, "api", timeout=600)
        stack.facts["build_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        stack.compose("up", "-d", timeout=300)
        stack.wait_healthy("api", timeout=120)
        stack.facts["up_to_healthy_s"] = round(time.monotonic() - started, 1)
        yield stack
    finally:
        stack.compose("--profile", "pgbouncer", "down", "-v", "--remove-orphans", check=False)
        cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
        if cache is not None:
            cache.set("containers/facts", stack.facts)


# --------------------------------------------------------------------------------------------
# The image and the start-up
# --------------------------------------------------------------------------------------------


def test_image_is_the_base_plus_a_small_runtime(stack: Stack) -> None:
    image = json.loads(docker("image", "inspect", IMAGE).stdout)[0]
    base = json.loads(docker("image", "inspect", base_images()[0]).stdout)[0]
    history = docker("history", "--human=false", "--no-trunc", "--format", "{{json .}}", IMAGE)
    layers = [json.loads(line) for line in history.stdout.splitlines()]
    stack.facts["image_mb"] = round(image["Size"] / 1e6, 1)
    stack.facts["base_mb"] = round(base["Size"] / 1e6, 1)
    stack.facts["layers"] = [
        [round(int(layer["Size"]) / 1e6, 3), " ".join(layer["CreatedBy"].split())[:100]]
        for layer in reversed(layers)
        if int(layer["Size"])
    ]
    own = image["Size"] - base["Size"]
    assert 0 < own < 120e6, f"the service adds {own / 1e6:.0f} MB: {stack.facts['layers']}"
    config = image["Config"]
    assert config["Cmd"] == ["gunicorn", "-c", "gunicorn.conf.py"] and not config["Entrypoint"]


def test_compose_starts_db_then_migrate_then_a_healthy_api(stack: Stack) -> None:
    db, migrate, api = (stack.inspect(s)["State"] for s in ("db", "migrate", "api"))
    assert db["Health"]["Status"] == "healthy" and api["Health"]["Status"] == "healthy"
    assert migrate["Status"] == "exited" and migrate["ExitCode"] == 0, stack.logs("migrate")
    assert docker_time(migrate["StartedAt"]) > docker_time(db["StartedAt"])
    assert docker_time(migrate["FinishedAt"]) <= docker_time(api["StartedAt"])
    assert "Running upgrade" in stack.logs("migrate"), "the first run applies the migrations"


def schema_and_data(stack: Stack) -> str:
    user, database = ("app", "app")  # compose's defaults for POSTGRES_USER and POSTGRES_DB
    dump = stack.exec("db", "pg_dump", "-U", user, "-d", database)
    assert dump.returncode == 0, dump.stderr
    # pg_dump's \restrict line carries a random key per dump
    return "\n".join(line for line in dump.stdout.splitlines() if "restrict" not in line)


def test_second_migration_run_exits_0_and_changes_nothing(stack: Stack) -> None:
    before = schema_and_data(stack)
    assert "alembic_version" in before
    again = stack.compose("run", "--rm", "migrate", check=False, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Running upgrade" not in again.stdout + again.stderr
    assert schema_and_data(stack) == before


PROCESS_REPORT = """
import json, os, shutil
procs = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        command = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
        status = open(f"/proc/{pid}/status").read().splitlines()
    except OSError:
        continue
    ids = {l.split(":")[0]: l.split()[1:] for l in status if l.startswith(("Uid:", "Gid:"))}
    procs.append({"pid": int(pid), "command": command, **ids})
writes = {}
for path in ("/app/wsgi.py", "/app/service/__init__.py", "/app/service/new.py", "/app/new"):
    try:
        open(path, "a").close()
        writes[path] = "written"
    except OSError as error:
        writes[path] = type(error).__name__
present = [p for p in ("/app/tests", "/app/.env", "/app/.git", "/app/bench") if os.path.exists(p)]
tools = [t for t in ("gcc", "cc", "pip") if shutil.which(t)]
print(json.dumps({"procs": procs, "writes": writes, "present": present, "tools": tools}))
"""


def test_api_runs_as_non_root_and_cannot_write_its_code(stack: Stack) -> None:
    result = stack.exec("api", "python", "-c", PROCESS_REPORT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    gunicorns = [p for p in report["procs"] if "gunicorn" in p["command"]]
    assert gunicorns[0]["pid"] == 1 and len(gunicorns) >= 2, report["procs"]  # master + workers
    for process in gunicorns:
        assert {*process["Uid"], *process["Gid"]} != {"0"} and "0" not in process["Uid"], process
    assert set(report["writes"].values()) == {"PermissionError"}, report["writes"]
    assert not report["present"], f"in the image but not needed: {report['present']}"
    assert "gcc" not in report["tools"] and "cc" not in report["tools"], report["tools"]


def test_health_and_db_test_answer_through_the_published_port(stack: Stack) -> None:
    health = stack.get("/api/health")
    assert health.status_code == 200, health.text
    assert health.headers["Content-Type"].startswith("application/health+json")
    assert health.json()["status"] in ("pass", "warn")  # warn: a slow check on a busy host
    assert stack.get("/api/health/ready").status_code == 200
    assert stack.get("/api/db/test").status_code == 401, "production: the token is required"
    verified = stack.get("/api/db/test", ops=True)
    assert verified.status_code == 200, verified.text
    assert verified.json()["writeCheck"] == {"inserted": True, "readBack": True, "rolledBack": True}


def test_a_missing_setting_stops_the_container_with_one_line(stack: Stack) -> None:
    password = secrets.token_hex(8)
    cases = {
        "DATABASE_URL": [],
        "SECRET_KEY": ["-e", f"DATABASE_URL=postgresql://app:{password}@db:5432/app"],
    }
    for missing, env in cases.items():
        result = docker("run", "--rm", "--network", "none", *env, IMAGE, check=False, timeout=60)
        output = (result.stdout + result.stderr).strip()
        assert result.returncode == 1, output
        assert len(output.splitlines()) == 1 and missing in output, output
        assert password not in output


# --------------------------------------------------------------------------------------------
# Faults of the database
# --------------------------------------------------------------------------------------------


def test_paused_database_fails_readiness_not_liveness_and_recovers(stack: Stack) -> None:
    api_before = stack.inspect("api")
    ready = lambda: stack.get("/api/health/ready")  # noqa: E731
    db_test = lambda: stack.get("/api/db/test", ops=True)  # noqa: E731
    paused_at = datetime.now(UTC)
    docker("pause", stack.container("db"))
    try:
        stack.facts["pause_ready_503_s"] = seconds_until(ready, 503, within=4)
        assert stack.get("/api/health/live").status_code == 200
        started = time.monotonic()
        frozen = db_test()
        stack.facts["pause_db_test_503_s"] = round(time.monotonic() - started, 2)
        assert frozen.status_code == 503 and stack.facts["pause_db_test_503_s"] <= 3, frozen.text
        assert frozen.json()["error"]["code"] in ("timeout", "database_unavailable")

        # Docker's own health check runs during the freeze, passes, and restarts nothing.
        def checked_since_pause() -> list[dict[str, Any]]:
            log = stack.inspect("api")["State"]["Health"]["Log"]
            return [entry for entry in log if docker_time(entry["Start"]) > paused_at]

        interval_s = api_before["Config"]["Healthcheck"]["Interval"] / 1e9
        checks = wait_for(checked_since_pause, interval_s + 5, 0.2, "a health check of the api")
        assert all(entry["ExitCode"] == 0 for entry in checks), checks
        assert stack.get("/api/health/live").status_code == 200
    finally:
        docker("unpause", stack.container("db"), check=False)
    stack.facts["unpause_ready_200_s"] = seconds_until(ready, 200, within=3)
    stack.facts["unpause_db_test_200_s"] = seconds_until(db_test, 200, within=3)
    api_after = stack.inspect("api")
    assert api_after["State"]["Health"]["Status"] == "healthy"
    assert api_after["RestartCount"] == api_before["RestartCount"] == 0
    assert api_after["State"]["StartedAt"] == api_before["State"]["StartedAt"]


def test_restarted_database_recovers_with_no_error_after(stack: Stack) -> None:
    answers: list[int] = []
    done = threading.Event()

    def watch() -> None:  # readiness during the restart: 200 or 503, never anything else
        while not done.is_set():
            try:
                answers.append(stack.get("/api/health/ready", timeout=5).status_code)
            except requests.RequestException:
                answers.append(-1)  # the api itself stopped answering
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        docker("restart", stack.container("db"))
        # `docker restart` returns while PostgreSQL may still be starting, and each gunicorn
        # worker's checker notices on its own schedule: until then a worker may answer
        # /api/db/test or readiness with 503. Recovered: 20 round trips and readiness in a row.
        stack.facts["restart_recovered_s"] = round(recovered(stack) - started, 2)
    finally:
        done.set()
        watcher.join(10)
    assert set(answers) <= {200, 503}, answers
    # No error after, for a few health-check intervals. `warn` is no error: a worker whose
    # checker last looked during the restart says so (HTTP 200) until its next check.
    until = time.monotonic() + 5
    while time.monotonic() < until:
        verified = stack.get("/api/db/test", ops=True)
        assert verified.status_code == 200, verified.text
        assert stack.get("/api/health/ready").status_code == 200
        health = stack.get("/api/health")
        assert health.status_code == 200, health.text
    for _ in range(10):  # by now every worker's checker has seen the database again
        notes = stack.get("/api/health").json().get("notes", [])
        assert "database_unavailable" not in notes, notes


def recovered(stack: Stack, in_a_row: int = 20, within: float = 30) -> float:
    """When the run of `in_a_row` successes (db/test and readiness 200) began."""
    deadline, streak_began, streak = time.monotonic() + within, 0.0, 0
    while streak < in_a_row:
        assert time.monotonic() < deadline, f"no {in_a_row} successes in a row in {within} s"
        now = time.monotonic()
        try:
            ok = (
                stack.get("/api/db/test", ops=True).status_code == 200
                and stack.get("/api/health/ready").status_code == 200
            )
        except requests.RequestException:
            ok = False
        streak, streak_began = (streak + 1, streak_began or now) if ok else (0, 0.0)
        time.sleep(0.02)
    return streak_began


# --------------------------------------------------------------------------------------------
# PgBouncer, then the api's own stop (both recreate or stop the api: they come last)
# --------------------------------------------------------------------------------------------


def client_addresses(stack: Stack) -> set[str]:
    """Where the database's client connections come from (the api's, or PgBouncer's)."""
    query = (
        "SELECT DISTINCT host(client_addr) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND client_addr IS NOT NULL "
        "AND NOT client_addr <<= '127.0.0.0/8'"  # the db's own pg_isready health checks
    )
    result = stack.exec("db", "psql", "-U", "app", "-d", "app", "-Atc", query)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def address(stack: Stack, service: str) -> str:
    networks = stack.inspect(service)["NetworkSettings"]["Networks"]
    return next(iter(networks.values()))["IPAddress"]


def test_pgbouncer_profile_serves_db_test_in_transaction_mode(stack: Stack) -> None:
    assert address(stack, "api") in client_addresses(stack), "direct connections at first"
    stack.settings |= {"API_DATABASE_HOST": "pgbouncer", "API_DATABASE_PORT": "6432"}
    stack.settings["DB_POOL"] = "null"
    stack.compose("--profile", "pgbouncer", "up", "-d", timeout=300)
    stack.wait_healthy("api", timeout=120)
    verified = stack.get("/api/db/test", ops=True)
    assert verified.status_code == 200, verified.text
    assert stack.get("/api/health").status_code == 200

    config = stack.exec("pgbouncer", "cat", "/etc/pgbouncer/pgbouncer.ini")
    assert "pool_mode = transaction" in config.stdout, config.stdout + config.stderr
    assert client_addresses(stack) == {address(stack, "pgbouncer")}, "all through PgBouncer"


SLOW_REQUEST = b"GET /api/health/live HTTP/1.1\r\nHost: api\r\n"


def test_stopping_the_api_under_load_loses_no_request(stack: Stack) -> None:
    api = stack.inspect("api")
    grace_s = api["Config"]["StopTimeout"]  # compose's stop_grace_period
    settings = stack.exec(
        "api",
        "python",
        "-c",
        "import runpy; print(runpy.run_path('gunicorn.conf.py')['graceful_timeout'])",
    )
    assert settings.returncode == 0, settings.stderr
    graceful_s = int(settings.stdout.split()[-1])
    check = api["Config"]["Healthcheck"]
    assert grace_s > graceful_s, f"Docker would SIGKILL after {grace_s}s, drain takes {graceful_s}s"
    assert check["Interval"] * check["Retries"] / 1e9 >= graceful_s, "unhealthy while draining"

    results: list[tuple[float, int | str]] = []
    done = threading.Event()

    def load() -> None:  # bounded: at most 5000 requests per client, to 127.0.0.1 only
        for _ in range(5000):
            if done.is_set():
                return
            sent = time.monotonic()
            try:
                results.append((sent, stack.get("/api/db/test", ops=True, timeout=10).status_code))
            except requests.RequestException as error:  # a cut-off answer would show here
                results.append((sent, type(error).__name__))
                time.sleep(0.01)

    clients = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for client in clients:
        client.start()
    time.sleep(1)
    # A request in flight when SIGTERM arrives: its headers end only after the signal.
    slow = socket.create_connection(("127.0.0.1", int(stack.settings["API_PUBLISH_PORT"])))
    slow.sendall(SLOW_REQUEST)
    time.sleep(0.3)
    container = stack.container("api")
    signals_before = docker("logs", container).stderr.count("Handling signal: term")
    stop_at = time.monotonic()
    stopping = subprocess.Popen(
        [tool("docker", DOCKER_INSTALL), "stop", container], stdout=subprocess.DEVNULL
    )
    try:
        wait_for(
            lambda: (
                docker("logs", container, check=False).stderr.count("Handling signal: term")
                > signals_before
            ),
            timeout=5,
            interval=0.05,
            description="gunicorn to receive SIGTERM",
        )
        slow.sendall(b"\r\n")
        slow.settimeout(grace_s)
        reply = slow.recv(200)
        stopping.wait(grace_s + 5)
    finally:
        done.set()
        for client in clients:
            client.join(15)
        slow.close()
        if stopping.poll() is None:
            stopping.kill()
    stack.facts["stop_s"] = round(time.monotonic() - stop_at, 2)
    state = stack.inspect("api")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0, stack.logs("api")
    assert stack.facts["stop_s"] < grace_s
    assert reply.startswith(b"HTTP/1.1 200"), reply
    in_flight = [status for sent, status in results if sent < stop_at]
    after = [status for sent, status in results if sent >= stop_at]
    stack.facts["stop_load"] = {"before": len(in_flight), "after": len(after)}
    assert in_flight and set(in_flight) == {200}, f"lost: {[s for s in in_flight if s != 200]}"
    assert set(after) <= {200, "ConnectionError"}, set(after)
