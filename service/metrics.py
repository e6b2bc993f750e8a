"""Prometheus metrics at GET /metrics: requests, latency, the pool, shed requests, health.

Under gunicorn each worker writes its samples to PROMETHEUS_MULTIPROC_DIR and the worker that
answers a scrape sums them all; health values come from that worker's checker at scrape time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import event
from sqlalchemy.engine import Engine

from service.security import ops_only

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ  # prometheus_client decides at import too
UNMATCHED = "unmatched"  # requests that matched no route (404, 405): labels stay bounded
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

disable_created_metrics()  # multiprocess mode has no `*_created`: one output in both modes
REGISTRY = CollectorRegistry(auto_describe=True)  # ours, so several apps in one process can coexist

REQUESTS = Counter(
    "service_http_requests",
    "HTTP requests answered, by Flask endpoint, method and status code.",
    ("endpoint", "method", "status"),
    registry=REGISTRY,
)
LATENCY = Histogram(
    "service_http_request_duration_seconds",
    "Time spent in the app per request, by Flask endpoint and status code.",
    ("endpoint", "status"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SHED = Counter(
    "service_http_requests_shed",
    "Requests answered 503 overloaded: no pooled connection within DB_POOL_TIMEOUT_S.",
    registry=REGISTRY,
)
POOL_IN_USE = Gauge(
    "service_db_pool_connections_in_use",
    "Database connections checked out by requests now, summed over live workers.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "service_db_pool_size",
    "Connections the workers may hold (pool size + overflow), summed over live workers.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)


# (endpoint, method, status) -> its counter and histogram; as bounded as the labels themselves.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


class Metrics:
    """The Flask extension: times every request, follows the pool, serves /metrics."""

    def init_app(self, app: Flask, engine: Engine, pool_capacity: int | None) -> None:
        app.before_request(_start_clock)
        app.after_request(_record_request)
        app.add_url_rule("/metrics", "metrics", ops_only(_serve), methods=["GET"])
        event.listen(engine, "checkout", lambda *_: POOL_IN_USE.inc())
        event.listen(engine, "checkin", lambda *_: POOL_IN_USE.dec())
        app.extensions["metrics"] = pool_capacity or 0
        if not MULTIPROCESS:  # one process serves (the test client, `flask run`)
            self.start_process(app)

    @staticmethod
    def start_process(app: Flask) -> None:
        """Count this serving process's pool (not at import: the master would count too)."""
        POOL_SIZE.set(app.extensions["metrics"])

    @staticmethod
    def forget_process(pid: int) -> None:
        """Drop a dead worker's live gauges (in gunicorn's master); its counters stay counted."""
        if MULTIPROCESS:
            prometheus_multiprocess.mark_process_dead(pid)


def count_shed() -> None:
    SHED.inc()


def _start_clock() -> None:
    g.metrics_started = time.perf_counter()


def record(endpoint: str, method: str, status: int, elapsed_s: float) -> None:
    """Count one answered request and its latency."""
    method = method if method in KNOWN_METHODS else "other"
    key = (endpoint, method, status)
    counted = _children.get(key)
    if counted is None:  # labels() validates and locks: once per label set, not per request
        code = str(status)
        counted = REQUESTS.labels(endpoint, method, code), LATENCY.labels(endpoint, code)
        _children[key] = counted
    counted[0].inc()
    counted[1].observe(elapsed_s)


def _record_request(response: Response) -> Response:
    """Runs for error responses too (Flask finalizes those through after_request)."""
    started = g.get("metrics_started")
    if started is not None:
        rule = request.url_rule
        endpoint = rule.endpoint if rule is not None else UNMATCHED
        record(endpoint, request.method, response.status_code, time.perf_counter() - started)
    return response


def _serve() -> Response:
    """The Prometheus text format: every worker's samples plus this worker's live view."""
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        prometheus_multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    registry.register(_HealthCollector(current_app._get_current_object()))  # type: ignore[attr-defined]
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry), content_type=content_type)


class _HealthCollector:
    """Health and database-check values read from this worker's checker at scrape time."""

    def __init__(self, app: Flask) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        settings = self._app.config["SETTINGS"]
        monitor = self._app.extensions["health"]
        snapshot, verdict = monitor.current()
        info = GaugeMetricFamily(
            "service_info",
            "Always 1; the labels say what is running.",
            labels=("service", "release", "version"),
        )
        release = settings.release_id or monitor.version
        info.add_metric((settings.service_id, release, monitor.version), 1.0)
        yield info
        status = GaugeMetricFamily(
            "service_health_status",
            "1 for the health verdict this worker reports now (pass, warn or fail), 0 otherwise.",
            labels=("status",),
        )
        for name in ("pass", "warn", "fail"):
            status.add_metric((name,), 1.0 if verdict.status == name else 0.0)
        yield status
        latest = snapshot.latest if snapshot is not None else None
        answered = latest is not None and latest.answered
        yield GaugeMetricFamily(
            "service_db_up",
            "1 when the latest background check got an answer from the database.",
            value=1.0 if answered else 0.0,
        )
        latency_s = latest.latency_s if latest is not None and answered else None
        yield GaugeMetricFamily(
            "service_db_check_latency_seconds",
            "Duration of the latest background database check (NaN when it got no answer).",
            value=latency_s if latency_s is not None else math.nan,
        )
        yield GaugeMetricFamily(
            "service_db_check_age_seconds",
            "Seconds since the latest background database check finished.",
            value=time.monotonic() - latest.monotonic_at if latest is not None else math.nan,
        )
