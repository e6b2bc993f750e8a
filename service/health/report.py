"""The health verdict (pure) and its report in the IETF health check format."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.config import Settings
from service.health.checker import Observation, Snapshot
from service.schema import SchemaVersions

MEDIA_TYPE = "application/health+json"
SCHEMA_FAILURES = {"missing": "schema_missing", "behind": "schema_outdated"}
READ_ONLY = "database_read_only"  # fails at once: waiting for staleness would serve writes to it


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | warn | fail
    reasons: tuple[str, ...] = ()

    @property
    def http_status(self) -> int:
        return 503 if self.status == "fail" else 200


def assess(
    snapshot: Snapshot | None,
    now: float,
    schema: SchemaVersions,
    settings: Settings,
    *,
    draining: bool = False,
) -> Verdict:
    """Judge readiness from the checker's snapshot at monotonic time `now`.

    fail: the process is draining before it stops, the latest check reached only a read-only
    server (a standby: no writable primary), no answer from the database for
    HEALTH_STALE_AFTER_S, or the schema is missing or behind this code's head.
    warn: it answers, but the last check failed (tolerated until stale), it is slower than
    HEALTH_WARN_LATENCY_MS, the pool is nearly exhausted, or the schema is ahead of this code
    (a newer release migrated it: old replicas keep serving during a rolling deploy).
    """
    if draining:
        return Verdict("fail", ("draining",))
    if snapshot is None:
        return Verdict("fail", ("starting",))
    latest, answer = snapshot.latest, snapshot.last_answer
    if latest.failure == READ_ONLY:
        return Verdict("fail", (READ_ONLY,))
    if answer is None or now - answer.monotonic_at > settings.health_stale_after_s:
        return Verdict("fail", (latest.failure or "stale",))
    schema_state = schema.state(answer.revision)
    schema_failure = SCHEMA_FAILURES.get(schema_state)
    if schema_failure:
        return Verdict("fail", (schema_failure,))
    reasons = ["schema_ahead"] if schema_state == "ahead" else []
    if not latest.answered:
        reasons.append(latest.failure or "database_unavailable")
    elif _is_slow(latest, settings):
        reasons.append("slow")
    if _pool_nearly_full(snapshot, settings):
        reasons.append("pool_nearly_exhausted")
    return Verdict("warn" if reasons else "pass", tuple(reasons))


def health_document(
    snapshot: Snapshot | None,
    verdict: Verdict,
    schema: SchemaVersions,
    settings: Settings,
    *,
    version: str,
    include_output: bool,
) -> dict[str, Any]:
    """The full report. Anonymous callers get statuses, values and times; never error text."""
    component = "postgresql" if settings.is_postgresql else "sqlite"
    document: dict[str, Any] = {
        "status": verdict.status,
        "version": version.split(".")[0],
        "releaseId": settings.release_id or version,
        "serviceId": settings.service_id,
        "description": "database layer service",
    }
    if verdict.reasons:
        document["notes"] = list(verdict.reasons)
    if snapshot is None:
        return document
    latest, answer = snapshot.latest, snapshot.last_answer
    observed = _iso(latest.observed_at)
    response_time: dict[str, Any] = {
        "componentType": "datastore",
        "observedValue": _latency_ms(latest),
        "observedUnit": "ms",
        "status": _response_time_status(verdict, latest, settings),
        "time": observed,
    }
    if include_output and latest.detail:
        response_time["output"] = latest.detail
    connections = {
        "componentType": "datastore",
        "observedValue": latest.pool_in_use,
        "observedUnit": "connections",
        "poolSize": latest.pool_capacity,
        "status": "warn" if _pool_nearly_full(snapshot, settings) else "pass",
        "time": observed,
    }
    current = answer.revision if answer else None
    schema_state = schema.state(current) if answer else "missing"
    migrations = {
        "componentType": "datastore",
        "observedValue": current,
        "head": schema.head,
        "status": {"current": "pass", "ahead": "warn"}.get(schema_state, "fail"),
        "time": _iso(answer.observed_at) if answer else observed,
    }
    document["checks"] = {
        f"{component}:responseTime": [response_time],
        f"{component}:connections": [connections],
        "migrations:revision": [migrations],
    }
    return document


def _response_time_status(verdict: Verdict, latest: Observation, settings: Settings) -> str:
    if verdict.status == "fail" and not latest.answered:
        return "fail"
    if not latest.answered or _is_slow(latest, settings):
        return "warn"
    return "pass"


def _latency_ms(observation: Observation) -> float | None:
    """The check's latency as the document shows it: milliseconds, to the microsecond."""
    if observation.latency_s is None:
        return None
    return round(observation.latency_s * 1000, 3)


def _is_slow(observation: Observation, settings: Settings) -> bool:
    latency_ms = _latency_ms(observation)
    return latency_ms is not None and latency_ms > settings.health_warn_latency_ms


def _pool_nearly_full(snapshot: Snapshot, settings: Settings) -> bool:
    """At HEALTH_WARN_POOL_RATIO of the pool or above; an app without a pool never is."""
    capacity = snapshot.latest.pool_capacity
    if not capacity:
        return False
    return snapshot.latest.pool_in_use / capacity >= settings.health_warn_pool_ratio


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
