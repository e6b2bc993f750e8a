"""`python -m bench [--smoke] [--duration S] [--rounds N] [--out FILE] [--plot FILE] [--profile]`.

Runs every measurement of docs/performance.md against servers and a database it starts itself,
prints the table, and writes the JSON (and the fault-timeline plot). Exit status: 0 when the run
completed (whether or not the targets were met: they are reported, not enforced), 2 when wrk or
matplotlib is missing, 1 on any other failure.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cluster as db
from bench import faults, machine, plot, profile, report
from bench.load import WrkMissing, run_wrk, wrk_path
from bench.servers import FLOOR_APP, Gunicorn, server_memory, service_environment, start_gunicorn
from service.config import load_settings
from tests.support.pgcluster import TemporaryCluster

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
DOCS_PLOT = PROJECT_ROOT / "docs" / "performance.png"


@dataclass(frozen=True)
class Plan:
    """How long and how hard each part runs."""

    mode: str
    rounds: int  # A/B rounds of /api/health vs the floor
    duration_s: float  # one wrk run
    connections: int  # wrk connections for the throughput runs
    warmup_s: float
    db_test_rounds: int
    db_test_duration_s: float
    db_test_loaded_connections: int
    phases: dict[str, float] = field(default_factory=dict)  # fault timeline, seconds per phase


FULL = Plan(
    mode="full",
    rounds=6,
    duration_s=10,
    connections=16,
    warmup_s=2,
    db_test_rounds=3,
    db_test_duration_s=5,
    db_test_loaded_connections=8,
    phases={"healthy": 5, "frozen": 10, "thawed": 6, "stopped": 10, "restarted": 6},
)
# Short but complete: every section is produced; phases still outlast HEALTH_STALE_AFTER_S + 1 s.
SMOKE = Plan(
    mode="smoke",
    rounds=2,
    duration_s=2,
    connections=16,
    warmup_s=1,
    db_test_rounds=1,
    db_test_duration_s=2,
    db_test_loaded_connections=8,
    phases={"healthy": 1, "frozen": 5, "thawed": 2.5, "stopped": 5, "restarted": 2.5},
)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.duration is not None:
        plan = replace(plan, duration_s=args.duration, db_test_duration_s=args.duration)
    if args.rounds is not None:
        plan = replace(plan, rounds=args.rounds)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"{plan.mode}-{stamp}.json"
    plot_path = args.plot or (DOCS_PLOT if plan.mode == "full" else out.with_suffix(".png"))
    try:
        wrk_path()
        plot.check_available()
    except (WrkMissing, RuntimeError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    results = run(plan, out.with_suffix(""), profile_storm=args.profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    results["meta"]["plot"] = str(
        plot.plot_timeline(results["fault_timeline"], results["meta"]["settings"], plot_path)
    )
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(report.render(results))
    print(f"\nresults: {out}\nplot:    {plot_path}")
    return 0


def run(plan: Plan, artefacts: Path, *, profile_storm: bool = False) -> dict[str, Any]:
    """Start everything, measure, stop everything; return the results document."""
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    ops_token = secrets.token_hex(16)
    auth = {"Authorization": f"Bearer {ops_token}"}
    results: dict[str, Any] = {}
    cluster = db.start_cluster()
    servers: list[Gunicorn] = []
    try:
        _say(f"PostgreSQL {db.server_version(cluster)} on port {cluster.port}")
        env = service_environment(db.clean_environment(), db.create_database(cluster), ops_token)
        db.migrate(env)
        settings = load_settings(instance_path=PROJECT_ROOT / "instance", environ=env)
        service = start_gunicorn("service", env, log_dir)
        servers.append(service)
        floor = start_gunicorn("floor", env, log_dir, FLOOR_APP)
        servers.append(floor)
        workers = len(service.worker_pids())
        _say(f"service {service.base_url} and floor {floor.base_url}: {workers} workers each")
        results["meta"] = {
            "mode": plan.mode,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "loadavg_at_start": machine.loadavg(),
            "plan": plan.__dict__,
            "wrk_duration_s": plan.duration_s,
            "wrk_connections": plan.connections,
            "machine": machine.describe(db.server_version(cluster)),
            "gunicorn": {**machine.gunicorn_settings(env), "workers_running": workers},
            "settings": {
                "APP_ENV": settings.app_env,
                "HEALTH_CHECK_INTERVAL_S": settings.health_check_interval_s,
                "HEALTH_STALE_AFTER_S": settings.health_stale_after_s,
                "HEALTH_CHECK_TIMEOUT_S": settings.health_check_timeout_s,
                "DB_DEADLINE_S": settings.db_deadline_s,
                "DB_POOL_SIZE": settings.db_pool_size,
                "DB_MAX_OVERFLOW": settings.db_max_overflow,
            },
        }
        results["health_throughput"], results["probe_storm"] = _health_vs_floor(
            plan, cluster, service, floor, workers, settings.health_check_interval_s
        )
        results["db_test"] = _db_test(plan, service, auth)
        results["memory"] = report.summarise_memory(
            {"service": server_memory(service), "floor": server_memory(floor)}
        )
        if profile_storm:
            results["profile"] = _profile(plan, [service, floor], artefacts)
        _say("fault timeline: healthy -> frozen -> thawed -> stopped -> restarted")
        results["fault_timeline"] = faults.run_timeline(
            cluster, service.base_url, auth, plan.phases, log=_say
        )
    except BaseException:
        for server in servers:
            print(f"--- {server.name} log tail ---\n{server.error_tail()}", file=sys.stderr)
        raise
    finally:
        for server in servers:
            server.stop()
        cluster.cleanup()
        shutil.rmtree(log_dir, ignore_errors=True)
    results["meta"]["loadavg_at_end"] = machine.loadavg()
    results["targets"] = report.targets(results)
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def _health_vs_floor(
    plan: Plan,
    cluster: TemporaryCluster,
    service: Gunicorn,
    floor: Gunicorn,
    workers: int,
    interval_s: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A/B rounds, the order swapped each round so a linear drift of the machine cancels.

    The service database's transactions are counted around every run: during the service's runs
    they are what the probe storm costs; during the floor's the service idles (its checkers only).
    """
    for server in (service, floor):
        run_wrk(f"{server.base_url}/api/health", plan.warmup_s, plan.connections)
    rounds, storm, idle = [], [], []
    for number in range(1, plan.rounds + 1):
        order = (service, floor) if number % 2 else (floor, service)
        measured: dict[str, Any] = {}
        for server in order:
            boots, xacts, began = service.worker_boots(), db.transactions(cluster), time.monotonic()
            cpu, spread, own_boots = server.cpu_seconds(), [], server.worker_boots()
            result = run_wrk(
                f"{server.base_url}/api/health",
                plan.duration_s,
                plan.connections,
                midway=lambda server=server, spread=spread: spread.extend(
                    server.connections_per_worker()
                ),
            )
            cpu = server.cpu_seconds() - cpu
            window = {
                "server": server.name,
                "seconds": round(time.monotonic() - began, 3),
                "xacts": db.transactions(cluster) - xacts,
                "requests": result.requests,
                "worker_boots": service.worker_boots() - boots,
            }
            (storm if server is service else idle).append(window)
            measured[server.name] = {
                **result.to_dict(),
                "cpu_s": round(cpu, 2),
                "requests_per_cpu_s": round(result.requests / cpu, 1) if cpu else None,
                "connections_per_worker": spread,
                "worker_boots": server.worker_boots() - own_boots,
            }
        service_run, floor_run = measured["service"], measured["floor"]
        ratio = service_run["rps"] / floor_run["rps"]
        cpu_ratio = service_run["requests_per_cpu_s"] / floor_run["requests_per_cpu_s"]
        rounds.append(
            {
                "round": number,
                "order": [s.name for s in order],
                **measured,
                "ratio": round(ratio, 3),
                "cpu_ratio": round(cpu_ratio, 3),
            }
        )
        _say(
            f"round {number}: service {service_run['rps']:.0f} rps "
            f"{service_run['connections_per_worker']}, floor {floor_run['rps']:.0f} rps "
            f"{floor_run['connections_per_worker']}; ratio {ratio:.3f}, "
            f"per CPU second {cpu_ratio:.3f}"
        )
    health = {"rounds": rounds, "summary": report.summarise_health(rounds)}
    return health, report.summarise_storm(storm, idle, workers, interval_s)


def _db_test(plan: Plan, service: Gunicorn, auth: dict[str, str]) -> dict[str, Any]:
    """Latency with one connection (no queueing), then throughput with several."""
    url = f"{service.base_url}/api/db/test"
    run_wrk(url, plan.warmup_s, 1, headers=auth)
    latency = [
        run_wrk(url, plan.db_test_duration_s, 1, headers=auth).to_dict()
        for _ in range(plan.db_test_rounds)
    ]
    loaded = [
        run_wrk(
            url, plan.db_test_duration_s, plan.db_test_loaded_connections, headers=auth
        ).to_dict()
    ]
    result = {
        "latency": report.summarise_db_test(latency),
        "loaded": report.summarise_db_test(loaded),
    }
    _say(
        f"/api/db/test: p50 {result['latency']['p50_ms']:.2f} ms, "
        f"p99 {result['latency']['p99_ms']:.2f} ms (1 connection)"
    )
    return result


def _profile(plan: Plan, servers: list[Gunicorn], artefacts: Path) -> dict[str, Any]:
    """An extra storm per server with py-spy attached (sampling slows the workers, so these
    runs are not measured); the service's and the floor's profiles can then be compared."""
    artefacts.parent.mkdir(parents=True, exist_ok=True)
    result = {}
    for server in servers:
        raw = artefacts.with_name(f"{artefacts.name}-profile-{server.name}.txt")
        spy = profile.start_py_spy(server.master_pid, plan.duration_s, raw)
        time.sleep(1)  # py-spy attaches
        run_wrk(f"{server.base_url}/api/health", plan.duration_s, plan.connections)
        _, errors = spy.communicate(timeout=plan.duration_s + 60)
        if spy.returncode != 0 or not raw.exists():
            message = errors.decode(errors="replace")
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {message}")
        result[server.name] = {"raw_stacks": str(raw), **profile.summarise(raw)}
        _say(f"profile of the {server.name}: {result[server.name]['request_samples']} samples")
    return result


def _say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="short run for CI (< 60 s)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, help="A/B rounds of /api/health vs the floor")
    parser.add_argument("--out", type=Path, help="JSON results file (default bench/results/)")
    parser.add_argument(
        "--plot",
        type=Path,
        help="plot file (default: docs/performance.png for a full run, beside --out for smoke)",
    )
    parser.add_argument("--profile", action="store_true", help="add a py-spy profiled storm")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
