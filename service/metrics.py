"""Prometheus metrics at GET /metrics: requests, latency, the pool, health and the database check.

Under gunicorn every worker is a separate process, so counters kept in memory would only show the
worker that happened to answer the scrape. gunicorn.conf.py therefore sets PROMETHEUS_MULTIPROC_DIR
before anything imports prometheus_client (it decides at import time), each worker then writes its
samples to files there, and the worker serving /metrics sums them all (prometheus_client's
multiprocess mode). Without that variable (the test client, `flask run`) values stay in memory.

Label values are bounded: requests are labelled by Flask endpoint (the route, not the raw path), a
known method and the status code, so a scan of random URLs cannot create new series.

Health and the database check are read at scrape time from the answering worker's checker (every
worker's checker looks at the same database), so recording them costs nothing between scrapes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import event

from service.config import Settings
from service.database import pool_capacity
from service.security import ops_only

# Read once, like prometheus_client does when imported, so the two always agree.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
METRICS_PATH = "/metrics"
_STARTED = "service.metrics.started"  # environ key: perf_counter() when the request arrived
UNMATCHED = "unmatched"  # requests that matched no route (404, 405)
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
# Health probes answer in well under a millisecond; the database test in a few; a deadline is 2 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# `*_created` series double the output and multiprocess mode never has them: the same output in
# both modes is worth more.
disable_created_metrics()

# The process's own registry (not prometheus_client's global one), so that building several apps
# in one process (the tests do) never registers a metric twice.
REGISTRY = CollectorRegistry(auto_describe=True)

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
POOL_IN_USE = Gauge(
    "service_db_pool_connections_in_use",
    "Database connections checked out by requests now, summed over live workers.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "service_db_pool_size",
    "Connections the workers may hold (pool size + overflow), summed over live workers; "
    "0 when the app does not pool (DB_POOL=null).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

bp = Blueprint("metrics", __name__)

# (endpoint, method, status) -> the labelled counter and histogram: labels() costs a lock and
# validation on every call, a dict lookup does not. Bounded like the labels themselves.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def register_metrics(app: Flask, settings: Settings) -> None:
    """Time every request, count pool checkouts and serve /metrics (OPS_TOKEN in production)."""
    app.wsgi_app = _StartClock(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(_record_request)
    app.register_blueprint(bp)
    app.extensions["metrics"] = _LiveCollector(app)
    from service.extensions import db

    with app.app_context():
        engine = db.engine
    event.listen(engine, "checkout", _checked_out)
    event.listen(engine, "checkin", _checked_in)
    app.config["METRICS_POOL_CAPACITY"] = pool_capacity(settings) or 0
    if not MULTIPROCESS:
        init_process(app)


def init_process(app: Flask) -> None:
    """Record what this serving process contributes (gunicorn calls it in each new worker).

    Not done at import: with preload the master imports the app, and a value it set would be
    counted as if it were one more worker.
    """
    POOL_SIZE.set(app.config.get("METRICS_POOL_CAPACITY", 0))


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (gunicorn's child_exit); its counters stay counted."""
    if MULTIPROCESS:
        prometheus_multiprocess.mark_process_dead(pid)


def _checked_out(*_: Any) -> None:
    POOL_IN_USE.inc()


def _checked_in(*_: Any) -> None:
    POOL_IN_USE.dec()


class _StartClock:
    """WSGI middleware that notes when a request arrived, in its environ.

    Cheaper than a before_request hook writing to `g`: no context-local lookup per request.
    """

    __slots__ = ("wsgi_app",)

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ[_STARTED] = time.perf_counter()
        return self.wsgi_app(environ, start_response)


def _record_request(response: Response) -> Response:
    """after_request: runs for error responses too (Flask finalizes those through it)."""
    current = request._get_current_object()  # type: ignore[attr-defined] - one proxy lookup
    started = current.environ.get(_STARTED)
    if started is None:
        return response
    rule = current.url_rule
    endpoint = rule.endpoint if rule is not None else UNMATCHED
    record(endpoint, current.method, response.status_code, time.perf_counter() - started)
    return response


def record(endpoint: str, method: str, status: int, elapsed_s: float) -> None:
    """Count one answered request and its latency (also called by the health fast path)."""
    key = (endpoint, method if method in KNOWN_METHODS else "other", status)
    children = _children.get(key)
    if children is None:
        code = str(status)
        children = (REQUESTS.labels(endpoint, key[1], code), LATENCY.labels(endpoint, code))
        _children[key] = children
    children[0].inc()
    children[1].observe(elapsed_s)


@bp.get(METRICS_PATH)
@ops_only
def metrics() -> Response:
    """The Prometheus text format: every worker's samples plus this worker's live view."""
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        prometheus_multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    registry.register(current_app.extensions["metrics"])
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry), content_type=content_type)


class _LiveCollector:
    """Health and database-check values read from this worker's checker at scrape time."""

    def __init__(self, app: Flask) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        settings: Settings = self._app.config["SETTINGS"]
        monitor = self._app.extensions["health"]
        snapshot, verdict = monitor.current()

        info = GaugeMetricFamily(
            "service_info",
            "Always 1; the labels say what is running.",
            labels=("service", "release", "version"),
        )
        info.add_metric(
            (settings.service_id, settings.release_id or monitor.version, monitor.version), 1.0
        )
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
        latency_ms = latest.latency_ms if latest is not None else None
        yield GaugeMetricFamily(
            "service_db_check_latency_seconds",
            "Duration of the latest background database check (NaN when it got no answer).",
            value=latency_ms / 1000 if answered and latency_ms is not None else math.nan,
        )
        age = time.monotonic() - latest.monotonic_at if latest is not None else math.nan
        yield GaugeMetricFamily(
            "service_db_check_age_seconds",
            "Seconds since the latest background database check finished.",
            value=age,
        )
