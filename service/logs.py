"""Logging and request ids: JSON lines in production, text in development, secrets never shown."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import uuid
from collections.abc import Iterable

from flask import Flask, Response, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

from service.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(name)s] [%(request_id)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"

_URL_CREDENTIALS = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_PASSWORD_ASSIGNMENT = re.compile(r"(?P<head>\bpassword\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)", re.I)


# Bare secret values shorter than this are not replaced wherever they appear: a one-letter
# password would turn every "p" of every line into "***". In a URL they are still masked.
MIN_BARE_SECRET_LENGTH = 4


class Redactor:
    """Masks URL passwords, `password=...` pairs and the given secret values in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_BARE_SECRET_LENGTH:
                variants.add(secret)
                variants.add(json.dumps(secret)[1:-1])  # as it appears inside a JSON string
        self._secrets = sorted(variants, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(r"\g<head>***@", text)
        text = _PASSWORD_ASSIGNMENT.sub(r"\g<head>***", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class RedactingFormatter(logging.Formatter):
    """Wraps another formatter and redacts its whole output, tracebacks included."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the current request's id, or '-'."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def build_formatter(log_format: str, secrets: Iterable[str] = ()) -> logging.Formatter:
    inner: logging.Formatter
    if log_format == "json":
        inner = JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "asctime": "time"})
    else:
        inner = logging.Formatter(TEXT_FORMAT)
    return RedactingFormatter(inner, Redactor(secrets))


def configure_logging(settings: Settings) -> None:
    """Send the root logger's records to stdout in the configured format (idempotent)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(build_formatter(settings.log_format, settings.secrets))
    handler.addFilter(RequestIdFilter())
    handler.set_name("service")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "service":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)


def request_id_from(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new one."""
    if incoming and _ACCEPTABLE_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def register_request_ids(app: Flask) -> None:
    """Give every request an id, on its log lines and in its X-Request-ID response header."""

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))

    @app.after_request
    def return_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        return response
