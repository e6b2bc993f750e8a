"""GET /metrics: Prometheus text, read by prometheus-client's own parser, counting what was served.

In one process (the test client) and under the real gunicorn, where every worker writes its own
samples (multiprocess mode) and any worker's /metrics must sum them all.
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from flask import Flask, Response
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import children_of, free_port, wait_for
from harness.service import FAST_HEALTH, AppFactory, ServerFactory
from service import metrics
from service.extensions import db

OPS_TOKEN = "metrics-ops-token-0123456789"
PRODUCTION = {"APP_ENV": "production", "SECRET_KEY": "s" * 64}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample as {(name, labels): value}, read by prometheus-client's parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: FlaskClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    return parse(response.get_data(as_text=True))


def requests_total(samples: Samples, endpoint: str, status: str, method: str = "GET") -> float:
    return value(
        samples, "service_http_requests_total", endpoint=endpoint, method=method, status=status
    )


def test_metrics_count_what_was_served(client: FlaskClient) -> None:
    before = scrape(client)
    started = time.perf_counter()
    for _ in range(7):
        assert client.get("/api/health").status_code == 200
    probes_took = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(3):
        assert client.get("/api/db/test").status_code == 200
    db_tests_took = time.perf_counter() - started
    for _ in range(2):
        assert client.get("/no/such/page").status_code == 404
    after = scrape(client)

    def served(endpoint: str, status: str) -> float:
        return requests_total(after, endpoint, status) - requests_total(before, endpoint, status)

    assert served("health.health", "200") == 7
    assert served("db.test", "200") == 3
    assert served("unmatched", "404") == 2
    assert served("metrics", "200") == 1  # the first scrape
    count = "service_http_request_duration_seconds_count"
    db_test = {"endpoint": "db.test", "status": "200"}
    assert value(after, count, **db_test) - value(before, count, **db_test) == 3
    inf_bucket = value(after, "service_http_request_duration_seconds_bucket", le="+Inf", **db_test)
    assert inf_bucket == value(after, count, **db_test)

    def timed(endpoint: str) -> float:
        labels = {"endpoint": endpoint, "status": "200"}
        total = "service_http_request_duration_seconds_sum"
        return value(after, total, **labels) - value(before, total, **labels)

    # Each request's own duration: together no longer than the loop that sent them.
    assert 0 < timed("health.health") <= probes_took
    assert 0 < timed("db.test") <= db_tests_took


def test_pool_health_and_check_latency(app: Flask, client: FlaskClient) -> None:
    samples = scrape(client)
    assert value(samples, "service_db_pool_size") == 10  # DB_POOL_SIZE 5 + DB_MAX_OVERFLOW 5
    assert value(samples, "service_health_status", status="pass") == 1
    assert value(samples, "service_health_status", status="fail") == 0
    assert value(samples, "service_db_up") == 1
    assert 0 < value(samples, "service_db_check_latency_seconds") < 1
    assert value(samples, "service_db_check_age_seconds") < 1
    assert value(samples, "service_info", service="db-service", release="0.1.0", version="0.1.0")

    in_use = value(samples, "service_db_pool_connections_in_use")
    with app.app_context():
        connection = db.engine.connect()
        try:
            held = value(scrape(client), "service_db_pool_connections_in_use")
        finally:
            connection.close()
    assert held == in_use + 1
    assert value(scrape(client), "service_db_pool_connections_in_use") == in_use


def test_a_database_outage_shows_in_the_metrics(make_app: AppFactory) -> None:
    app = make_app(DATABASE_URL=f"postgresql://svc@127.0.0.1:{free_port()}/svc")
    client = app.test_client()
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(client)
        if (
            value(samples, "service_health_status", status="fail") == 1
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.1)
    assert value(samples, "service_health_status", status="fail") == 1
    assert value(samples, "service_db_up") == 0
    assert math.isnan(value(samples, "service_db_check_latency_seconds"))


def test_label_values_stay_bounded_under_a_scan(client: FlaskClient) -> None:
    for n in range(30):
        client.get(f"/scan/{n}/admin.php")
    client.open("/api/health", method="BREW")
    client.open("/scan/x", method="BREW")
    samples = scrape(client)
    endpoints = {
        dict(labels)["endpoint"]
        for name, labels in samples
        if name == "service_http_requests_total"
    }
    methods = {
        dict(labels)["method"] for name, labels in samples if name == "service_http_requests_total"
    }
    assert not any("scan" in endpoint for endpoint in endpoints)
    assert "BREW" not in methods and "other" in methods


def test_in_production_metrics_need_the_ops_token(make_app: AppFactory) -> None:
    closed = make_app(**PRODUCTION).test_client()
    assert closed.get("/metrics").status_code == 404  # no OPS_TOKEN: the endpoint does not exist
    guarded = make_app(**PRODUCTION, OPS_TOKEN=OPS_TOKEN).test_client()
    refused = guarded.get("/metrics")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert (
        guarded.get("/metrics", headers={"Authorization": "Bearer wrong-token-1234567"}).status_code
        == 401
    )
    scrape(guarded, Authorization=f"Bearer {OPS_TOKEN}")


def test_openmetrics_is_served_to_who_asks_for_it(client: FlaskClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


@pytest.mark.serial  # timings of CPU-bound code, compared
def test_request_metrics_cost_under_five_percent_of_a_health_probe(client: FlaskClient) -> None:
    """What the timing costs per request, against the fastest path it sits on (/api/health).

    Minimums of repeated runs, so other load on the machine does not count.
    """
    app = client.application
    number = 300
    probe = min(timeit.repeat(lambda: client.get("/api/health"), number=number, repeat=5)) / number

    response = Response(b"{}")
    with app.test_request_context("/api/health") as context:
        context.match_request()
        n = 5000
        stamp = min(timeit.repeat(metrics._start_clock, number=n, repeat=5))
        record = min(timeit.repeat(lambda: metrics._record_request(response), number=n, repeat=5))
    added = (record + stamp) / n
    print(
        f"\nmetrics: {added * 1e6:.2f} us per request, {100 * added / probe:.2f}% of "
        f"a {probe * 1e6:.0f} us /api/health through the test client"
    )
    assert added / probe < 0.05


# -------------------------------------------------------------------------- under gunicorn


def metric_files(directory: Path) -> dict[int, list[str]]:
    """{pid: [file names]} of the multiprocess files in `directory`."""
    found: dict[int, list[str]] = {}
    for path in directory.glob("*.db"):
        match = re.search(r"_(\d+)\.db$", path.name)
        if match:
            found.setdefault(int(match[1]), []).append(path.name)
    return found


def test_under_gunicorn_every_workers_requests_are_summed(
    serve: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale")  # a previous run's file
    process, base = serve(
        {"DATABASE_URL": database_url, "PROMETHEUS_MULTIPROC_DIR": str(directory), **FAST_HEALTH}
    )
    assert not (directory / "counter_999999.db").exists(), "a given folder is emptied at start"
    workers = wait_for(lambda: len(children_of(process.pid)) == 2 and children_of(process.pid), 10)

    number = 60
    # The fixture's readiness polls were counted too.
    baseline = requests_total(
        parse(requests.get(f"{base}/metrics", timeout=10).text), "health.live", "200"
    )

    def get(path: str) -> int:
        # A new connection per request, so either worker may take any of them.
        return requests.get(
            f"{base}{path}", headers={"Connection": "close"}, timeout=10
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(get, ["/api/health/live"] * number + ["/api/db/test"] * 6))
    assert set(statuses) == {200}
    written = [pid for pid in metric_files(directory) if pid in workers]
    assert sorted(written) == sorted(workers), "both workers write their samples"

    for _ in range(3):  # whichever worker answers the scrape, the sums are the same
        samples = parse(requests.get(f"{base}/metrics", timeout=10).text)
        assert requests_total(samples, "health.live", "200") == baseline + number
        assert requests_total(samples, "db.test", "200") == 6
        assert value(samples, "service_db_pool_size") == 20  # two workers x (5 + 5)
        assert value(samples, "service_db_pool_connections_in_use") == 0
        assert value(samples, "service_health_status", status="pass") == 1

    # A worker that dies takes its live gauges along; its counts stay in the sums.
    os.kill(workers[0], 9)
    # The replacement counts once it has written its gauges (a busy machine boots it slowly).
    wait_for(
        lambda: (set(children_of(process.pid)) - set(workers)) & set(metric_files(directory)),
        30,
        description="a replacement worker writing its gauges",
    )
    samples = parse(requests.get(f"{base}/metrics", timeout=10).text)
    assert requests_total(samples, "health.live", "200") == baseline + number
    assert value(samples, "service_db_pool_size") == 20  # the replacement worker counts instead
    process.terminate(signal.SIGINT)
    assert directory.exists(), "an operator's folder is left in place"
