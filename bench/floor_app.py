"""The floor: a bare Flask app returning a constant JSON body, served with the service's settings.

The ratio of the service's /api/health throughput to this app's throughput shows what the health
path costs on top of Flask and gunicorn themselves. The gunicorn worker expects the
service's shape (its settings, a Flask-SQLAlchemy engine to dispose at exit, a health checker to
start), so this app offers that shape and nothing a request would pay for.
"""

from __future__ import annotations

import json

from flask import Flask, Response

from service.config import process_settings
from service.extensions import db

BODY = json.dumps({"status": "pass"}).encode()


class _NoChecker:
    """Stands in for the service's health monitor in gunicorn's worker hooks."""

    @property
    def checker(self) -> _NoChecker:
        return self

    def ensure_running(self) -> None:
        """Nothing to start: the floor observes nothing."""

    def drain(self) -> None:
        """Nothing to drain."""

    def stop(self) -> None:
        """Nothing to stop."""


def create_floor_app() -> Flask:
    """Build the floor app; the engine exists only for the post_fork hook and never connects."""
    app = Flask(__name__)
    app.config["SETTINGS"] = process_settings()  # the worker's drain and head deadline
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///:memory:"
    db.init_app(app)
    # Flask-SQLAlchemy adds a per-request session teardown; the floor must not pay for it.
    app.teardown_appcontext_funcs[:] = [
        func for func in app.teardown_appcontext_funcs if getattr(func, "__self__", None) is not db
    ]
    app.extensions["health"] = _NoChecker()
    app.extensions["metrics"] = 0  # no pool to count

    @app.get("/api/health")  # the service's path, so both receive byte-identical requests
    def constant() -> Response:
        return Response(BODY, status=200, mimetype="application/json")

    return app


app = create_floor_app()
