"""`flask db wait`: block until the database answers, for container entrypoints and migration jobs.

A container that starts before its database (compose, a Kubernetes Job) would otherwise crash-loop
or migrate against nothing. The command retries with exponential backoff (with jitter, so many
replicas do not knock in step) up to `--timeout`, exits 0 as soon as `SELECT 1` answers, and
otherwise exits 1 with one line on stderr: the masked URL and the last error, no traceback.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from service.config import Settings, mask_url
from service.database import engine_options
from service.deadlines import deadline
from service.logs import Redactor

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 5.0
DEFAULT_TIMEOUT_S = 60.0


class DatabaseNotReady(Exception):
    """The database did not answer in time; the message is one safe line."""


@dataclass(frozen=True)
class WaitResult:
    attempts: int
    elapsed_s: float


def register_commands(app: Flask) -> None:
    """Add `wait` to Flask-Migrate's `db` group (Migrate.init_app adds the group to app.cli).

    The group is one shared click object; adding the same command again is harmless.
    """
    group = app.cli.commands.get("db")
    if isinstance(group, click.Group):
        group.add_command(wait_command)
    else:  # pragma: no cover - Flask-Migrate always registers it; keep the command reachable
        app.cli.add_command(click.Group("db", commands=[wait_command]))


def wait_for_database(
    url: URL,
    settings: Settings,
    timeout_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitResult:
    """Try `SELECT 1` on `url` until it answers or `timeout_s` has passed.

    Each attempt is bounded by DB_CONNECT_TIMEOUT_S and by the time left (service.deadlines),
    so a frozen server cannot stretch the wait. Raises DatabaseNotReady.
    """
    options = engine_options(settings, application_name=f"{settings.service_id}-wait")
    for pooled_only in ("pool_size", "max_overflow", "pool_timeout", "pool_recycle"):
        options.pop(pooled_only, None)
    options.update(poolclass=NullPool, pool_pre_ping=False)
    engine = create_engine(url, **options)
    redact = Redactor(settings.secrets)
    started = time.monotonic()
    give_up_at = started + timeout_s
    attempts, delay = 0, FIRST_DELAY_S
    try:
        while True:
            attempts += 1
            try:
                with (
                    deadline(max(0.1, give_up_at - time.monotonic())),
                    engine.connect() as connection,
                ):
                    connection.execute(text("SELECT 1"))
                return WaitResult(attempts, time.monotonic() - started)
            except (SQLAlchemyError, OSError) as error:
                reason = redact(_first_line(getattr(error, "orig", None) or error))
                log.debug("database not ready (attempt %d): %s", attempts, reason)
            left = give_up_at - time.monotonic()
            if left <= 0:
                raise DatabaseNotReady(
                    f"{mask_url(url)} did not answer within {timeout_s:g}s "
                    f"({attempts} attempt{'s' if attempts != 1 else ''}): {reason}"
                )
            sleep(min(left, delay * random.uniform(0.8, 1.2)))  # noqa: S311 - jitter
            delay = min(MAX_DELAY_S, delay * 2)
    finally:
        engine.dispose()


@click.command("wait")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    envvar="DB_WAIT_TIMEOUT_S",
    help="Give up after this many seconds (env DB_WAIT_TIMEOUT_S).",
)
@click.option(
    "--migration",
    is_flag=True,
    help="Wait for MIGRATION_DATABASE_URL (what `flask db upgrade` uses) instead of DATABASE_URL.",
)
@with_appcontext
def wait_command(timeout: float, migration: bool) -> None:
    """Wait until the database answers; exit 1 with one line if it does not in time."""
    settings: Settings = current_app.config["SETTINGS"]
    url = settings.migration_database_url if migration else settings.database_url
    try:
        result = wait_for_database(url, settings, timeout)
    except DatabaseNotReady as error:
        click.echo(f"flask db wait: {error}", err=True)
        raise SystemExit(1) from None
    click.echo(
        f"database ready: {mask_url(url)} "
        f"(after {result.attempts} attempt{'s' if result.attempts != 1 else ''}, "
        f"{result.elapsed_s:.1f}s)"
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
