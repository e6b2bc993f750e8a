"""GET /api/db/test: 200 with what was verified, or a JSON 503 within DB_DEADLINE_S."""

from __future__ import annotations

import logging

from flask import Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.dbcheck import bp
from service.dbcheck.verify import SchemaOutdated, verify_database
from service.deadlines import deadline
from service.errors import DATABASE_MESSAGES, database_error_code
from service.extensions import db
from service.schema import schema_versions
from service.security import ops_only

log = logging.getLogger(__name__)


@bp.get("/test")
@ops_only
def database_test() -> Response | tuple[Response, int]:
    """Verify the database end to end through the app's session, under a hard deadline."""
    settings: Settings = current_app.config["SETTINGS"]
    try:
        with deadline(settings.db_deadline_s):
            return jsonify(verify_database(db.session, schema_versions()))
    except SchemaOutdated as outdated:
        return _error(
            "schema_outdated", "the schema is not at the migrations' head", outdated.details
        )
    except (SQLAlchemyError, OSError) as error:
        code = database_error_code(error) or "database_error"
        log.warning("database test failed: %s (%s)", code, type(error).__name__)
        return _error(code, DATABASE_MESSAGES.get(code, "the database check failed"))


def _error(code: str, message: str, details: dict | None = None) -> tuple[Response, int]:
    body: dict = {"status": "error", "error": {"code": code, "message": message}}
    if details:
        body.update(details)
    return jsonify(body), 503
