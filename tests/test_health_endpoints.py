"""Health and verification endpoints through the Flask test client, against real PostgreSQL.

What load balancers and operators rely on: status codes and media types, caching headers, the
verification's report (and that it leaves nothing behind), the schema checks, the production
gate in front of operational detail, and that a probe storm does not become a query storm.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg2 import sql
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from harness.pgcluster import TemporaryCluster
from harness.service import AppFactory, DatabaseFactory, migrate
from service.health.report import MEDIA_TYPE
from service.schema import SchemaVersions, schema_versions

OPS_TOKEN = "ops-token-" + "7" * 24
PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "k" * 64,
    "OPS_TOKEN": OPS_TOKEN,
}
OPS_HEADERS = {"Authorization": f"Bearer {OPS_TOKEN}"}
# Words that only appear in error text or SQL; an anonymous body must contain none of them.
ERROR_TEXT_MARKERS = (
    "SELECT",
    "alembic_version",
    "refused",
    "could not",
    "connection to server",
    "Error",
    "Traceback",
    "psycopg",
    "sqlalchemy",
    "output",
)


def query(url: str, statement: str | sql.Composable, params: tuple = ()) -> list[tuple[Any, ...]]:
    """Run one statement on `url` in autocommit mode, outside the app, and return its rows."""
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description is not None else []
    finally:
        connection.close()


def wait_for_response(
    client: FlaskClient,
    path: str,
    accept: Callable[[TestResponse], bool],
    timeout_s: float = 3.0,
    **kwargs: Any,
) -> TestResponse:
    """GET `path` until `accept` holds (the checker's first look takes a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(path, **kwargs)
        if accept(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def body_json(response: TestResponse) -> dict[str, Any]:
    return json.loads(response.get_data())


def is_pass(response: TestResponse) -> bool:
    return response.status_code == 200 and body_json(response)["status"] == "pass"


def is_fail(response: TestResponse) -> bool:
    return response.status_code == 503


# ------------------------------------------------------------------------ status and headers


def test_live_answers_200_and_is_never_cached(client: FlaskClient) -> None:
    response = client.get("/api/health/live")
    assert response.status_code == 200
    assert response.mimetype == MEDIA_TYPE
    assert body_json(response) == {"status": "pass"}
    assert response.headers["Cache-Control"] == "no-store"


def test_ready_and_health_pass_on_a_migrated_database(client: FlaskClient) -> None:
    health = wait_for_response(client, "/api/health", is_pass)
    assert health.status_code == 200, health.get_data(as_text=True)
    assert health.mimetype == MEDIA_TYPE
    document = body_json(health)
    assert document["status"] == "pass"
    (migrations,) = document["checks"]["migrations:revision"]
    assert migrations["observedValue"] == migrations["head"] == schema_versions().head
    (response_time,) = document["checks"]["postgresql:responseTime"]
    assert response_time["observedUnit"] == "ms" and response_time["observedValue"] >= 0
    ready = client.get("/api/health/ready")
    assert ready.status_code == 200
    assert ready.mimetype == MEDIA_TYPE
    assert body_json(ready) == {"status": "pass"}


def max_age(cache_control: str) -> float:
    """Seconds a cache may reuse the response (0 when it must revalidate or not store)."""
    directives = [part.strip() for part in cache_control.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    ages = [float(d.partition("=")[2]) for d in directives if d.startswith("max-age=")]
    assert ages, f"Cache-Control {cache_control!r} neither forbids caching nor bounds it"
    return ages[0]


@pytest.mark.parametrize(
    ("interval", "stale_after"), [("0.1", "0.6"), ("2", "5"), ("5", "12")], ids=str
)
def test_cache_control_is_bounded_by_the_check_interval(
    make_app: AppFactory, interval: str, stale_after: str
) -> None:
    """A cache may spare us probes, but never serve a verdict older than one check interval."""
    app = make_app(HEALTH_CHECK_INTERVAL_S=interval, HEALTH_STALE_AFTER_S=stale_after)
    client = app.test_client()
    for path in ("/api/health", "/api/health/ready"):
        response = wait_for_response(client, path, lambda r: r.status_code == 200)
        assert response.status_code == 200
        age = max_age(response.headers["Cache-Control"])
        assert age <= float(interval), (path, response.headers["Cache-Control"])
        if float(interval) >= 1:
            assert age >= 1, "probes should be cacheable when checks are a second apart"


# ---------------------------------------------------------------------------- /api/db/test


def count_verification_rows(url: str) -> int:
    return query(url, "SELECT count(*) FROM verification")[0][0]


def test_db_test_reports_the_database_and_leaves_no_row(
    client: FlaskClient, database_url: str
) -> None:
    before = count_verification_rows(database_url)
    for _ in range(3):
        response = client.get("/api/db/test")
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "application/json"
    body = body_json(response)
    assert body["status"] == "ok"
    assert body["database"]["name"] == make_url(database_url).database
    assert body["database"]["serverVersion"] == query(database_url, "SHOW server_version")[0][0]
    assert 0 <= body["roundTripMs"] <= body["latencyMs"] < 2000
    assert body["migrations"] == {"current": schema_versions().head, "head": schema_versions().head}
    assert body["tables"] == {"user": True, "session": True, "account": True, "verification": True}
    assert body["writeCheck"] == {"inserted": True, "readBack": True, "rolledBack": True}
    assert count_verification_rows(database_url) == before
    leftovers = query(
        database_url, "SELECT count(*) FROM verification WHERE identifier LIKE 'db-test:%%'"
    )
    assert leftovers == [(0,)]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_unmigrated_database_is_schema_outdated_and_fails_health(
    make_app: AppFactory, databases: DatabaseFactory, tmp_path: Path, backend: str
) -> None:
    url = databases.create() if backend == "postgresql" else f"sqlite:///{tmp_path}/empty.db"
    client = make_app(DATABASE_URL=url).test_client()
    response = client.get("/api/db/test")
    assert response.status_code == 503
    body = body_json(response)
    assert body["error"]["code"] == "schema_outdated"
    assert body["error"]["message"] == "the schema is not at the migrations' head"
    assert response.headers["Retry-After"] == "1"
    details = body["error"]["details"]
    assert details["migrations"] == {"current": None, "head": schema_versions().head}
    assert details["tables"] == dict.fromkeys(("user", "session", "account", "verification"), False)

    health = wait_for_response(client, "/api/health", lambda r: "starting" not in r.text)
    assert health.status_code == 503
    assert health.mimetype == MEDIA_TYPE
    assert body_json(health)["status"] == "fail"
    assert body_json(health)["notes"] == ["schema_missing"]
    ready = client.get("/api/health/ready")
    assert (ready.status_code, body_json(ready)) == (
        503,
        {"status": "fail", "notes": ["schema_missing"]},
    )
    assert client.get("/api/health/live").status_code == 200  # never the database's fault


def test_code_newer_than_the_schema_is_schema_outdated(
    make_app: AppFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New code deployed before its migration ran: the database is behind, not ready."""
    shipped = schema_versions()
    newer_code = SchemaVersions(head="9999_next", known=shipped.known | {"9999_next"})
    monkeypatch.setattr("service.health.monitor.schema_versions", lambda: newer_code)
    monkeypatch.setattr("service.db.schema_versions", lambda: newer_code)
    client = make_app().test_client()

    response = client.get("/api/db/test")
    assert response.status_code == 503
    body = body_json(response)
    assert body["error"]["code"] == "schema_outdated"
    assert body["error"]["details"]["migrations"] == {
        "current": shipped.head,
        "head": "9999_next",
    }

    health = wait_for_response(client, "/api/health", lambda r: "starting" not in r.text)
    assert health.status_code == 503
    document = body_json(health)
    assert document["notes"] == ["schema_outdated"]
    (migrations,) = document["checks"]["migrations:revision"]
    assert (migrations["observedValue"], migrations["status"]) == (shipped.head, "fail")


def test_a_schema_ahead_of_the_code_keeps_serving(
    make_app: AppFactory, databases: DatabaseFactory
) -> None:
    """A newer release migrated the database: old replicas stay ready (warn) and working."""
    url = databases.create()
    migrate(url)
    query(url, "UPDATE alembic_version SET version_num = '0002_newer'")
    client = make_app(DATABASE_URL=url).test_client()

    response = client.get("/api/db/test")
    assert response.status_code == 200
    assert body_json(response)["migrations"] == {
        "current": "0002_newer",
        "head": schema_versions().head,
    }

    health = wait_for_response(client, "/api/health", lambda r: "starting" not in r.text)
    assert health.status_code == 200
    assert body_json(health)["status"] == "warn"
    assert body_json(health)["notes"] == ["schema_ahead"]
    assert client.get("/api/health/ready").status_code == 200


def test_a_database_we_may_not_read_is_an_error_not_a_missing_schema(
    make_app: AppFactory, database_url: str
) -> None:
    """Permission denied on alembic_version: the database answers but is unusable to us."""
    role = f"limited_{uuid.uuid4().hex[:8]}"
    query(database_url, f"CREATE ROLE {role} LOGIN")
    try:
        limited_url = database_url.replace("postgres@", f"{role}@", 1)
        client = make_app(DATABASE_URL=limited_url).test_client()
        ready = wait_for_response(client, "/api/health/ready", lambda r: r.status_code == 503)
        assert body_json(ready) == {"status": "fail", "notes": ["database_error"]}
    finally:
        query(database_url, f"DROP ROLE {role}")


# ------------------------------------------------------------------------------- production


def test_production_db_test_needs_the_ops_token(make_app: AppFactory) -> None:
    client = make_app(**PRODUCTION).test_client()
    anonymous = client.get("/api/db/test")
    assert anonymous.status_code == 401
    assert anonymous.mimetype == "application/json"
    assert anonymous.headers["WWW-Authenticate"].lower().startswith("bearer")
    for authorization in (
        "Bearer wrong-token-but-long-enough",
        f"Bearer {OPS_TOKEN}x",
        f"Bearer {OPS_TOKEN[:-1]}",
        f"Basic {OPS_TOKEN}",
        OPS_TOKEN,
        "Bearer ",
    ):
        response = client.get("/api/db/test", headers={"Authorization": authorization})
        assert response.status_code == 401, authorization
    allowed = client.get("/api/db/test", headers=OPS_HEADERS)
    assert allowed.status_code == 200
    assert body_json(allowed)["status"] == "ok"


def test_production_without_ops_token_has_no_db_test(make_app: AppFactory) -> None:
    settings = {k: v for k, v in PRODUCTION.items() if k != "OPS_TOKEN"}
    client = make_app(**settings).test_client()
    assert client.get("/api/db/test").status_code == 404
    assert client.get("/api/db/test", headers=OPS_HEADERS).status_code == 404


def assert_reveals_nothing(
    text: str, secrets: tuple[str, ...], markers: tuple[str, ...] = ERROR_TEXT_MARKERS
) -> None:
    for word in (*secrets, *markers):
        assert word not in text, f"{word!r} leaked into an anonymous body: {text}"


def test_production_health_reveals_nothing_even_while_the_database_is_down(
    make_app: AppFactory, faulty_cluster: TemporaryCluster, cluster_database_url: str
) -> None:
    """Error text only exists during an outage, so that is when a leak would show."""
    suffix = uuid.uuid4().hex[:8]
    role, password = f"leakcheck_{suffix}", f"pw-{suffix}-do-not-show"
    faulty_cluster.psql(
        sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )
    url = make_url(cluster_database_url).set(username=role, password=password)
    secrets = (url.host, str(url.port), url.database, role, password, OPS_TOKEN)
    app: Flask = make_app(
        DATABASE_URL=url.render_as_string(hide_password=False),
        **PRODUCTION,
    )
    client = app.test_client()
    up = wait_for_response(client, "/api/health", is_pass)
    assert up.status_code == 200
    assert_reveals_nothing(up.get_data(as_text=True), secrets)

    faulty_cluster.stop()
    down = wait_for_response(client, "/api/health", is_fail)
    assert down.status_code == 503
    assert body_json(down)["notes"] == ["database_unavailable"]
    for path in ("/api/health", "/api/health/ready", "/api/health/live"):
        assert_reveals_nothing(client.get(path).get_data(as_text=True), secrets)
    anonymous_test = client.get("/api/db/test")
    assert anonymous_test.status_code == 401
    assert_reveals_nothing(anonymous_test.get_data(as_text=True), secrets, markers=())

    ops = client.get("/api/health", headers=OPS_HEADERS)
    assert ops.status_code == 503
    assert ops.headers["Cache-Control"].startswith("private")
    (response_time,) = body_json(ops)["checks"]["postgresql:responseTime"]
    output = response_time["output"]
    assert "refused" in output  # the real error text reaches ops callers...
    assert password not in ops.get_data(as_text=True)  # ...but never the password
    ops_test = client.get("/api/db/test", headers=OPS_HEADERS)
    assert ops_test.status_code == 503
    assert body_json(ops_test)["error"]["code"] == "database_unavailable"
    assert password not in ops_test.get_data(as_text=True)


# ------------------------------------------------------------------------------ probe storm


def transactions(cluster: TemporaryCluster, database: str) -> int:
    """Committed plus rolled-back transactions of `database`, as the statistics know them."""
    rows = cluster.psql(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
        (database,),
    )
    assert rows
    return int(rows[0][0])


def wait_until_no_sessions(cluster: TemporaryCluster, database: str) -> None:
    """Backends flush their statistics when they exit: wait for all of them to be gone."""
    deadline = time.monotonic() + 10
    while cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)) != [
        (0,)
    ]:
        assert time.monotonic() < deadline, "sessions on the storm database did not end"
        time.sleep(0.05)


@pytest.mark.serial  # probes per second against checks per second
def test_probe_storm_costs_one_query_per_interval(
    make_app: AppFactory, cluster: TemporaryCluster
) -> None:
    """Thousands of probes must not become thousands of queries (`too many clients`)."""
    database = f"storm_{uuid.uuid4().hex[:8]}"
    url = cluster.create_database(database)
    query(url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    query(url, "INSERT INTO alembic_version VALUES (%s)", (schema_versions().head,))
    wait_until_no_sessions(cluster, database)
    before = transactions(cluster, database)

    interval = 0.2
    app = make_app(
        DATABASE_URL=url,
        HEALTH_CHECK_INTERVAL_S=str(interval),
        # Staleness is not under test: a machine that stalls the checker for seconds must not
        # turn this into a test of staleness (test_health_checker.py has those).
        HEALTH_STALE_AFTER_S="30",
        HEALTH_CHECK_TIMEOUT_S="0.5",
    )
    client = app.test_client()
    started = time.monotonic()
    probes, refusals = 0, []
    while probes < 2000 or time.monotonic() - started < 1.5:
        response = client.get("/api/health")
        if response.status_code != 200:
            refusals.append((response.status_code, body_json(response).get("notes")))
        probes += 1
    app.extensions["health"].stop()  # its connection closes, so its statistics are flushed
    elapsed = time.monotonic() - started
    wait_until_no_sessions(cluster, database)
    spent = transactions(cluster, database) - before

    assert refusals == [], f"{len(refusals)} of {probes} probes refused: {refusals[:3]}"
    checks_possible = elapsed / interval + 1
    # Slack: SQLAlchemy's first connect runs a few set-up queries (version, schema, settings).
    assert 1 <= spent <= checks_possible + 10, (
        f"{probes} probes in {elapsed:.2f}s cost {spent} transactions "
        f"(at most {checks_possible:.0f} checks expected)"
    )
    assert spent * 50 < probes
