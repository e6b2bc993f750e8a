"""Per-request plumbing: the request id and the request's database deadline."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from service import deadlines
from service.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def register_request_hooks(app: Flask, settings: Settings) -> None:
    """Must run before `db.init_app`: teardown functions run in reverse order, so the deadline
    is cleared only after Flask-SQLAlchemy has returned the request's connection to the pool."""

    @app.before_request
    def start_request() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _ACCEPTABLE_ID.match(incoming) else uuid.uuid4().hex
        deadlines.begin(settings.db_deadline_s)

    @app.after_request
    def tag_response(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        return response

    @app.teardown_appcontext
    def end_request(_: BaseException | None) -> None:
        deadlines.clear()
