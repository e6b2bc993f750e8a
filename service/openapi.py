"""Serves the published API description (docs/openapi.json) at /api/openapi.json."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from flask import Blueprint, Response

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"

bp = Blueprint("openapi", __name__)


@cache
def _spec_bytes() -> bytes:
    return SPEC_PATH.read_bytes()


@bp.get("/api/openapi.json")
def openapi_document() -> Response:
    return Response(_spec_bytes(), mimetype="application/json")
