"""`flask db wait`: block until the database answers, for container entrypoints and migration jobs.

Exponential backoff with jitter up to `--timeout`; exit 0 once `SELECT 1` answers, else exit 1
with one line on stderr (the masked URL and the last error, never a traceback).
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
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings, mask_url
from service.database import create_engine, first_line
from service.deadlines import deadline
from service.logs import Redactor

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 5.0


class DatabaseNotReady(Exception):
    """The database did not answer in time; the message is one safe line."""


@dataclass(frozen=True)
class WaitResult:
    attempts: int
    elapsed_s: float


def register_commands(app: Flask) -> None:
    """Add `wait` to Flask-Migrate's `db` group (one shared click group: adding twice is fine)."""
    app.cli.commands["db"].add_command(wait_command)  # type: ignore[attr-defined]


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
    engine = create_engine(settings, url, "wait")
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
                reason = redact(first_line(error))
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
    default=None,
    help="Give up after this many seconds (default: DB_WAIT_TIMEOUT_S, 60).",
)
@click.option(
    "--migration",
    is_flag=True,
    help="Wait for MIGRATION_DATABASE_URL (what `flask db upgrade` uses) instead of DATABASE_URL.",
)
@with_appcontext
def wait_command(timeout: float | None, migration: bool) -> None:
    """Wait until the database answers; exit 1 with one line if it does not in time."""
    settings: Settings = current_app.config["SETTINGS"]
    url = settings.migration_database_url if migration else settings.database_url
    if timeout is None:
        timeout = settings.db_wait_timeout_s
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
