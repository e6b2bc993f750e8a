"""Who sees operational detail in production: only a caller with `Bearer <OPS_TOKEN>`.

Detail only exists while something fails, so the app here points at a port nobody listens on:
its health checks fail with the driver's error text, which is exactly what must not leak.
"""

from __future__ import annotations

import pytest
from flask.cli import routes_command

from harness.processes import free_port
from tests.test_health_endpoints import wait_for_response

TOKEN = "ops-token-0123456789abcdef"
PRODUCTION = {"APP_ENV": "production", "SECRET_KEY": "k" * 64}


@pytest.fixture
def down_url() -> str:
    return f"postgresql://app:pw-never-shown@127.0.0.1:{free_port()}/app"


def health(client, **headers: str):
    response = wait_for_response(client, "/api/health", lambda r: r.status_code == 503)
    response = client.get("/api/health", headers=headers)
    assert response.status_code == 503
    return response, response.get_json()["checks"]["postgresql:responseTime"][0]


def test_production_shows_the_error_text_only_to_the_ops_token(make_app, down_url) -> None:
    client = make_app(DATABASE_URL=down_url, OPS_TOKEN=TOKEN, **PRODUCTION).test_client()
    anonymous, check = health(client)
    assert "output" not in check
    assert anonymous.headers["Cache-Control"] == "no-cache"
    for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", f"Bearer{TOKEN}", "Bearer ", TOKEN):
        assert "output" not in health(client, Authorization=wrong)[1], wrong
    for right in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}"):
        response, check = health(client, Authorization=right)
        assert "refused" in check["output"], right
        assert "pw-never-shown" not in response.get_data(as_text=True)
        assert response.headers["Cache-Control"] == "private, no-cache"


def test_production_without_a_token_shows_nobody_the_detail(make_app, down_url) -> None:
    client = make_app(DATABASE_URL=down_url, **PRODUCTION).test_client()
    for headers in ({}, {"Authorization": "Bearer anything-at-all-long"}, {"Authorization": ""}):
        response, check = health(client, **headers)
        assert "output" not in check, headers
        assert response.headers["Cache-Control"] == "no-cache"
    ready = client.get("/api/health/ready", headers={"Authorization": "Bearer x"})
    assert ready.status_code == 503 and ready.get_json()["notes"] == ["database_unavailable"]
    assert client.get("/api/db/test", headers={"Authorization": "Bearer x"}).status_code == 404
    assert client.get("/metrics").status_code == 404


def test_outside_production_everyone_is_an_ops_caller(make_app, down_url) -> None:
    client = make_app(DATABASE_URL=down_url, OPS_TOKEN=TOKEN).test_client()
    response, check = health(client)
    assert "refused" in check["output"]
    assert response.headers["Cache-Control"] == "no-cache"  # not private outside production
    assert client.get("/api/db/test").status_code == 503  # open, and the database is down


def test_production_ops_endpoints_ask_for_a_bearer_token(make_app) -> None:
    client = make_app(OPS_TOKEN=TOKEN, **PRODUCTION).test_client()
    for path in ("/api/db/test", "/metrics"):
        anonymous = client.get(path)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        assert anonymous.get_json()["error"]["code"] == "unauthorized"
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_guarded_views_keep_their_names_for_operators(make_app) -> None:
    """`flask routes` lists the ops endpoint under its own name, guarded or not."""
    runner = make_app(OPS_TOKEN=TOKEN, **PRODUCTION).test_cli_runner()
    result = runner.invoke(routes_command)
    assert result.exit_code == 0
    assert "db.test" in result.output
