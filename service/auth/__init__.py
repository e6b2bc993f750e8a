"""The `auth` blueprint: who is calling, from the credentials Better Auth issues.

GET /api/me answers the caller; `requires_caller` gives any view the same (`current_caller()`).
How it fits beside a Better Auth server, and what it never does: docs/auth.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.blueprints import BlueprintSetupState
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Forbidden, Unauthorized

from service.auth.caller import Caller
from service.auth.credentials import Refused, presented
from service.auth.jwks import KeySet, verify_jwt
from service.auth.sessions import find_caller
from service.config import Settings, normal_origin
from service.deadlines import deadline
from service.extensions import db

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

bp = Blueprint("auth", __name__, url_prefix="/api")


class Unauthenticated(Unauthorized):
    """No acceptable credential: JSON 401 `unauthenticated`, with WWW-Authenticate."""

    name = "Unauthenticated"  # the error code, through service.errors
    description = "a valid Better Auth session or token is required"

    def __init__(self) -> None:
        super().__init__(www_authenticate=WWWAuthenticate("Bearer"))


class UntrustedOrigin(Forbidden):
    """A cookie-authenticated unsafe request from an origin that is not trusted (CSRF)."""

    description = "cross-site request refused: its origin is not trusted"


@bp.record_once
def _add_key_set(state: BlueprintSetupState) -> None:
    settings: Settings = state.app.config["SETTINGS"]
    state.app.extensions["auth_keys"] = KeySet(settings.better_auth_jwks_refetch_s)


def identify() -> Caller:
    """The caller of the current request. Raises Unauthenticated, UntrustedOrigin, or a database
    error (a 503 through service.errors) within DB_DEADLINE_S."""
    settings: Settings = current_app.config["SETTINGS"]
    if settings.better_auth_url is None:
        log.debug("caller refused: BETTER_AUTH_URL is not set")
        raise Unauthenticated
    try:
        credential = presented(request.headers, settings)
    except Refused as refusal:
        log.debug("caller refused: %s", refusal)
        raise Unauthenticated from None
    if credential.kind == "cookie" and request.method not in SAFE_METHODS:
        _check_origin(settings)
    with deadline(settings.db_deadline_s):
        try:
            if credential.kind == "jwt":
                keys = current_app.extensions["auth_keys"]
                caller = verify_jwt(credential.value, keys, db.session, settings.better_auth_url)
            else:
                caller = find_caller(db.session, credential.value, credential.kind)
        except Refused as refusal:
            log.debug("caller refused: %s", refusal)
            raise Unauthenticated from None
        finally:
            db.session.close()  # the connection goes back to the pool inside the deadline
    if caller is None:
        log.debug("caller refused: no live session for that %s", credential.kind)
        raise Unauthenticated
    return caller


def _check_origin(settings: Settings) -> None:
    """Better Auth's rule: Origin, else Referer, must be a trusted origin; missing is refused."""
    claimed = request.headers.get("Origin") or request.headers.get("Referer") or ""
    origin = normal_origin(claimed, allow_path=True)
    if origin is None or origin not in settings.better_auth_trusted:
        raise UntrustedOrigin


def requires_caller(view: Callable[..., Any]) -> Callable[..., Any]:
    """Let only a verified caller reach `view`, which reads it with `current_caller()`."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        g.caller = identify()
        return view(*args, **kwargs)

    return guarded


def current_caller() -> Caller:
    """The caller `requires_caller` verified for this request."""
    return g.caller


@bp.get("/me")
@requires_caller
def me() -> Response:
    """The caller's user and session; never the session's token."""
    response = jsonify(current_caller().to_json())
    response.headers["Cache-Control"] = "private, no-store"
    return response
