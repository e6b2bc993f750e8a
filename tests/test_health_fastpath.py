"""The health fast path answers exactly what the Flask views would, and nothing else."""

from __future__ import annotations

import pytest
from werkzeug.test import Client, TestResponse

from service.health.fastpath import PROBE_PATHS, HealthFastPath
from tests.conftest import AppFactory

STEADY = {"HEALTH_CHECK_INTERVAL_S": "60", "HEALTH_STALE_AFTER_S": "120"}  # one snapshot only
PRODUCTION = {"APP_ENV": "production", "SECRET_KEY": "k" * 32, "OPS_TOKEN": "t" * 24}


def both_ways(app, method: str, path: str, **kwargs) -> tuple[TestResponse, TestResponse]:
    fast_path: HealthFastPath = app.wsgi_app
    assert isinstance(fast_path, HealthFastPath)
    through_fast_path = Client(fast_path, TestResponse).open(path, method=method, **kwargs)
    through_flask = Client(fast_path.wsgi_app, TestResponse).open(path, method=method, **kwargs)
    return through_fast_path, through_flask


@pytest.mark.parametrize("environment", ["test", "production"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", sorted(PROBE_PATHS))
def test_the_fast_path_answers_as_the_flask_view_does(make_app, environment, method, path):
    settings = {**STEADY, **(PRODUCTION if environment == "production" else {})}
    app = make_app(**settings)
    app.extensions["health"].current()  # the first look, so both see the same snapshot
    fast, flask = both_ways(app, method, path, headers={"X-Request-ID": "probe-1"})
    assert fast.status_code == flask.status_code == 200
    assert fast.get_data() == flask.get_data()
    for header in ("Content-Type", "Cache-Control", "X-Request-ID", "Content-Length"):
        assert fast.headers.get(header) == flask.headers.get(header), header


def test_probes_do_not_enter_flask(make_app: AppFactory):
    app = make_app(**STEADY)
    entered: list[str] = []
    app.before_request(lambda: entered.append("flask"))
    client = app.test_client()
    for path in PROBE_PATHS:
        assert client.get(path).status_code == 200
    assert entered == []
    assert client.post("/api/health").status_code == 405  # not a probe: Flask answers
    assert client.get("/api/openapi.json").status_code == 200
    assert entered == ["flask", "flask"]


def test_production_callers_with_credentials_are_checked_by_flask(make_app: AppFactory):
    app = make_app(**STEADY, **PRODUCTION)
    entered: list[str] = []
    app.before_request(lambda: entered.append("flask"))
    client = app.test_client()
    assert client.get("/api/health").status_code == 200
    assert entered == []
    authorized = client.get("/api/health", headers={"Authorization": f"Bearer {'t' * 24}"})
    assert authorized.status_code == 200
    assert entered == ["flask"]
    assert authorized.headers["Cache-Control"].startswith("private")


def test_the_fast_path_gives_a_request_id_and_counts_the_probe(make_app: AppFactory):
    client = make_app(**STEADY).test_client()
    generated = client.get("/api/health/live").headers["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/api/health/live", headers={"X-Request-ID": "a b"}).headers[
        "X-Request-ID"
    ] not in ("a b", generated)
    metrics = client.get("/metrics").get_data(as_text=True)
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("service_http_requests_total{") and 'endpoint="health.live"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 2
