"""Recovery per failover shape (issue 17), at full-length settings.

One primary and one streaming standby (harness.replication), an HAProxy in `mode tcp` in front
(the single-address style), and one gunicorn per URL style (harness.failover.STYLES) on the
production defaults. Each style gets the whole drill alone (hang, kill, stop, then the address
leading back to the demoted old primary), under `clients` closed-loop clients of
/api/db/test, so that no style's numbers include another's load. Reported per shape and style:
seconds from the recovery (promotion and address switch, or the switch back) to the first 200 and
until every answer is 200, readiness 200 again, and every answer by status.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import cluster as db
from bench.servers import Gunicorn, service_environment, start_gunicorn, wait_serving
from harness.failover import (
    STYLES,
    DrillResult,
    DrillTiming,
    all_ok_after,
    answers_by_status,
    database_urls,
    first_ok_after,
    run_drill,
)
from harness.haproxy import TcpProxy
from harness.replication import ReplicationPair

FULL = DrillTiming(promote_after_s=2.0, observe_s=10.0, stale_hold_s=5.0, probe_rate=20.0)
SMOKE = DrillTiming(promote_after_s=1.0, observe_s=5.5, stale_hold_s=2.0, settle_s=0.5)


def run(
    timing: DrillTiming, ops_token: str, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the drill once per style; return the timing and the summary per style and shape."""
    auth = {"Authorization": f"Bearer {ops_token}"}
    log_dir = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    summary: dict[str, Any] = {"timing": timing.__dict__, "styles": {}}
    with ReplicationPair() as pair, TcpProxy(_ports(pair), active="a") as proxy:
        database = f"bench_failover_{uuid.uuid4().hex[:8]}"
        pair.primary.create_database(database)
        urls = database_urls(pair, proxy, database)
        base = db.clean_environment()
        db.migrate(service_environment(base, urls["libpq"], ops_token))
        servers: dict[str, Gunicorn] = {}
        try:
            for style, url in urls.items():
                servers[style] = start_gunicorn(
                    f"failover-{style}", service_environment(base, url, ops_token), log_dir
                )
            for server in servers.values():
                wait_serving(server)
            for style in STYLES:
                log(f"failover drill, {style}: {', '.join(('hang', 'kill', 'stop', 'stale'))}")
                result = run_drill(
                    pair, proxy, {style: servers[style].port}, timing, headers=auth, log=log
                )
                summary["styles"][style] = summarise(result, style)
        finally:
            for server in servers.values():
                server.stop()
    return summary


def summarise(result: DrillResult, style: str) -> dict[str, Any]:
    """Per shape: recovery times, readiness, and every answer by status."""
    shapes = {}
    for shape, run in result.runs.items():
        requests = result.during(result.load[style], shape)
        ready = result.during(result.ready[style], shape)
        failing = [o for o in requests if o.status != 200]
        shapes[shape] = {
            "first_200_s": _round(first_ok_after(requests, run.recovered_at)),
            "all_200_s": _round(all_ok_after(requests, run.recovered_at, run.ended_at)),
            "ready_200_s": _round(all_ok_after(ready, run.recovered_at, run.ended_at)),
            "answers": answers_by_status(requests),
            "slowest_failure_s": _round(max((o.latency for o in failing), default=None)),
            "live_not_200": sum(o.status != 200 for o in result.during(result.live[style], shape)),
            "old_primary_sessions": run.old_primary_sessions,
        }
    return shapes


def render(summary: dict[str, Any]) -> str:
    """The failover section of the printed report."""
    timing = summary["timing"]
    lines = [
        "",
        f"7. failover: promotion {timing['promote_after_s']:g} s after the fault, "
        f"{timing['clients']} clients of /api/db/test per style; seconds from the recovery",
    ]
    header = ["shape", "style", "first 200", "all 200", "ready 200", "slowest 503", "answers"]
    rows = []
    for style, shapes in summary["styles"].items():
        for shape, values in shapes.items():
            rows.append(
                [
                    shape,
                    style,
                    _s(values["first_200_s"]),
                    _s(values["all_200_s"]),
                    _s(values["ready_200_s"]),
                    _s(values["slowest_failure_s"]),
                    ", ".join(f"{key} {count}" for key, count in values["answers"].items()),
                ]
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _ports(pair: ReplicationPair) -> dict[str, int]:
    return {name: cluster.port for name, cluster in zip(("a", "b"), pair.clusters, strict=True)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"
