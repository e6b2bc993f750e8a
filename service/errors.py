"""One error shape for every failure: `{"error": {"code", "message"}}`, never HTML or a trace."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from service import metrics
from service.database import OUTAGE_MESSAGES, classify

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what a 503 asks callers to wait before trying again


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    """The JSON of one error; also written by the gunicorn worker for its own errors."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return json.dumps({"error": error}).encode()


def code_for(reason: str) -> str:
    """`Request Header Fields Too Large` -> `request_header_fields_too_large`."""
    return reason.lower().replace(" ", "_").replace("'", "").replace("-", "_")


def error_response(
    status: int, code: str, message: str, *, details: dict[str, Any] | None = None
) -> Response:
    response = Response(error_body(code, message, details), status, mimetype="application/json")
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def register_errorhandlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # Flask hands an HTTPException without a code (a proxy) back as it is, never to here.
        code = code_for(error.name or "error")
        response = error_response(error.code, code, error.description or code)
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unhandled_error(error: Exception) -> Response:
        code = classify(error)
        if code is None:
            log.exception("unhandled error")
            return error_response(500, "internal_error", "internal server error")
        if code == "overloaded":  # counted, not logged: a line per shed request adds to the load
            metrics.count_shed()
        else:
            log.warning("database outage: %s (%s)", code, type(error).__name__)
        return error_response(503, code, OUTAGE_MESSAGES[code])
