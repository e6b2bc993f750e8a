"""The health report at its thresholds, where a load balancer's decision flips.

Latency exactly at HEALTH_WARN_LATENCY_MS still passes; a pool exactly at HEALTH_WARN_POOL_RATIO
warns; the defaults reach the verdict; `version` is the API's major version.
"""

from __future__ import annotations

from service.health.checker import Snapshot
from service.health.report import Verdict, assess, health_document
from tests.test_health_verdict import NOW, SCHEMA, failed, make_settings, observation, snapshot


def report(snap: Snapshot, settings=None, *, version: str = "3.2.1", include_output=False) -> dict:
    settings = settings or make_settings()
    verdict = assess(snap, NOW, SCHEMA, settings)
    return health_document(
        snap, verdict, SCHEMA, settings, version=version, include_output=include_output
    )


def statuses(body: dict) -> tuple[str, str, str, str]:
    checks = body["checks"]
    return (
        body["status"],
        checks["postgresql:responseTime"][0]["status"],
        checks["postgresql:connections"][0]["status"],
        checks["migrations:revision"][0]["status"],
    )


def test_latency_equal_to_the_threshold_passes_and_just_above_warns() -> None:
    at = snapshot(observation(latency_ms=250.0))
    assert assess(at, NOW, SCHEMA, make_settings()) == Verdict("pass")
    assert statuses(report(at)) == ("pass", "pass", "pass", "pass")
    above = snapshot(observation(latency_ms=250.001))
    assert assess(above, NOW, SCHEMA, make_settings()) == Verdict("warn", ("slow",))
    assert statuses(report(above)) == ("warn", "warn", "pass", "pass")


def test_pool_exactly_at_the_warn_ratio_warns_and_just_below_passes() -> None:
    at = snapshot(observation(pool_in_use=9, pool_capacity=10))  # 0.9
    assert assess(at, NOW, SCHEMA, make_settings()) == Verdict("warn", ("pool_nearly_exhausted",))
    assert statuses(report(at)) == ("warn", "pass", "warn", "pass")
    below = snapshot(observation(pool_in_use=8, pool_capacity=10))
    assert statuses(report(below)) == ("pass", "pass", "pass", "pass")


def test_the_default_thresholds_reach_the_verdict() -> None:
    """No HEALTH_WARN_* set: 250 ms and 90 % of the pool, as documented."""
    defaults = make_settings(HEALTH_WARN_LATENCY_MS="", HEALTH_WARN_POOL_RATIO="")
    at_both = snapshot(observation(latency_ms=250.0, pool_in_use=9, pool_capacity=10))
    assert assess(at_both, NOW, SCHEMA, defaults) == Verdict("warn", ("pool_nearly_exhausted",))
    below = snapshot(observation(latency_ms=250.0, pool_in_use=17, pool_capacity=19))
    assert assess(below, NOW, SCHEMA, defaults) == Verdict("pass")


def test_an_app_without_a_pool_never_warns_about_it_even_at_ratio_zero() -> None:
    always = make_settings(HEALTH_WARN_POOL_RATIO="0")
    unpooled = snapshot(observation(pool_in_use=0, pool_capacity=None))
    assert assess(unpooled, NOW, SCHEMA, always) == Verdict("pass")
    assert statuses(report(unpooled, always))[2] == "pass"
    pooled = snapshot(observation(pool_in_use=0, pool_capacity=10))
    assert assess(pooled, NOW, SCHEMA, always) == Verdict("warn", ("pool_nearly_exhausted",))


def test_a_zero_latency_threshold_warns_on_any_measurable_latency() -> None:
    zero = make_settings(HEALTH_WARN_LATENCY_MS="0")
    assert statuses(report(snapshot(observation(latency_ms=0.0)), zero))[:2] == ("pass", "pass")
    assert statuses(report(snapshot(observation(latency_ms=0.001)), zero))[:2] == ("warn", "warn")


def test_version_is_the_major_part_and_release_id_defaults_to_the_full_version() -> None:
    body = report(snapshot(observation()), make_settings(RELEASE_ID=""), version="3.2.1")
    assert (body["version"], body["releaseId"]) == ("3", "3.2.1")
    assert report(snapshot(observation()), version="3.2.1")["releaseId"] == "r-42"


def test_a_failed_check_while_fresh_warns_on_response_time_only() -> None:
    body = report(snapshot(failed(detail="boom"), last_answer=observation(age_s=1.0)))
    assert statuses(body) == ("warn", "warn", "pass", "pass")
    assert body["notes"] == ["timeout"]
    assert body["checks"]["postgresql:responseTime"][0]["observedValue"] is None


def test_a_slow_answer_while_the_schema_is_ahead_warns_with_both_reasons() -> None:
    ahead = snapshot(observation(revision="9999_future", latency_ms=900.0))
    body = report(ahead)
    assert body["notes"] == ["schema_ahead", "slow"]
    assert statuses(body) == ("warn", "warn", "pass", "warn")


def test_never_answered_reports_the_migrations_check_failed_at_the_latest_time() -> None:
    latest = failed(age_s=0.2, failure="database_unavailable")
    body = report(snapshot(latest, last_answer=None))
    assert body["status"] == "fail"
    (migrations,) = body["checks"]["migrations:revision"]
    assert (migrations["observedValue"], migrations["status"]) == (None, "fail")
    assert migrations["time"] == body["checks"]["postgresql:responseTime"][0]["time"]


def test_draining_fails_whatever_the_database_says() -> None:
    verdict = assess(snapshot(observation()), NOW, SCHEMA, make_settings(), draining=True)
    assert verdict == Verdict("fail", ("draining",))
    assert verdict.http_status == 503
    assert Verdict("warn").http_status == 200
