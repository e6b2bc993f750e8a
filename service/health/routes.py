"""Health endpoints. None of them touches the database: they read the checker's last look.

Probes usually never reach these views: `service.health.fastpath` answers them before Flask's
request machinery, through the same `HealthMonitor.respond`. The views remain the documented
routes (in the URL map, the OpenAPI description and the tests) and serve what the fast path
hands on, such as a production request carrying an Authorization header.
"""

from __future__ import annotations

from flask import Response, current_app, request

from service.health import bp
from service.health.monitor import MEDIA_TYPE, HealthMonitor
from service.security import is_ops_caller


def _respond(probe: str) -> Response:
    monitor: HealthMonitor = current_app.extensions["health"]
    include_output = is_ops_caller(request, monitor.settings)
    status, body, cache_control = monitor.respond(probe, include_output=include_output)
    response = Response(body, status=status, mimetype=MEDIA_TYPE)
    response.headers["Cache-Control"] = cache_control
    return response


@bp.get("/live")
def live() -> Response:
    """Liveness: the process serves requests. Never depends on the database."""
    return _respond("live")


@bp.get("/ready")
def ready() -> Response:
    """Readiness: the database answers and the schema is not behind the migrations' head."""
    return _respond("ready")


@bp.get("")
def health() -> Response:
    """The load balancers' endpoint: readiness's verdict with the full report."""
    return _respond("health")
