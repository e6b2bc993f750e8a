"""Logging: JSON lines in production, readable lines in development, secrets never shown.

Every line carries the id of the request it belongs to (`request_id`, "-" outside a request).
Every formatted line, traceback included, passes through `Redactor`, which masks the password of
any URL and each configured secret: a password cannot reach a log line by any path.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
from collections.abc import Iterable

from flask import g, has_request_context
from pythonjsonlogger.json import JsonFormatter

from service.config import Settings

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
