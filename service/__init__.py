"""A Flask microservice that owns a PostgreSQL database layer and reports on its health.

`create_app` is the application factory: gunicorn and the `flask` command build the app through
`wsgi.py`, tests call it with a mapping of settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from flask import Flask

from service import deadlines, health, schema
from service.cli import register_commands
from service.config import Settings, load_settings
from service.database import (
    PoolGauge,
    enforce_timeouts_per_transaction,
    engine_options,
    pool_capacity,
)
from service.errors import register_errorhandlers
from service.extensions import db, migrate
from service.health.fastpath import HealthFastPath
from service.logs import configure_logging
from service.metrics import register_metrics
from service.request_context import NoSessions, register_request_hooks

__version__ = "0.1.0"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_PATH = PROJECT_ROOT / "instance"  # the embedded SQLite default lives here

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    """Build the app. `config` overrides settings by their environment variable names.

    Raises `service.config.ConfigError` (one line, no secret) when a setting is invalid.
    """
    app = Flask(__name__, instance_path=str(INSTANCE_PATH))
    settings = load_settings(config, instance_path=app.instance_path)
    app.config.update(
        SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        TESTING=settings.app_env == "test",
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings),
    )
    app.json.sort_keys = False  # keep "status" first, as written
    app.session_interface = NoSessions()
    configure_logging(settings)
    register_extensions(app, settings)
    register_blueprints(app)
    register_metrics(app, settings)
    register_commands(app)
    register_errorhandlers(app)
    # Outermost, so probes skip everything else (see service/health/fastpath.py).
    app.wsgi_app = HealthFastPath(app.wsgi_app, app.extensions["health"])  # type: ignore[method-assign]
    log.info(
        "service ready: env=%s database=%s pool=%s",
        settings.app_env,
        settings.masked_database_url,
        settings.db_pool,
    )
    return app


def register_extensions(app: Flask, settings: Settings) -> None:
    if settings.database_is_default:
        os.makedirs(app.instance_path, exist_ok=True)
        log.info(
            "DATABASE_URL is not set: using the embedded SQLite database %s (development only)",
            settings.database_url.database,
        )
    if settings.is_postgresql:
        deadlines.install(settings.db_connect_timeout_s)
    register_request_hooks(app, settings)  # before db.init_app: see its docstring
    db.init_app(app)
    migrate.init_app(app, db, directory=str(schema.MIGRATIONS_DIR), render_as_batch=True)
    with app.app_context():
        engine = db.engine
        if settings.is_postgresql and settings.db_pool == "null":
            enforce_timeouts_per_transaction(engine, settings)
        pool_gauge = PoolGauge(engine, pool_capacity(settings))
    app.extensions["pool_gauge"] = pool_gauge
    health.init_app(app, settings, pool_gauge, __version__)
    from service import models  # noqa: F401 - registers the tables on db.metadata


def register_blueprints(app: Flask) -> None:
    from service.dbcheck import bp as db_blueprint
    from service.openapi import bp as openapi_blueprint

    app.register_blueprint(health.bp)
    app.register_blueprint(db_blueprint)
    app.register_blueprint(openapi_blueprint)
