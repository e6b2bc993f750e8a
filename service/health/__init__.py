"""The `health` blueprint: liveness, readiness and the load balancers' health report.

None of the views touches the database: they read the background checker's latest look.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Flask, Response, current_app, request

from service.config import Settings
from service.health.checker import DatabaseProbe
from service.health.monitor import HealthMonitor
from service.health.report import MEDIA_TYPE
from service.security import is_ops_caller

bp = Blueprint("health", __name__, url_prefix="/api/health")


def init_app(
    app: Flask,
    settings: Settings,
    pool_in_use: Callable[[], int],
    capacity: int | None,
    version: str,
) -> None:
    """Give the app its health monitor; the checker starts on first use in a serving process."""
    probe = DatabaseProbe(settings, pool_in_use, capacity)
    app.extensions["health"] = HealthMonitor(settings, probe, version)


def _respond(probe: str) -> Response:
    monitor = current_app.extensions["health"]
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
    """Readiness: the database answers, the schema is not behind, the process is not draining."""
    return _respond("ready")


@bp.get("")
def health() -> Response:
    """The load balancers' endpoint: readiness's verdict with the full report."""
    return _respond("health")
