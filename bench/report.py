"""Turns raw measurements into the summary, the targets' verdicts and a readable table."""

from __future__ import annotations

import statistics
from typing import Any

HEALTH_RATIO_TARGET = 0.95
QUERIES_PER_INTERVAL_PER_WORKER_TARGET = 1.0
# pg_stat_database is fed by each backend at most once a second, so a window's count is off by up
# to one check per worker at each end: allow that much, no more.
STATS_GRANULARITY = 0.05
DB_TEST_P50_TARGET_MS = 5.0
FROZEN_HEALTH_LATENCY_TARGET_MS = 1000.0
RECOVERY_TARGET_S = 2.0


def summarise_health(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds: each round pairs the two servers measured back to back."""
    ratios = [r["ratio"] for r in rounds]
    cpu_ratios = [r["cpu_ratio"] for r in rounds]
    service_per_cpu = sum(r["service"]["requests"] for r in rounds) / sum(
        r["service"]["cpu_s"] for r in rounds
    )
    floor_per_cpu = sum(r["floor"]["requests"] for r in rounds) / sum(
        r["floor"]["cpu_s"] for r in rounds
    )

    def median(server: str, key: str) -> float:
        return round(statistics.median(r[server][key] for r in rounds), 3)

    return {
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
        "cpu_ratio_overall": round(service_per_cpu / floor_per_cpu, 3),
        "service_requests_per_cpu_s": round(service_per_cpu, 1),
        "floor_requests_per_cpu_s": round(floor_per_cpu, 1),
        "service_cpu_us_per_request": round(1e6 / service_per_cpu, 1),
        "floor_cpu_us_per_request": round(1e6 / floor_per_cpu, 1),
        "service": {k: median("service", k) for k in ("rps", "p50_ms", "p99_ms")},
        "floor": {k: median("floor", k) for k in ("rps", "p50_ms", "p99_ms")},
        "non_2xx": sum(r[s]["non_2xx"] for r in rounds for s in ("service", "floor")),
        "socket_errors": sum(r[s]["socket_errors"] for r in rounds for s in ("service", "floor")),
    }


def summarise_storm(
    windows: list[dict[str, Any]], idle: list[dict[str, Any]], workers: int, interval_s: float
) -> dict[str, Any]:
    """Transactions per second on the service database under the storm, and while idle."""

    def rate(items: list[dict[str, Any]]) -> float:
        seconds = sum(w["seconds"] for w in items)
        return round(sum(w["xacts"] for w in items) / seconds, 3) if seconds else 0.0

    storm = rate(windows)
    expected = workers / interval_s
    return {
        "xacts": sum(w["xacts"] for w in windows),
        "seconds": round(sum(w["seconds"] for w in windows), 3),
        "xact_per_s": storm,
        "idle_xact_per_s": rate(idle),
        "expected_per_s": round(expected, 3),
        "workers": workers,
        "interval_s": interval_s,
        "queries_per_interval_per_worker": round(storm / expected, 3) if expected else None,
        "health_requests": sum(w["requests"] for w in windows),
        "worker_boots_during_storm": sum(w["worker_boots"] for w in windows),
        "windows": windows,
    }


def summarise_db_test(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "connections": runs[0]["connections"],
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "runs": runs,
    }


def summarise_memory(memory: dict[str, Any]) -> dict[str, Any]:
    summary = {}
    for name, server in memory.items():
        workers = server["workers"]
        summary[name] = {
            "worker_count": len(workers),
            "worker_rss_mib": _mib(statistics.mean(w["rss_kib"] for w in workers)),
            "worker_pss_mib": _mib(statistics.mean(w["pss_kib"] for w in workers)),
            "worker_uss_mib": _mib(statistics.mean(w["uss_kib"] for w in workers)),
            "total_pss_mib": _mib(server["master"]["pss_kib"] + sum(w["pss_kib"] for w in workers)),
            **server,
        }
    return summary


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it is met."""
    settings = results["meta"]["settings"]
    detect_limit = settings["HEALTH_STALE_AFTER_S"] + 1.0
    health = results["health_throughput"]["summary"]
    storm = results["probe_storm"]
    db_test = results["db_test"]["latency"]
    faults = results["fault_timeline"]["analysis"]["faults"]
    frozen_health = results["fault_timeline"]["analysis"]["per_phase"]["/api/health"]["frozen"]
    rows = [
        _row(
            "/api/health throughput / floor",
            f">= {HEALTH_RATIO_TARGET}",
            health["ratio_median"],
            health["ratio_median"] >= HEALTH_RATIO_TARGET,
        ),
        _row(
            "DB queries per check interval per worker (storm)",
            f"<= {QUERIES_PER_INTERVAL_PER_WORKER_TARGET:g}",
            storm["queries_per_interval_per_worker"],
            storm["queries_per_interval_per_worker"] is not None
            and storm["queries_per_interval_per_worker"]
            <= QUERIES_PER_INTERVAL_PER_WORKER_TARGET + STATS_GRANULARITY,
        ),
        _row(
            "/api/db/test p50 ms (1 connection)",
            f"< {DB_TEST_P50_TARGET_MS:g}",
            db_test["p50_ms"],
            db_test["p50_ms"] < DB_TEST_P50_TARGET_MS,
        ),
        _row(
            "frozen: slowest /api/health answer ms",
            f"< {FROZEN_HEALTH_LATENCY_TARGET_MS:g}",
            frozen_health["max_ms"],
            frozen_health["max_ms"] is not None
            and frozen_health["max_ms"] < FROZEN_HEALTH_LATENCY_TARGET_MS
            and frozen_health["statuses"].get("0", 0) == 0,
        ),
    ]
    for fault, label in (("frozen", "thaw"), ("stopped", "restart")):
        detect = faults["/api/health"][fault]["detect_s"]
        rows.append(
            _row(
                f"{fault}: /api/health detects in s",
                f"<= {detect_limit:g}",
                detect,
                detect is not None and detect <= detect_limit,
            )
        )
        for endpoint in ("/api/health", "/api/db/test"):
            recover = faults[endpoint][fault]["recover_s"]
            rows.append(
                _row(
                    f"{label}: {endpoint} recovers in s",
                    f"<= {RECOVERY_TARGET_S:g}",
                    recover,
                    recover is not None and recover <= RECOVERY_TARGET_S,
                )
            )
    return rows


def render(results: dict[str, Any]) -> str:
    """The human-readable report printed at the end of a run."""
    meta = results["meta"]
    health = results["health_throughput"]
    storm = results["probe_storm"]
    lines = [
        f"bench {meta['mode']} run, {meta['started_at']}: {meta['machine']['cpu_model']}, "
        f"{meta['machine']['nproc']} CPUs; {meta['gunicorn']['workers']} workers x "
        f"{meta['gunicorn']['threads']} threads ({meta['gunicorn']['worker_class']})",
        "",
        f"1. /api/health vs floor: {len(health['rounds'])} rounds x {meta['wrk_duration_s']:g} s, "
        f"{meta['wrk_connections']} connections",
        _table(
            [
                "round",
                "service rps",
                "floor rps",
                "ratio",
                "service p50/p99 ms",
                "floor p50/p99 ms",
            ],
            [
                [
                    str(r["round"]),
                    f"{r['service']['rps']:.0f}",
                    f"{r['floor']['rps']:.0f}",
                    f"{r['ratio']:.3f}",
                    f"{r['service']['p50_ms']:.2f} / {r['service']['p99_ms']:.2f}",
                    f"{r['floor']['p50_ms']:.2f} / {r['floor']['p99_ms']:.2f}",
                ]
                for r in health["rounds"]
            ],
        ),
        f"   median ratio {health['summary']['ratio_median']:.3f} "
        f"(min {health['summary']['ratio_min']:.3f}, max {health['summary']['ratio_max']:.3f})",
        "",
        f"2. probe storm: {storm['xact_per_s']:.2f} transactions/s on the service database "
        f"during {storm['health_requests']} /api/health requests "
        f"(idle: {storm['idle_xact_per_s']:.2f}/s; one per interval per worker: "
        f"{storm['expected_per_s']:.2f}/s) -> {storm['queries_per_interval_per_worker']:.2f} "
        f"per interval per worker; {storm['worker_boots_during_storm']} worker recycles",
        "",
    ]
    for key, label in (("latency", "1 connection"), ("loaded", "under load")):
        db = results["db_test"].get(key)
        if db:
            lines.append(
                f"3. /api/db/test ({label}, c={db['connections']}): p50 {db['p50_ms']:.2f} ms, "
                f"p99 {db['p99_ms']:.2f} ms, {db['rps']:.0f} rps, {db['non_2xx']} non-2xx"
            )
    lines += ["", "4. fault timeline (detect: first non-200 after the fault; recover: first 200)"]
    analysis = results["fault_timeline"]["analysis"]
    rows = []
    for endpoint, faults in analysis["faults"].items():
        for fault, values in faults.items():
            rows.append(
                [
                    endpoint,
                    fault,
                    _s(values["detect_s"]),
                    _s(values["recover_s"]),
                    _s(values["stable_s"]),
                ]
            )
    lines.append(_table(["endpoint", "fault", "detect s", "recover s", "stable s"], rows))
    rows = []
    for endpoint, phases in analysis["per_phase"].items():
        for phase, stats in phases.items():
            statuses = ", ".join(f"{k}x{v}" for k, v in sorted(stats["statuses"].items()))
            rows.append(
                [
                    endpoint,
                    phase,
                    str(stats["requests"]),
                    statuses,
                    _ms(stats["p50_ms"]),
                    _ms(stats["max_ms"]),
                ]
            )
    lines.append(_table(["endpoint", "phase", "requests", "statuses", "p50 ms", "max ms"], rows))
    lines += ["", "5. memory after load (MiB, mean per worker)"]
    lines.append(
        _table(
            ["server", "workers", "RSS", "PSS", "USS", "total PSS"],
            [
                [
                    name,
                    str(m["worker_count"]),
                    f"{m['worker_rss_mib']:.1f}",
                    f"{m['worker_pss_mib']:.1f}",
                    f"{m['worker_uss_mib']:.1f}",
                    f"{m['total_pss_mib']:.1f}",
                ]
                for name, m in results["memory"].items()
            ],
        )
    )
    lines += ["", "targets"]
    lines.append(
        _table(
            ["target", "wanted", "measured", "result"],
            [
                [t["target"], t["wanted"], str(t["measured"]), "pass" if t["pass"] else "MISS"]
                for t in results["targets"]
            ],
        )
    )
    return "\n".join(lines)


def _row(target: str, wanted: str, measured: Any, passed: bool) -> dict[str, Any]:
    return {"target": target, "wanted": wanted, "measured": measured, "pass": bool(passed)}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join("   " + line.rstrip() for line in out)


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
