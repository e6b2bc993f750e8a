"""The health verdict (`assess`) and its IETF document, on hand-built snapshots.

`assess` is pure, so every rule of the verdict is pinned here without a database or a clock:
a probe that flips the wrong way takes a healthy replica out of rotation (or keeps a broken one in).
The thresholds are pinned exactly where a load balancer's decision flips: latency at
HEALTH_WARN_LATENCY_MS still passes, a pool at HEALTH_WARN_POOL_RATIO warns.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from service.config import Settings, load_settings
from service.health.checker import Observation, Snapshot
from service.health.report import MEDIA_TYPE, Verdict, assess, health_document
from service.schema import SchemaVersions

HEAD = "0001"
SCHEMA = SchemaVersions(head=HEAD, known=frozenset({"0000_old", HEAD}))
NOW = 1000.0  # monotonic "now" of every assessment below
WALL = 1_790_000_000.0  # wall-clock time of the observations (2026-09-21T...Z)


def make_settings(**overrides: str) -> Settings:
    """Settings as an operator would set them, without reading this shell's environment."""
    values = {
        "APP_ENV": "test",
        "DATABASE_URL": "postgresql://svc@db.internal:5432/app",
        "HEALTH_CHECK_INTERVAL_S": "1",
        "HEALTH_STALE_AFTER_S": "3",
        "HEALTH_WARN_LATENCY_MS": "250",
        "HEALTH_WARN_POOL_RATIO": "0.9",
        "SERVICE_ID": "db-service-test",
        "RELEASE_ID": "r-42",
        **overrides,
    }
    return load_settings(values, instance_path="/nonexistent", environ={})


SETTINGS = make_settings()


def observation(
    *,
    age_s: float = 0.5,
    answered: bool = True,
    latency_ms: float | None = 3.0,
    revision: str | None = HEAD,
    failure: str | None = None,
    detail: str | None = None,
    pool_in_use: int = 1,
    pool_capacity: int | None = 10,
) -> Observation:
    """An observation taken `age_s` seconds before NOW."""
    return Observation(
        answered=answered,
        observed_at=WALL - age_s,
        monotonic_at=NOW - age_s,
        latency_s=latency_ms / 1000 if answered and latency_ms is not None else None,
        revision=revision if answered else None,
        failure=failure,
        detail=detail,
        pool_in_use=pool_in_use,
        pool_capacity=pool_capacity,
    )


def failed(age_s: float = 0.1, failure: str = "timeout", detail: str | None = None) -> Observation:
    return observation(age_s=age_s, answered=False, failure=failure, detail=detail)


def snapshot(latest: Observation, last_answer: Observation | None = None) -> Snapshot:
    """A snapshot whose last answer is `latest` when it answered, else `last_answer`."""
    answer = latest if latest.answered else last_answer
    return Snapshot(latest=latest, last_answer=answer)


# ------------------------------------------------------------------------------------ assess


def test_no_snapshot_yet_is_fail_starting() -> None:
    """Before the first look a replica must not take traffic."""
    verdict = assess(None, NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("fail", ("starting",))
    assert verdict.http_status == 503


def test_fresh_answer_at_head_passes() -> None:
    verdict = assess(snapshot(observation()), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("pass", ())
    assert verdict.http_status == 200


def test_one_failed_check_is_tolerated_as_warn() -> None:
    """A single lost check must not flip readiness: warn (200) until the answer is stale."""
    verdict = assess(snapshot(failed(), last_answer=observation(age_s=1.0)), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("warn", ("timeout",))
    assert verdict.http_status == 200


def test_failed_check_without_failure_code_still_names_a_reason() -> None:
    latest = replace(failed(), failure=None)
    verdict = assess(snapshot(latest, last_answer=observation(age_s=1.0)), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("warn", ("database_unavailable",))


def test_a_read_only_server_fails_at_once_not_after_staleness() -> None:
    """Only a standby answered: readiness must fail now, while the last answer is still fresh."""
    latest = failed(failure="database_read_only")
    verdict = assess(snapshot(latest, last_answer=observation(age_s=0.2)), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("fail", ("database_read_only",))
    assert verdict.http_status == 503
    draining = assess(snapshot(latest), NOW, SCHEMA, SETTINGS, draining=True)
    assert draining == Verdict("fail", ("draining",))


@pytest.mark.parametrize("failure", ["timeout", "database_unavailable"])
def test_answer_older_than_stale_after_fails_with_the_latest_failure(failure: str) -> None:
    stale = observation(age_s=SETTINGS.health_stale_after_s + 0.01)
    verdict = assess(snapshot(failed(failure=failure), last_answer=stale), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("fail", (failure,))
    assert verdict.http_status == 503


def test_staleness_boundary_is_exclusive() -> None:
    """Exactly HEALTH_STALE_AFTER_S old is still fresh; a moment later it is not."""
    at_limit = observation(age_s=SETTINGS.health_stale_after_s)
    assert assess(snapshot(failed(), at_limit), NOW, SCHEMA, SETTINGS).status == "warn"
    beyond = observation(age_s=SETTINGS.health_stale_after_s + 0.001)
    assert assess(snapshot(failed(), beyond), NOW, SCHEMA, SETTINGS).status == "fail"


def test_never_answered_fails() -> None:
    verdict = assess(snapshot(failed(failure="database_unavailable")), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("fail", ("database_unavailable",))


def test_stale_without_a_failure_code_says_stale() -> None:
    """A checker that stopped observing (hung thread) must not keep reporting pass."""
    old = observation(age_s=SETTINGS.health_stale_after_s + 5)
    verdict = assess(snapshot(old), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("fail", ("stale",))


def test_stale_after_setting_is_honoured() -> None:
    relaxed = make_settings(HEALTH_STALE_AFTER_S="10")
    four_seconds_old = observation(age_s=4.0)
    latest = failed()
    assert assess(snapshot(latest, four_seconds_old), NOW, SCHEMA, SETTINGS).status == "fail"
    assert assess(snapshot(latest, four_seconds_old), NOW, SCHEMA, relaxed).status == "warn"


def test_other_revision_fails_schema_outdated() -> None:
    verdict = assess(snapshot(observation(revision="0000_old")), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("fail", ("schema_outdated",))


def test_no_revision_fails_schema_missing() -> None:
    verdict = assess(snapshot(observation(revision=None)), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("fail", ("schema_missing",))


def test_last_answer_schema_outdated_wins_over_a_tolerated_failure() -> None:
    outdated = observation(age_s=1.0, revision="0000_old")
    verdict = assess(snapshot(failed(), last_answer=outdated), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("fail", ("schema_outdated",))


def test_slower_than_threshold_warns() -> None:
    limit = SETTINGS.health_warn_latency_ms
    assert assess(snapshot(observation(latency_ms=limit)), NOW, SCHEMA, SETTINGS).status == "pass"
    verdict = assess(snapshot(observation(latency_ms=limit + 0.1)), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("warn", ("slow",))
    assert verdict.http_status == 200


def test_latency_threshold_setting_is_honoured() -> None:
    strict = make_settings(HEALTH_WARN_LATENCY_MS="2")
    assert assess(snapshot(observation(latency_ms=3.0)), NOW, SCHEMA, strict).status == "warn"


def test_pool_nearly_full_warns() -> None:
    assert assess(snapshot(observation(pool_in_use=8)), NOW, SCHEMA, SETTINGS).status == "pass"
    verdict = assess(snapshot(observation(pool_in_use=9)), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("warn", ("pool_nearly_exhausted",))


def test_unpooled_app_never_warns_about_the_pool() -> None:
    """DB_POOL=null: no capacity, so no ratio (and no division by zero)."""
    latest = observation(pool_in_use=50, pool_capacity=None)
    assert assess(snapshot(latest), NOW, SCHEMA, SETTINGS) == Verdict("pass", ())


def test_schema_ahead_of_the_code_warns_so_old_replicas_keep_serving() -> None:
    """After a newer release migrated the database, the old replicas must stay in rotation."""
    verdict = assess(snapshot(observation(revision="0002_newer")), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("warn", ("schema_ahead",))
    body = document(snapshot(observation(revision="0002_newer")))
    (migrations,) = body["checks"]["migrations:revision"]
    assert (migrations["observedValue"], migrations["status"]) == ("0002_newer", "warn")


def test_schema_states() -> None:
    assert [SCHEMA.state(r) for r in (None, HEAD, "0000_old", "0002_newer")] == [
        "missing", "current", "behind", "ahead",
    ]  # fmt: skip


def test_warn_reasons_accumulate() -> None:
    latest = observation(latency_ms=900.0, pool_in_use=10)
    verdict = assess(snapshot(latest), NOW, SCHEMA, SETTINGS)
    assert verdict == Verdict("warn", ("slow", "pool_nearly_exhausted"))


# ---------------------------------------------------------------------------- health_document


def document(
    snap: Snapshot | None, *, include_output: bool = False, settings: Settings = SETTINGS
) -> dict:
    verdict = assess(snap, NOW, SCHEMA, settings)
    return health_document(
        snap, verdict, SCHEMA, settings, version="0.1.0", include_output=include_output
    )


def test_media_type_is_the_ietf_one() -> None:
    assert MEDIA_TYPE == "application/health+json"


def test_document_top_level_fields() -> None:
    body = document(snapshot(observation()))
    assert body["status"] == "pass"
    assert body["version"] == "0"  # the public API's major version, not the build
    assert body["releaseId"] == "r-42"
    assert body["serviceId"] == "db-service-test"
    assert isinstance(body["description"], str) and body["description"]
    assert "notes" not in body
    assert set(body["checks"]) == {
        "postgresql:responseTime",
        "postgresql:connections",
        "migrations:revision",
    }


def test_checks_carry_the_observed_values() -> None:
    latest = observation(latency_ms=12.3456, pool_in_use=4, age_s=0.25)
    checks = document(snapshot(latest))["checks"]
    for name, entries in checks.items():
        assert isinstance(entries, list) and len(entries) == 1, name
        entry = entries[0]
        assert entry["componentType"] == "datastore"
        assert {"observedValue", "status", "time"} <= set(entry), name
        assert datetime.fromisoformat(entry["time"]).timestamp() == pytest.approx(WALL - 0.25)
        assert "output" not in entry
    (response_time,) = checks["postgresql:responseTime"]
    assert response_time["observedValue"] == 12.346  # milliseconds, to the microsecond
    assert response_time["observedUnit"] == "ms"
    assert response_time["status"] == "pass"
    (connections,) = checks["postgresql:connections"]
    assert connections["observedValue"] == 4
    assert connections["observedUnit"] == "connections"
    assert connections["poolSize"] == 10
    assert connections["status"] == "pass"
    (migrations,) = checks["migrations:revision"]
    assert migrations["observedValue"] == HEAD
    assert migrations["head"] == HEAD
    assert migrations["status"] == "pass"


def test_starting_document_has_status_and_notes_only() -> None:
    body = document(None)
    assert body["status"] == "fail"
    assert body["notes"] == ["starting"]
    assert "checks" not in body


def test_outage_document_marks_response_time_failed() -> None:
    stale = observation(age_s=10.0)
    body = document(snapshot(failed(failure="database_unavailable"), last_answer=stale))
    assert body["status"] == "fail"
    assert body["notes"] == ["database_unavailable"]
    (response_time,) = body["checks"]["postgresql:responseTime"]
    assert response_time["status"] == "fail"
    assert response_time["observedValue"] is None
    (migrations,) = body["checks"]["migrations:revision"]
    assert datetime.fromisoformat(migrations["time"]).timestamp() == pytest.approx(WALL - 10.0)


def test_tolerated_failure_marks_response_time_warn() -> None:
    body = document(snapshot(failed(), last_answer=observation(age_s=1.0)))
    assert body["status"] == "warn"
    assert body["checks"]["postgresql:responseTime"][0]["status"] == "warn"


def test_slow_and_full_pool_are_flagged_on_their_checks() -> None:
    body = document(snapshot(observation(latency_ms=900.0, pool_in_use=10)))
    assert body["checks"]["postgresql:responseTime"][0]["status"] == "warn"
    assert body["checks"]["postgresql:connections"][0]["status"] == "warn"
    assert body["checks"]["migrations:revision"][0]["status"] == "pass"


def test_outdated_schema_fails_the_migrations_check() -> None:
    body = document(snapshot(observation(revision="0000_old")))
    (migrations,) = body["checks"]["migrations:revision"]
    assert (migrations["observedValue"], migrations["head"]) == ("0000_old", HEAD)
    assert migrations["status"] == "fail"


def test_output_only_when_asked_for() -> None:
    """Error text is for ops callers; the anonymous document never carries it."""
    detail = 'connection to server at "db.internal", port 5432 failed: Connection refused'
    snap = snapshot(failed(detail=detail), last_answer=observation(age_s=10.0))
    anonymous = document(snap, include_output=False)
    assert "output" not in anonymous["checks"]["postgresql:responseTime"][0]
    assert "db.internal" not in repr(anonymous)
    ops = document(snap, include_output=True)
    assert ops["checks"]["postgresql:responseTime"][0]["output"] == detail


def test_no_output_key_when_there_is_no_detail() -> None:
    body = document(snapshot(observation()), include_output=True)
    assert "output" not in body["checks"]["postgresql:responseTime"][0]


def test_sqlite_component_is_named_after_the_dialect() -> None:
    settings = make_settings(DATABASE_URL="sqlite:////tmp/health-verdict.sqlite3")
    body = document(snapshot(observation(pool_capacity=None)), settings=settings)
    assert set(body["checks"]) == {
        "sqlite:responseTime",
        "sqlite:connections",
        "migrations:revision",
    }


# ---------------------------------------------------------------------------- at the thresholds


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
