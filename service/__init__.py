"""A Flask microservice that owns a PostgreSQL database layer and reports on its health."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface

from service import database, extensions, health, schema
from service.cli import register_commands
from service.config import INSTANCE_PATH, Settings, load_settings
from service.errors import register_errorhandlers
from service.logs import configure_logging, register_request_ids

__version__ = "0.1.0"

log = logging.getLogger(__name__)


def create_app(
    test_config: Mapping[str, object] | None = None, *, settings: Settings | None = None
) -> Flask:
    """Build the app from `settings` already loaded, else from the environment and `test_config`.

    `test_config` overrides settings by their environment variable names. Raises
    `service.config.ConfigError` (one line, no secret) when a setting is invalid.
    """
    app = Flask(__name__, instance_path=str(INSTANCE_PATH))
    if settings is None:
        settings = load_settings(test_config, instance_path=app.instance_path)
    app.config.update(
        SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        TESTING=settings.app_env == "test",
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=database.engine_options(settings),
    )
    app.json.sort_keys = False  # keep "status" first, as written
    app.session_interface = NoSessions()
    configure_logging(settings)
    register_extensions(app, settings)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
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
    register_request_ids(app)
    db = extensions.db  # `service.db` is the db blueprint's package
    db.init_app(app)
    extensions.migrate.init_app(app, db, directory=str(schema.MIGRATIONS_DIR), render_as_batch=True)
    with app.app_context():
        engine = database.prepare_engine(db.engine, settings)
    capacity = database.pool_capacity(settings)
    extensions.metrics.init_app(app, engine, capacity)
    health.init_app(app, settings, lambda: database.pool_in_use(engine), capacity, __version__)
    from service import models  # noqa: F401 - registers the tables on db.metadata


def register_blueprints(app: Flask) -> None:
    from service import auth, db, openapi

    app.register_blueprint(health.bp)  # its probe responder answers before Flask
    app.register_blueprint(db.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(openapi.bp)


def start_serving(app: Flask) -> None:
    """In a process that serves: start the health checker and count this worker's pool."""
    app.extensions["health"].checker.ensure_running()
    extensions.metrics.start_process(app)


def drain(app: Flask) -> None:
    """Before a graceful stop: fail readiness, so load balancers stop sending requests."""
    app.extensions["health"].drain()


def stop_serving(app: Flask) -> None:
    """Stop the checker and close every connection, so none is left on the server."""
    app.extensions["health"].stop()
    with app.app_context():
        extensions.db.engine.dispose()


class NoSessions(SessionInterface):
    """This API keeps no cookie sessions, so no request pays for signing or parsing one."""

    def open_session(self, app: Flask, request: Request) -> None:
        return None

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        return None
