"""Turns raw measurements into the summary, the targets' verdicts and a readable table."""

from __future__ import annotations

import statistics
from typing import Any

from bench.scenarios import ANSWER_MARGIN_S

HEALTH_RATIO_TARGET = 0.95
QUERIES_PER_INTERVAL_PER_WORKER_TARGET = 1.0
# pg_stat_database is fed by each backend at most once a second, so a window's count is off by up
# to one check per worker at each end: allow that much, no more.
STATS_GRANULARITY = 0.05
DB_TEST_P50_TARGET_MS = 5.0
FROZEN_HEALTH_LATENCY_TARGET_MS = 1000.0
RECOVERY_TARGET_S = 2.0
GTHREAD_RATIO_TARGET = 0.9  # the new design keeps at least this share of gthread's throughput
PROBE_MAX_TARGET_MS = 1000.0  # Kubernetes' default probe timeoutSeconds
PROBE_P99_TARGET_MS = 100.0
THAW_RECOVERY_TARGET_S = 3.0
HEADER_LINE_SLACK_S = 2.0  # a slow client's next line may come up to this late


def summarise_health(rounds: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Per design, its service against its floor; then the new design's service against gthread's.

    Ratios are taken within a round (servers measured back to back), then the median over rounds.
    """
    designs = {}
    for key in keys:
        service, floor = f"{key}-service", f"{key}-floor"
        runs = [(r["runs"][service], r["runs"][floor]) for r in rounds]
        service_per_cpu = _per_cpu([s for s, _ in runs])
        floor_per_cpu = _per_cpu([f for _, f in runs])
        designs[key] = {
            **_ratios([s["rps"] / f["rps"] for s, f in runs]),
            "cpu_ratio_overall": round(service_per_cpu / floor_per_cpu, 3),
            "service_cpu_us_per_request": round(1e6 / service_per_cpu, 1),
            "floor_cpu_us_per_request": round(1e6 / floor_per_cpu, 1),
            "service": _medians([s for s, _ in runs], ("rps", "p50_ms", "p99_ms")),
            "floor": _medians([f for _, f in runs], ("rps", "p50_ms", "p99_ms")),
            "non_2xx": sum(s["non_2xx"] + f["non_2xx"] for s, f in runs),
            "socket_errors": sum(s["socket_errors"] + f["socket_errors"] for s, f in runs),
        }
    compared = None
    if {"gthread", "new"} <= set(keys):
        compared = _ratios(
            [r["runs"]["new-service"]["rps"] / r["runs"]["gthread-service"]["rps"] for r in rounds]
        )
    return {"designs": designs, "new_vs_gthread": compared}


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
        "cpu_us_per_request": _median_of(runs, "cpu_us_per_request"),
        "runs": runs,
    }


def summarise_db_tests(
    latency: dict[str, list[dict[str, Any]]], loaded: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Per design; and the new design's throughput under load against gthread's, round by round."""
    designs = {
        key: {"latency": summarise_db_test(latency[key]), "loaded": summarise_db_test(loaded[key])}
        for key in latency
    }
    compared = None
    if {"gthread", "new"} <= set(latency):
        pairs = zip(loaded["new"], loaded["gthread"], strict=True)
        compared = _ratios([new["rps"] / old["rps"] for new, old in pairs])
    return {"designs": designs, "new_vs_gthread": compared}


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
    """Each target, for the new design, with the measured value and whether it is met."""
    settings = results["meta"]["settings"]
    detect_limit = settings["HEALTH_STALE_AFTER_S"] + 1.0
    answer_limit_ms = (settings["DB_DEADLINE_S"] + ANSWER_MARGIN_S) * 1000
    health = results["health_throughput"]["summary"]
    storm = results["probe_storm"]["new"]
    db_test = results["db_test"]["designs"]["new"]["latency"]
    scenarios = {name: runs["new"] for name, runs in results["scenarios"].items()}
    faults = results["fault_timeline"]["analysis"]["faults"]
    rows = [
        _row(
            "/api/health throughput / floor",
            f">= {HEALTH_RATIO_TARGET}",
            health["designs"]["new"]["ratio_median"],
            health["designs"]["new"]["ratio_median"] >= HEALTH_RATIO_TARGET,
        )
    ]
    for label, compared in (
        ("/api/health", health["new_vs_gthread"]),
        ("/api/db/test", results["db_test"]["new_vs_gthread"]),
    ):
        measured = compared["ratio_median"] if compared else None
        rows.append(
            _row(
                f"{label} throughput / gthread's",
                f">= {GTHREAD_RATIO_TARGET}",
                measured if compared else "gthread's not measured",
                measured is not None and measured >= GTHREAD_RATIO_TARGET,
            )
        )
    rows += [
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
    ]
    for name, scenario in scenarios.items():
        probes = list(scenario["probes"].values())
        slowest = max((p["max_ms"] or 0.0) for p in probes)
        p99 = max((p["p99_ms"] or 0.0) for p in probes)
        unanswered = sum(p["unanswered"] for p in probes)
        rows.append(
            _row(
                f"{name}: probes max / p99 ms, unanswered",
                f"< {PROBE_MAX_TARGET_MS:g} / < {PROBE_P99_TARGET_MS:g}, 0",
                f"{slowest:.0f} / {p99:.0f}, {unanswered}",
                slowest < PROBE_MAX_TARGET_MS and p99 < PROBE_P99_TARGET_MS and unanswered == 0,
            )
        )
    for name in ("frozen", "saturation"):
        load = scenarios[name]["db_test"]
        allowed = {"200", "503 overloaded", "503 timeout", "503 database_unavailable"}
        if name == "saturation":
            allowed = {"200", "503 overloaded"}
        others = sum(n for key, n in load["answers"].items() if key not in allowed)
        rows.append(
            _row(
                f"{name}: /api/db/test slowest answer ms, others, timeouts",
                f"<= {answer_limit_ms:g}, 0, 0",
                f"{load['max_ms']:.0f}, {others}, {load['timeouts']}",
                load["requests"] > 0
                and load["max_ms"] <= answer_limit_ms
                and others == 0
                and load["timeouts"] == 0,
            )
        )
    rows.append(
        _row(
            "frozen: all 200 again after the thaw, s",
            f"<= {THAW_RECOVERY_TARGET_S:g}",
            scenarios["frozen"]["recovered_s"],
            scenarios["frozen"]["recovered_s"] <= THAW_RECOVERY_TARGET_S,
        )
    )
    slow = scenarios["slow_clients"]
    if slow["duration_s"] > settings["REQUEST_HEAD_TIMEOUT_S"] + HEADER_LINE_SLACK_S:
        rows.append(
            _row(
                "slow clients: closed by the head deadline",
                f"> 0 (after {settings['REQUEST_HEAD_TIMEOUT_S']:g} s)",
                slow["held"]["closed_by_server"]["slow"],
                slow["held"]["closed_by_server"]["slow"] > 0,
            )
        )
    frozen_health = results["fault_timeline"]["analysis"]["per_phase"]["/api/health"]["frozen"]
    rows.append(
        _row(
            "timeline, frozen: slowest /api/health answer ms",
            f"< {FROZEN_HEALTH_LATENCY_TARGET_MS:g}",
            frozen_health["max_ms"],
            frozen_health["max_ms"] is not None
            and frozen_health["max_ms"] < FROZEN_HEALTH_LATENCY_TARGET_MS
            and frozen_health["statuses"].get("0", 0) == 0,
        )
    )
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
    designs = meta["designs"]
    keys = list(designs)
    health = results["health_throughput"]
    lines = [
        f"bench {meta['mode']} run, {meta['started_at']}: {meta['machine']['cpu_model']}, "
        f"{meta['machine']['nproc']} CPUs, load {meta['loadavg_at_start'][0]:g} at start, "
        f"{meta['loadavg_at_end'][0]:g} at the end",
    ]
    for key, design in designs.items():
        g = design["gunicorn"]
        lines.append(
            f"   {key}: {design['label']}; {g['workers']} workers, {g['worker_class']}, "
            f"threads {g['threads']}, worker_connections {g['worker_connections']}, "
            f"preload {g['preload_app']}"
        )
    if meta.get("gthread_skipped"):
        lines.append(
            f"   the gthread design ({meta['gthread_revision']}) skipped: not in git history"
        )
    servers = [f"{k}-{role}" for k in keys for role in ("service", "floor")]
    header = ["round", *[f"{n} rps" for n in servers], *[f"{k}/floor" for k in keys]]
    rows = []
    for r in health["rounds"]:
        runs = r["runs"]
        ratios = [runs[f"{k}-service"]["rps"] / runs[f"{k}-floor"]["rps"] for k in keys]
        rows.append(
            [str(r["round"]), *[f"{runs[n]['rps']:.0f}" for n in servers]]
            + [f"{v:.3f}" for v in ratios]
        )
    lines += [
        "",
        f"1. /api/health throughput: {len(health['rounds'])} rounds x {meta['wrk_duration_s']:g} s "
        f"per server, {meta['wrk_connections']} connections",
        _table(header, rows),
    ]
    for key, summary in health["summary"]["designs"].items():
        lines.append(
            f"   {key}: service/floor median {summary['ratio_median']:.3f} "
            f"({summary['ratio_min']:.3f}-{summary['ratio_max']:.3f}); CPU per request "
            f"{summary['service_cpu_us_per_request']:.0f} us, floor "
            f"{summary['floor_cpu_us_per_request']:.0f} us"
        )
    lines += [_compared("/api/health new/gthread", health["summary"]["new_vs_gthread"]), ""]
    for key, storm in results["probe_storm"].items():
        lines.append(
            f"2. probe storm, {key}: {storm['xact_per_s']:.2f} transactions/s during "
            f"{storm['health_requests']} /api/health requests (idle: "
            f"{storm['idle_xact_per_s']:.2f}/s; expected {storm['expected_per_s']:.2f}/s) -> "
            f"{storm['queries_per_interval_per_worker']:.2f} per interval per worker; "
            f"{storm['worker_boots_during_storm']} worker recycles"
        )
    lines += ["", "3. /api/db/test"]
    rows = []
    for key, db in results["db_test"]["designs"].items():
        one, many = db["latency"], db["loaded"]
        rows.append(
            [
                key,
                f"{one['p50_ms']:.2f} / {one['p99_ms']:.2f}",
                f"{one['rps']:.0f}",
                f"{many['p50_ms']:.2f} / {many['p99_ms']:.2f}",
                f"{many['rps']:.0f}",
                _ms(many["cpu_us_per_request"]),
                str(one["non_2xx"] + many["non_2xx"]),
            ]
        )
    header = ["design", "c=1 p50/p99 ms", "c=1 rps", "c=8 p50/p99 ms", "c=8 rps"]
    lines.append(_table([*header, "c=8 CPU us/request", "non-2xx"], rows))
    lines += [_compared("/api/db/test (c=8) new/gthread", results["db_test"]["new_vs_gthread"])]
    lines += ["", "4. probes (live, ready; 20/s each, 1 s timeout) under load, per design"]
    rows, notes = [], []
    for name, runs in results["scenarios"].items():
        for key in keys:
            scenario = runs[key]
            load = scenario.get("db_test")
            held = scenario.get("held")
            rows.append(
                [
                    name,
                    key,
                    *[_probe(scenario["probes"][path]) for path in scenario["probes"]],
                    _statuses(scenario["probes"]["/api/health/ready"]["statuses"]),
                    _answers(load) if load else "-",
                    f"{load['max_ms']:.0f}" if load and load["requests"] else "-",
                    f"{scenario['recovered_s']:.2f}",
                ]
            )
            if held:
                notes.append(
                    f"   slow_clients, {key}: held at least {held['min_open']['slow']} slow and "
                    f"{held['min_open']['idle']} idle; closed by the server: "
                    f"{held['closed_by_server']['slow']} slow (median after "
                    f"{_s(held['slow_closed_after_s_median'])} s), "
                    f"{held['closed_by_server']['idle']} idle"
                )
    lines.append(
        _table(
            [
                "scenario",
                "design",
                "live p50/p99/max ms (unanswered)",
                "ready p50/p99/max ms (unanswered)",
                "ready statuses",
                "/api/db/test answers",
                "db max ms",
                "recovered s",
            ],
            rows,
        )
    )
    lines += notes
    lines += [
        "",
        "5. fault timeline, new design (detect: first non-200 after the fault; recover: first 200)",
    ]
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
            rows.append(
                [
                    endpoint,
                    phase,
                    str(stats["requests"]),
                    _statuses(stats["statuses"]),
                    _ms(stats["p50_ms"]),
                    _ms(stats["max_ms"]),
                ]
            )
    lines.append(_table(["endpoint", "phase", "requests", "statuses", "p50 ms", "max ms"], rows))
    lines += ["", "6. memory after the throughput runs (MiB, mean per worker)"]
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
    lines += ["", "targets (new design)"]
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


def _ratios(values: list[float]) -> dict[str, Any]:
    return {
        "ratio_median": round(statistics.median(values), 3),
        "ratio_min": round(min(values), 3),
        "ratio_max": round(max(values), 3),
        "ratios": [round(v, 3) for v in values],
    }


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def _per_cpu(runs: list[dict[str, Any]]) -> float:
    return sum(r["requests"] for r in runs) / sum(r["cpu_s"] for r in runs)


def _medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def _compared(label: str, compared: dict[str, Any] | None) -> str:
    if compared is None:
        return f"   {label}: not measured (the gthread design skipped)"
    return (
        f"   {label}: median {compared['ratio_median']:.3f} "
        f"(per round {', '.join(f'{v:.3f}' for v in compared['ratios'])})"
    )


def _probe(stats: dict[str, Any]) -> str:
    return (
        f"{_ms(stats['p50_ms'])}/{_ms(stats['p99_ms'])}/{_ms(stats['max_ms'])} "
        f"({stats['unanswered']})"
    )


def _answers(load: dict[str, Any]) -> str:
    """What wrk's clients got, by status and code, and wrk's timeouts: answers later than its
    timeout, plus, every 2 s, each connection whose request has waited longer."""
    return f"{_statuses(load['answers'])}; timeouts {load['timeouts']}"


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}x{v}" for k, v in sorted(counts.items())) or "none"


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
