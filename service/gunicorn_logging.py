"""gunicorn's own log lines in the app's format: JSON in production, redacted, probes left out.

gunicorn.conf.py names `ServiceLogger` as gunicorn's `logger_class`. It keeps gunicorn's handlers
and destinations (`accesslog`, `errorlog`) but gives them the app's formatter
(service.logs.build_formatter), so every line on stdout has one shape and passes the same
password redactor. Access lines carry the request id (from the response's X-Request-ID) and
structured fields; health probes and metric scrapes are not logged: every load balancer and
Prometheus would otherwise bury the real traffic under their polling.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from service.config import ConfigError, load_settings
from service.logs import RequestIdFilter, build_formatter

# Paths (and everything under them) that never get an access line.
QUIET_PATHS = ("/api/health", "/metrics")
REQUEST_ID_HEADER = "x-request-id"
INSTANCE_PATH = str(Path(__file__).resolve().parent.parent / "instance")  # as create_app's


def is_quiet_path(path: str) -> bool:
    """True for health probes and metric scrapes (`/api/health`, `/api/health/ready`, ...)."""
    return any(path == quiet or path.startswith(quiet + "/") for quiet in QUIET_PATHS)


class ServiceLogger(Logger):
    """gunicorn Logger: the app's formatter on its handlers; access lines as structured records."""

    def setup(self, cfg: Any) -> None:
        """Called at start and on every reload (SIGHUP): handlers are rebuilt, so re-dress them."""
        super().setup(cfg)
        try:
            settings = load_settings(instance_path=INSTANCE_PATH)
            log_format, secrets = settings.log_format, settings.secrets
        except ConfigError:  # gunicorn.conf.py already stopped on it; never fail here
            log_format, secrets = "text", ()
        formatter = build_formatter(log_format, secrets)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(formatter)
                    handler.addFilter(RequestIdFilter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        """One record per request (gunicorn's `access_log_format` is not used)."""
        if not self.access_log_enabled:
            return
        path = environ.get("PATH_INFO", "")
        if is_quiet_path(path):
            return
        try:
            fields = _access_fields(resp, environ, request_time, path)
            self.access_log.info(
                '%s "%s %s %s" %s %s %.1fms',
                fields["remote_addr"],
                fields["http_method"],
                path,
                environ.get("SERVER_PROTOCOL", "-"),
                fields["status"],
                fields["bytes_sent"],
                fields["duration_ms"],
                extra=fields,
            )
        except Exception:  # noqa: BLE001 - a log line must never fail a request
            self.error_log.exception("could not write an access log line")


def _status_code(resp: Any) -> int | str:
    code = getattr(resp, "status_code", None)
    if code is not None:
        return int(code)
    status = str(getattr(resp, "status", "") or "-")
    head = status.split(None, 1)[0]
    return int(head) if head.isdigit() else head


def _request_id(resp: Any, environ: dict[str, Any]) -> str:
    for name, value in getattr(resp, "headers", None) or ():
        if name.lower() == REQUEST_ID_HEADER:
            return str(value)
    return str(environ.get("HTTP_X_REQUEST_ID") or "-")


def _access_fields(
    resp: Any, environ: dict[str, Any], request_time: timedelta, path: str
) -> dict[str, Any]:
    """Structured fields of an access record. The query string is left out: it may hold secrets."""
    return {
        "request_id": _request_id(resp, environ),
        "http_method": environ.get("REQUEST_METHOD", "-"),
        "path": path,
        "status": _status_code(resp),
        "duration_ms": round(request_time.total_seconds() * 1000, 3),
        "bytes_sent": getattr(resp, "sent", None),
        "remote_addr": environ.get("REMOTE_ADDR", "-"),
        "user_agent": environ.get("HTTP_USER_AGENT", "-"),
    }
