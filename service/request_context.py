"""Per-request plumbing: the request id and the request's database deadline."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import Flask, Request, Response, g, request
from flask.sessions import SessionInterface

from service import deadlines
from service.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class NoSessions(SessionInterface):
    """This API keeps no cookie sessions, so requests skip signing and parsing one (~18 us)."""

    def open_session(self, app: Flask, request: Request) -> None:
        return None  # Flask then uses a null session and never saves it

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        return None


def request_id_from(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a new one."""
    if incoming and _ACCEPTABLE_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def register_request_hooks(app: Flask, settings: Settings) -> None:
    """Must run before `db.init_app`: teardown functions run in reverse order, so the deadline
    is cleared only after Flask-SQLAlchemy has returned the request's connection to the pool."""

    @app.before_request
    def start_request() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        deadlines.begin(settings.db_deadline_s)

    @app.after_request
    def tag_response(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        return response

    @app.teardown_appcontext
    def end_request(_: BaseException | None) -> None:
        deadlines.clear()
