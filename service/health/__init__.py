"""The `health` blueprint: liveness, readiness and the load balancers' report, from memory.

Registering the blueprint puts `ProbeResponder` in front of Flask: the three routes below are
answered there, from the checker's latest look, and nowhere else. Why not Flask views: the
probes' cost, docs/architecture.md ("Request path").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Blueprint, Flask
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import MethodNotAllowed

from service import metrics
from service.config import Settings
from service.errors import error_body
from service.health.checker import DatabaseProbe
from service.health.monitor import HealthMonitor
from service.health.report import MEDIA_TYPE
from service.logs import REQUEST_ID_HEADER, request_id_from
from service.security import is_ops_caller

# path -> (probe, its name in the metrics, as a Flask endpoint would be named)
ROUTES = {
    "/api/health/live": ("live", "health.live"),
    "/api/health/ready": ("ready", "health.ready"),
    "/api/health": ("health", "health.health"),
}
METHODS = ("GET", "HEAD")

bp = Blueprint("health", __name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


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


@bp.record_once
def _answer_probes(state: BlueprintSetupState) -> None:
    app = state.app
    app.wsgi_app = ProbeResponder(app.wsgi_app, app.extensions["health"])  # type: ignore[method-assign]


class ProbeResponder:
    """WSGI: answers the routes of ROUTES from the monitor; hands every other request on."""

    def __init__(self, wsgi_app: WsgiApp, monitor: HealthMonitor) -> None:
        self.wsgi_app = wsgi_app
        self.monitor = monitor

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        route = ROUTES.get(environ.get("PATH_INFO", ""))
        if route is None:
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        probe, endpoint = route
        method = environ.get("REQUEST_METHOD", "GET")
        headers = [(REQUEST_ID_HEADER, request_id_from(environ.get("HTTP_X_REQUEST_ID")))]
        if method in METHODS:
            authorization = environ.get("HTTP_AUTHORIZATION")
            include_output = is_ops_caller(authorization, self.monitor.settings)
            status, body, cache_control = self.monitor.respond(probe, include_output=include_output)
            headers += [("Content-Type", MEDIA_TYPE), ("Cache-Control", cache_control)]
        else:
            status = 405
            body = error_body("method_not_allowed", MethodNotAllowed.description)
            headers += [("Content-Type", "application/json"), ("Allow", ", ".join(METHODS))]
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        metrics.record(endpoint, method, status, time.perf_counter() - started)
        return [] if method == "HEAD" else [body]
