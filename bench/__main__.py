"""`python -m bench [--smoke] [--duration S] [--rounds N] [--out FILE] [--plot FILE] [--profile]
[--gthread REV] [--failover | --failover-only]`.

Runs every measurement of docs/performance.md against servers and a database it starts itself,
for two designs side by side (gthread, checked out from git history, and this tree's; see
bench/designs.py), prints the tables, and writes the JSON (and the fault-timeline plot). Exit
status: 0 when the run completed (whether or not the targets were met: they are reported, not
enforced), 2 when wrk or matplotlib is missing, 1 on any other failure.
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

from bench import auth as who_is_calling
from bench import cluster as db
from bench import designs, failover, faults, machine, plot, profile, report, scenarios
from bench.designs import Design
from bench.load import WrkMissing, WrkResult, run_wrk, wrk_path
from bench.servers import (
    FLOOR_APP,
    Gunicorn,
    server_memory,
    service_environment,
    start_gunicorn,
    wait_serving,
)
from harness.pgcluster import TemporaryCluster
from service.config import load_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
DOCS_PLOT = PROJECT_ROOT / "docs" / "performance.png"


@dataclass(frozen=True)
class Plan:
    """How long and how hard each part runs."""

    mode: str
    rounds: int  # rounds of /api/health over every server (each design's service and floor)
    duration_s: float  # one wrk run
    connections: int  # wrk connections for the throughput runs
    warmup_s: float
    db_test_rounds: int
    db_test_duration_s: float
    db_test_loaded_connections: int
    scenario_s: float  # each scenario of bench/scenarios.py, per design
    phases: dict[str, float] = field(default_factory=dict)  # fault timeline, seconds per phase


FULL = Plan(
    mode="full",
    rounds=4,
    duration_s=8,
    connections=16,
    warmup_s=2,
    db_test_rounds=3,
    db_test_duration_s=5,
    db_test_loaded_connections=8,
    scenario_s=15,
    phases={"healthy": 5, "frozen": 10, "thawed": 6, "stopped": 10, "restarted": 6},
)
# Short but complete: every section is produced; phases still outlast HEALTH_STALE_AFTER_S + 1 s.
SMOKE = Plan(
    mode="smoke",
    rounds=1,
    duration_s=1,
    connections=16,
    warmup_s=0,
    db_test_rounds=1,
    db_test_duration_s=1,
    db_test_loaded_connections=8,
    scenario_s=2,
    phases={"healthy": 1, "frozen": 4.5, "thawed": 2, "stopped": 4.5, "restarted": 2},
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
    if args.failover_only:
        return _failover_only(plan, out)
    results = run(
        plan, out.with_suffix(""), profile_storm=args.profile, gthread_revision=args.gthread
    )
    if plan.mode == "full" or args.failover:  # recovery per failover shape (issue 17)
        timing = failover.FULL if plan.mode == "full" else failover.SMOKE
        results["failover"] = failover.run(timing, secrets.token_hex(16), log=_say)
    out.parent.mkdir(parents=True, exist_ok=True)
    results["meta"]["plot"] = str(
        plot.plot_timeline(results["fault_timeline"], results["meta"]["settings"], plot_path)
    )
    designs_plot = plot_path.with_name(f"{plot_path.stem}-designs{plot_path.suffix}")
    results["meta"]["designs_plot"] = str(plot.plot_scenarios(results["scenarios"], designs_plot))
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(report.render(results))
    print(who_is_calling.render(results["who_is_calling"]))
    if "failover" in results:
        print(failover.render(results["failover"]))
    print(f"\nresults: {out}\nplots:   {plot_path}, {designs_plot}")
    return 0


def _failover_only(plan: Plan, out: Path) -> int:
    """Only the failover drill: its section of the report and its JSON."""
    timing = failover.FULL if plan.mode == "full" else failover.SMOKE
    results = {"failover": failover.run(timing, secrets.token_hex(16), log=_say)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(failover.render(results["failover"]))
    print(f"\nresults: {out}")
    return 0


def run(
    plan: Plan,
    artefacts: Path,
    *,
    profile_storm: bool = False,
    gthread_revision: str = designs.GTHREAD_REVISION,
) -> dict[str, Any]:
    """Check out the gthread design, start everything, measure, stop everything; return results."""
    started = time.monotonic()
    scenarios.raise_open_files_limit()
    with designs.gthread(gthread_revision, _say) as gthread:
        chosen = [d for d in (gthread, designs.this_tree()) if d is not None]
        results = _run(plan, chosen, artefacts, profile_storm)
    results["meta"]["gthread_revision"] = gthread_revision
    results["meta"]["gthread_skipped"] = gthread is None
    results["targets"] = report.targets(results)
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def _run(plan: Plan, chosen: list[Design], artefacts: Path, profile_storm: bool) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    ops_token = secrets.token_hex(16)
    auth = {"Authorization": f"Bearer {ops_token}"}
    results: dict[str, Any] = {}
    cluster = db.start_cluster()
    servers: dict[str, Gunicorn] = {}
    new = chosen[-1]
    try:
        _say(f"PostgreSQL {db.server_version(cluster)} on port {cluster.port}")
        base, envs = db.clean_environment(), {}
        for design in chosen:
            envs[design.key] = (
                service_environment(base, db.create_database(cluster, design.key), ops_token)
                | who_is_calling.environment()
            )
            db.migrate(envs[design.key], design.root)
        for design in chosen:
            env, root = envs[design.key], design.root
            servers[design.service] = start_gunicorn(design.service, env, log_dir, root=root)
            servers[design.floor] = start_gunicorn(design.floor, env, log_dir, FLOOR_APP, root)
        for server in servers.values():
            wait_serving(server)
        settings = load_settings(instance_path=PROJECT_ROOT / "instance", environ=envs[new.key])
        workers = len(servers[new.service].worker_pids())
        _say(f"{len(servers)} servers: {', '.join(servers)}; {workers} workers each")
        results["meta"] = {
            "mode": plan.mode,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "loadavg_at_start": machine.loadavg(),
            "plan": plan.__dict__,
            "wrk_duration_s": plan.duration_s,
            "wrk_connections": plan.connections,
            "machine": machine.describe(db.server_version(cluster)),
            "designs": {
                d.key: {
                    "label": d.label,
                    "revision": d.revision,
                    "gunicorn": {
                        **machine.gunicorn_settings(envs[d.key], d.root),
                        "workers_running": len(servers[d.service].worker_pids()),
                    },
                }
                for d in chosen
            },
            "settings": {
                "APP_ENV": settings.app_env,
                "HEALTH_CHECK_INTERVAL_S": settings.health_check_interval_s,
                "HEALTH_STALE_AFTER_S": settings.health_stale_after_s,
                "HEALTH_CHECK_TIMEOUT_S": settings.health_check_timeout_s,
                "DB_DEADLINE_S": settings.db_deadline_s,
                "DB_POOL_SIZE": settings.db_pool_size,
                "DB_MAX_OVERFLOW": settings.db_max_overflow,
                "DB_POOL_TIMEOUT_S": settings.db_pool_timeout_s,
                "REQUEST_HEAD_TIMEOUT_S": settings.request_head_timeout_s,
            },
        }
        results["health_throughput"], results["probe_storm"] = _health_throughput(
            plan, cluster, chosen, servers, workers, settings.health_check_interval_s
        )
        results["db_test"] = _db_test(plan, chosen, servers, auth)
        results["who_is_calling"] = who_is_calling.measure(
            servers[new.service], envs[new.key]["DATABASE_URL"], auth,
            rounds=plan.db_test_rounds, duration_s=plan.db_test_duration_s,
            connections=plan.db_test_loaded_connections, say=_say,
        )  # fmt: skip
        results["memory"] = report.summarise_memory(
            {name: server_memory(server) for name, server in servers.items()}
        )
        if profile_storm:
            pair = [servers[new.service], servers[new.floor]]
            results["profile"] = _profile(plan, pair, artefacts)
        results["scenarios"] = _scenarios(
            plan, cluster, chosen, servers, auth, settings.db_deadline_s
        )
        _say(f"fault timeline of {new.service}: healthy, frozen, thawed, stopped, restarted")
        results["fault_timeline"] = faults.run_timeline(
            cluster, servers[new.service].base_url, auth, plan.phases, log=_say
        )
    except BaseException:
        for server in servers.values():
            print(f"--- {server.name} log tail ---\n{server.error_tail()}", file=sys.stderr)
        raise
    finally:
        for server in servers.values():
            server.stop()
        cluster.cleanup()
        shutil.rmtree(log_dir, ignore_errors=True)
    results["meta"]["loadavg_at_end"] = machine.loadavg()
    return results


def _health_throughput(
    plan: Plan,
    cluster: TemporaryCluster,
    chosen: list[Design],
    servers: dict[str, Gunicorn],
    workers: int,
    interval_s: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """/api/health of every server (each design's service and floor) in rounds, the order
    reversed each round so a linear drift of the machine cancels.

    Each design's database transactions are counted around every run: during its service's runs
    they are what the probe storm costs; during the other servers' runs it idles (checkers only).
    """
    names = [name for d in chosen for name in (d.service, d.floor)]
    for name in names if plan.warmup_s else ():
        run_wrk(f"{servers[name].base_url}/api/health", plan.warmup_s, plan.connections)
    rounds: list[dict[str, Any]] = []
    storm: dict[str, list[dict[str, Any]]] = {d.key: [] for d in chosen}
    idle: dict[str, list[dict[str, Any]]] = {d.key: [] for d in chosen}
    for number in range(1, plan.rounds + 1):
        order = names if number % 2 else names[::-1]
        measured: dict[str, Any] = {}
        for name in order:
            server = servers[name]
            boots = {d.key: servers[d.service].worker_boots() for d in chosen}
            xacts = {d.key: db.transactions(cluster, d.key) for d in chosen}
            began, cpu, spread = time.monotonic(), server.cpu_seconds(), []
            own_boots = server.worker_boots()
            result = run_wrk(
                f"{server.base_url}/api/health",
                plan.duration_s,
                plan.connections,
                midway=lambda server=server, spread=spread: spread.extend(
                    server.connections_per_worker()
                ),
            )
            cpu = server.cpu_seconds() - cpu
            for d in chosen:
                window = {
                    "server": name,
                    "seconds": round(time.monotonic() - began, 3),
                    "xacts": db.transactions(cluster, d.key) - xacts[d.key],
                    "requests": result.requests,
                    "worker_boots": servers[d.service].worker_boots() - boots[d.key],
                }
                (storm if name == d.service else idle)[d.key].append(window)
            measured[name] = {
                **result.to_dict(),
                "cpu_s": round(cpu, 2),
                "requests_per_cpu_s": round(result.requests / cpu, 1) if cpu else None,
                "connections_per_worker": spread,
                "worker_boots": server.worker_boots() - own_boots,
            }
        rounds.append({"round": number, "order": order, "runs": measured})
        _say(f"round {number}: " + ", ".join(f"{n} {measured[n]['rps']:.0f} rps" for n in names))
    keys = [d.key for d in chosen]
    health = {"rounds": rounds, "summary": report.summarise_health(rounds, keys)}
    storms = {
        d.key: report.summarise_storm(storm[d.key], idle[d.key], workers, interval_s)
        for d in chosen
    }
    return health, storms


def _db_test(
    plan: Plan, chosen: list[Design], servers: dict[str, Gunicorn], auth: dict[str, str]
) -> dict[str, Any]:
    """Per design and round: latency with one connection (no queueing), then throughput with
    several; the designs' order is reversed each round."""
    url = {d.key: f"{servers[d.service].base_url}/api/db/test" for d in chosen}
    for d in chosen if plan.warmup_s else ():
        run_wrk(url[d.key], plan.warmup_s, 1, headers=auth)
    latency: dict[str, list[dict[str, Any]]] = {d.key: [] for d in chosen}
    loaded: dict[str, list[dict[str, Any]]] = {d.key: [] for d in chosen}
    for number in range(1, plan.db_test_rounds + 1):
        for d in chosen if number % 2 else chosen[::-1]:
            server = servers[d.service]
            one = run_wrk(url[d.key], plan.db_test_duration_s, 1, headers=auth)
            cpu = server.cpu_seconds()
            many = run_wrk(
                url[d.key], plan.db_test_duration_s, plan.db_test_loaded_connections, headers=auth
            )
            cpu = server.cpu_seconds() - cpu
            latency[d.key].append(one.to_dict())
            loaded[d.key].append(
                {**many.to_dict(), "cpu_s": round(cpu, 2), "cpu_us_per_request": _per(cpu, many)}
            )
            _say(
                f"/api/db/test {d.key} round {number}: p50 {one.p50_ms:.2f} ms (1 connection), "
                f"{many.rps:.0f} rps ({plan.db_test_loaded_connections} connections)"
            )
    return report.summarise_db_tests(latency, loaded)


def _per(cpu_s: float, result: WrkResult) -> float | None:
    """The server's CPU microseconds per request of a wrk run."""
    return round(cpu_s * 1e6 / result.requests, 1) if result.requests else None


def _scenarios(
    plan: Plan,
    cluster: TemporaryCluster,
    chosen: list[Design],
    servers: dict[str, Gunicorn],
    auth: dict[str, str],
    deadline_s: float,
) -> dict[str, Any]:
    """Each scenario against each design's service; the designs' order alternates."""
    result: dict[str, Any] = {}
    for index, name in enumerate(scenarios.SCENARIOS):
        _say(f"scenario {name}: {plan.scenario_s:g} s per design")
        result[name] = {}
        for d in chosen if index % 2 == 0 else chosen[::-1]:
            result[name][d.key] = scenarios.run_scenario(
                name, servers[d.service], cluster, auth, plan.scenario_s, deadline_s, _say
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


_STARTED = time.monotonic()


def _say(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:5.1f} s] {message}", flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="short run for CI (< 60 s)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, help="rounds of /api/health over every server")
    parser.add_argument("--out", type=Path, help="JSON results file (default bench/results/)")
    parser.add_argument(
        "--plot",
        type=Path,
        help="plot file (default: docs/performance.png for a full run, beside --out for smoke)",
    )
    parser.add_argument("--profile", action="store_true", help="add a py-spy profiled storm")
    parser.add_argument(
        "--failover", action="store_true", help="add the failover drill to a smoke run"
    )
    parser.add_argument(
        "--failover-only", action="store_true", help="run only the failover drill (about 6 min)"
    )
    parser.add_argument(
        "--gthread",
        default=designs.GTHREAD_REVISION,
        metavar="REV",
        help=f"git revision of the gthread design (default {designs.GTHREAD_REVISION})",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
