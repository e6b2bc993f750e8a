"""A failover drill: the primary fails in one way after another while services take traffic.

Each service (a gunicorn, by name and port) gets a `LoadLoop` on `/api/db/test` and a
`ProbeSampler` on liveness and on readiness for the whole drill. The shapes run one after the
other on one `ReplicationPair`; after each, the old primary is re-seeded as a standby of the new
one. A `TcpProxy` in front of the pair (servers `a` and `b`, the pair's clusters in order) stands
in for a DNS name or a VIP and is switched to the new primary at each promotion.

- `hang`, `kill`, `stop`: the primary is frozen (SIGSTOP), killed (SIGKILL) or stopped (fast),
  the standby promoted `promote_after_s` later, the address switched. Recovery: the promotion.
- `stale_address`: the address leads back to the old primary, now a standby, for
  `stale_hold_s`, then to the primary again as a DNS flip does (old sessions are not ended).
  Recovery: that switch.

Tests assert guarantees on the result; the benchmark reports the recovery times.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .haproxy import TcpProxy
from .pgcluster import TemporaryCluster
from .processes import wait_for
from .replication import ReplicationPair
from .traffic import LoadLoop, Outcome, ProbeSampler

SHAPES = ("hang", "kill", "stop", "stale_address")
PROXY_NAMES = ("a", "b")  # the TcpProxy's servers: the pair's clusters, in order
# How a service reaches the pair: libpq's multi-host URL, SQLAlchemy's, one address (the proxy)
# with the default target_session_attrs, and the same address with `any`.
STYLES = ("libpq", "sqlalchemy", "proxy", "proxy_any")


def database_urls(pair: ReplicationPair, proxy: TcpProxy, database: str) -> dict[str, str]:
    """The DATABASE_URL of each style of STYLES, for `database` on the pair."""
    first, second = (f"127.0.0.1:{cluster.port}" for cluster in pair.clusters)
    through_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"
    return {
        "libpq": f"postgresql://postgres@{first},{second}/{database}",
        "sqlalchemy": (
            f"postgresql://postgres@/{database}?host={first}&host={second}"
            "&target_session_attrs=read-write"
        ),
        "proxy": through_proxy,
        "proxy_any": f"{through_proxy}?target_session_attrs=any",
    }


@dataclass(frozen=True)
class DrillTiming:
    """How long each part lasts and how hard the traffic is."""

    promote_after_s: float = 2.0  # from the fault to `pg_ctl promote`
    observe_s: float = 6.0  # from the recovery to the end of the shape
    stale_hold_s: float = 3.0  # how long the address leads to the demoted old primary
    clients: int = 8  # per service
    pause_s: float = 0.0  # between two requests of a client
    request_timeout_s: float = 10.0
    probe_rate: float = 10.0  # per second, per probe and service
    settle_s: float = 1.0  # healthy traffic before the first shape


@dataclass(frozen=True)
class ShapeRun:
    """One shape: when the fault was injected, when it had taken effect (the primary gone, or
    the address switched; the promotion is timed from then), when the service could recover,
    when the shape ended.

    `old_primary_sessions`: the services' sessions on the old primary at the end of the shape
    (`observe_s` after recovery); None when it was down.
    """

    shape: str
    fault_at: float
    effective_at: float
    recovered_at: float
    ended_at: float
    old_primary_sessions: int | None


@dataclass
class DrillResult:
    runs: dict[str, ShapeRun]
    load: dict[str, list[Outcome]]  # per service: every /api/db/test
    live: dict[str, list[Outcome]]
    ready: dict[str, list[Outcome]]
    started_at: float
    ended_at: float
    logs: dict[str, str] = field(default_factory=dict)  # the services' logs, if kept

    def during(self, outcomes: Sequence[Outcome], shape: str) -> list[Outcome]:
        """The outcomes sent between the shape's fault and its end."""
        run = self.runs[shape]
        return [o for o in outcomes if run.fault_at <= o.sent < run.ended_at]


def run_drill(
    pair: ReplicationPair,
    proxy: TcpProxy,
    services: Mapping[str, int],
    timing: DrillTiming,
    *,
    headers: Mapping[str, str] | None = None,
    shapes: Sequence[str] = SHAPES,
    application: str = "db-service",
    log: Callable[[str], None] = print,
) -> DrillResult:
    """Run `shapes` in order under traffic to `services` (name -> port); return what was seen."""
    loads = {
        name: LoadLoop(
            port,
            ["/api/db/test"],
            clients=timing.clients,
            headers=headers,
            timeout=timing.request_timeout_s,
            pause=timing.pause_s,
        )
        for name, port in services.items()
    }
    live = {
        name: ProbeSampler(port, "/api/health/live", rate=timing.probe_rate)
        for name, port in services.items()
    }
    ready = {
        name: ProbeSampler(port, "/api/health/ready", rate=timing.probe_rate)
        for name, port in services.items()
    }
    runners = [*loads.values(), *live.values(), *ready.values()]
    started_at = time.monotonic()
    for runner in runners:
        runner.start()
    runs: dict[str, ShapeRun] = {}
    try:
        time.sleep(timing.settle_s)
        for shape in shapes:
            log(f"failover drill: {shape}")
            if shape == "stale_address":
                runs[shape] = _stale_address(pair, proxy, timing, application)
            else:
                runs[shape] = _failover(shape, pair, proxy, timing, application)
    finally:
        ended_at = time.monotonic()
        for load in loads.values():
            load.stop(timing.request_timeout_s + 5)
        for sampler in [*live.values(), *ready.values()]:
            sampler.stop()
    return DrillResult(
        runs,
        {name: load.outcomes for name, load in loads.items()},
        {name: sampler.outcomes for name, sampler in live.items()},
        {name: sampler.outcomes for name, sampler in ready.items()},
        started_at,
        ended_at,
    )


def _failover(
    shape: str, pair: ReplicationPair, proxy: TcpProxy, timing: DrillTiming, application: str
) -> ShapeRun:
    old = pair.primary
    fault = {"stop": lambda: old.stop("fast"), "kill": old.crash, "hang": old.freeze}[shape]
    fault_at = time.monotonic()
    fault()  # returns once the primary is gone: stopped, killed, or every process frozen
    effective_at = time.monotonic()
    _sleep_until(effective_at + timing.promote_after_s)
    pair.promote()
    proxy.switch(_proxy_name(pair, pair.primary))
    recovered_at = time.monotonic()
    _sleep_until(recovered_at + timing.observe_s)
    ended_at = time.monotonic()
    sessions = None
    if shape == "hang":  # the frozen old primary still holds whatever was not closed
        old.thaw()
        sessions = service_sessions(old, application)
    pair.reseed(old)
    return ShapeRun(shape, fault_at, effective_at, recovered_at, ended_at, sessions)


def _stale_address(
    pair: ReplicationPair, proxy: TcpProxy, timing: DrillTiming, application: str
) -> ShapeRun:
    demoted = pair.standby
    fault_at = time.monotonic()
    proxy.switch(_proxy_name(pair, demoted))
    _sleep_until(fault_at + timing.stale_hold_s)
    proxy.switch(_proxy_name(pair, pair.primary), end_sessions=False)
    recovered_at = time.monotonic()
    _sleep_until(recovered_at + timing.observe_s)
    ended_at = time.monotonic()
    sessions = service_sessions(demoted, application)
    return ShapeRun("stale_address", fault_at, fault_at, recovered_at, ended_at, sessions)


def service_sessions(cluster: TemporaryCluster, application: str, settle_s: float = 1.0) -> int:
    """Sessions of the service (by application_name) on `cluster`, once closed ones are gone.

    A backend whose client closed its socket ends within moments; one still counted after
    `settle_s` is held open by its client.
    """
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"

    def count() -> int:
        rows = cluster.psql(query, (f"{application}%",))
        return int(rows[0][0]) if rows else 0

    with contextlib.suppress(TimeoutError):
        wait_for(lambda: count() == 0, settle_s, description="the service's sessions to end")
    return count()


def _proxy_name(pair: ReplicationPair, cluster: TemporaryCluster) -> str:
    return PROXY_NAMES[pair.clusters.index(cluster)]


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


# ------------------------------------------------------------------------------ analysis


def first_ok_after(outcomes: Sequence[Outcome], moment: float) -> float | None:
    """Seconds from `moment` to the first 200 that arrived after it."""
    arrivals = [o.done for o in outcomes if o.status == 200 and o.done >= moment]
    return min(arrivals) - moment if arrivals else None


def all_ok_after(outcomes: Sequence[Outcome], moment: float, end: float) -> float | None:
    """Seconds from `moment` until every answer sent before `end` was a 200 (None: never)."""
    inside = [o for o in outcomes if moment <= o.sent < end]
    bad = [o.sent for o in inside if o.status != 200]
    if not bad:
        return 0.0
    later = [o.sent for o in inside if o.status == 200 and o.sent > max(bad)]
    return min(later) - moment if later else None


def answers_by_status(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """`200`, `503 database_read_only`, `no answer`...: how many of each."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status is None:
            key = "no answer"
        else:
            key = f"{outcome.status} {outcome.code}" if outcome.code else str(outcome.status)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
