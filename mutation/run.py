"""Run cosmic-ray over every module that carries a guarantee, each against its own fast tests.

    python -m mutation.run [module ...]     (make mutation; MUTATION_JOBS=3 lanes by default)

cosmic-ray mutates files in place, so each lane works in its own copy of the project (tests start
gunicorn and `flask` from the project root, which is then the copy). Sessions and the report are
written to .mutation/. Exit status 1 when a module scores below the threshold.
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkerOutcome, WorkResult

from harness.service import ADMIN_URL, DatabaseFactory, migrate, require_postgresql

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".mutation"
THRESHOLD = 90.0
PYTEST = (
    "-m pytest -x -q -p no:cacheprovider -p mutation.premigrated"
    " -W ignore::pytest.PytestUnraisableExceptionWarning"
)


@dataclass(frozen=True)
class Module:
    path: str  # relative to the project root
    tests: tuple[str, ...]  # pytest arguments: the fast tests that state this module's guarantees
    timeout_s: float  # per mutant; a mutant that hangs the tests counts as killed
    shards: int = 1  # sessions that split the mutants, each in its own lane


MODULES = {  # the slowest first, so that both lanes finish at about the same time
    "server": Module(
        "service/server.py",
        ("tests/test_worker.py",),
        120,
        shards=2,  # a gunicorn start per mutant: the longest module by far
    ),
    "database": Module(
        "service/database.py",
        (
            "tests/test_connections.py",
            "tests/test_errors.py",
            "tests/test_deadlines.py",
            "tests/test_app.py::test_every_connection_carries_the_timeouts_and_a_name",
            "tests/test_health_checker.py::test_one_idle_connection_reused_between_checks",
            "tests/test_health_checker.py::test_a_missing_schema_is_an_answer_not_an_outage",
            "tests/test_health_checker.py::test_a_dropped_connection_warns_once_then_recovers_with_a_new_one",
            "tests/test_health_checker.py::test_an_unusable_sqlite_file_is_a_database_error_not_a_missing_schema",
            "tests/test_hosts.py",  # several hosts, read-only servers (not its gunicorn test)
            "-m",
            "not serial",
        ),
        90,
    ),
    "config": Module(
        "service/config.py",
        ("tests/test_config.py", "tests/test_auth_settings.py", "-k", "not stops_the"),
        60,
    ),
    "health/checker": Module(
        "service/health/checker.py",
        (
            "tests/test_health_checker.py",
            "tests/test_hosts.py::test_a_read_only_server_fails_readiness_at_once_with_a_reason",
            "tests/test_hosts.py::test_a_session_that_turns_out_read_only_fails_the_check_and_is_dropped",
        ),
        60,
    ),
    "auth/credentials": Module("service/auth/credentials.py", ("tests/test_auth.py",), 90),
    "auth/jwks": Module("service/auth/jwks.py", ("tests/test_auth.py",), 90),
    "auth": Module("service/auth/__init__.py", ("tests/test_auth.py",), 90),
    "auth/sessions": Module("service/auth/sessions.py", ("tests/test_auth.py",), 90),
    "auth/caller": Module("service/auth/caller.py", ("tests/test_auth.py",), 90),
    "health": Module(
        "service/health/__init__.py",  # the probe responder: routes, methods, headers, metrics
        (
            "tests/test_app.py",
            "tests/test_health_endpoints.py",
            "tests/test_metrics.py",
            "tests/test_security.py",
        ),
        90,
    ),
    "health/report": Module(
        "service/health/report.py",
        ("tests/test_health_verdict.py",),
        60,
    ),
    "deadlines": Module(
        "service/deadlines.py",
        (
            "tests/test_deadlines.py",
            "tests/test_hosts.py::test_no_time_left_means_no_host_is_tried",
            "tests/test_hosts.py::test_the_whole_connect_stays_within_db_connect_timeout",
        ),
        60,
    ),
    "health/monitor": Module(
        "service/health/monitor.py",
        ("tests/test_health_checker.py", "tests/test_security.py"),
        60,
    ),
    "errors": Module("service/errors.py", ("tests/test_errors.py",), 60),
    "security": Module("service/security.py", ("tests/test_security.py",), 60),
}

COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "instance", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".mutation",
)  # fmt: skip


def config_text(name: str, module: Module) -> str:
    tests = shlex.join(module.tests)
    return (
        "[cosmic-ray]\n"
        f'module-path = "{module.path}"\n'
        f"timeout = {module.timeout_s}\n"
        "excluded-modules = []\n"
        f'test-command = "{sys.executable} {PYTEST} {tests}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def sessions(name: str) -> list[Path]:
    slug = name.replace("/", "_")
    return sorted(OUT.glob(f"{slug}.sqlite")) + sorted(OUT.glob(f"{slug}.*.sqlite"))


def run_module(job: tuple[str, int], lane: Path, env: dict[str, str]) -> None:
    """init, skip what is not an operator, baseline, exec: one session file per module (shard)."""
    name, shard = job
    module = MODULES[name]
    slug = name.replace("/", "_") + (f".{shard}" if module.shards > 1 else "")
    config, session = OUT / f"{slug}.toml", OUT / f"{slug}.sqlite"
    config.write_text(config_text(name, module))
    session.unlink(missing_ok=True)
    tool = [sys.executable, "-m", "cosmic_ray.cli"]
    started = time.monotonic()

    log = OUT / f"{slug}.log"  # what cosmic-ray says, a failing baseline's output included
    log.unlink(missing_ok=True)

    def run(step: list[str]) -> None:
        with log.open("a") as output:
            subprocess.run(step, cwd=lane, env=env, check=True, stdout=output, stderr=output)

    run([*tool, "init", str(config), str(session)])
    run([sys.executable, str(ROOT / "mutation" / "not_operators.py"), str(session)])
    if module.shards > 1:
        with use_db(str(session)) as db:  # job ids are random: split by where the mutant is
            items = sorted(db.pending_work_items, key=lambda item: _where(item.mutations[0]))
            for index, item in enumerate(items):
                if index % module.shards != shard:
                    db.set_result(item.job_id, WorkResult(WorkerOutcome.SKIPPED, "other shard"))
    run([*tool, "baseline", str(config)])
    run([*tool, "exec", str(config), str(session)])
    print(f"{slug}: done in {time.monotonic() - started:.0f} s", flush=True)


def _where(mutation: MutationSpec) -> tuple[int, int, str, int]:
    return (*mutation.start_pos, mutation.operator_name, mutation.occurrence)


def summarize(name: str) -> tuple[int, int, int, list[str]]:
    """(mutants tested, killed, skipped, survivors as 'line: operator'), over the shards."""
    tested = killed = skipped = 0
    survivors = []
    for session in sessions(name):
        with use_db(str(session), WorkDB.Mode.open) as db:
            results = list(db.completed_work_items)
        for item, result in results:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                skipped += 1
                continue
            tested += 1
            if result.test_outcome != TestOutcome.SURVIVED:
                killed += 1
                continue
            added = [d for d in (result.diff or "").splitlines() if d.startswith("+")]
            change = next((d[1:].strip() for d in added if not d.startswith("+++")), "")
            for mutation in item.mutations:
                operator = mutation.operator_name.removeprefix("core/")
                survivors.append(f"{mutation.start_pos[0]}: {operator}: {change}")
    return tested, killed, skipped, survivors


def main(names: list[str]) -> int:
    names = names or list(MODULES)
    OUT.mkdir(exist_ok=True)
    jobs = max(1, int(os.environ.get("MUTATION_JOBS", "3")))  # tests mostly wait: 3 on 2 cores
    work: queue.Queue[tuple[str, int]] = queue.Queue()
    for name in names:
        for shard in range(MODULES[name].shards):
            work.put((name, shard))
    failures: list[str] = []
    environments: dict[int, dict[str, str]] = {}
    started = time.monotonic()

    def lane(number: int) -> None:
        copy = OUT / f"lane-{os.getpid()}-{number}"  # a run of one module may overlap another
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(ROOT, copy, ignore=COPY_IGNORE)
        url = databases.create("svc_mutation")
        migrate(url)
        environments[number] = {**os.environ, "TEST_MIGRATED_DATABASE_URL": url}  # premigrated.py
        while True:
            try:
                job = work.get_nowait()
            except queue.Empty:
                return
            try:
                run_module(job, copy, environments[number])
            except subprocess.CalledProcessError as error:
                failures.append(f"{job}: {error}")

    # One migrated database per lane, so that no mutant pays for `flask db upgrade`.
    require_postgresql()
    databases = DatabaseFactory(ADMIN_URL)

    threads = [threading.Thread(target=lane, args=(n,)) for n in range(min(jobs, work.qsize()))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        databases.drop_all()
        for number in range(len(threads)):
            shutil.rmtree(OUT / f"lane-{os.getpid()}-{number}", ignore_errors=True)
    elapsed = time.monotonic() - started

    lines = ["| module | mutants | killed | survived | score |", "|---|---|---|---|---|"]
    below = []
    details = []
    for name in MODULES:  # every module with a session, so that a rerun of one updates the table
        if not sessions(name):
            continue
        tested, killed, _, survivors = summarize(name)
        score = 100.0 * killed / tested if tested else 100.0
        lines.append(f"| {name} | {tested} | {killed} | {tested - killed} | {score:.1f} % |")
        if score < THRESHOLD:
            below.append(name)
        details += [f"{name}:{survivor}" for survivor in survivors]
    report = "\n".join([*lines, "", f"{elapsed / 60:.1f} minutes", "", "survivors:", *details])
    (OUT / "report.md").write_text(report + "\n")
    print(report)
    for failure in failures:
        print("error:", failure, file=sys.stderr)
    return 1 if below or failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
