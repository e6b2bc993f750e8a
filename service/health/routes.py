"""Health endpoints. None of them touches the database: they read the checker's last look."""

from __future__ import annotations

import json

from flask import Response, current_app, request

from service.health import bp
from service.health.monitor import MEDIA_TYPE, HealthMonitor
from service.security import is_ops_caller

_LIVE_BODY = json.dumps({"status": "pass"}).encode()


def _monitor() -> HealthMonitor:
    return current_app.extensions["health"]


def _health_response(body: bytes, status: int, cache_control: str) -> Response:
    response = Response(body, status=status, mimetype=MEDIA_TYPE)
    response.headers["Cache-Control"] = cache_control
    return response


@bp.get("/live")
def live() -> Response:
    """Liveness: the process serves requests. Never depends on the database."""
    return _health_response(_LIVE_BODY, 200, "no-store")


@bp.get("/ready")
def ready() -> Response:
    """Readiness: the database answers and the schema is at the migrations' head."""
    monitor = _monitor()
    _, verdict = monitor.current()
    body = {"status": verdict.status}
    if verdict.reasons:
        body["notes"] = list(verdict.reasons)
    return _health_response(json.dumps(body).encode(), verdict.http_status, monitor.cache_control)


@bp.get("")
def health() -> Response:
    """The load balancers' endpoint: readiness's verdict with the full report."""
    monitor = _monitor()
    include_output = is_ops_caller(request, monitor.settings)
    body, verdict = monitor.report(include_output=include_output)
    cache_control = monitor.cache_control
    if include_output and monitor.settings.is_production:
        cache_control = f"private, {cache_control}"
    return _health_response(body, verdict.http_status, cache_control)
