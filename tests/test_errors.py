"""What a client sees when something fails: one JSON shape, the right status, code and message.

Database outages are 503s that ask the caller to come back (`Retry-After`); everything else that
escapes a view is a 500 without internals. Every failure here is produced for real: a held pool,
a closed or terminated connection, a missing route.
"""

from __future__ import annotations

import logging

import psycopg2
import pytest
from flask import Flask
from sqlalchemy import text

from service.extensions import db

MESSAGES = {
    "overloaded": "too many requests wait for the database; retry shortly",
    "timeout": "the database did not answer in time",
    "database_unavailable": "the database is unavailable",
}


def assert_outage(response, code: str) -> None:
    assert response.status_code == 503
    assert response.mimetype == "application/json"
    assert response.headers["Retry-After"] == "1"
    assert response.get_json() == {"error": {"code": code, "message": MESSAGES[code]}}


def shed_total(app: Flask) -> float:
    for line in app.test_client().get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith("service_http_requests_shed_total "):
            return float(line.split()[1])
    raise AssertionError("no shed counter in /metrics")


def test_an_exhausted_pool_sheds_with_503_overloaded(make_app, caplog) -> None:
    app = make_app(DB_POOL_SIZE="1", DB_MAX_OVERFLOW="0", DB_POOL_TIMEOUT_S="0.2")
    client = app.test_client()
    before = shed_total(app)
    with app.app_context(), db.engine.connect() as held:  # the worker's only pooled connection
        held.execute(text("SELECT 1"))
        with caplog.at_level(logging.WARNING, logger="service.errors"):
            response = client.get("/api/db/test")
    assert_outage(response, "overloaded")
    assert shed_total(app) == before + 1
    assert "overloaded" not in caplog.text  # counted, not logged: a line each would add load
    assert client.get("/api/db/test").status_code == 200  # released: served again


def test_a_closed_connection_is_503_database_unavailable(make_app) -> None:
    app = make_app()

    @app.get("/closed")
    def closed():
        connection = db.session.connection()
        connection.connection.dbapi_connection.close()  # psycopg2 InterfaceError on next use
        return {"n": connection.execute(text("SELECT 1")).scalar()}

    assert_outage(app.test_client().get("/closed"), "database_unavailable")


def test_a_terminated_backend_is_503_database_unavailable(make_app) -> None:
    """The server ends the session (failover, restart): the connection is invalidated."""
    app = make_app()

    @app.get("/terminated")
    def terminated():
        pid = db.session.scalar(text("SELECT pg_backend_pid()"))
        with db.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        return {"n": db.session.scalar(text("SELECT 1"))}

    assert_outage(app.test_client().get("/terminated"), "database_unavailable")


def test_a_raw_driver_error_is_503_database_unavailable(make_app) -> None:
    """Code that talks to psycopg2 directly gets the same answer as code that uses SQLAlchemy."""
    app = make_app()

    @app.get("/raw")
    def raw():
        raise psycopg2.OperationalError("could not connect to server")

    assert_outage(app.test_client().get("/raw"), "database_unavailable")


def test_a_statement_cancelled_by_the_server_is_503_timeout(make_app) -> None:
    app = make_app(DB_STATEMENT_TIMEOUT_MS="100")

    @app.get("/slow")
    def slow():
        return {"n": db.session.scalar(text("SELECT pg_sleep(1)"))}

    assert_outage(app.test_client().get("/slow"), "timeout")


def test_a_lock_not_obtained_in_time_is_503_timeout(make_app) -> None:
    app = make_app(DB_LOCK_TIMEOUT_MS="100")

    @app.get("/locked")
    def locked():
        with db.engine.connect() as holder:
            holder.execute(text("LOCK TABLE verification IN ACCESS EXCLUSIVE MODE"))
            db.session.execute(text("SELECT count(*) FROM verification"))
        return {}

    assert_outage(app.test_client().get("/locked"), "timeout")


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "message"),
    [
        ("GET", "/nowhere", 404, "not_found", "The requested URL was not found on the server."),
        ("DELETE", "/api/health", 405, "method_not_allowed", "The method is not allowed"),
    ],
)
def test_http_errors_carry_their_code_and_message(client, method, path, status, code, message):
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert (error["code"], error["message"][: len(message)]) == (code, message)
    assert "Retry-After" not in response.headers


def test_an_http_error_keeps_its_headers_but_not_its_html_type(make_app) -> None:
    app = make_app(APP_ENV="production", SECRET_KEY="k" * 32, OPS_TOKEN="a-long-enough-ops-token")
    response = app.test_client().get("/api/db/test")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_an_error_with_apostrophes_and_dashes_gets_a_snake_case_code(make_app) -> None:
    app = make_app()

    @app.get("/teapot")
    def teapot():
        from flask import abort

        abort(418)

    response = app.test_client().get("/teapot")
    assert response.status_code == 418
    assert response.get_json()["error"]["code"] == "im_a_teapot"


def test_any_other_error_is_a_plain_500_and_not_shed(make_app, caplog) -> None:
    app = make_app()

    @app.get("/explode")
    def explode():
        raise ValueError("internal detail")

    before = shed_total(app)
    with caplog.at_level(logging.ERROR, logger="service.errors"):
        response = app.test_client().get("/explode")
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
    assert response.get_json() == {
        "error": {"code": "internal_error", "message": "internal server error"}
    }
    assert "unhandled error" in caplog.text and "internal detail" in caplog.text
    assert shed_total(app) == before
