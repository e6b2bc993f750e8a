"""Answer health probes before Flask's request machinery: probes cost almost nothing.

Load balancers and orchestrators call the health endpoints thousands of times a day, and a probe
storm must not cost more than the traffic it guards. Through Flask, a probe paid for URL routing,
a request context, the (unused) session, the request hooks and the error handling: 320 us of CPU
per request under gunicorn against 251 us for a bare Flask app returning a constant (see
docs/performance.md). This middleware answers GET and HEAD of the three health paths itself,
from `HealthMonitor.respond`, the same code the Flask views use, and hands every other request,
unchanged, to the app.

A production request with an Authorization header goes to Flask: checking the ops token is the
views' business, and such requests are rare (operators, not probes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from service import metrics
from service.health.monitor import MEDIA_TYPE, HealthMonitor
from service.request_context import REQUEST_ID_HEADER, request_id_from

# Path -> (probe, the Flask endpoint it stands for, for metrics)
PROBE_PATHS = {
    "/api/health": ("health", "health.health"),
    "/api/health/ready": ("ready", "health.ready"),
    "/api/health/live": ("live", "health.live"),
}
_STATUS_LINES = {code: f"{code} {HTTPStatus(code).phrase}" for code in (200, 503)}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class HealthFastPath:
    """WSGI middleware: health probes answered from memory, everything else passed on."""

    def __init__(self, wsgi_app: WsgiApp, monitor: HealthMonitor) -> None:
        self.wsgi_app = wsgi_app
        self._monitor = monitor
        self._production = monitor.settings.is_production

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        route = PROBE_PATHS.get(environ.get("PATH_INFO", ""))
        method = environ.get("REQUEST_METHOD")
        if (
            route is None
            or method not in ("GET", "HEAD")
            or (self._production and "HTTP_AUTHORIZATION" in environ)
        ):
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        probe, endpoint = route
        status, body, cache_control = self._monitor.respond(
            probe, include_output=not self._production
        )
        start_response(
            _STATUS_LINES[status],
            [
                ("Content-Type", MEDIA_TYPE),
                ("Content-Length", str(len(body))),
                ("Cache-Control", cache_control),
                (REQUEST_ID_HEADER, request_id_from(environ.get("HTTP_X_REQUEST_ID"))),
            ],
        )
        metrics.record(endpoint, method, status, time.perf_counter() - started)
        return [body] if method == "GET" else []
