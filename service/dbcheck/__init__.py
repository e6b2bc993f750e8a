"""The `db` blueprint: an end-to-end verification of the database through the app's session."""

from flask import Blueprint

bp = Blueprint("db", __name__, url_prefix="/api/db")

from service.dbcheck import routes  # noqa: E402, F401 - attaches the views to bp
