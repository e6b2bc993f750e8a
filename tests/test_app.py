"""The app factory: blueprints, JSON errors, request ids, engine settings, the API description."""

from __future__ import annotations

import json
import logging

import pytest
from openapi_spec_validator import validate
from sqlalchemy import text

from service.extensions import db
from service.openapi import document_for
from tests.openapi import SPEC_PATH


def test_factory_registers_the_db_and_health_blueprints(app):
    assert {"db", "health"} <= set(app.blueprints)
    assert "/api/db/test" in {rule.rule for rule in app.url_map.iter_rules()}
    client = app.test_client()
    for path in ("/api/health", "/api/health/live", "/api/health/ready"):  # the health responder's
        response = client.get(path)
        assert response.status_code in (200, 503)
        assert response.mimetype == "application/health+json"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [("GET", "/nowhere", 404, "not_found"), ("DELETE", "/api/health", 405, "method_not_allowed")],
)
def test_http_errors_answer_json(client, method, path, status, code):
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.is_json
    assert response.get_json()["error"]["code"] == code
    assert "<html" not in response.get_data(as_text=True).lower()


def test_method_not_allowed_keeps_the_allow_header(client):
    response = client.post("/api/db/test")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]


def test_an_unhandled_error_is_a_json_500_without_a_traceback(make_app, caplog):
    app = make_app()

    @app.get("/explode")
    def explode():
        raise RuntimeError("secret internals")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/explode")
    assert response.status_code == 500
    assert response.get_json() == {
        "error": {"code": "internal_error", "message": "internal server error"}
    }
    assert "secret internals" not in response.get_data(as_text=True)
    assert "secret internals" in caplog.text  # but operators see it in the log


def test_a_database_outage_in_any_route_is_a_json_503(make_app):
    app = make_app(DATABASE_URL="postgresql://app:pw@127.0.0.1:1/none", DB_CONNECT_TIMEOUT_S="1")

    @app.get("/count")
    def count():
        return {"users": db.session.scalar(text('SELECT count(*) FROM "user"'))}

    response = app.test_client().get("/count")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert "127.0.0.1" not in response.get_data(as_text=True)


def test_request_ids_are_taken_or_generated(client):
    given = client.get("/api/health/live", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    generated = client.get("/api/health/live")
    assert len(generated.headers["X-Request-ID"]) == 32
    for hostile in ("<script>alert(1)</script>", "a b", "x" * 129):
        response = client.get("/api/health/live", headers={"X-Request-ID": hostile})
        assert response.headers["X-Request-ID"] != hostile
        assert len(response.headers["X-Request-ID"]) == 32


def test_every_connection_carries_the_timeouts_and_a_name(app):
    with app.app_context():
        settings = db.session.execute(
            text(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
                " current_setting('application_name')"
            )
        ).one()
        assert tuple(settings) == ("2s", "1s", "db-service")
        engine = db.engine
        assert engine.pool._pre_ping
        db.session.rollback()


def test_without_app_pooling_timeouts_are_set_per_transaction(make_app):
    app = make_app(DB_POOL="null", DB_STATEMENT_TIMEOUT_MS="1500", DB_LOCK_TIMEOUT_MS="700")
    with app.app_context():
        row = db.session.execute(
            text("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
        ).one()
        assert tuple(row) == ("1500ms", "700ms")
        db.session.rollback()
        assert type(db.engine.pool).__name__ == "NullPool"


def test_the_startup_line_masks_the_database_password(make_app, database_url, capsys):
    make_app(DATABASE_URL=database_url.replace("postgres@", "postgres:hunter2-pw@"))
    output = capsys.readouterr()
    assert "service ready" in output.out
    assert "hunter2-pw" not in output.out + output.err
    assert "postgres:***@" in output.out


def test_the_api_description_is_valid_openapi_3_1_and_served(client):
    spec = json.loads(SPEC_PATH.read_text())
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) == {
        "/api/health", "/api/health/live", "/api/health/ready", "/api/db/test", "/api/me",
    }  # fmt: skip
    served = client.get("/api/openapi.json")
    assert served.status_code == 200
    # Outside production the token-guarded operations are open, and the served document says so.
    assert served.get_json() == json.loads(document_for(production=False))
    validate(served.get_json())
