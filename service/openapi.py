"""Serves the published API description (docs/openapi.json) at /api/openapi.json."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from flask import Blueprint, Response, current_app

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"

bp = Blueprint("openapi", __name__)


@cache
def document_for(production: bool) -> bytes:
    """The document as this mode serves it: outside production no operation needs the token.

    docs/openapi.json describes production. Elsewhere the ops-token-guarded operations are open,
    so their `security` and the 401/404 that only the guard answers are dropped.
    """
    if production:
        return SPEC_PATH.read_bytes()
    spec = json.loads(SPEC_PATH.read_bytes())
    for operations in spec["paths"].values():
        for operation in operations.values():
            security = operation.get("security")
            if security and all("opsToken" in required for required in security):
                del operation["security"]
                for status in ("401", "404"):
                    operation["responses"].pop(status, None)
    return json.dumps(spec).encode()


@bp.get("/api/openapi.json")
def openapi_document() -> Response:
    production = current_app.config["SETTINGS"].is_production
    return Response(document_for(production), mimetype="application/json")
