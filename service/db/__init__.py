"""The `db` blueprint: GET /api/db/test verifies the database end to end."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from service.db.verify import SchemaOutdated, verify_database
from service.deadlines import deadline
from service.errors import error_response
from service.extensions import db
from service.schema import schema_versions
from service.security import ops_only

bp = Blueprint("db", __name__, url_prefix="/api/db")


@bp.get("/test")
@ops_only
def test() -> Response:
    """A real round trip through the app's session under DB_DEADLINE_S; outages are 503s."""
    with deadline(current_app.config["SETTINGS"].db_deadline_s):
        try:
            return jsonify(verify_database(db.session, schema_versions()))
        finally:
            db.session.close()  # the connection goes back to the pool inside the deadline


@bp.errorhandler(SchemaOutdated)
def schema_outdated(error: SchemaOutdated) -> Response:
    return error_response(503, "schema_outdated", str(error), details=error.details)
