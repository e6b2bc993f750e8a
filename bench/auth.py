"""/api/me beside /api/db/test on the same server: what verifying a caller costs.

Per round (the order alternates): each endpoint with one connection (latency, no queueing), then
with several (throughput), with the server's CPU per request. The caller is a session row
written as Better Auth writes it and a cookie signed as better-call signs it
(harness.better_auth); the path measured is the one a real Better Auth cookie takes.
"""

from __future__ import annotations

import secrets
import statistics
from typing import Any

from bench.load import run_wrk
from bench.servers import Gunicorn
from harness.better_auth import sign, store_session

AUTH_URL = "http://127.0.0.1:3000"
SECRET = secrets.token_hex(32)
ENDPOINTS = ("/api/me", "/api/db/test")


def environment() -> dict[str, str]:
    """The settings that turn Better Auth on for the benchmarked service."""
    return {"BETTER_AUTH_URL": AUTH_URL, "BETTER_AUTH_SECRET": SECRET}


def measure(
    server: Gunicorn,
    database_url: str,
    ops_headers: dict[str, str],
    *,
    rounds: int,
    duration_s: float,
    connections: int,
    say: Any = print,
) -> dict[str, Any]:
    """Latency and throughput of /api/me and /api/db/test, and their ratios, per round."""
    stored = store_session(database_url)
    headers = {
        "/api/me": {"Cookie": f"better-auth.session_token={sign(stored.token, SECRET)}"},
        "/api/db/test": ops_headers,
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        path: {"latency": [], "loaded": []} for path in ENDPOINTS
    }
    for number in range(1, rounds + 1):
        for path in ENDPOINTS if number % 2 else ENDPOINTS[::-1]:
            url = f"{server.base_url}{path}"
            one = run_wrk(url, duration_s, 1, headers=headers[path])
            cpu = server.cpu_seconds()
            many = run_wrk(url, duration_s, connections, headers=headers[path])
            cpu = server.cpu_seconds() - cpu
            runs[path]["latency"].append(one.to_dict())
            per_request = round(cpu * 1e6 / many.requests, 1) if many.requests else None
            runs[path]["loaded"].append({**many.to_dict(), "cpu_us_per_request": per_request})
            say(
                f"{path} round {number}: p50 {one.p50_ms:.2f} ms (1 connection), "
                f"{many.rps:.0f} rps ({connections} connections)"
            )
    return summarise(runs)


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians per endpoint; /api/me over /api/db/test, the median of the rounds' ratios."""
    summary: dict[str, Any] = {"endpoints": {}, "runs": runs}
    for path, kinds in runs.items():
        one, many = kinds["latency"], kinds["loaded"]
        summary["endpoints"][path] = {
            "p50_ms": statistics.median(r["p50_ms"] for r in one),
            "p99_ms": statistics.median(r["p99_ms"] for r in one),
            "rps": statistics.median(r["rps"] for r in many),
            "loaded_p50_ms": statistics.median(r["p50_ms"] for r in many),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] or 0 for r in many),
            "non_2xx": sum(r["non_2xx"] for r in one + many),
            "connections": many[0]["connections"],
        }
    me, db_test = runs["/api/me"], runs["/api/db/test"]
    summary["me_vs_db_test"] = {
        "rps": _median_ratio(me["loaded"], db_test["loaded"], "rps"),
        "p50": _median_ratio(me["latency"], db_test["latency"], "p50_ms"),
    }
    return summary


def _median_ratio(mine: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(a[key] / b[key] for a, b in zip(mine, theirs, strict=True)), 2)


def render(summary: dict[str, Any]) -> str:
    """The section of the report, as plain text."""
    lines = ["", "5. who is calling: /api/me (a signed cookie) beside /api/db/test, same server"]
    for path, e in summary["endpoints"].items():
        lines.append(
            f"  {path:<13} c=1 p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms; "
            f"c={e['connections']} {e['rps']:.0f} rps, p50 {e['loaded_p50_ms']:.2f} ms, "
            f"{e['cpu_us_per_request']:.0f} CPU us/request; non-2xx {e['non_2xx']}"
        )
    ratio = summary["me_vs_db_test"]
    lines.append(
        f"  /api/me / /api/db/test: throughput x{ratio['rps']:.2f}, p50 x{ratio['p50']:.2f}"
        " (medians of the rounds' ratios)"
    )
    return "\n".join(lines)
