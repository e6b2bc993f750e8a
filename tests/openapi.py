"""Checks responses against docs/openapi.json, the service's published contract.

`ConformingClient` is the test client class of every app the fixtures build, so every response a
test sees from a documented endpoint is checked, not only those of a dedicated test. Gunicorn
tests call `assert_conforms` on their `requests` responses.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from jsonschema import Draft202012Validator, FormatChecker

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


@cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC_PATH.read_text())


def is_documented(method: str, path: str) -> bool:
    return method.lower() in spec()["paths"].get(path, {})


def assert_conforms(
    method: str, path: str, status: int, content_type: str | None, body: bytes | str
) -> None:
    """Fail unless the response is one the spec documents, with a body matching its schema."""
    operation = spec()["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {path}: status {status} is not documented"
    documented = responses[str(status)]["content"]
    media_type = (content_type or "").split(";")[0].strip()
    assert media_type in documented, f"{method} {path} {status}: media type {media_type!r}"
    schema = {**documented[media_type]["schema"], "components": spec()["components"]}
    instance = json.loads(body)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{method} {path} {status}: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors
    )


class ConformingClient(FlaskClient):
    """A Flask test client that checks every documented response against the spec."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        request = response.request
        if is_documented(request.method, request.path) and request.method != "HEAD":
            assert_conforms(
                request.method, request.path, response.status_code, response.content_type,
                response.get_data(),
            )  # fmt: skip
        return response
