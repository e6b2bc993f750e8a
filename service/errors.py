"""JSON errors: every failure answers `{"error": {"code", "message"}}`, never HTML or a trace."""

from __future__ import annotations

import logging

import psycopg2.errors
from flask import Flask, Response, jsonify
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from service.deadlines import DeadlineExceeded

log = logging.getLogger(__name__)

DATABASE_MESSAGES = {
    "timeout": "the database did not answer in time",
    "database_unavailable": "the database is unavailable",
}


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    return response


def database_error_code(error: BaseException) -> str | None:
    """Classify an exception as a database outage ('timeout', 'database_unavailable') or None."""
    if isinstance(error, sa_exc.TimeoutError):  # waited too long for a pooled connection
        return "timeout"
    original = getattr(error, "orig", None) or error
    timeouts = (DeadlineExceeded, psycopg2.errors.QueryCanceled, psycopg2.errors.LockNotAvailable)
    if isinstance(original, timeouts):
        return "timeout"
    if isinstance(
        error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)
    ):
        return "database_unavailable"
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return "database_unavailable"
    if isinstance(original, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return "database_unavailable"
    return None


def register_errorhandlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_").replace("'", "")
        response = error_response(error.code or 500, code, error.description or code)
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unhandled_error(error: Exception) -> Response:
        code = database_error_code(error)
        if code is not None:
            log.warning("database error: %s (%s)", code, type(error).__name__)
            return error_response(503, code, DATABASE_MESSAGES[code])
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
